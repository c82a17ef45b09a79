#!/usr/bin/env bash
# Single-event ingest benchmark: POST /webhook/events at full speed with C concurrent clients
# for S seconds, with the CPU (user + sys) the webhook and Redis used per accepted event, and
# for redis the same run's ceiling: redis-benchmark calling the enqueue script itself
# (EVALSHA, one new event per call) at the same concurrency. For comparing two builds.
#
#   scripts/ingest.sh [--backend redis|sqlite] [--seconds S] [--concurrency C]
#
# Defaults: redis, 10 s, 32 clients. BIN=<dir> runs the webhook from another build's
# `target/release` (the load generator always comes from this checkout). Everything runs in a
# temp dir with its own port, SQLite file and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=redis
secs=10
clients=32
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="$2"; shift 2 ;;
    --seconds) secs="$2"; shift 2 ;;
    --concurrency) clients="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "ingest.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$backend" in redis|sqlite) ;; *) echo "ingest.sh: --backend redis|sqlite" >&2; exit 2 ;; esac

cargo build --release --quiet -p webhook -p event-generator
bin=${BIN:-target/release}
work=$(mktemp -d)
. scripts/lib.sh
trap stop_pids_and_remove_work EXIT

hz=$(getconf CLK_TCK)
cpu_seconds() { awk -v hz="$hz" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"; }
redis_port=""
if [ "$backend" = redis ]; then start_redis; pids+=("$redis_pid"); fi
redis_seconds() { if [ -n "$redis_port" ]; then redis_cpu "$redis_port"; else echo 0; fi; }

port=$(free_port)
url=http://127.0.0.1:$port
export DAY15_QUEUE_BACKEND=$backend DAY15_WEBHOOK_PORT=$port DAY15_KEY_PREFIX=ingest
export DAY15_SQLITE_PATH="$work/queue.sqlite3" DAY15_LOG_FILE="$work/pipeline.log"
export DAY15_REDIS_URL="redis://127.0.0.1:${redis_port:-6379}/0" DAY15_MAX_QUEUE_DEPTH=100000000
"$bin/webhook" >"$work/webhook.out" 2>&1 &
webhook=$!
pids+=("$webhook")
wait_http "$url/health"

w0=$(cpu_seconds "$webhook"); r0=$(redis_seconds)
target/release/event-generator --url "$url" load --json --rate 0 --duration "$secs" \
  --concurrency "$clients" >"$work/load.json" 2>/dev/null
w1=$(cpu_seconds "$webhook"); r1=$(redis_seconds)

ceiling=0
if [ -n "$redis_port" ]; then
  sha=$(redis-cli -p "$redis_port" SCRIPT LOAD "$(cat crates/core/src/backend/redis/lua/enqueue.lua)")
  payload='{"event_id":"evt_x","event_type":"usage_tracked","user_id":"user_1","timestamp":"2025-12-16T10:00:00Z","metadata":{"feature":"export","quantity":1},"received_at":"2025-12-16T10:00:00.000000Z"}'
  ceiling=$(redis-benchmark -p "$redis_port" -c "$clients" -n 200000 -r 1000000000000 -q EVALSHA "$sha" 3 \
    '{ceiling}:stream' '{ceiling}:m:counters' '{ceiling}:maps' '{ceiling}:seen:' 86400000 \
    counters accepted duplicates 0 '' 'evt___rand_int__' "$payload" 2>/dev/null \
    | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1 | cut -d' ' -f1)
fi
python3 - "$work/load.json" "$w0" "$w1" "$r0" "$r1" "$ceiling" "$backend" "$clients" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w0, w1, r0, r1, ceiling = (float(x) for x in sys.argv[2:7])
backend, clients = sys.argv[7:9]
n = d["events_accepted"]
per = lambda s: s * 1e6 / max(n, 1)
line = (f"{backend} single-event ingest, {clients} clients: {d['requests_per_s']:,.0f} req/s, "
        f"p50 {d['latency_ms']['p50']} ms, p99 {d['latency_ms']['p99']} ms, errors {d['errors']}; "
        f"webhook CPU {per(w1 - w0):.1f} µs/event")
if backend == "redis":
    line += (f", redis-server CPU {per(r1 - r0):.1f} µs/event; ceiling (EVALSHA of the enqueue "
             f"script, {clients} clients) {ceiling:,.0f} calls/s: "
             f"{d['requests_per_s'] / ceiling * 100:.0f}% of it")
print(line)
PY
