#!/usr/bin/env bash
# What the event-time rollups cost to store: backfills a fresh pipeline with
# `event-generator backfill` and prints, per granularity, the buckets kept, their rows (SQLite)
# or sorted-set members (Redis) and their bytes, with the total per million events.
#
#   scripts/rollup-storage.sh [--backend sqlite|redis] [--days D] [--events-per-day N]
#
# Defaults: sqlite, 30 days, 33334 events a day (1,000,020 events). SQLite bytes are the
# rows' payload (map + field + value; the registers blob for distinct users), without B-tree
# overhead; the file size is printed too. Redis bytes are `MEMORY USAGE` of each bucket key.
# Runs in a temp dir with its own ports, SQLite file and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=sqlite
days=30
per_day=33334
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="$2"; shift 2 ;;
    --days) days="$2"; shift 2 ;;
    --events-per-day) per_day="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "rollup-storage.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$backend" in redis|sqlite) ;; *) echo "rollup-storage.sh: --backend redis|sqlite" >&2; exit 2 ;; esac

cargo build --release --quiet -p webhook -p consumer -p event-generator
bin=target/release
work=$(mktemp -d)
. scripts/lib.sh
trap stop_pids_and_remove_work EXIT

redis_port=""
if [ "$backend" = redis ]; then
  start_redis
  pids+=("$redis_pid")
fi
port=$(free_port)
url=http://127.0.0.1:$port
export DAY15_QUEUE_BACKEND=$backend DAY15_WEBHOOK_PORT=$port DAY15_KEY_PREFIX=storage
export DAY15_SQLITE_PATH="$work/queue.sqlite3" DAY15_LOG_FILE="$work/pipeline.log"
export DAY15_SQLITE_SYNCHRONOUS=normal
export DAY15_REDIS_URL="redis://127.0.0.1:${redis_port:-6379}/0"
export DAY15_MAX_QUEUE_DEPTH=100000000 DAY15_BATCH_TIMEOUT_SECONDS=1 DAY15_BATCH_SIZE=500
"$bin/webhook" >"$work/webhook.out" 2>&1 &
pids+=($!)
"$bin/consumer" >"$work/consumer.out" 2>&1 &
pids+=($!)
wait_http "$url/health"
events=$((days * per_day))
t0=$(date +%s.%N)
"$bin/event-generator" --url "$url" backfill --days "$days" --events-per-day "$per_day" \
  --batch-size 500 --concurrency 4 >"$work/backfill.out"
until [ "$(processed "$url")" -ge "$events" ]; do sleep 0.2; done
t1=$(date +%s.%N)
echo "$backend: $events events over $days days backfilled and processed in" \
  "$(python3 -c "print(f'{$t1 - $t0:.1f}')") s"

if [ "$backend" = sqlite ]; then
  sleep 11 # one SQLite upkeep, so nothing expired is counted
  sqlite3 "$DAY15_SQLITE_PATH" "
    SELECT g, count(DISTINCT map), count(*), sum(bytes) FROM (
      SELECT substr(map, instr(substr(map, 4), ':') + 4, 1) AS g, map,
             length(map) + length(field) + 8 AS bytes FROM metrics WHERE map LIKE 'ru:%'
      UNION ALL
      SELECT substr(map, instr(substr(map, 4), ':') + 4, 1), map, length(map) + length(registers)
        FROM rollup_users)
    GROUP BY g;" |
    while IFS='|' read -r g buckets rows bytes; do
      echo "$g $buckets $rows $bytes"
    done >"$work/sizes"
  echo "file: $(du -k "$DAY15_SQLITE_PATH" | cut -f1) KB (queue, marks and totals included)"
else
  # One script walks every bucket key and sums per granularity: keys, members, MEMORY USAGE.
  redis-cli -p "$redis_port" EVAL "
    local out, cursor = {}, '0'
    repeat
      local page = redis.call('SCAN', cursor, 'MATCH', '*:m:ru:*', 'COUNT', 1000)
      cursor = page[1]
      for _, key in ipairs(page[2]) do
        local g = string.match(key, ':(%a):%-?%d+\$')
        if g then
          local t = out[g] or {0, 0, 0}
          t[1] = t[1] + 1
          t[2] = t[2] + redis.call('ZCARD', key)
          t[3] = t[3] + (redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0') or 0)
          out[g] = t
        end
      end
    until cursor == '0'
    local flat = {}
    for g, t in pairs(out) do flat[#flat + 1] = g .. ' ' .. t[1] .. ' ' .. t[2] .. ' ' .. t[3] end
    return flat" 0 >"$work/sizes"
fi
python3 - "$work/sizes" "$events" "$backend" <<'EOF'
import sys
path, events, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = {"m": "minute", "h": "hour", "d": "day"}
unit = "rows" if backend == "sqlite" else "members"
for line in open(path):
    g, buckets, rows, size = line.split()
    size = int(size)
    print(f"{names.get(g, g):>6}: {int(buckets):>6} bucket maps, {int(rows):>9} {unit}, "
          f"{size / 1e6:8.2f} MB, {size / 1e6 / events * 1e6:8.2f} MB per million events")
EOF
