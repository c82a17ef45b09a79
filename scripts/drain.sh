#!/usr/bin/env bash
# Consumer drain benchmark: queue N events through a webhook, then time consumers draining them,
# with the CPU each side used. For comparing two builds of the consumer on the same machine.
#
#   scripts/drain.sh [--backend redis|sqlite] [--events N] [--batch-size B] [--consumers C]
#
# Defaults: redis, 100000 events, batch size 500, 1 consumer. BIN=<dir> runs the webhook and
# consumer binaries from another build's `target/release` (the load generator always comes from
# this checkout). Everything runs in a temp dir with its own ports, SQLite file and
# redis-server. Prints two lines: the fill (batch ingest rate, webhook and Redis CPU µs per
# event) and the drain (events/s, consumer and Redis CPU µs per event, for redis the time Redis
# spent in scripts per event), then the Redis commands behind them (INFO commandstats).
# CPU is user + sys: /proc for the pipeline's processes, INFO cpu for redis-server.
# PROFILE=<dir> also records a `perf record -g` profile of the webhook during the fill and of
# the (first) consumer during the drain, as <dir>/webhook.perf.data and consumer.perf.data.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=redis
events=100000
batch=500
consumers=1
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="$2"; shift 2 ;;
    --events) events="$2"; shift 2 ;;
    --batch-size) batch="$2"; shift 2 ;;
    --consumers) consumers="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "drain.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$backend" in redis|sqlite) ;; *) echo "drain.sh: --backend redis|sqlite" >&2; exit 2 ;; esac

cargo build --release --quiet -p webhook -p consumer -p event-generator
bin=${BIN:-target/release}
generator=target/release/event-generator
work=$(mktemp -d)
. scripts/lib.sh
trap stop_pids_and_remove_work EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

backend_pid=""
redis_port=""
if [ "$backend" = redis ]; then
  start_redis
  backend_pid=$redis_pid
  pids+=("$redis_pid")
fi

port=$(free_port)
url=http://127.0.0.1:$port
export DAY15_QUEUE_BACKEND=$backend DAY15_WEBHOOK_PORT=$port DAY15_KEY_PREFIX=drain
export DAY15_SQLITE_PATH="$work/queue.sqlite3" DAY15_LOG_FILE="$work/pipeline.log"
export DAY15_REDIS_URL="redis://127.0.0.1:${redis_port:-6379}/0"
export DAY15_MAX_QUEUE_DEPTH=100000000 DAY15_BATCH_TIMEOUT_SECONDS=1 DAY15_BATCH_SIZE=$batch
"$bin/webhook" >"$work/webhook.out" 2>&1 &
pids+=($!)
wait_http "$url/health"
webhook_pid=${pids[-1]}
hz=$(getconf CLK_TCK)
redis_seconds() { if [ -n "$backend_pid" ]; then redis_cpu "$redis_port"; else echo 0; fi; }
[ -n "$backend_pid" ] && redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
# perf_start <name> <pid>: a profile of <pid> until perf_stop, when PROFILE is set.
perf_pid=""
perf_start() {
  [ -n "${PROFILE:-}" ] || return 0
  mkdir -p "$PROFILE"
  perf record -q -F 499 -g -p "$2" -o "$PROFILE/$1.perf.data" >/dev/null 2>&1 &
  perf_pid=$!
  sleep 0.5
}
perf_stop() { [ -n "$perf_pid" ] && kill -INT "$perf_pid" && wait "$perf_pid" || true; perf_pid=""; }
perf_start webhook "$webhook_pid"
fill_webhook0=$(cpu_ticks "$webhook_pid"); fill_redis0=$(redis_seconds)
"$generator" --url "$url" load --json --rate 0 --events "$events" --batch-size 100 \
  --concurrency 8 >"$work/fill.json" 2>/dev/null
fill_webhook1=$(cpu_ticks "$webhook_pid"); fill_redis1=$(redis_seconds)
perf_stop
[ -n "$backend_pid" ] && redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' >"$work/fill_commandstats"

[ -n "$backend_pid" ] && redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
drain_redis0=$(redis_seconds)
started=()
t0=$(date +%s.%N)
for _ in $(seq 1 "$consumers"); do
  "$bin/consumer" >"$work/consumer-$RANDOM.out" 2>&1 &
  started+=($!)
  pids+=($!)
done
perf_start consumer "${started[0]}"
until [ "$(processed "$url")" -ge "$events" ]; do sleep 0.1; done
t1=$(date +%s.%N)
drain_redis1=$(redis_seconds)
perf_stop
consumer_ticks=0
for p in "${started[@]}"; do consumer_ticks=$((consumer_ticks + $(cpu_ticks "$p"))); done
redis_usec=0
if [ -n "$backend_pid" ]; then
  redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' >"$work/commandstats"
  redis_usec=$(grep -E '^cmdstat_(evalsha|eval):' "$work/commandstats" | grep -o 'usec=[0-9]*' \
    | awk -F= '{ s += $2 } END { print s + 0 }')
fi
python3 - "$events" "$t0" "$t1" "$consumer_ticks" "$hz" "$redis_usec" \
  "$fill_webhook0" "$fill_webhook1" "$fill_redis0" "$fill_redis1" "$drain_redis0" "$drain_redis1" \
  "$backend" "$batch" "$consumers" "$work/fill.json" <<'EOF'
import json, sys
n, t0, t1, c, hz, rus, w0, w1, fr0, fr1, dr0, dr1 = (float(x) for x in sys.argv[1:13])
backend, batch, consumers = sys.argv[13:16]
fill = json.load(open(sys.argv[16]))
el = t1 - t0
per = lambda seconds: seconds * 1e6 / n
line = (f"{backend} fill: {fill['events_per_s']:,.0f} events/s (batches of 100, 8 clients); "
        f"webhook CPU {per((w1 - w0) / hz):.1f} µs/event")
if backend == "redis":
    line += f", redis-server CPU {per(fr1 - fr0):.1f} µs/event"
print(line)
line = (f"{backend} drain, batch {batch}, {consumers} consumer(s): {n / el:,.0f} events/s "
        f"({n:,.0f} events in {el:.2f} s); consumers CPU {per(c / hz):.1f} µs/event")
if backend == "redis":
    line += (f", redis-server CPU {per(dr1 - dr0):.1f} µs/event "
             f"(in scripts {rus / n:.1f} µs/event)")
print(line)
EOF
if [ -n "$backend_pid" ]; then
  # Where Redis's time goes: the commands, in µs of Redis time per event.
  for phase in fill drain; do
    file=$work/commandstats; [ "$phase" = fill ] && file=$work/fill_commandstats
    awk -F'[:,=]' -v n="$events" -v phase="$phase" '
      /^cmdstat_/ && $5 / n >= 0.05 {
        printf "  %s %s %.2f µs/event (%d calls)\n", phase, substr($1, 9), $5 / n, $3 }' "$file"
  done
fi
