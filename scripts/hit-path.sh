#!/usr/bin/env bash
# Host instructions per simulated L1-TLB hit, counted by callgrind (BENCHMARKS.md, "The hit
# path"): the same run at two lengths whose extra accesses are all L1-TLB hits, and the
# difference in instructions over the difference in accesses. Start-up, page faults and the
# cold misses are the same in both runs and cancel, so what is left is one access's whole path:
# the workload's step, the guest kernel's bookkeeping, the lookup and the statistics.
#
#   scripts/hit-path.sh [SCHEME]      (default native; needs valgrind)
#
# MEMVIRT_BIN names another memvirt binary to measure (default target/release/memvirt, built if
# missing).
#
# Built-in workload: `stream` over 8 pages per array (24 pages, within the 64-entry L1 TLB).
# Traces: lackey traces generated here, replayed with --limit, so that both lengths decode the
# same blocks: a loop over the same 24 pages, and one over 12 data pages and 12 stack pages at
# x86-64's 0x7ffc... that relocation moves on the default profile's (Sv39) user half. A trace's
# figure is split: the replay (what `run::run` executes, per hit) and its preparation (the
# window's records checked and packed for replay before any run, once per trace for every
# scheme that replays it, per record).
set -euo pipefail
cd "$(dirname "$0")/.."
scheme=${1:-native}
memvirt=${MEMVIRT_BIN:-target/release/memvirt}
[ -x "$memvirt" ] || cargo build --release --locked
command -v valgrind >/dev/null || { echo "hit-path: valgrind is not installed" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Instructions callgrind counts for `memvirt ARGS...`, those within `run::run` (the runs, not the
# preparation before them), and the accesses the report counts.
measure() {
    valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$memvirt" "$@" \
        --format json --output "$work/r.json" 2>"$work/log" >/dev/null
    local ir run accesses
    ir=$(grep -E '^(summary|totals):' "$work/cg" | head -1 | awk '{print $2}')
    run=$(callgrind_annotate --inclusive=yes --threshold=100 "$work/cg" 2>/dev/null |
        grep -E ':memvirt::run::run \[' | head -1 | awk '{print $1}' | tr -d ,)
    accesses=$(grep -m1 '"accesses"' "$work/r.json" | tr -dc '0-9')
    echo "$ir ${run:-0} $accesses"
}

# `run` runs native too, as the overhead baseline, on the same accesses: two runs unless the
# scheme is native.
runs=2
[ "$scheme" = native ] && runs=1

per_hit() {
    local label=$1 short=$2 long=$3
    shift 3
    read -r ir1 run1 acc1 < <(measure "$@" $short)
    read -r ir2 run2 acc2 < <(measure "$@" $long)
    awk -v l="$label" -v i1="$ir1" -v i2="$ir2" -v r1="$run1" -v r2="$run2" -v a1="$acc1" \
        -v a2="$acc2" -v n="$runs" -v trace="$trace" 'BEGIN {
        acc = a2 - a1
        if (!trace) {
            printf "%-28s %9d accesses more, %12d instructions more: %.1f instructions per hit\n",
                l, acc, i2 - i1, (i2 - i1) / (acc * n)
            exit
        }
        printf "%-28s %9d accesses more: replay %.1f instructions per hit; preparation %.1f per record, once; together %.1f\n",
            l, acc, (r2 - r1) / (acc * n), ((i2 - i1) - (r2 - r1)) / acc, (i2 - i1) / (acc * n) }'
}

trace=0
per_hit "stream ($scheme)" "--set workload.passes=200" "--set workload.passes=400" \
    run --scheme "$scheme" --workload stream --set workload.pages=8

# A loop over 24 pages, 64 bytes apart, alternating loads and stores, one instruction between.
{
    for round in $(seq 1 200); do
        for page in $(seq 0 23); do
            for line in 0 1 2 3; do
                printf ' L %x,8\n' $((0x10000000 + page * 4096 + line * 64))
                printf ' S %x,8\n' $((0x10000000 + page * 4096 + line * 64 + 8))
            done
        done
    done
} >"$work/loop.lackey"
"$memvirt" trace convert "$work/loop.lackey" "$work/loop.mvt" >/dev/null
trace=1
per_hit "trace ($scheme)" "--limit 10000" "--limit 30000" \
    run --scheme "$scheme" --trace "$work/loop.mvt"

# The same over 12 data pages and 12 stack pages, the stack's addresses relocated on Sv39.
{
    for round in $(seq 1 200); do
        for page in $(seq 0 11); do
            for line in 0 1 2 3; do
                for base in $((0x10000000)) $((0x7ffcdead0000)); do
                    printf ' L %x,8\n' $((base + page * 4096 + line * 64))
                    printf ' S %x,8\n' $((base + page * 4096 + line * 64 + 8))
                done
            done
        done
    done
} >"$work/stack.lackey"
"$memvirt" trace convert "$work/stack.lackey" "$work/stack.mvt" >/dev/null
per_hit "trace, relocated ($scheme)" "--limit 10000" "--limit 30000" \
    run --scheme "$scheme" --trace "$work/stack.mvt"
