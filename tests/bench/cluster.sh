#!/usr/bin/env bash
# Several `taskwire` release processes on the real stack of this machine, sharing one
# database, one Kafka topic prefix, one Redis key prefix and one JWT secret, as a
# production deployment of several instances does.
#
#   tests/bench/cluster.sh start N [KEY=VALUE…]  # N (1-4) fresh processes; prints their URLs
#   tests/bench/cluster.sh stop                  # SIGTERM every process, wait for it to exit
#   tests/bench/cluster.sh status                # pid, URL and /readyz of each process
#   tests/bench/cluster.sh restart I             # SIGTERM process I (1-based), start it again
#   tests/bench/cluster.sh kill I                # kill -9 process I
#   tests/bench/cluster.sh urls | pids           # comma-separated URLs / space-separated pids
#
# `start` empties the database (TASKWIRE_CLUSTER_DB, default taskwire_cluster), migrates it
# once with `taskwire migrate up`, then starts the processes with migrations off (so no two
# processes migrate at once) and waits until each answers /readyz and its dispatcher has
# joined the consumer group. Process I listens on 127.0.0.1:(TASKWIRE_CLUSTER_PORT + I - 1)
# (default 18301…). Every process runs TASKWIRE_ROLES=api,dispatcher with the rate limits
# off; KEY=VALUE arguments add to or override that environment (e.g. rate limits on for a
# drill). `restart` and `kill` are what the fault drills call back.
#
# The run directory (TASKWIRE_CLUSTER_DIR, default /tmp/taskwire-cluster) holds the shared
# environment (`env`), each process's pid (`pid.I`) and log (`server.I.log`, appended
# across restarts). Binaries: $TASKWIRE_BENCH_BIN if set, else this checkout's release build
# (built by `start`). Needs MariaDB on 127.0.0.1:3306, Redis on 6379 and tansu on 9092
# (see .ci/run).
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taskwire/target}"
bin="${TASKWIRE_BENCH_BIN:-$CARGO_TARGET_DIR/release}"
dir="${TASKWIRE_CLUSTER_DIR:-/tmp/taskwire-cluster}"
base_port="${TASKWIRE_CLUSTER_PORT:-18301}"
database="${TASKWIRE_CLUSTER_DB:-taskwire_cluster}"
secret="${TASKWIRE_CLUSTER_SECRET:-cluster-secret}"
max_processes=4
# Quarter-seconds to wait for a process to become ready (and joined).
ready_tries=240

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

count() { cat "$dir/count" 2>/dev/null || echo 0; }
port_of() { echo $((base_port + $1 - 1)); }
url_of() { echo "http://127.0.0.1:$(port_of "$1")"; }
pid_of() { cat "$dir/pid.$1" 2>/dev/null || true; }
alive() { local pid; pid=$(pid_of "$1"); [ -n "$pid" ] && running "$pid"; }

check_index() { # check_index I: I names a process of the running cluster
  local n; n=$(count)
  [[ "$1" =~ ^[1-9][0-9]*$ ]] && [ "$1" -le "$n" ] || { echo "cluster: no process $1 (cluster of $n)" >&2; exit 2; }
}

start_one() { # start_one I: starts process I from the shared env, records its pid
  local i=$1
  mkdir -p "$dir/data.$i"
  (
    set -a
    # shellcheck disable=SC1091
    . "$dir/env"
    TASKWIRE_LISTEN=127.0.0.1:$(port_of "$i")
    TASKWIRE_DATA_DIR="$dir/data.$i"
    TASKWIRE_MIGRATE=false
    set +a
    exec nohup "$bin/taskwire" >>"$dir/server.$i.log" 2>&1
  ) &
  echo $! >"$dir/pid.$i"
}

await_one() { # await_one I: waits until process I is ready and its dispatcher joined
  if ! wait_ready "$(url_of "$1")" "$ready_tries" joined "$(pid_of "$1")"; then
    echo "cluster: process $1 did not become ready; log: $dir/server.$1.log" >&2
    return 1
  fi
}

