#!/usr/bin/env bash
# Fault drills of docs/BENCHMARKS.md: each runs load against a fresh release server, injects
# one failure, and prints a one-line verdict (PASS/FAIL) from the `drill` tool.
#
#   tests/bench/fault-drills.sh embedded|real [drill…]
#
# Drills: kill9 frozen-worker (both stacks); brokers redis mariadb (real stack only; they
# stop the machine's own tansu, Redis or MariaDB and bring it back, so never run them while
# CI or anything else uses those services); kill9-cluster rolling-restart (real stack only:
# three instances started by tests/bench/cluster.sh, with workers and taskUpdated watchers
# spread over them, which must fail over to another instance and resume without a gap or
# a duplicate in any task's seq). Default: every drill of the stack.
# Results: verdict lines on stdout, JSON in $CARGO_TARGET_DIR/bench/drill-<stack>-<drill>.json.
# With TASKWIRE_BENCH_AUTO_ACCEPT=1 the drills' workers register with `autoAccept` (offers
# arrive started; the guarantees checked are the same).
# Exit status: 0 when every drill passed.
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
here="$(pwd)/tests/bench/fault-drills.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taskwire/target}"
# TASKWIRE_BENCH_BIN: a directory holding prebuilt `taskwire` and `drill` binaries, used
# instead of building this checkout.
prebuilt=${TASKWIRE_BENCH_BIN:-}
bin="${prebuilt:-$CARGO_TARGET_DIR/release}"
port=18200
url="http://127.0.0.1:$port"
secret=drill-secret
state=/tmp/taskwire-drill

# --- server control (also called back by the drill's fault/restore commands) -------------

start_server() { # reads $state/env; records the pid in $state/pid; waits for /readyz
  # shellcheck disable=SC1091
  (set -a; . "$state/env"; set +a; exec nohup "$bin/taskwire" >>"$state/server.log" 2>&1) &
  echo $! >"$state/pid"
  wait_ready "$url" 240 && return 0
  echo "server did not become ready; log: $state/server.log" >&2
  return 1
}

stop_server() {
  [ -f "$state/pid" ] || return 0
  kill "$(cat "$state/pid")" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$(cat "$state/pid")" 2>/dev/null || break; sleep 0.1; done
  rm -f "$state/pid"
}

# The cluster drills' instances: their own run directory, database and ports, so that a
# benchmark cluster elsewhere on the machine is left alone.
export TASKWIRE_CLUSTER_DIR=/tmp/taskwire-drill-cluster TASKWIRE_CLUSTER_DB=taskwire_drill_cluster \
  TASKWIRE_CLUSTER_PORT=18211 TASKWIRE_CLUSTER_SECRET=$secret TASKWIRE_BENCH_BIN=$bin
cluster="$(pwd)/tests/bench/cluster.sh"

case "${1:-}" in
  __start) start_server; exit ;;
  __kill9) kill -9 "$(cat "$state/pid")"; exit ;;
  __rolling) # SIGTERM each instance in turn, start it again and wait until it is ready
    for i in 1 2 3; do "$cluster" restart "$i"; done
    exit ;;
esac

