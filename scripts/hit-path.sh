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
# Trace: a lackey trace of a loop over the same 24 pages, generated here, replayed with
# --limit, so that both lengths decode the same blocks.
set -euo pipefail
cd "$(dirname "$0")/.."
scheme=${1:-native}
memvirt=${MEMVIRT_BIN:-target/release/memvirt}
[ -x "$memvirt" ] || cargo build --release --locked
command -v valgrind >/dev/null || { echo "hit-path: valgrind is not installed" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Instructions callgrind counts for `memvirt ARGS...`, and the accesses the report counts.
measure() {
    valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$memvirt" "$@" \
        --format json --output "$work/r.json" 2>"$work/log" >/dev/null
    local ir accesses
    ir=$(grep -E '^(summary|totals):' "$work/cg" | head -1 | awk '{print $2}')
    accesses=$(grep -m1 '"accesses"' "$work/r.json" | tr -dc '0-9')
    echo "$ir $accesses"
}

# `run` runs native too, as the overhead baseline, on the same accesses: two runs unless the
# scheme is native.
runs=2
[ "$scheme" = native ] && runs=1

per_hit() {
    local label=$1 short=$2 long=$3
    shift 3
    read -r ir1 acc1 < <(measure "$@" $short)
    read -r ir2 acc2 < <(measure "$@" $long)
    awk -v l="$label" -v i1="$ir1" -v i2="$ir2" -v a1="$acc1" -v a2="$acc2" -v n="$runs" 'BEGIN {
        printf "%-20s %9d accesses more, %12d instructions more: %.1f instructions per hit\n",
            l, a2 - a1, i2 - i1, (i2 - i1) / ((a2 - a1) * n) }'
}

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
per_hit "trace ($scheme)" "--limit 10000" "--limit 30000" \
    run --scheme "$scheme" --trace "$work/loop.mvt"
