#!/bin/sh
# Instruction counts (callgrind "Ir") of the timed part of each workload,
# total and per unit of work. Usage: benches/callgrind/run.sh [workload ...]
# Build first: (cd benches/callgrind && cargo build --release --locked)
set -eu
here=$(dirname "$0")
bin=${BIN:-${CARGO_TARGET_DIR:-$here/target}/release/concord-callgrind}
out=${OUT:-$(mktemp -d)}
[ $# -gt 0 ] || set -- compare-1 compare-1b compare-2 compare-7 compare-5 compare-5-consolidated put-1 put-1-durable \
    put-10 put-10-durable apply-by-ref apply-owned restore validate-4096
for workload in "$@"; do
    units=$("$bin" "$workload" --units)
    file="$out/$workload.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$file" \
        --toggle-collect='concord_callgrind::timed*' "$bin" "$workload" >/dev/null 2>&1
    ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$file")
    echo "$workload Ir=$ir per_unit=$((ir / units)) units=$units"
done