stack=${1:?usage: fault-drills.sh embedded|real [drill…]}
shift
drills=("$@")
if [ ${#drills[@]} -eq 0 ]; then
  if [ "$stack" = real ]; then drills=(kill9 frozen-worker brokers redis mariadb kill9-cluster rolling-restart); else drills=(kill9 frozen-worker); fi
fi

[ -n "$prebuilt" ] || cargo build --release --quiet -p taskwire-api -p taskwire-tools --bin taskwire --bin drill
out="$CARGO_TARGET_DIR/bench"
mkdir -p "$out"

# Limits on, but high: the drill drives few subjects hard, and the limiter's Redis path
# (and its fallback) should be part of every drill.
limits=(TASKWIRE_RATE_LIMIT_OPERATIONS=100000 TASKWIRE_RATE_LIMIT_MUTATIONS=100000)

fresh_server() { # a new data dir / schema / topic prefix for every drill
  stop_server
  rm -rf "$state" && mkdir -p "$state"
  {
    echo "TASKWIRE_LISTEN=127.0.0.1:$port"
    echo "TASKWIRE_JWT_SECRET=$secret"
    echo "RUST_LOG=warn"
    echo "TASKWIRE_DATA_DIR=$state"
    printf '%s\n' "${limits[@]}"
  } >"$state/env"
  if [ "$stack" = real ]; then
    reset_database taskwire_drill
    real_stack_env taskwire_drill drill >>"$state/env"
  else
    echo "TASKWIRE_DATABASE_URL=sqlite://$state/taskwire.db?mode=rwc" >>"$state/env"
  fi
  start_server
}
stop_all() { stop_server; "$cluster" stop; }
trap stop_all EXIT

redis_start='mkdir -p /var/lib/redis /var/log/redis; redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'
mariadb_start='start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql;
  for i in $(seq 120); do mysqladmin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1'

failed=0
cluster_drill() { [ "$1" = kill9-cluster ] || [ "$1" = rolling-restart ]; }

for name in "${drills[@]}"; do
  if cluster_drill "$name"; then
    [ "$stack" = real ] || { echo "drill $name: real stack only" >&2; exit 2; }
    stop_server
    urls=$("$cluster" start 3 "${limits[@]}")
  else
    urls=$url
    fresh_server
  fi
  args=(--url "$urls" --secret "$secret" --out "$out/drill-$stack-$name.json")
  if [ "${TASKWIRE_BENCH_AUTO_ACCEPT:-0}" = 1 ]; then args+=(--auto-accept); fi
  # Under the cluster drills: 12 workers (4 per instance) and 6 watchers following every
  # 5th acknowledged task with taskUpdated.
  cluster_load=(--rate 200 --workers 12 --work-ms 50 --lease-seconds 10 --settle 120 --watchers 6 --watch-every 5
    --expect-failover)
  case "$name" in
    kill9) # kill -9 the server 10 s into create + dispatch load, restart it 3 s later
      args+=(--duration 30 --rate 200 --workers 10 --work-ms 50 --lease-seconds 10 --settle 120
        --fault-at 10 --fault-for 3 --fault-cmd "$here __kill9" --restore-cmd "$here __start") ;;
    frozen-worker) # every 100th task freezes its worker for 12 s, past its 5 s lease
      args+=(--duration 30 --rate 50 --workers 10 --work-ms 20 --lease-seconds 5 --stall-every 100
        --stall-for 12 --settle 120) ;;
    brokers) # the Kafka broker frozen (SIGSTOP) for 30 s: to clients it is down
      [ "$stack" = real ] || { echo "drill brokers: real stack only" >&2; exit 2; }
      pid=$(tansu_pid)
      args+=(--duration 50 --rate 100 --workers 10 --lease-seconds 10 --settle 180 --strict
        --fault-at 10 --fault-for 30 --fault-cmd "kill -STOP $pid" --restore-cmd "kill -CONT $pid") ;;
    redis) # Redis shut down for 30 s under read load: clients must not notice
      [ "$stack" = real ] || { echo "drill redis: real stack only" >&2; exit 2; }
      args+=(--duration 50 --rate 100 --workers 10 --readers 32 --settle 120 --strict
        --fault-at 10 --fault-for 30 --fault-cmd "redis-cli -h 127.0.0.1 -p 6379 shutdown nosave"
        --restore-cmd "$redis_start") ;;
    mariadb) # MariaDB shut down and started again under load
      [ "$stack" = real ] || { echo "drill mariadb: real stack only" >&2; exit 2; }
      args+=(--duration 40 --rate 100 --workers 10 --lease-seconds 10 --readers 8 --settle 180
        --fault-at 10 --fault-for 5 --fault-cmd "mysqladmin --protocol=tcp -h127.0.0.1 -uroot shutdown"
        --restore-cmd "$mariadb_start") ;;
    kill9-cluster) # kill -9 instance 2 of 3 10 s into the load, start it again 5 s later
      args+=(--duration 30 "${cluster_load[@]}"
        --fault-at 10 --fault-for 5 --fault-cmd "$cluster kill 2" --restore-cmd "$cluster restart 2") ;;
    rolling-restart) # from 10 s on, restart instances 1, 2, 3 one after another (SIGTERM, start, ready)
      args+=(--duration 45 "${cluster_load[@]}" --fault-at 10 --fault-cmd "$here __rolling") ;;
    *) echo "unknown drill $name" >&2; exit 2 ;;
  esac
  "$bin/drill" "$name-$stack" "${args[@]}" || failed=1
  if cluster_drill "$name"; then
    for i in 1 2 3; do
      if ! curl -fs "$(cut -d, -f"$i" <<<"$urls")/readyz" >/dev/null 2>&1; then
        echo "drill $name-$stack: instance $i is not ready after the drill; log: $TASKWIRE_CLUSTER_DIR/server.$i.log" >&2
        failed=1
      fi
    done
    "$cluster" stop
  else
    if ! curl -fs "$url/readyz" >/dev/null 2>&1; then
      echo "drill $name-$stack: the server is not ready after the drill; log: $state/server.log" >&2
      failed=1
    fi
    stop_server
  fi
done
exit $failed
