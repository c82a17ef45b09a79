#!/usr/bin/env bash
# Soak run: sustained load for N minutes while a consumer is killed with SIGKILL every M
# seconds, then a full drain. Proves that nothing accepted is lost or applied twice, and shows
# each process's memory over time. Not part of CI: it runs for minutes.
#
#   scripts/soak.sh [MINUTES] [--backend sqlite|redis] [--kill-every SECONDS] [--rate EVENTS_PER_S]
#                   [--consumers N] [--keep]
#
# Defaults: 10 minutes, sqlite, a kill every 20 s, 500 events/s, 2 consumers. Builds release,
# starts the orchestrator on a fresh SQLite file (or its own redis-server on a free port) in a
# temp folder, drives it with `event-generator load --json`, and prints:
#   sent, accepted, applied, lost (must be 0), duplicates applied (must be 0), dead-lettered,
#   and per process the first/last/highest VmRSS and its VmHWM sampled from /proc every 5 s.
# Exit 0 when nothing was lost or applied twice and the orchestrator stopped cleanly, else 1.
# Needs curl, jq, sqlite3 (sqlite) or redis-server + redis-cli (redis).
set -euo pipefail

minutes=10
backend=sqlite
kill_every=20
rate=500
consumers=2
keep=false
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) backend="$2"; shift 2 ;;
        --kill-every) kill_every="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --consumers) consumers="$2"; shift 2 ;;
        --keep) keep=true; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        [0-9]*) minutes="$1"; shift ;;
        *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$backend" in sqlite|redis) ;; *) echo "soak.sh: --backend sqlite|redis" >&2; exit 2 ;; esac

root="$(cd "$(dirname "$0")/.." && pwd)"
echo "== building release binaries"
(cd "$root" && cargo build --release --quiet -p orchestrator -p webhook -p consumer -p event-generator)
bin="$root/target/release"

work="$(mktemp -d /tmp/soak.XXXXXX)"
. "$root/scripts/lib.sh"
port="$(free_port)"
url="http://127.0.0.1:$port"
prefix="soak$$"
db="$work/queue.sqlite3"

orchestrator_pid=""
redis_pid=""
helpers=()
cleanup() {
    for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$orchestrator_pid" ] && kill -0 "$orchestrator_pid" 2>/dev/null; then
        kill -KILL "$orchestrator_pid" 2>/dev/null || true
    fi
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
    if [ "$keep" = true ]; then echo "(files kept in $work)"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Only these settings: the repository's config/.env is not read (processes run in $work).
export DAY15_QUEUE_BACKEND="$backend"
export DAY15_SQLITE_PATH="$db"
export DAY15_WEBHOOK_HOST=127.0.0.1
export DAY15_WEBHOOK_PORT="$port"
export DAY15_CONSUMERS="$consumers"
export DAY15_BATCH_SIZE=100
export DAY15_VISIBILITY_TIMEOUT_SECONDS=10
export DAY15_KEY_PREFIX="$prefix"
export DAY15_LOG_FILE="$work/pipeline.log"
export DAY15_LOG_LEVEL=WARNING
export DAY15_SHUTDOWN_TIMEOUT_SECONDS=15
unset DAY15_WEBHOOK_SECRET DAY15_FAULT_INJECTION DAY15_USE_MOCK_REDIS DAY15_REDIS_URL 2>/dev/null || true

if [ "$backend" = redis ]; then
    start_redis
    export DAY15_REDIS_URL="redis://127.0.0.1:$redis_port/0"
fi

cd "$work"
"$bin/orchestrator" >"$work/orchestrator.out" 2>&1 &
orchestrator_pid=$!

# Role of a process from its command line: the sibling binary's name or the role argument.
role_of() {
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
    case "$cmd" in
        *__consumer*|*/consumer\ *|*/consumer) echo consumer ;;
        *__webhook*|*/webhook\ *|*/webhook) echo webhook ;;
        *orchestrator*) echo orchestrator ;;
        *) echo other ;;
    esac
}
consumer_pids() {
    local pid
    for pid in $(pgrep -P "$orchestrator_pid" 2>/dev/null); do
        [ "$(role_of "$pid" || true)" = consumer ] && echo "$pid"
    done
    return 0
}

echo "== starting the pipeline ($backend, $consumers consumers) on $url; files in $work"
ready=false
for _ in $(seq 300); do
    if curl -fsS "$url/health" >/dev/null 2>&1 && [ "$(consumer_pids | wc -l)" -ge "$consumers" ]; then
        ready=true
        break
    fi
    kill -0 "$orchestrator_pid" 2>/dev/null || break
    sleep 0.1
done
if [ "$ready" != true ]; then
    echo "soak.sh: the pipeline did not come up" >&2
    tail -n 30 "$work/orchestrator.out" >&2
    exit 1
fi

started=$(date +%s)
# Memory sampler: "seconds role pid VmRSS_kB VmHWM_kB", every 5 s, for the orchestrator, its
# children and the load generator.
(
    while kill -0 "$orchestrator_pid" 2>/dev/null; do
        now=$(( $(date +%s) - started ))
        for pid in "$orchestrator_pid" $(pgrep -P "$orchestrator_pid") $(pgrep -f "$bin/event-generator load" || true); do
            role="$(role_of "$pid" || true)"
            case "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" in *event-generator*) role=event-generator ;; esac
            [ -z "$role" ] && continue
            awk -v t="$now" -v r="$role" -v p="$pid" '
                /^VmRSS:/ {rss=$2} /^VmHWM:/ {hwm=$2}
                END {if (rss != "") print t, r, p, rss, hwm}' "/proc/$pid/status" 2>/dev/null || true
        done >>"$work/rss.tsv"
        sleep 5
    done
) &
helpers+=($!)

