#!/bin/sh
# Seeds the fuzzers' corpora from the golden vectors and the refused inputs,
# so fuzzing starts from valid frames and snapshots. Run from anywhere.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
core="$here/../sync-core/tests"
mkdir -p "$here/corpus/decode_frame" "$here/corpus/decode_snapshot"
for hex in "$core"/vectors/*.hex; do
    name=$(basename "$hex" .hex)
    case "$name" in
        snapshot) target=decode_snapshot ;;
        *) target=decode_frame ;;
    esac
    grep -v '^#' "$hex" | xxd -r -p > "$here/corpus/$target/vector-$name"
done
for bin in "$core"/fuzz-crashers/*.bin; do
    name=$(basename "$bin" .bin)
    case "$name" in
        snapshot-*) target=decode_snapshot ;;
        *) target=decode_frame ;;
    esac
    cp "$bin" "$here/corpus/$target/crasher-$name"
done
echo "seeded $(ls "$here/corpus/decode_frame" | wc -l) frames, $(ls "$here/corpus/decode_snapshot" | wc -l) snapshots"
