#!/usr/bin/env bash
# Run every fuzz target (or the ones named) for SECONDS each, one after another on
# one core, and append a line per target to fuzz/RESULTS.md: seconds, executions,
# executions per second, corpus size, crashes. Never part of the test command.
#
#   fuzz/run.sh [SECONDS_PER_TARGET=600] [TARGET...]
#
# Needs the nightly toolchain (AddressSanitizer) and cargo-fuzz (installed from
# crates.io if missing). The corpus grows in fuzz/corpus/<target> (git-ignored),
# seeded from fuzz/seeds/<target>; a crash stops that target and leaves its input
# in fuzz/artifacts/<target>/: fix the bug, then copy the input into
# fuzz/regressions/<target>/ so `cargo test` replays it forever.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-600}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^gauntlet')
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz
fi

# Optimised, with debug assertions (overflow checks) and AddressSanitizer; every
# target at once (`cargo fuzz run` below would rebuild nothing).
cargo +nightly fuzz build -O --debug-assertions
mkdir -p fuzz/logs
results=fuzz/RESULTS.md
if [ ! -f "$results" ]; then
    {
        echo "# Fuzzing runs"
        echo
        echo "Appended by \`fuzz/run.sh\`: one line per target per run."
        echo
        echo "| date | commit | target | seconds | executions | exec/s | corpus | crashes |"
        echo "|---|---|---|---|---|---|---|---|"
    } > "$results"
fi
# The scanner's test corpus (crates/gauntlet-scan/tests/corpus) seeds the
# scanner targets: scan_model's inputs start with the byte that picks the file
# extension (MODEL_EXTENSIONS in crates/gauntlet-fuzz: pt, pth, pkl, bin,
# safetensors, onnx), pickle_walk takes the pickles as they are.
seed_from_scanner_corpus() {
    local target="$1" file name pick
    case "$target" in scan_model | pickle_walk) ;; *) return 0 ;; esac
    while IFS= read -r file; do
        name="$(echo "$file" | tr '/' '_')"
        if [ "$target" = pickle_walk ]; then
            case "$file" in *.pkl | *.pickle) cp -n "crates/gauntlet-scan/tests/corpus/$file" "fuzz/corpus/$target/corpus_$name" ;; esac
            continue
        fi
        case "$file" in
            *.pth) pick='\001' ;; *.pkl | *.pickle | *.npy | *.npz) pick='\002' ;; *.bin) pick='\003' ;;
            *.safetensors) pick='\004' ;; *.onnx) pick='\005' ;; *) pick='\000' ;;
        esac
        { printf "$pick"; cat "crates/gauntlet-scan/tests/corpus/$file"; } > "fuzz/corpus/$target/corpus_$name"
    done < <(cd crates/gauntlet-scan/tests/corpus && find . -type f ! -name '*.md' ! -name '*.tsv' | sed 's|^\./||')
}

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
status=0
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    cp -n fuzz/seeds/"$target"/* "fuzz/corpus/$target/" 2>/dev/null || true
    seed_from_scanner_corpus "$target"
    log="fuzz/logs/$target.log"
    echo "== $target for ${seconds}s"
    started="$(date +%s)"
    # Crashes of this run only: older ones (fixed, kept as regressions) stay.
    marker="$(mktemp)"
    # -rss_limit_mb and -timeout turn memory and time bombs into findings too.
    if ! cargo +nightly fuzz run -O --debug-assertions "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=1
        echo "   crashed: see $log and fuzz/artifacts/$target/"
    fi
    # Wall time measured here: a crash ends the run early.
    elapsed=$(( $(date +%s) - started ))
    executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    corpus="$(find "fuzz/corpus/$target" -type f | wc -l)"
    crashes="$(find "fuzz/artifacts/$target" -type f -newer "$marker" | wc -l)"
    rm -f "$marker"
    rate=$(( ${executions:-0} / (elapsed > 0 ? elapsed : 1) ))
    echo "   ${executions:-0} executions in ${elapsed}s (${rate}/s), corpus $corpus, crashes $crashes"
    echo "| $(date -u +%F) | $commit | $target | $elapsed | ${executions:-0} | $rate | $corpus | $crashes |" >> "$results"
done
exit "$status"
