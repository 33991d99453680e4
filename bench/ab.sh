#!/usr/bin/env bash
# Interleaved A/B runs of bench/relay.py: two builds, run one after the other, N rounds.
#
#   bench/ab.sh REV_A REV_B [ROUNDS] [relay.py options...]
#   bench/ab.sh bad478d HEAD 2 --only rate --only latency --offered-rate 200 --seconds 15
#
# Runs on this VM vary a lot from one minute to the next (README, Benchmarks), so a change
# is judged on alternating runs of both builds rather than on one run each. Each revision
# is checked out in its own git worktree under ${TMPDIR:-/tmp} (removed afterwards); both
# use this checkout's .venv, each its own bench database (siphera_bench_ab_a and _b, made
# afresh in round 1 and kept for the later rounds, so builds may differ in migrations), and
# bench/results/relay-latest.json is left as it was. REV may be any git revision; use
# WORKTREE for the working tree with its uncommitted changes. A run that fails is reported
# with the end of its output and its server's log, the other runs go on, and ab.sh then
# exits 1; every run's whole output stays in ${TMPDIR:-/tmp}/siphera-ab-logs.*.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
if [[ ${1:-} == -h || ${1:-} == --help ]]; then usage; exit 0; fi
if [[ $# -lt 2 ]]; then usage >&2; exit 2; fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python="$root/.venv/bin/python"
[[ -x $python ]] || { echo "ab.sh: $python is missing; run 'make venv' first" >&2; exit 1; }
rev_a=$1 rev_b=$2
shift 2
rounds=2
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi

trees=()
cleanup() {
    for tree in "${trees[@]}"; do
        git -C "$root" worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
    done
}
trap cleanup EXIT
checkout() {  # sets REPLY to a directory holding revision $1
    if [[ $1 == WORKTREE ]]; then REPLY=$root; return; fi
    REPLY=$(mktemp -d "${TMPDIR:-/tmp}/siphera-ab.XXXXXX")
    trees+=("$REPLY")
    git -C "$root" worktree add --detach --force "$REPLY" "$1" >/dev/null 2>&1 \
        || { echo "ab.sh: no such revision: $1" >&2; exit 1; }
}
checkout "$rev_a"
dir_a=$REPLY
checkout "$rev_b"
dir_b=$REPLY
saved=$(mktemp)
logs=$(mktemp -d "${TMPDIR:-/tmp}/siphera-ab-logs.XXXXXX")
failed=0
cp "$root/bench/results/relay-latest.json" "$saved"
for round in $(seq 1 "$rounds"); do
    for pair in "A $rev_a $dir_a" "B $rev_b $dir_b"; do
        read -r label rev dir <<<"$pair"
        echo "== round $round, $label ($rev)"
        log="$logs/round$round-$label.log"
        # Each build its own database, made afresh in round 1 and kept after: builds with
        # different migrations cannot share one.
        keep=(--keep-db)
        [[ $round == 1 ]] && keep=()
        db="siphera_bench_ab_${label,,}"
        if (cd "$dir" && "$python" bench/relay.py --database "$db" "${keep[@]}" "$@" >"$log" 2>&1); then
            grep -v -e '^{' -e '^  idle sockets open' "$log" || true
        else
            echo "ab.sh: this run failed; its output, and the tail of its server's log:" >&2
            tail -n 15 "$log" >&2
            tail -n 15 "$dir/var/bench-server.log" >&2 2>/dev/null || true
            failed=1
        fi
    done
done
cp "$saved" "$root/bench/results/relay-latest.json"
rm -f "$saved"
echo "ab.sh: each run's whole output is in $logs"
exit "$failed"
