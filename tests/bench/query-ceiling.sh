#!/usr/bin/env bash
# Cached `task(id)` queries against the ceiling of this machine: a bare axum JSON endpoint
# (tools/src/bin/bare.rs), both driven by wrk the same way, alternating.
#
#   tests/bench/query-ceiling.sh [embedded|real]
#
# One Taskwire server (rate limits off) is seeded with 1,000 tasks; then, for
# TASKWIRE_BENCH_ROUNDS rounds (default 3), wrk (-t2 -c64, TASKWIRE_BENCH_SECONDS each,
# default 15) posts `query Get($id: ID!) { task(id: $id) { id status priority } }` to the
# bare endpoint and then to Taskwire, 90 % of requests on the hottest 100 ids (the
# load generator's `hot` distribution). Prints each run's requests/s and p50/p99, the
# medians and the ratio Taskwire/bare. Uses TASKWIRE_BENCH_BIN (a directory with
# `taskwire` and `bare`) or builds them. Needs wrk (Debian's package).
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
stack=${1:-embedded}
rounds=${TASKWIRE_BENCH_ROUNDS:-3}
seconds=${TASKWIRE_BENCH_SECONDS:-15}
command -v wrk >/dev/null || { echo "query-ceiling.sh needs wrk (apt-get install wrk)" >&2; exit 2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taskwire/target}"
bin=$(bench_binaries taskwire bare)
work=$(mktemp -d /tmp/taskwire-ceiling.XXXXXX)
secret=bench-secret
port=18100
bare_port=18088
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

mapfile -t env < <(bench_server_env "$stack" "$port" "$secret" "$work" ceiling)
env "${env[@]}" "$bin/taskwire" >"$work/server.log" 2>&1 &
pids+=($!)
"$bin/bare" "127.0.0.1:$bare_port" >"$work/bare.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$port" 240 any "${pids[0]}" || { cat "$work/server.log" >&2; exit 1; }

token=$(env TASKWIRE_JWT_SECRET=$secret TASKWIRE_DATA_DIR="$work" "$bin/taskwire" token --sub ceiling --role client --ttl 1h)
# 1,000 tasks in two batches of 500 (the batch limit); their ids, one per line.
for _ in 1 2; do
  inputs=$(python3 -c 'import json; print(json.dumps([{"queue": "bench-read", "kind": "k"}] * 500))')
  curl -fs "http://127.0.0.1:$port/graphql" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"query\":\"mutation(\$i: [CreateTaskInput!]!) { createTasks(inputs: \$i) { task { id } } }\",\"variables\":{\"i\":$inputs}}" |
    python3 -c 'import json, sys; [print(t["task"]["id"]) for t in json.load(sys.stdin)["data"]["createTasks"]]'
done >"$work/ids"
[ "$(wc -l <"$work/ids")" -eq 1000 ] || { echo "seeding failed" >&2; exit 1; }

cat >"$work/query.lua" <<LUA
local ids = {}
for line in io.lines("$work/ids") do ids[#ids + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
local query = '{"query":"query Get(\$id: ID!) { task(id: \$id) { id status priority } }","variables":{"id":"'
request = function()
  local i
  if math.random() < 0.9 then i = math.random(1, #ids / 10) else i = math.random(1, #ids) end
  return wrk.format(nil, "/graphql", nil, query .. ids[i] .. '"}}')
end
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.0f %.2f %.2f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors))
end
LUA

# A body Taskwire answers with data and no errors, checked once before measuring.
probe=$(curl -fs "http://127.0.0.1:$port/graphql" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"query\":\"query Get(\$id: ID!) { task(id: \$id) { id status priority } }\",\"variables\":{\"id\":\"$(head -1 "$work/ids")\"}}")
grep -q '"status":"QUEUED"' <<<"$probe" || { echo "probe query failed: $probe" >&2; exit 1; }

run() { # run NAME PORT: one wrk run, prints "NAME req/s p50 p99 errors"
  local line
  line=$(wrk -t2 -c64 -d"${seconds}s" -s "$work/query.lua" "http://127.0.0.1:$2/graphql" | grep '^RESULT')
  echo "$1 ${line#RESULT }" | tee -a "$work/results"
}
for round in $(seq "$rounds"); do
  run bare "$bare_port"
  run taskwire "$port"
done
echo
awk '
  { n[$1]++; rps[$1, n[$1]] = $2; p50[$1, n[$1]] = $3; p99[$1, n[$1]] = $4; err[$1] += $5 }
  function median(a, who, k,   v, i, j, t) {
    for (i = 1; i <= k; i++) v[i] = a[who, i]
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
  }
  END {
    for (who in n) printf "%-9s median %6.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors (%d runs)\n", who, median(rps, who, n[who]), median(p50, who, n[who]), median(p99, who, n[who]), err[who], n[who]
    printf "taskwire / bare: %.2f\n", median(rps, "taskwire", n["taskwire"]) / median(rps, "bare", n["bare"])
  }' "$work/results"
