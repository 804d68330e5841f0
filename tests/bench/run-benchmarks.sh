#!/usr/bin/env bash
# Runs the load-generator scenarios of docs/BENCHMARKS.md against a fresh release server.
#
#   tests/bench/run-benchmarks.sh embedded|real [scenario…]
#
# Scenarios: query-hot query-uniform create create-batch dispatch fanout fanout-10k
# (default: all but fanout-10k). Each scenario gets a freshly started server with an empty
# database, so one run's backlog never slows the next; the server is stopped afterwards.
# `real` needs MariaDB on 127.0.0.1:3306 (root, no password), Redis on 6379 and a
# Kafka-compatible broker on 9092 (see .ci/run). Rate limits are off: the load generator
# drives one subject hard on purpose. Results: one line per scenario on stdout, JSON in
# $CARGO_TARGET_DIR/bench/<stack>-<scenario>.json (or $TASKWIRE_BENCH_OUT/…).
set -euo pipefail

cd "$(dirname "$0")/../.."
stack=${1:?usage: run-benchmarks.sh embedded|real [scenario…]}
shift
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(query-hot query-uniform create create-batch dispatch fanout)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taskwire/target}"
# TASKWIRE_BENCH_BIN: a directory holding prebuilt `taskwire` and `loadgen` binaries, used
# instead of building this checkout (to compare two builds on the same machine state).
if [ -n "${TASKWIRE_BENCH_BIN:-}" ]; then
  bin=$TASKWIRE_BENCH_BIN
else
  cargo build --release --quiet -p taskwire-api -p taskwire-tests --bin taskwire --bin loadgen
  bin="$CARGO_TARGET_DIR/release"
fi
out="${TASKWIRE_BENCH_OUT:-$CARGO_TARGET_DIR/bench}"
mkdir -p "$out"
port=18100
url="http://127.0.0.1:$port"
secret=bench-secret

start_server() {
  local data
  data=$(mktemp -d /tmp/taskwire-bench.XXXXXX)
  local env=(
    TASKWIRE_LISTEN=127.0.0.1:$port TASKWIRE_JWT_SECRET=$secret RUST_LOG=warn
    TASKWIRE_RATE_LIMIT_OPERATIONS=0 TASKWIRE_RATE_LIMIT_MUTATIONS=0 TASKWIRE_DATA_DIR="$data"
    TASKWIRE_WS_MAX_CONNECTIONS=20000
  )
  if [ "$stack" = real ]; then
    mysql --protocol=tcp -h127.0.0.1 -uroot -e \
      "DROP DATABASE IF EXISTS taskwire_bench; CREATE DATABASE taskwire_bench CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    env+=(
      TASKWIRE_DATABASE_URL=mysql://root@127.0.0.1:3306/taskwire_bench
      TASKWIRE_KAFKA_BROKERS=127.0.0.1:9092
      TASKWIRE_KAFKA_TOPIC_PREFIX="bench$RANDOM$RANDOM"
      TASKWIRE_REDIS_URL=redis://127.0.0.1:6379
      TASKWIRE_REDIS_KEY_PREFIX="bench$RANDOM$RANDOM"
    )
  else
    env+=(TASKWIRE_DATABASE_URL="sqlite://$data/taskwire.db?mode=rwc")
  fi
  env "${env[@]}" "$bin/taskwire" >"$data/server.log" 2>&1 &
  server_pid=$!
  # Ready, and the dispatcher has joined its consumer group: a fresh group assigns its
  # first member only after the broker's initial rebalance delay (3 s), and until then
  # the matcher dispatches by polling the database. The figures are for steady state;
  # docs/BENCHMARKS.md measures that start-up window on its own.
  for _ in $(seq 120); do
    if curl -fs "$url/readyz" 2>/dev/null | grep -q '"state":"joined"'; then return 0; fi
    sleep 0.5
  done
  echo "server did not become ready; log: $data/server.log" >&2
  return 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

lg() { "$bin/loadgen" "$@" --url "$url" --secret "$secret"; }

# CPU seconds (user + system) a process has used so far; 0 when it is not running.
cpu_of() {
  local pid=$1 ticks
  ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || { echo 0; return; }
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}