# Consumer killer: SIGKILL one consumer (taking turns) every $kill_every seconds.
: >"$work/kills.log"
(
    turn=0
    while sleep "$kill_every"; do
        mapfile -t pids < <(consumer_pids)
        [ "${#pids[@]}" -eq 0 ] && continue
        victim="${pids[$(( turn % ${#pids[@]} ))]}"
        turn=$(( turn + 1 ))
        kill -KILL "$victim" 2>/dev/null && echo "$(( $(date +%s) - started )) $victim" >>"$work/kills.log"
    done
) &
killer=$!
helpers+=("$killer")

echo "== load: $rate events/s for $minutes min, a consumer killed every ${kill_every}s"
"$bin/event-generator" load --url "$url" --rate "$rate" --duration "${minutes}m" \
    --concurrency 16 --json >"$work/load.json" 2>"$work/load.err" || true
kill "$killer" 2>/dev/null || true
if ! jq -e . "$work/load.json" >/dev/null 2>&1; then
    echo "soak.sh: event-generator load gave no report" >&2
    tail -n 20 "$work/load.err" >&2
    exit 1
fi
sent=$(jq '.events_sent' "$work/load.json")
accepted=$(jq '.events_accepted' "$work/load.json")

applied_now() { curl -fsS "$url/analytics" | jq '[.events_by_type[]] | add // 0'; }

# Drain: wait until the queue is empty and what was applied stops changing (killed consumers'
# leases expire after the visibility timeout first).
echo "== draining"
drain_deadline=$(( $(date +%s) + 180 ))
last=-1
stable=0
while [ "$(date +%s)" -lt "$drain_deadline" ]; do
    depth=$(curl -fsS "$url/stats" | jq '.queue_depth')
    applied=$(applied_now)
    if [ "$depth" -eq 0 ] && [ "$applied" -eq "$last" ]; then
        stable=$(( stable + 1 ))
        { [ "$applied" -ge "$accepted" ] || [ "$stable" -ge 15 ]; } && break
    else
        stable=0
    fi
    last=$applied
    sleep 1
done
drained_after=$(( $(date +%s) - started ))
stats="$(curl -fsS "$url/stats")"
applied=$(applied_now)
dlq=$(jq '.dlq_depth' <<<"$stats")
depth=$(jq '.queue_depth' <<<"$stats")
webhook_accepted=$(jq '.accepted' <<<"$stats")

# Distinct events marked applied, read from the backend itself. Redis keeps no mark per event
# (an entry is applied by the script that acks it, while it is still pending), so there the
# figure is the applied count and lost/duplicates below are net; the crash matrix in `tests/`
# checks every event id on both backends.
if [ "$backend" = sqlite ]; then
    marked=$(sqlite3 "file:$db?mode=ro" 'SELECT count(*) FROM processed')
else
    marked=$(( applied < accepted ? applied : accepted ))
fi
marked_label="distinct marked applied"
[ "$backend" = redis ] && marked_label="applied, net of accepted"

echo "== stopping the orchestrator (SIGTERM)"
kill -TERM "$orchestrator_pid"
orchestrator_exit=0
wait "$orchestrator_pid" || orchestrator_exit=$?
orchestrator_pid=""
for pid in "${helpers[@]}"; do wait "$pid" 2>/dev/null || true; done
helpers=()

# Nothing here is meant to fail (no fault injection), so a dead letter counts as lost too.
lost=$(( accepted > marked ? accepted - marked : 0 ))
duplicates=$(( applied > marked ? applied - marked : 0 ))
kills=$(wc -l <"$work/kills.log")

echo
echo "soak: $backend, $minutes min at $rate events/s, $consumers consumers, $kills consumer SIGKILLs"
printf '  %-26s %s\n' \
    "events sent" "$sent" \
    "accepted (202)" "$accepted  (webhook counted $webhook_accepted)" \
    "applied (analytics)" "$applied" \
    "$marked_label" "$marked" \
    "lost" "$lost" \
    "duplicates applied" "$duplicates" \
    "dead-lettered" "$dlq  (nothing is meant to fail)" \
    "left in queue" "$depth" \
    "drained at" "${drained_after}s" \
    "orchestrator exit" "$orchestrator_exit" \
    "load errors" "$(jq -c '.errors_by_status + .transport_errors' "$work/load.json")" \
    "load latency ms" "$(jq -c '.latency_ms | {p50, p99, max}' "$work/load.json")"
echo
echo "memory per process (kB; first and last VmRSS sample, highest VmRSS, VmHWM):"
sort -n -k1,1 "$work/rss.tsv" | awk '
    { key = $2 " " $3
      if (!(key in first)) { first[key] = $4; t0[key] = $1; order[++n] = key }
      last[key] = $4; t1[key] = $1
      if ($4 > max[key]) max[key] = $4
      if ($5 > hwm[key]) hwm[key] = $5 }
    END { printf "  %-16s %-8s %10s %10s %10s %10s  %s\n", "process", "pid", "first", "last", "max", "VmHWM", "sampled"
          for (i = 1; i <= n; i++) { k = order[i]; split(k, a, " ")
              printf "  %-16s %-8s %10d %10d %10d %10d  %ds..%ds\n", a[1], a[2], first[k], last[k], max[k], hwm[k], t0[k], t1[k] } }'

if [ "$lost" -ne 0 ] || [ "$duplicates" -ne 0 ] || [ "$dlq" -ne 0 ] || [ "$orchestrator_exit" -ne 0 ]; then
    echo "soak: FAILED"
    keep=true
    exit 1
fi
echo "soak: OK"
