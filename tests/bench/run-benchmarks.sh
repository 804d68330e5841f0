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
# $CARGO_TARGET_DIR/bench/<stack>-<scenario>.json (or $TASKWIRE_BENCH_OUT/…). `dispatch`
# creates TASKWIRE_BENCH_RATE tasks/s (default 500). With TASKWIRE_BENCH_AUTO_ACCEPT=1 its
# workers (here and in `cluster`) register with `autoAccept`: offers arrive started and no
# `acceptTask` is sent.
#
#   tests/bench/run-benchmarks.sh cluster [N…]
#
# Several instances (tests/bench/cluster.sh) on the real stack, for each N given (1 to 4,
# default 1 2 3): N fresh processes share one database, Kafka topic prefix and Redis key
# prefix; the `dispatch` scenario feeds one queue at TASKWIRE_BENCH_RATE tasks/s in total
# (default 500) for TASKWIRE_BENCH_SECONDS (default 20), its creates, workers and observers
# spread round-robin over the N processes. The load is the same for every N: the same rate,
# 50 workers, and TASKWIRE_BENCH_OBSERVERS (default 3) queue-wide subscriptions, so that
# what grows with N is the cost of the processes, not the number of subscribers. One line per N: created → assigned and
# created → succeeded p99, CPU milliseconds per created task of the servers (summed),
# mariadbd and tansu (from /proc/<pid>/stat), InnoDB deadlocks (`Innodb_deadlocks`, a
# server-wide counter: anything else using this MariaDB adds to it) and lock-conflict
# retries (`taskwire_db_lock_conflicts_total` summed over processes, when the build has
# it) per 10,000 tasks, write transactions per task by writer
# (`taskwire_db_writes_total`), and the statements MariaDB executed per task by kind
# (`Com_*`, `Questions`: server-wide, like the deadlocks). JSON in <out>/cluster-<N>-dispatch.json, the line in
# <out>/cluster-<N>.txt, each process's /metrics in <out>/cluster-<N>-<I>.metrics.
#
#   tests/bench/run-benchmarks.sh cluster-idle [N…]
#
# What N idle instances cost with no load at all (no workers, no subscribers, no tasks):
# after 5 s of settling, the CPU of the servers (summed), mariadbd and tansu, and the
# statements MariaDB executed, over TASKWIRE_BENCH_SECONDS (default 20), per second. That
# is the fixed price of each instance, paid however little load it carries. One line per N
# on stdout and in <out>/cluster-idle-<N>.txt.
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
stack=${1:?usage: run-benchmarks.sh embedded|real [scenario…] | cluster [N…] | cluster-idle [N…]}
shift
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
  if [ "$stack" = cluster ] || [ "$stack" = cluster-idle ]; then
    scenarios=(1 2 3)
  else
    scenarios=(query-hot query-uniform create create-batch dispatch fanout)
  fi
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taskwire/target}"
# TASKWIRE_BENCH_BIN: a directory holding prebuilt `taskwire` and `loadgen` binaries.
bin=$(bench_binaries taskwire loadgen)
out="${TASKWIRE_BENCH_OUT:-$CARGO_TARGET_DIR/bench}"
mkdir -p "$out"
port=18100
url="http://127.0.0.1:$port"
secret=bench-secret
# The dispatch workers' protocol: accept each offer (default), or take offers as they come.
auto_accept=()
if [ "${TASKWIRE_BENCH_AUTO_ACCEPT:-0}" = 1 ]; then auto_accept=(--auto-accept); fi

# --- several instances -------------------------------------------------------------------

# Sum over the cluster's processes of every `taskwire_db_lock_conflicts_total` series, read
# from their /metrics saved as FILES; `-` when no process exposes the counter.
lock_conflicts() { # lock_conflicts FILES…
  awk '/^taskwire_db_lock_conflicts_total[{ ]/ { seen = 1; sum += $NF } END { print seen ? sum : "-" }' "$@"
}

