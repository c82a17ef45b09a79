#!/usr/bin/env bash
# Flood run: the public endpoint under hostile traffic while a legitimate load is measured.
#
#   scripts/flood.sh [--seconds S] [--rate R] [--silent N] [--sse N] [--values N]
#                    [--rss-limit-mb M] [--no-flood] [--keep]
#
# Starts the orchestrator (sqlite, 2 consumers) from the release binaries in a temp folder on
# a free port (BIN=<dir> takes them from another build folder), then at the same time, against
# 127.0.0.1 only and each bounded in count and time:
#   - N silent sockets (default 1000) that connect and send nothing, reopened as the server
#     closes them (after DAY15_REQUEST_HEAD_TIMEOUT_SECONDS), for the whole run;
#   - N clients of /analytics/stream (default 200; beyond DAY15_MAX_SSE_CLIENTS they get 429);
#   - N user_signup events (default 20000), each with its own metadata.source, in batches of
#     100 spread over the run;
#   - `event-generator load --rate R --duration S --concurrency 16 --verify` (defaults 1000, 30)
#     as the legitimate load, which is what is measured.
# --no-flood runs the load alone, for the ceiling. Prints the load's errors and latency, the
# webhook's peak VmRSS (sampled every 200 ms) and CPU time, the connections open to the port
# over time, SSE clients served and refused, /health answer time and /analytics size during
# the run, and signups.by_source's size at the end. Exit 1 when the load saw an error, the
# webhook's RSS went over --rss-limit-mb (default 150), by_source held more than
# DAY15_MAX_DIMENSION_VALUES + 1 values or the pipeline failed. Needs curl, jq, python3.
set -euo pipefail

seconds=30
rate=1000
silent=1000
sse=200
values=20000
rss_limit_mb=150
flood=true
keep=false
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --silent) silent="$2"; shift 2 ;;
        --sse) sse="$2"; shift 2 ;;
        --values) values="$2"; shift 2 ;;
        --rss-limit-mb) rss_limit_mb="$2"; shift 2 ;;
        --no-flood) flood=false; shift ;;
        --keep) keep=true; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "flood.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${BIN:-}" ]; then
    bin="$(cd "$BIN" && pwd)"
else
    echo "== building release binaries"
    (cd "$root" && cargo build --release --quiet -p orchestrator -p webhook -p consumer -p event-generator)
    target="${CARGO_TARGET_DIR:-$root/target}"
    bin="$(cd "$target/release" && pwd)"
fi
clients="$root/scripts/flood-clients.py"