stop_one() { # stop_one I [SIGNAL]: signals process I and waits (10 s, then SIGKILL) for it to exit
  local i=$1 signal=${2:-TERM} pid
  pid=$(pid_of "$i")
  [ -n "$pid" ] || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then
    echo "cluster: process $i (pid $pid) still running 10 s after SIG$signal; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while running "$pid"; do sleep 0.1; done
  fi
  rm -f "$dir/pid.$i"
}

urls() {
  local i list=()
  for i in $(seq "$(count)"); do list+=("$(url_of "$i")"); done
  (IFS=,; echo "${list[*]}")
}

stop_all() {
  local i
  for i in $(seq "$(count)"); do stop_one "$i" & done
  wait
}

cmd=${1:-}
case "$cmd" in
  start)
    n=${2:-}
    [[ "$n" =~ ^[1-4]$ ]] || { echo "cluster: N must be 1 to $max_processes" >&2; usage; }
    shift 2
    for extra in "$@"; do
      [[ "$extra" =~ ^TASKWIRE_[A-Z0-9_]+= ]] || { echo "cluster: not a TASKWIRE_KEY=VALUE: $extra" >&2; exit 2; }
    done
    [ -n "${TASKWIRE_BENCH_BIN:-}" ] || cargo build --release --quiet -p taskwire-api --bin taskwire
    stop_all
    rm -rf "$dir" && mkdir -p "$dir"
    reset_database "$database"
    {
      echo "TASKWIRE_JWT_SECRET=$secret"
      echo "TASKWIRE_ROLES=api,dispatcher"
      echo "RUST_LOG=warn"
      echo "TASKWIRE_RATE_LIMIT_OPERATIONS=0"
      echo "TASKWIRE_RATE_LIMIT_MUTATIONS=0"
      echo "TASKWIRE_WS_MAX_CONNECTIONS=20000"
      # Every load generator connects from 127.0.0.1: the per-address cap would count them as one client.
      echo "TASKWIRE_MAX_CONNECTIONS_PER_IP=0"
      real_stack_env "$database" cluster
      # Later lines win when the file is sourced.
      printf '%s\n' "$@"
    } >"$dir/env"
    (set -a; . "$dir/env"; set +a; "$bin/taskwire" migrate up >"$dir/migrate.log" 2>&1) || {
      echo "cluster: migrating $database failed; log: $dir/migrate.log" >&2
      exit 1
    }
    echo "$n" >"$dir/count"
    for i in $(seq "$n"); do start_one "$i"; done
    for i in $(seq "$n"); do await_one "$i" || { stop_all; exit 1; }; done
    # A later member joining makes the group rebalance: wait until every member holds
    # its assignment again.
    for i in $(seq "$n"); do await_one "$i" || { stop_all; exit 1; }; done
    urls
    ;;
  stop)
    stop_all
    ;;
  status)
    n=$(count)
    [ "$n" -gt 0 ] || { echo "cluster: not started ($dir)"; exit 0; }
    for i in $(seq "$n"); do
      if alive "$i"; then
        ready=$(curl -s --max-time 3 "$(url_of "$i")/readyz" 2>/dev/null || echo '"no answer"')
        echo "$i pid $(pid_of "$i") $(url_of "$i") $ready"
      else
        echo "$i down $(url_of "$i")"
      fi
    done
    ;;
  restart)
    check_index "${2:-}"
    stop_one "$2" TERM
    start_one "$2"
    await_one "$2"
    ;;
  kill)
    check_index "${2:-}"
    alive "$2" || { echo "cluster: process $2 is not running" >&2; exit 1; }
    kill -KILL "$(pid_of "$2")"
    ;;
  urls)
    urls
    ;;
  pids)
    n=$(count)
    pids=()
    for i in $(seq "$n"); do
      if alive "$i"; then pids+=("$(pid_of "$i")"); fi
    done
    echo "${pids[*]}"
    ;;
  *) usage ;;
esac