# Write transactions per created task, by writer, summed over the cluster's processes:
# `taskwire_db_writes_total` in the /metrics saved as AFTER and BEFORE files (one pair per
# process), divided by TASKS (at least 1); `-` when the build does not count them. The
# writers the server has today come in a fixed order, any other after them.
writes_per_task() { # writes_per_task TASKS FILE_AFTER FILE_BEFORE…
  local tasks=$1; shift
  awk -v tasks="$tasks" '
    BEGIN { if (tasks < 1) tasks = 1 }
    /^taskwire_db_writes_total[{]/ {
      match($0, /writer="[a-z]+"/); w = substr($0, RSTART + 8, RLENGTH - 9)
      seen = 1; sum[w] += (FILENAME ~ /before$/ ? -$NF : $NF)
    }
    END {
      if (!seen) { print "-"; exit }
      n = split("create transition together offer relay sweep worker admin", order, " ")
      for (i = 1; i <= n; i++) known[order[i]] = 1
      for (w in sum) if (!(w in known)) order[++n] = w
      for (i = 1; i <= n; i++) { total += sum[order[i]]; out = out sprintf("%s %.2f, ", order[i], sum[order[i]] / tasks) }
      printf "%stotal %.2f\n", out, total / tasks
    }' "$@"
}

# CPU seconds so far of the PIDS summed (the cluster's servers), of mariadbd and of tansu,
# as `servers mariadbd tansu`.
cluster_cpu() { # cluster_cpu PID…
  local total=0 pid
  for pid in "$@"; do total=$(awk -v a="$total" -v b="$(cpu_of "$pid")" 'BEGIN { print a + b }'); done
  echo "$total $(cpu_of "$(pgrep -o -x mariadbd || echo 0)") $(cpu_of "$(tansu_pid || echo 0)")"
}

innodb_deadlocks() { bench_mysql -N -e "SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'" | awk '{ print $2 }'; }

# MariaDB's statement counters, as `name value` lines: what the database executed, by kind
# (prepared executions count under their kind too), and in all (`Questions`).
statement_counters() {
  bench_mysql -N -e "SHOW GLOBAL STATUS WHERE Variable_name IN
    ('Com_select', 'Com_insert', 'Com_update', 'Com_delete', 'Com_delete_multi', 'Com_commit', 'Questions')"
}

# Statements per created task, by kind, from the counters saved in BEFORE and AFTER.
statements_per_task() { # statements_per_task TASKS BEFORE AFTER
  awk -v tasks="$1" '
    BEGIN { if (tasks < 1) tasks = 1 }
    FNR == NR { before[$1] = $2; next }
    { diff[$1] = $2 - before[$1] }
    END {
      printf "select %.2f, insert %.2f, update %.2f, delete %.2f, commit %.2f, all %.2f\n",
        diff["Com_select"] / tasks, diff["Com_insert"] / tasks, diff["Com_update"] / tasks,
        (diff["Com_delete"] + diff["Com_delete_multi"]) / tasks, diff["Com_commit"] / tasks, diff["Questions"] / tasks
    }' "$2" "$3"
}

cluster_bench() { # cluster_bench N…
  local rate=${TASKWIRE_BENCH_RATE:-500} seconds=${TASKWIRE_BENCH_SECONDS:-20} observers=${TASKWIRE_BENCH_OBSERVERS:-3}
  local n i pid urls pids json line metrics_before metrics_after
  local servers_before servers_after mariadb_before mariadb_after tansu_before tansu_after
  local deadlocks_before deadlocks_after conflicts_before conflicts_after writes statements
  export TASKWIRE_BENCH_BIN="$bin" TASKWIRE_CLUSTER_SECRET="$secret"
  trap 'tests/bench/cluster.sh stop' EXIT
  for n in "$@"; do
    [[ "$n" =~ ^[1-4]$ ]] || { echo "cluster size must be 1 to 4: $n" >&2; exit 2; }
    tests/bench/cluster.sh start "$n" >/dev/null
    urls=$(tests/bench/cluster.sh urls)
    read -ra pids <<<"$(tests/bench/cluster.sh pids)"
    snapshot() { # snapshot SUFFIX: CPU of the servers, mariadbd and tansu; counters; /metrics
      local cpu
      read -ra cpu <<<"$(cluster_cpu "${pids[@]}")"
      printf -v "servers_$1" '%s' "${cpu[0]}"
      printf -v "mariadb_$1" '%s' "${cpu[1]}"
      printf -v "tansu_$1" '%s' "${cpu[2]}"
      printf -v "deadlocks_$1" '%s' "$(innodb_deadlocks)"
      statement_counters >"$out/cluster-$n.statements.$1"
      local files=()
      for i in $(seq "$n"); do
        curl -fs "$(tests/bench/cluster.sh urls | cut -d, -f"$i")/metrics" >"$out/cluster-$n-$i.metrics.$1" || true
        files+=("$out/cluster-$n-$i.metrics.$1")
      done
      printf -v "conflicts_$1" '%s' "$(lock_conflicts "${files[@]}")"
    }
    snapshot before
    json="$out/cluster-$n-dispatch.json"
    "$bin/loadgen" dispatch --url "$urls" --secret "$secret" --workers 50 --capacity 4 "${auto_accept[@]}" --rate "$rate" \
      --observers "$observers" --connections 32 --duration "$seconds" --out "$json" >"$out/cluster-$n-loadgen.txt"
    snapshot after
    writes=$(writes_per_task "$(jq .tasks.created "$json")" "$out"/cluster-"$n"-*.metrics.after "$out"/cluster-"$n"-*.metrics.before)
    statements=$(statements_per_task "$(jq .tasks.created "$json")" "$out/cluster-$n.statements.before" "$out/cluster-$n.statements.after")
    rm -f "$out/cluster-$n.statements.before" "$out/cluster-$n.statements.after"
    for i in $(seq "$n"); do mv "$out/cluster-$n-$i.metrics.after" "$out/cluster-$n-$i.metrics"; done
    rm -f "$out"/cluster-"$n"-*.metrics.before
    line=$(jq -r --argjson n "$n" --arg rate "$rate" --arg seconds "$seconds" \
      --argjson servers "$(awk -v a="$servers_after" -v b="$servers_before" 'BEGIN { print a - b }')" \
      --argjson mariadb "$(awk -v a="$mariadb_after" -v b="$mariadb_before" 'BEGIN { print a - b }')" \
      --argjson tansu "$(awk -v a="$tansu_after" -v b="$tansu_before" 'BEGIN { print a - b }')" \
      --argjson deadlocks "$((deadlocks_after - deadlocks_before))" \
      --arg writes "$writes" --arg statements "$statements" \
      --arg conflicts "$([ "$conflicts_after" = - ] && echo - || awk -v a="$conflicts_after" -v b="${conflicts_before/-/0}" 'BEGIN { print a - b }')" \
      '.tasks.created as $t | ($t | if . > 0 then . else 1 end) as $d
       | def ms: if . == null then "-" else (. * 10 | round / 10 | tostring) end;
       def ms2: (. * 100 | round / 100 | tostring);
       "cluster N=\($n)\(if .workers.auto_accept then " auto-accept" else "" end) rate \($rate)/s for \($seconds) s: created \($t), succeeded \(.tasks.succeeded), not finished \(.tasks.not_finished), worker duplicates \(.workers.duplicates); "
       + "p99 created→assigned \(.latency_ms.created_to_assigned.p99 | ms) ms, created→succeeded \(.latency_ms.created_to_succeeded.p99 | ms) ms; "
       + "CPU ms/task: servers \($servers * 1000 / $d | ms2), mariadbd \($mariadb * 1000 / $d | ms2), tansu \($tansu * 1000 / $d | ms2); "
       + "per 10k tasks: InnoDB deadlocks \($deadlocks * 10000 / $d | ms), lock-conflict retries "
       + (if $conflicts == "-" then "- (no taskwire_db_lock_conflicts_total)" else ($conflicts | tonumber) * 10000 / $d | ms end)
       + "; write transactions per task: \($writes); statements per task: \($statements); errors \(.errors | tostring)"' "$json")
    echo "$line" | tee "$out/cluster-$n.txt"
    tests/bench/cluster.sh stop
  done
}

cluster_idle() { # cluster_idle N…
  local seconds=${TASKWIRE_BENCH_SECONDS:-20} n
  export TASKWIRE_BENCH_BIN="$bin" TASKWIRE_CLUSTER_SECRET="$secret"
  trap 'tests/bench/cluster.sh stop' EXIT
  for n in "$@"; do
    [[ "$n" =~ ^[1-4]$ ]] || { echo "cluster size must be 1 to 4: $n" >&2; exit 2; }
    tests/bench/cluster.sh start "$n" >/dev/null
    read -ra pids <<<"$(tests/bench/cluster.sh pids)"
    sleep 5
    sample() { # sample: servers mariadbd tansu questions seconds, CPU in seconds
      local questions
      questions=$(statement_counters | awk '$1 == "Questions" { print $2 }')
      [ -n "$questions" ] || { echo "cluster-idle: cannot read MariaDB's Questions" >&2; exit 1; }
      echo "$(cluster_cpu "${pids[@]}") $questions $(date +%s.%N)"
    }
    local before after
    before=$(sample)
    sleep "$seconds"
    after=$(sample)
    awk -v n="$n" -v before="$before" -v after="$after" 'BEGIN {
      split(before, b, " "); split(after, a, " "); s = a[5] - b[5]
      printf "cluster-idle N=%d for %.1f s: CPU ms per second: servers %.1f, mariadbd %.1f, tansu %.1f; statements per second %.1f\n",
        n, s, (a[1] - b[1]) * 1000 / s, (a[2] - b[2]) * 1000 / s, (a[3] - b[3]) * 1000 / s, (a[4] - b[4]) / s
    }' | tee "$out/cluster-idle-$n.txt"
    tests/bench/cluster.sh stop
  done
}

if [ "$stack" = cluster ]; then
  cluster_bench "${scenarios[@]}"
  exit
fi
if [ "$stack" = cluster-idle ]; then
  cluster_idle "${scenarios[@]}"
  exit
fi

start_server() {
  local data
  data=$(mktemp -d /tmp/taskwire-bench.XXXXXX)
  local env
  mapfile -t env < <(bench_server_env "$stack" "$port" "$secret" "$data" bench)
  # The load generator's fan-out scenarios open thousands of WebSockets.
  env+=(TASKWIRE_WS_MAX_CONNECTIONS=20000)
  env "${env[@]}" "$bin/taskwire" >"$data/server.log" 2>&1 &
  server_pid=$!
  # Ready, and the dispatcher has joined its consumer group: a fresh group assigns its
  # first member only after the broker's initial rebalance delay (3 s), and until then
  # the matcher dispatches by polling the database. The figures are for steady state;
  # docs/BENCHMARKS.md measures that start-up window on its own.
  wait_ready "$url" 240 joined "$server_pid" && return 0
  echo "server did not become ready; log: $data/server.log" >&2
  return 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

lg() { "$bin/loadgen" "$@" --url "$url" --secret "$secret"; }

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
    dispatch) lg dispatch --workers 50 --capacity 4 "${auto_accept[@]}" --rate "${TASKWIRE_BENCH_RATE:-500}" --connections 32 --duration 20 --out "$json" ;;
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
