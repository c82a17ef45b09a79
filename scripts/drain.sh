#!/usr/bin/env bash
# Consumer drain benchmark: queue N events through a webhook, then time consumers draining them,
# with the CPU each side used. For comparing two builds of the consumer on the same machine.
#
#   scripts/drain.sh [--backend redis|sqlite] [--events N] [--batch-size B] [--consumers C]
#
# Defaults: redis, 100000 events, batch size 500, 1 consumer. BIN=<dir> runs the webhook and
# consumer binaries from another build's `target/release` (the load generator always comes from
# this checkout). Everything runs in a temp dir with its own ports, SQLite file and
# redis-server. Prints one line: the fill's ingest rate, drain events/s, seconds, CPU of the
# backend and of the consumers (100% = one core), and for redis the time Redis spent in the
# claim and settle scripts per event, then the commands inside them (INFO commandstats).
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
"$generator" --url "$url" load --json --rate 0 --events "$events" --batch-size 100 \
  --concurrency 8 >"$work/fill.json" 2>/dev/null

[ -n "$backend_pid" ] && redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
backend_before=$([ -n "$backend_pid" ] && cpu_ticks "$backend_pid" || echo 0)
started=()
t0=$(date +%s.%N)
for _ in $(seq 1 "$consumers"); do
  "$bin/consumer" >"$work/consumer-$RANDOM.out" 2>&1 &
  started+=($!)
  pids+=($!)
done
until [ "$(processed "$url")" -ge "$events" ]; do sleep 0.1; done
t1=$(date +%s.%N)
backend_after=$([ -n "$backend_pid" ] && cpu_ticks "$backend_pid" || echo 0)
consumer_ticks=0
for p in "${started[@]}"; do consumer_ticks=$((consumer_ticks + $(cpu_ticks "$p"))); done
redis_usec=0
if [ -n "$backend_pid" ]; then
  redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' >"$work/commandstats"
  redis_usec=$(grep -E '^cmdstat_(evalsha|eval):' "$work/commandstats" | grep -o 'usec=[0-9]*' \
    | awk -F= '{ s += $2 } END { print s + 0 }')
fi
hz=$(getconf CLK_TCK)
python3 - "$events" "$t0" "$t1" "$backend_before" "$backend_after" "$consumer_ticks" "$hz" \
  "$redis_usec" "$backend" "$batch" "$consumers" "$work/fill.json" <<'EOF'
import json, sys
n, t0, t1, b0, b1, c, hz, rus = (float(x) for x in sys.argv[1:9])
backend, batch, consumers = sys.argv[9:12]
fill = json.load(open(sys.argv[12]))
el = t1 - t0
line = (f"{backend} ingest {fill['events_per_s']:,.0f} events/s (batches of 100, 8 clients); "
        f"drain, batch {batch}, {consumers} consumer(s): {n / el:,.0f} events/s "
        f"({n:,.0f} events in {el:.2f} s); consumers CPU {c / hz / el * 100:.0f}%")
if backend == "redis":
    line += (f", redis-server CPU {(b1 - b0) / hz / el * 100:.0f}%, "
             f"Redis time in scripts {rus / n:.1f} µs/event")
print(line)
EOF
if [ -n "$backend_pid" ]; then
  # Where the script time goes: the commands they call, in µs of Redis time per event.
  awk -F'[:,=]' -v n="$events" '
    /^cmdstat_(xreadgroup|xclaim|xack|xdel|zincrby|xautoclaim):/ {
      printf "  %s %.2f µs/event (%d calls)\n", substr($1, 9), $5 / n, $3 }' "$work/commandstats"
fi
