#!/usr/bin/env bash
# The project's benchmark: ingest, drain and end-to-end figures for the sqlite and redis
# backends, measured with the project's own binaries on this machine (load generator included).
#
#   scripts/bench.sh [sqlite|redis|all] [seconds per run]      (defaults: all, 10)
#
# Everything runs in a temp dir with its own ports, SQLite files and redis-server; nothing
# shared is touched. Prints one Markdown table per backend, ready for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

which_backends=${1:-all}
secs=${2:-10}
fill_events=${FILL_EVENTS:-200000}

cargo build --release --workspace --quiet
bin=target/release
work=$(mktemp -d)
. scripts/lib.sh
trap stop_pids_and_remove_work EXIT

json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }
redis_port=""

# Sets the environment of one pipeline (backend $1, name $2, port $3).
pipeline_env() {
  export DAY15_QUEUE_BACKEND=$1 DAY15_WEBHOOK_PORT=$3
  export DAY15_SQLITE_PATH="$work/$2.sqlite3" DAY15_LOG_FILE="$work/$2.log"
  export DAY15_REDIS_URL="redis://127.0.0.1:${redis_port:-6379}/0" DAY15_KEY_PREFIX="$2"
  export DAY15_MAX_QUEUE_DEPTH=100000000 DAY15_BATCH_TIMEOUT_SECONDS=1
}

start() { # binary, then the pid is in $started
  "$bin/$1" >"$work/$1-$RANDOM.out" 2>&1 &
  started=$!
  pids+=("$started")
}

stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

load() { # url, output file, load args...
  local url=$1 out=$2; shift 2
  "$bin/event-generator" --url "$url" load --json "$@" >"$out" 2>/dev/null || true
}


drain_rate() { # url, events expected, batch size -> events/s of one consumer draining them
  local url=$1 n=$2 batch=$3
  DAY15_BATCH_SIZE=$batch start consumer
  local consumer=$started t0 t1
  t0=$(date +%s.%N)
  until [ "$(processed "$url")" -ge "$n" ]; do sleep 0.1; done
  t1=$(date +%s.%N)
  stop "$consumer"
  python3 -c "print(round($n / ($t1 - $t0)))"
}

bench_backend() {
  local backend=$1 port url r
  echo
  echo "### $backend"
  echo
  echo "| measure | command (event-generator load …) | result |"
  echo "|---|---|---|"

  port=$(free_port); url=http://127.0.0.1:$port
  pipeline_env "$backend" "${backend}_ingest" "$port"
  start webhook; local webhook=$started; wait_http "$url/health"

  load "$url" "$work/steady.json" --rate 1000 --duration "$secs" --concurrency 32
  r=$work/steady.json
  echo "| single-event ingest at 1,000 req/s | \`--rate 1000 --duration $secs --concurrency 32\` | p50 $(json "$r" 'd["latency_ms"]["p50"]') ms, p99 $(json "$r" 'd["latency_ms"]["p99"]') ms, max $(json "$r" 'd["latency_ms"]["max"]') ms, errors $(json "$r" 'd["errors"]') |"

  load "$url" "$work/peak.json" --rate 0 --duration "$secs" --concurrency 32
  r=$work/peak.json
  echo "| peak single-event ingest | \`--rate 0 --duration $secs --concurrency 32\` | **$(json "$r" 'round(d["requests_per_s"])') req/s**, p50 $(json "$r" 'd["latency_ms"]["p50"]') ms, p99 $(json "$r" 'd["latency_ms"]["p99"]') ms, errors $(json "$r" 'd["errors"]') |"
  stop "$webhook"

  for batch in 10 500; do
    port=$(free_port); url=http://127.0.0.1:$port
    pipeline_env "$backend" "${backend}_drain$batch" "$port"
    start webhook; webhook=$started; wait_http "$url/health"
    load "$url" "$work/batch.json" --rate 0 --events "$fill_events" --batch-size 100 --concurrency 8
    r=$work/batch.json
    if [ "$batch" = 10 ]; then
      echo "| batch ingest, 100 events per request | \`--rate 0 --events $fill_events --batch-size 100 --concurrency 8\` | **$(json "$r" 'round(d["events_per_s"])') events/s**, p99 $(json "$r" 'd["latency_ms"]["p99"]') ms per request, errors $(json "$r" 'd["errors"]') |"
    fi
    local accepted; accepted=$(json "$r" 'd["events_accepted"]')
    echo "| consumer drain, batch size $batch | one \`consumer\` process, DAY15_BATCH_SIZE=$batch, $accepted queued events | **$(drain_rate "$url" "$accepted" "$batch") events/s** |"
    stop "$webhook"
  done

  port=$(free_port); url=http://127.0.0.1:$port
  pipeline_env "$backend" "${backend}_e2e" "$port"
  start webhook; webhook=$started; wait_http "$url/health"
  start consumer; local consumer=$started
  load "$url" "$work/e2e.json" --rate 1000 --duration "$secs" --concurrency 32 --verify
  r=$work/e2e.json
  echo "| end-to-end at 1,000 events/s (webhook + 1 consumer) | \`--rate 1000 --duration $secs --concurrency 32 --verify\` | received→applied p50 $(json "$r" 'd["verify"]["pipeline_end_to_end_ms"]["p50_ms"]') ms, p95 $(json "$r" 'd["verify"]["pipeline_end_to_end_ms"]["p95_ms"]') ms, p99 $(json "$r" 'd["verify"]["pipeline_end_to_end_ms"]["p99_ms"]') ms; drained: $(json "$r" 'd["verify"]["complete"]') |"
  stop "$consumer"; stop "$webhook"

  if [ "$backend" = redis ]; then
    local x
    x=$(redis-benchmark -p "$redis_port" -c 32 -n 200000 -q XADD bench:ceiling '*' f v 2>/dev/null | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1)
    echo "| ceiling: redis-benchmark XADD, 32 clients, no pipelining | \`redis-benchmark -c 32 -n 200000 XADD …\` | $x |"
    x=$(redis-benchmark -p "$redis_port" -c 8 -n 1000000 -P 100 -q XADD bench:ceiling2 '*' f v 2>/dev/null | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1)
    echo "| ceiling: redis-benchmark XADD, 8 clients, pipeline 100 | \`redis-benchmark -c 8 -P 100 -n 1000000 XADD …\` | $x |"
  fi
}

startup_time() {
  local port; port=$(free_port)
  pipeline_env sqlite startup "$port"
  start orchestrator; local o=$started
  wait_http "http://127.0.0.1:$port/health"
  sleep 0.2
  local ms; ms=$(grep -Eo 'Webhook healthy after [0-9]+ ms' "$work/startup.log" | grep -Eo '[0-9]+' | head -1)
  stop "$o"
  echo
  echo "Orchestrator start to webhook healthy (sqlite): ${ms} ms"
}

echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr); load generator on the same machine"
case "$which_backends" in
  sqlite) bench_backend sqlite ;;
  redis) start_redis; pids+=("$redis_pid"); bench_backend redis ;;
  all) bench_backend sqlite; start_redis; pids+=("$redis_pid"); bench_backend redis ;;
  *) echo "usage: $0 [sqlite|redis|all] [seconds]" >&2; exit 2 ;;
esac
startup_time
