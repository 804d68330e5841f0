# Shell pieces shared by the bench scripts (run-benchmarks.sh, fault-drills.sh, cluster.sh).
# Sourced, not run: defines functions and nothing else.

# The real stack of this machine (see .ci/run): MariaDB on 3306, Redis on 6379, a
# Kafka-compatible broker (tansu) on 9092.
bench_mysql() { mysql --protocol=tcp -h127.0.0.1 -uroot "$@"; }

reset_database() { # reset_database NAME: an empty database NAME
  bench_mysql -e "DROP DATABASE IF EXISTS $1; CREATE DATABASE $1 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
}

# KEY=VALUE lines (for an env file) pointing a server at database NAME on the real stack,
# with Kafka topics and Redis keys under a fresh prefix TAG<random>, so that a run never
# reads another run's messages or cached tasks.
real_stack_env() { # real_stack_env DATABASE TAG
  echo "TASKWIRE_DATABASE_URL=mysql://root@127.0.0.1:3306/$1"
  echo "TASKWIRE_KAFKA_BROKERS=127.0.0.1:9092"
  echo "TASKWIRE_KAFKA_TOPIC_PREFIX=$2$RANDOM$RANDOM"
  echo "TASKWIRE_REDIS_URL=redis://127.0.0.1:6379"
  echo "TASKWIRE_REDIS_KEY_PREFIX=$2$RANDOM$RANDOM"
}

# Prints the directory of release binaries to run: TASKWIRE_BENCH_BIN when set (prebuilt
# binaries, to compare two builds on the same machine state), else this checkout's
# target directory after building the binaries named.
bench_binaries() { # bench_binaries BINARY...
  if [ -n "${TASKWIRE_BENCH_BIN:-}" ]; then
    echo "$TASKWIRE_BENCH_BIN"
    return
  fi
  local target=${CARGO_TARGET_DIR:-$HOME/.cache/taskwire/target} name bins=()
  for name in "$@"; do bins+=(--bin "$name"); done
  CARGO_TARGET_DIR=$target cargo build --release --quiet -p taskwire-api -p taskwire-tools "${bins[@]}" >&2
  echo "$target/release"
}

# KEY=VALUE lines for one bench server: listening on 127.0.0.1:PORT, tokens signed with
# SECRET, data in DIR, rate limits off (the load generators drive one subject hard on
# purpose), no per-address connection cap (every load connection comes from 127.0.0.1),
# and its database: a fresh MariaDB database `taskwire_bench` on the real stack (with
# real_stack_env), a SQLite file in DIR on the embedded one. TASKWIRE_BENCH_SERVER_THREADS
# sets the runtime's worker threads (tokio reads TOKIO_WORKER_THREADS; default one per core).
bench_server_env() { # bench_server_env embedded|real PORT SECRET DIR TAG
  echo "TASKWIRE_LISTEN=127.0.0.1:$2"
  echo "TASKWIRE_JWT_SECRET=$3"
  echo "RUST_LOG=warn"
  echo "TASKWIRE_RATE_LIMIT_OPERATIONS=0"
  echo "TASKWIRE_RATE_LIMIT_MUTATIONS=0"
  echo "TASKWIRE_DATA_DIR=$4"
  echo "TASKWIRE_MAX_CONNECTIONS_PER_IP=0"
  [ -z "${TASKWIRE_BENCH_SERVER_THREADS:-}" ] || echo "TOKIO_WORKER_THREADS=$TASKWIRE_BENCH_SERVER_THREADS"
  if [ "$1" = real ]; then
    reset_database taskwire_bench
    real_stack_env taskwire_bench "$5"
  else
    echo "TASKWIRE_DATABASE_URL=sqlite://$4/taskwire.db?mode=rwc"
  fi
}

# Waits until URL/readyz answers 200 (and, with `joined`, until the dispatcher has joined
# its consumer group: the group assigns its first member only after the broker's initial
# rebalance delay, and until then the matcher dispatches by polling the database).
# Gives up after TRIES quarter-seconds, or at once when PID (if given) has exited.
wait_ready() { # wait_ready URL TRIES [joined|any] [PID]
  local url=$1 tries=$2 want=${3:-any} pid=${4:-} body
  for _ in $(seq "$tries"); do
    if body=$(curl -fs "$url/readyz" 2>/dev/null); then
      [ "$want" != joined ] || grep -q '"state":"joined"' <<<"$body" && return 0
    fi
    if [ -n "$pid" ] && ! running "$pid"; then return 1; fi
    sleep 0.25
  done
  return 1
}

# CPU seconds (user + system) a process has used so far; 0 when it is not running.
cpu_of() {
  local pid=$1 ticks
  ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || { echo 0; return; }
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}

# Whether PID runs (a zombie, killed but not yet reaped by its parent, does not).
running() { # running PID
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

tansu_pid() { pgrep -f 'tansu broker' | head -1; }