# Every socket is a descriptor on both ends, and the webhook inherits this limit.
want_fds=$(( 2 * (silent + sse) + 1024 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
    ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi

work="$(mktemp -d /tmp/flood.XXXXXX)"
. "$root/scripts/lib.sh"
port="$(free_port)"
url="http://127.0.0.1:$port"

orchestrator_pid=""
helpers=()
cleanup() {
    for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$orchestrator_pid" ] && kill -0 "$orchestrator_pid" 2>/dev/null; then
        kill -TERM "$orchestrator_pid" 2>/dev/null || true
        wait "$orchestrator_pid" 2>/dev/null || true
    fi
    if [ "$keep" = true ]; then echo "(files kept in $work)"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Only these settings: the repository's config/.env is not read (processes run in $work).
export DAY15_QUEUE_BACKEND=sqlite
export DAY15_SQLITE_PATH="$work/queue.sqlite3"
export DAY15_WEBHOOK_HOST=127.0.0.1
export DAY15_WEBHOOK_PORT="$port"
export DAY15_CONSUMERS=2
export DAY15_BATCH_SIZE=100
export DAY15_LOG_FILE="$work/pipeline.log"
export DAY15_LOG_LEVEL=WARNING
unset DAY15_WEBHOOK_SECRET DAY15_FAULT_INJECTION DAY15_USE_MOCK_REDIS DAY15_REDIS_URL \
    DAY15_MAX_SSE_CLIENTS DAY15_MAX_DIMENSION_VALUES DAY15_MAX_CONNECTIONS \
    DAY15_REQUEST_HEAD_TIMEOUT_SECONDS 2>/dev/null || true
max_values=1000

cd "$work"
"$bin/orchestrator" >"$work/orchestrator.out" 2>&1 &
orchestrator_pid=$!

webhook_pid() {
    local pid
    for pid in $(pgrep -P "$orchestrator_pid" 2>/dev/null); do
        case "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" in
            *run-webhook*) echo "$pid"; return 0 ;;
        esac
    done
    return 1
}

echo "== starting the pipeline (sqlite, 2 consumers) on $url; files in $work"
webhook=""
for _ in $(seq 300); do
    if curl -fsS "$url/health" >/dev/null 2>&1 && webhook=$(webhook_pid); then break; fi
    kill -0 "$orchestrator_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$webhook" ]; then
    echo "flood.sh: the pipeline did not come up" >&2
    tail -n 30 "$work/orchestrator.out" >&2
    exit 1
fi

python3 "$clients" sample "$port" "$webhook" "$work/sample.json" &
sampler=$!
helpers+=("$sampler")

# The flood starts first and lasts past the load, so the whole load runs inside it.
settle=3
flood_seconds=$(( seconds + settle + 2 ))
python3 "$clients" probe "$port" "$flood_seconds" "$work/probe.json" &
helpers+=($!)
if [ "$flood" = true ]; then
    echo "== flood: $silent silent sockets, $sse SSE clients, $values dimension values, for ${flood_seconds}s"
    python3 "$clients" silent "$port" "$silent" "$flood_seconds" "$work/silent.json" &
    helpers+=($!)
    python3 "$clients" sse "$port" "$sse" "$flood_seconds" "$work/sse.json" &
    helpers+=($!)
    sleep "$settle"
    python3 "$clients" values "$port" "$values" "$seconds" "$work/values.json" &
    helpers+=($!)
else
    echo "== no flood: the load alone"
    sleep "$settle"
fi

echo "== load: $rate events/s for ${seconds}s, concurrency 16, --verify"
"$bin/event-generator" load --url "$url" --rate "$rate" --duration "${seconds}s" \
    --concurrency 16 --verify --timeout 60s --json >"$work/load.json" 2>"$work/load.err" || true

# Wait for the flood clients (each stops by itself), then for the queue to drain.
for pid in "${helpers[@]}"; do
    [ "$pid" = "$sampler" ] && continue
    wait "$pid" 2>/dev/null || true
done
for _ in $(seq 120); do
    [ "$(curl -fsS "$url/stats" 2>/dev/null | jq '.queue_depth' 2>/dev/null)" = 0 ] && break
    sleep 0.5
done
analytics="$(curl -fsS "$url/analytics" || echo '{}')"
webhook_after="$(webhook_pid || echo gone)"
kill -TERM "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
helpers=()

echo "== stopping the orchestrator (SIGTERM)"
kill -TERM "$orchestrator_pid"
orchestrator_exit=0
wait "$orchestrator_pid" || orchestrator_exit=$?
orchestrator_pid=""

failures=()
if ! jq -e . "$work/load.json" >/dev/null 2>&1; then
    echo "flood.sh: event-generator load gave no report" >&2
    tail -n 20 "$work/load.err" >&2
    exit 1
fi
load_errors=$(jq '.errors' "$work/load.json")
peak_kb=$(jq '.rss_kb.max // 0' "$work/sample.json")
by_source=$(jq '.signups.by_source // {} | length' <<<"$analytics")
has_other=$(jq '.signups.by_source // {} | has("other")' <<<"$analytics")
[ "$load_errors" -eq 0 ] || failures+=("the legitimate load saw $load_errors errors")
[ "$peak_kb" -le $(( rss_limit_mb * 1024 )) ] \
    || failures+=("webhook peak VmRSS $(( peak_kb / 1024 )) MB is over ${rss_limit_mb} MB")
[ "$by_source" -le $(( max_values + 1 )) ] \
    || failures+=("signups.by_source holds $by_source values, over $(( max_values + 1 ))")
[ "$webhook_after" = "$webhook" ] || failures+=("the webhook was restarted or is gone (pid $webhook -> $webhook_after)")
[ "$orchestrator_exit" -eq 0 ] || failures+=("the orchestrator exited with $orchestrator_exit")

summary() { jq -c "$1" "$2" 2>/dev/null || echo "(no report)"; }
echo
if [ "$flood" = true ]; then
    echo "flood: $silent silent sockets, $sse SSE clients, $values dimension values; load $rate events/s for ${seconds}s"
else
    echo "no flood: load $rate events/s for ${seconds}s alone"
fi
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '  %-28s %s\n' \
    "load sent / accepted" "$(jq -r '"\(.events_sent) / \(.events_accepted) (\(.requests_per_s | round) req/s)"' "$work/load.json")" \
    "load errors by status" "$(jq -c '.errors_by_status + .transport_errors' "$work/load.json") (total $load_errors)" \
    "load latency ms" "$(jq -c '.latency_ms | {p50, p90, p99, max}' "$work/load.json")" \
    "load max schedule lag ms" "$(jq '.max_schedule_lag_ms' "$work/load.json")" \
    "load drained (verify)" "$(jq -c '.verify | {complete, drain_s, e2e_p99_ms: .pipeline_end_to_end_ms.p99_ms}' "$work/load.json")" \
    "webhook VmRSS kB" "$(summary '.rss_kb' "$work/sample.json") (limit $(( rss_limit_mb * 1024 )))" \
    "webhook CPU" "$(jq -r '"\(.cpu_s) s in \(.seconds) s (\(.cpu_s / .seconds * 100 | round)% of a core)"' "$work/sample.json" 2>/dev/null)" \
    "/health during the run" "$(summary '.health_ms' "$work/probe.json") ms" \
    "/analytics body bytes" "$(summary '.analytics_bytes' "$work/probe.json")" \
    "probe failures" "$(summary '.failures' "$work/probe.json")"
if [ "$flood" = true ]; then
    printf '  %-28s %s\n' \
        "silent sockets" "$(summary '.' "$work/silent.json")" \
        "SSE clients" "$(summary '.' "$work/sse.json")" \
        "dimension values sent" "$(summary '.' "$work/values.json")"
fi
printf '  %-28s %s\n' \
    "signups.by_source at the end" "$by_source values (\"other\" present: $has_other; at most $(( max_values + 1 )))" \
    "orchestrator exit" "$orchestrator_exit"
echo "  open connections to the port (seconds: count):"
jq -r '.connections | map("\(.[0])s:\(.[1])") | _nwise(10) | "    " + join("  ")' "$work/sample.json" 2>/dev/null || true

if [ "${#failures[@]}" -gt 0 ]; then
    for f in "${failures[@]}"; do echo "flood: FAILED: $f"; done
    exit 1
fi
echo "flood: OK"
