#!/usr/bin/env bash
# Compares two builds on this machine, alternating them so that drift in the machine's
# state (other load, caches, thermal limits) falls on both alike.
#
#   tests/bench/compare.sh A B [embedded|real] [scenario…]
#
# A and B are each a directory holding release `taskwire` and `loadgen` binaries, or a git
# revision, which is built once into $CARGO_TARGET_DIR/compare/<sha> (a worktree under
# /tmp, removed afterwards). The stack defaults to `real`, the scenarios to `create
# dispatch`. TASKWIRE_COMPARE_ROUNDS (default 2) rounds each run A then B, every scenario
# on a freshly started server (tests/bench/run-benchmarks.sh). Prints, per scenario and
# figure, the median over the rounds of A and of B and the ratio B/A: above 1 is more for
# throughput, worse for latency and CPU. Raw results in $CARGO_TARGET_DIR/compare/<stamp>/.
set -euo pipefail

cd "$(dirname "$0")/../.."
usage="usage: compare.sh A B [embedded|real] [scenario…] (A, B: a directory of binaries or a git revision)"
a=${1:?$usage}
b=${2:?$usage}
stack=${3:-real}
shift $(($# < 3 ? $# : 3))
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(create dispatch)
rounds=${TASKWIRE_COMPARE_ROUNDS:-2}
command -v jq >/dev/null || { echo "compare.sh needs jq" >&2; exit 2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taskwire/target}"
root="$CARGO_TARGET_DIR/compare"
out="$root/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

# The directory of binaries for A or B: as given, or built from a git revision.
binaries() { # binaries DIR|REVISION → prints a directory
  if [ -d "$1" ]; then
    [ -x "$1/taskwire" ] && [ -x "$1/loadgen" ] || { echo "$1 lacks taskwire or loadgen" >&2; exit 2; }
    (cd "$1" && pwd)
    return
  fi
  local sha dir tree
  sha=$(git rev-parse --verify "$1^{commit}") || { echo "neither a directory nor a revision: $1" >&2; exit 2; }
  dir="$root/$sha"
  if [ ! -x "$dir/taskwire" ] || [ ! -x "$dir/loadgen" ]; then
    tree=$(mktemp -d "/tmp/taskwire-compare-${sha:0:12}.XXXXXX")
    git worktree add --quiet --detach "$tree" "$sha"
    echo "building $1 (${sha:0:12}) in $tree" >&2
    (cd "$tree" && cargo build --release --quiet -p taskwire-api -p taskwire-tools --bin taskwire --bin loadgen)
    mkdir -p "$dir"
    cp "$CARGO_TARGET_DIR/release/taskwire" "$CARGO_TARGET_DIR/release/loadgen" "$dir/"
    git worktree remove --force "$tree"
  fi
  echo "$dir"
}

dir_a=$(binaries "$a")
dir_b=$(binaries "$b")
echo "A = $a ($dir_a)"
echo "B = $b ($dir_b)"
echo "$stack: ${scenarios[*]}; $rounds rounds, A then B in each"

for round in $(seq "$rounds"); do
  for side in a b; do
    dir_var="dir_$side"
    echo "round $round, $side" >&2
    TASKWIRE_BENCH_BIN="${!dir_var}" TASKWIRE_BENCH_OUT="$out/$side-$round" \
      tests/bench/run-benchmarks.sh "$stack" "${scenarios[@]}" >"$out/$side-$round.txt"
  done
done

# The figures of one result: "name value" lines.
figures() { # figures SCENARIO JSON CPU_FILE
  case "$1" in
    dispatch)
      jq -r '"created→assigned p99 ms \(.latency_ms.created_to_assigned.p99)",
             "created→succeeded p99 ms \(.latency_ms.created_to_succeeded.p99)",
             "tasks created \(.tasks.created)"' "$2" ;;
    fanout|fanout-10k)
      jq -r '"ack→received p99 ms \(.latency_ms.ack_to_received.p99)"' "$2" ;;
    *)
      jq -r '"requests/s \(.requests_per_second)", "items/s \(.items_per_second)", "p99 ms \(.latency_ms.p99)"' "$2" ;;
  esac
  # Server CPU seconds over the scenario, and per created item where that is known.
  awk '{ for (i = 1; i < NF; i++) if ($i == "server") print "server CPU s " $(i + 1) }' "$3"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "null"; else printf "%.6g\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf '\n%-12s %-28s %12s %12s %8s\n' scenario figure A B "B/A"
for scenario in "${scenarios[@]}"; do
  for side in a b; do
    for round in $(seq "$rounds"); do
      figures "$scenario" "$out/$side-$round/$stack-$scenario.json" "$out/$side-$round/$stack-$scenario.cpu" \
        | sed "s/^/$side /"
    done
  done >"$out/$scenario.figures"
  for name in $(sed 's/^[ab] //; s/ [^ ]*$//; s/ /_/g' "$out/$scenario.figures" | sort -u); do
    label=${name//_/ }
    va=$(grep "^a $label " "$out/$scenario.figures" | awk '{ print $NF }' | grep -v null | median)
    vb=$(grep "^b $label " "$out/$scenario.figures" | awk '{ print $NF }' | grep -v null | median)
    ratio=$(awk -v a="$va" -v b="$vb" 'BEGIN { if (a == "null" || b == "null" || a == 0) print "-"; else printf "%.2f", b / a }')
    printf '%-12s %-28s %12s %12s %8s\n' "$scenario" "$label" "$va" "$vb" "$ratio"
  done
done | tee "$out/summary.txt"
echo "raw results: $out"
