#!/usr/bin/env bash
# Runs every libFuzzer target under fuzz/ for a bounded time and prints one summary line each.
#
#   scripts/fuzz.sh [seconds-per-target]     (default 60)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The seed corpus is made
# on the fly from data/sample_events.json (each event alone, and all of them as one batch);
# corpora and crash artifacts stay in fuzz/corpus and fuzz/artifacts (git-ignored). Exits 1 when
# a target finds a crash; its reproducer is in fuzz/artifacts/<target>/.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
samples="$root/data/sample_events.json"
cd "$root/fuzz"

if ! command -v python3 >/dev/null; then
    echo "fuzz.sh: python3 is needed to split $samples into seeds" >&2
    exit 2
fi

# Seeds: every sample event alone (validator), the whole sample set as a batch and one batch
# per event (batch parser).
seed() {
    local target="$1" mode="$2"
    mkdir -p "corpus/$target"
    python3 - "$samples" "corpus/$target" "$mode" <<'PY'
import json, pathlib, sys
events = json.load(open(sys.argv[1]))
out, mode = pathlib.Path(sys.argv[2]), sys.argv[3]
if mode == "event":
    for i, e in enumerate(events):
        (out / f"seed-event-{i}").write_text(json.dumps(e))
else:
    (out / "seed-batch-all").write_text(json.dumps({"events": events}))
    for i, e in enumerate(events):
        (out / f"seed-batch-{i}").write_text(json.dumps({"events": [e]}))
PY
}
seed event_validator event
seed batch_parser batch

status=0
for target in $(cargo +nightly fuzz list); do
    log="$(mktemp)"
    echo "== $target: ${seconds}s"
    if cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -dict=json.dict -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (see fuzz/artifacts/$target/)"
        status=1
        tail -n 40 "$log"
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)"
    corpus="$(find "corpus/$target" -type f | wc -l)"
    echo "$target: ${runs:-?} executions in ${seconds}s, corpus $corpus inputs, $result"
    rm -f "$log"
done
exit "$status"