# One line per scenario: the CPU seconds each process used while it ran (on a 2-core
# machine this shows what bounds a figure). The load generator's share is this shell's
# finished children (`times`, which must run in this shell: a subshell has no children).
services=(mariadbd tansu redis-server)
cpu_snapshot() { # cpu_snapshot VARIABLE: stores "name=seconds … wall=epoch" in VARIABLE
  local -n into=$1
  local name pid
  times >"$out/.times"
  into="server=$(cpu_of "$server_pid") loadgen=$(awk 'NR == 2 {
    split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.2f", u[1] * 60 + u[2] + s[1] * 60 + s[2]
  }' "$out/.times")"
  for name in "${services[@]}"; do
    pid=$(pgrep -o -x "$name" 2>/dev/null || true)
    into+=" $name=$([ -n "$pid" ] && cpu_of "$pid" || echo 0)"
  done
  into+=" wall=$(date +%s.%N)"
}

cpu_report() { # cpu_report BEFORE AFTER
  awk -v before="$1" -v after="$2" 'BEGIN {
    n = split(before, b, " "); split(after, a, " ")
    for (i = 1; i <= n; i++) { split(b[i], kb, "="); split(a[i], ka, "="); d[kb[1]] = ka[2] - kb[2]; k[i] = kb[1] }
    line = sprintf("cpu seconds over %.1f s:", d["wall"])
    for (i = 1; i < n; i++) line = line sprintf(" %s %.1f", k[i], d[k[i]])
    print line
  }'
}

# On SQLite: how busy the write gate was, per writer (held seconds, share of the
# scenario's wall time, mean wait), from the server's /metrics saved after the scenario.
gate_report() { # gate_report METRICS_FILE WALL_SECONDS
  awk -v wall="$2" '
    /^taskwire_sqlite_write_gate_held_seconds_total\{/ { match($0, /writer="[a-z]+"/); w = substr($0, RSTART + 8, RLENGTH - 9); held[w] = $2; total += $2 }
    /^taskwire_sqlite_write_gate_wait_seconds_total\{/ { match($0, /writer="[a-z]+"/); w = substr($0, RSTART + 8, RLENGTH - 9); wait[w] = $2 }
    /^taskwire_sqlite_write_gate_acquired_total\{/ { match($0, /writer="[a-z]+"/); w = substr($0, RSTART + 8, RLENGTH - 9); n[w] = $2 }
    END {
      if (total == 0) exit
      line = sprintf("write gate held %.0f %% of %.1f s:", 100 * total / wall, wall)
      for (w in held) line = line sprintf(" %s %.1f%% (%d, wait %.1f ms)", w, 100 * held[w] / wall, n[w], n[w] ? 1000 * wait[w] / n[w] : 0)
      print line
    }' "$1"
}

for scenario in "${scenarios[@]}"; do
  start_server
  json="$out/$stack-$scenario.json"
  cpu_snapshot before
  case "$scenario" in
    query-hot) lg query --connections 64 --duration 15 --distribution hot --working-set 1000 --out "$json" ;;
    query-uniform) lg query --connections 64 --duration 15 --distribution uniform --working-set 10000 --out "$json" ;;
    create) lg create --connections 64 --duration 15 --out "$json" ;;
    create-batch) lg create --connections 16 --duration 15 --batch 50 --out "$json" ;;
    dispatch) lg dispatch --workers 50 --capacity 4 --rate 500 --connections 32 --duration 20 --out "$json" ;;
    fanout) lg fanout --subscribers 1000 --events 100 --rate 20 --pid "$server_pid" --out "$json" ;;
    fanout-10k) lg fanout --subscribers 10000 --events 20 --rate 5 --pid "$server_pid" --out "$json" ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
  cpu_snapshot after
  cpu_report "$before" "$after" | tee "$out/$stack-$scenario.cpu"
  curl -fs "$url/metrics" >"$out/$stack-$scenario.metrics" 2>/dev/null || true
  gate_report "$out/$stack-$scenario.metrics" "$(awk -v b="${before##*wall=}" -v a="${after##*wall=}" 'BEGIN {print a - b}')"
  stop_server
done
