#!/usr/bin/env bash
# The project's benchmark: ingest, drain and end-to-end figures for the sqlite and redis
# backends, measured with the project's own binaries on this machine (load generator included).
#
#   scripts/bench.sh [sqlite|redis|cluster|all] [seconds per run]      (defaults: all, 10)
#
# `cluster` compares one partition on one redis-server with 16 partitions on a private 3+3
# Redis Cluster: Redis CPU per event on each primary, the cost of one merged read, and the
# end-to-end latency across partitions.
# Everything runs in a temp dir with its own ports, SQLite files and redis-server; nothing
# shared is touched. Prints one Markdown table per backend, ready for BENCHMARKS.md.
# BIN=<dir> runs the webhook and consumer from another build's `target/release`, to compare
# two builds in one sitting (the load generator always comes from this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."

which_backends=${1:-all}
secs=${2:-10}
fill_events=${FILL_EVENTS:-200000}

cargo build --release --workspace --quiet
bin=${BIN:-target/release}
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
  target/release/event-generator --url "$url" load --json "$@" >"$out" 2>/dev/null || true
}


hz=$(getconf CLK_TCK)
# CPU seconds (user + sys) a process has used so far.
cpu_of() { awk -v hz="$hz" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"; }
# Redis CPU seconds so far, 0 without a redis-server.
redis_now() { if [ -n "$redis_port" ]; then redis_cpu "$redis_port"; else echo 0; fi; }
# µs per event of CPU seconds $2 - $1 over $3 events.
per_event() { python3 -c "print(f'{($2 - $1) * 1e6 / $3:.1f}')"; }
# The CPU cell: process name $1 at $2 µs per event, then Redis's from its CPU seconds $3 to $4
# over $5 events when there is a redis-server.
cpu_cell() {
  if [ -n "$redis_port" ]; then echo "$1 $2 µs / Redis $(per_event "$3" "$4" "$5") µs"; else echo "$1 $2 µs"; fi
}

# url, events expected, batch size [, "depth"] -> events/s of one consumer draining them. Done
# when /stats counts them processed, or with "depth" when /health's queue_depth is 0 (a
# cheaper poll, which leaves the CPU figures of a partitioned queue alone). Sets
# drain_consumer_us to the consumer's CPU µs per event.
drain_rate() {
  local url=$1 n=$2 batch=$3 until=${4:-processed}
  DAY15_BATCH_SIZE=$batch start consumer
  local consumer=$started t0 t1
  t0=$(date +%s.%N)
  if [ "$until" = depth ]; then
    until [ "$(queue_depth "$url")" = 0 ]; do sleep 0.1; done
  else
    until [ "$(processed "$url")" -ge "$n" ]; do sleep 0.1; done
  fi
  t1=$(date +%s.%N)
  per_event 0 "$(cpu_of "$consumer")" "$n" >"$work/drain_consumer_us"
  stop "$consumer"
  python3 -c "print(round($n / ($t1 - $t0)))"
}

bench_backend() {
  local backend=$1 port url r
  echo
  echo "### $backend"
  echo
  echo "| measure | command (event-generator load …) | result | CPU per event (user + sys) |"
  echo "|---|---|---|---|"

  port=$(free_port); url=http://127.0.0.1:$port
  pipeline_env "$backend" "${backend}_ingest" "$port"
  start webhook; local webhook=$started; wait_http "$url/health"

  load "$url" "$work/steady.json" --rate 1000 --duration "$secs" --concurrency 32
  r=$work/steady.json
  echo "| single-event ingest at 1,000 req/s | \`--rate 1000 --duration $secs --concurrency 32\` | p50 $(json "$r" 'd["latency_ms"]["p50"]') ms, p99 $(json "$r" 'd["latency_ms"]["p99"]') ms, max $(json "$r" 'd["latency_ms"]["max"]') ms, errors $(json "$r" 'd["errors"]') | |"

  local w0 w1 r0 r1 n
  w0=$(cpu_of "$webhook"); r0=$(redis_now)
  load "$url" "$work/peak.json" --rate 0 --duration "$secs" --concurrency 32
  w1=$(cpu_of "$webhook"); r1=$(redis_now)
  r=$work/peak.json; n=$(json "$r" 'd["events_accepted"]')
  peak_single=$(json "$r" 'round(d["requests_per_s"])')
  echo "| peak single-event ingest | \`--rate 0 --duration $secs --concurrency 32\` | **$peak_single req/s**, p50 $(json "$r" 'd["latency_ms"]["p50"]') ms, p99 $(json "$r" 'd["latency_ms"]["p99"]') ms, errors $(json "$r" 'd["errors"]') | $(cpu_cell webhook "$(per_event "$w0" "$w1" "$n")" "$r0" "$r1" "$n") |"
  stop "$webhook"

  for batch in 10 500; do
    port=$(free_port); url=http://127.0.0.1:$port
    pipeline_env "$backend" "${backend}_drain$batch" "$port"
    start webhook; webhook=$started; wait_http "$url/health"
    w0=$(cpu_of "$webhook"); r0=$(redis_now)
    load "$url" "$work/batch.json" --rate 0 --events "$fill_events" --batch-size 100 --concurrency 8
    w1=$(cpu_of "$webhook"); r1=$(redis_now)
    r=$work/batch.json
    local accepted; accepted=$(json "$r" 'd["events_accepted"]')
    if [ "$batch" = 10 ]; then
      echo "| batch ingest, 100 events per request | \`--rate 0 --events $fill_events --batch-size 100 --concurrency 8\` | **$(json "$r" 'round(d["events_per_s"])') events/s**, p99 $(json "$r" 'd["latency_ms"]["p99"]') ms per request, errors $(json "$r" 'd["errors"]') | $(cpu_cell webhook "$(per_event "$w0" "$w1" "$accepted")" "$r0" "$r1" "$accepted") |"
    fi
    r0=$(redis_now)
    local rate; rate=$(drain_rate "$url" "$accepted" "$batch")
    r1=$(redis_now)
    echo "| consumer drain, batch size $batch | one \`consumer\` process, DAY15_BATCH_SIZE=$batch, $accepted queued events | **$rate events/s** | $(cpu_cell consumer "$(cat "$work/drain_consumer_us")" "$r0" "$r1" "$accepted") |"
    stop "$webhook"
  done

  port=$(free_port); url=http://127.0.0.1:$port
  pipeline_env "$backend" "${backend}_e2e" "$port"
  start webhook; webhook=$started; wait_http "$url/health"
  start consumer; local consumer=$started
  load "$url" "$work/e2e.json" --rate 1000 --duration "$secs" --concurrency 32 --verify
  r=$work/e2e.json
  echo "| end-to-end at 1,000 events/s (webhook + 1 consumer) | \`--rate 1000 --duration $secs --concurrency 32 --verify\` | received→applied p50 $(json "$r" 'd["verify"]["pipeline_end_to_end_ms"]["p50_ms"]') ms, p95 $(json "$r" 'd["verify"]["pipeline_end_to_end_ms"]["p95_ms"]') ms, p99 $(json "$r" 'd["verify"]["pipeline_end_to_end_ms"]["p99_ms"]') ms; drained: $(json "$r" 'd["verify"]["complete"]') | |"
  stop "$consumer"; stop "$webhook"

  if [ "$backend" = redis ]; then
    local x
    x=$(redis-benchmark -p "$redis_port" -c 32 -n 200000 -q XADD bench:ceiling '*' f v 2>/dev/null | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1)
    echo "| ceiling: redis-benchmark XADD, 32 clients, no pipelining | \`redis-benchmark -c 32 -n 200000 XADD …\` | $x | |"
    x=$(redis-benchmark -p "$redis_port" -c 8 -n 1000000 -P 100 -q XADD bench:ceiling2 '*' f v 2>/dev/null | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1)
    echo "| ceiling: redis-benchmark XADD, 8 clients, pipeline 100 | \`redis-benchmark -c 8 -P 100 -n 1000000 XADD …\` | $x | |"
    # The enqueue script itself, one new event per call (a random id), as the webhook calls it
    # for a single event: what single-event ingest is measured against.
    local sha payload
    sha=$(redis-cli -p "$redis_port" SCRIPT LOAD "$(cat crates/core/src/backend/redis/lua/enqueue.lua)")
    payload='{"event_id":"evt_x","event_type":"usage_tracked","user_id":"user_1","timestamp":"2025-12-16T10:00:00Z","metadata":{"feature":"export","quantity":1},"received_at":"2025-12-16T10:00:00.000000Z"}'
    x=$(redis-benchmark -p "$redis_port" -c 32 -n 200000 -r 1000000000000 -q EVALSHA "$sha" 3 \
      '{ceiling}:stream' '{ceiling}:m:counters' '{ceiling}:maps' '{ceiling}:seen:' 86400000 \
      counters accepted duplicates 0 '' 'evt___rand_int__' "$payload" 2>/dev/null \
      | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1)
    local ratio; ratio=$(python3 -c "print(f'{$peak_single / ${x%% *} * 100:.0f}')")
    echo "| ceiling: redis-benchmark EVALSHA of the enqueue script, 32 clients | \`redis-benchmark -c 32 -r … EVALSHA <enqueue.lua> …\` | $x (single-event ingest reached **$ratio%** of it) | |"
  fi
}

# Fills the pipeline at $1 with $2 events (batch ingest), drains them with one consumer and
# prints one table row: Redis CPU (INFO cpu, user + sys) per event on each node in $3...
# (ingest + drain), the sum split into ingest and drain, and what that cost projects to.
# Replicas (ports in $replicas) are reported together, apart from the primaries.
cpu_per_event() {
  local label=$1 url=$2 n=$3; shift 3
  local ports=("$@") port
  snapshot() { for port in "${ports[@]}" $replicas; do redis_cpu "$port"; done | tr '\n' ' '; }
  for port in "${ports[@]}" $replicas; do redis-cli -p "$port" CONFIG RESETSTAT >/dev/null; done
  local before; before=$(snapshot)
  load "$url" "$work/cpu.json" --rate 0 --events "$n" --batch-size 100 --concurrency 8
  local filled; filled=$(snapshot)
  local ingest; ingest=$(json "$work/cpu.json" 'round(d["events_per_s"])')
  local drain; drain=$(drain_rate "$url" "$n" 500 depth)
  local after; after=$(snapshot)
  python3 - "$label" "$n" "$ingest" "$drain" "${#ports[@]}" "$before" "$filled" "$after" <<'PY'
import sys
label, n, ingest, drain, primaries = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
snap = [[float(x) for x in a.split()] for a in sys.argv[6:9]]
use = lambda a, b: [(y - x) * 1e6 / n for x, y in zip(snap[a], snap[b])]
total, fill, empty = use(0, 2), use(0, 1), use(1, 2)
prim = total[:primaries]
per_node = " + ".join(f"{u:.1f}" for u in prim)
t = sum(prim)
replicas = f"{sum(total[primaries:]):.1f} µs" if total[primaries:] else "—"
print(f"| {label} | {int(ingest):,} / {int(drain):,} | {per_node} = **{t:.1f} µs** "
      f"| {sum(fill[:primaries]):.1f} / {sum(empty[:primaries]):.1f} µs | {replicas} "
      f"| {1e6 / t:,.0f} | {t:.1f} cores, {-(-t // 0.7):.0f} primaries at 70% |")
PY
}

# Times 100 sequential GET $1/analytics: median and p99 ms, and the Redis CPU one read costs
# summed over the nodes in $2....
read_cost() {
  local url=$1; shift
  local before=() after=() port
  for port in "$@"; do before+=("$(redis_cpu "$port")"); done
  for _ in $(seq 1 100); do
    curl -s -o /dev/null -w '%{time_total}\n' "$url/analytics"
  done >"$work/reads.txt"
  for port in "$@"; do after+=("$(redis_cpu "$port")"); done
  python3 - "$work/reads.txt" "${before[*]}" "${after[*]}" <<'PY'
import sys
t = sorted(float(x) * 1000 for x in open(sys.argv[1]))
cpu = sum(float(a) - float(b) for b, a in zip(sys.argv[2].split(), sys.argv[3].split()))
print(f"median {t[len(t) // 2]:.2f} ms, p99 {t[98]:.2f} ms, Redis CPU {cpu * 1e6 / len(t):.0f} µs per read")
PY
}

# One partition on one redis-server against 16 partitions on a 3+3 Redis Cluster: the Redis
# CPU one event costs (ingest + drain) on each primary, what one merged read costs, and the
# end-to-end latency across partitions. On a 2-core host more nodes cannot add throughput;
# the CPU per event is what projects to many machines.
bench_cluster() {
  local n=$fill_events port url webhook consumer r primaries
  echo
  echo "### Redis Cluster: Redis CPU per event"
  echo
  echo "$n events: batch ingest (100 per request, 8 clients), then one consumer draining at batch 500."
  echo
  echo "| layout | ingest / drain events/s | Redis CPU per event, each primary | of which ingest / drain | replicas | events/s per Redis core | for 1,000,000 events/s |"
  echo "|---|---|---|---|---|---:|---|"

  start_redis; pids+=("$redis_pid")
  port=$(free_port); url=http://127.0.0.1:$port
  pipeline_env redis cpu_single "$port"
  export DAY15_REDIS_MODE=standalone DAY15_REDIS_PARTITIONS=1
  start webhook; webhook=$started; wait_http "$url/health"
  replicas="" cpu_per_event "1 partition, 1 server" "$url" "$n" "$redis_port"
  local single_read; single_read=$(read_cost "$url" "$redis_port")
  stop "$webhook"
  pipeline_env redis e2e_single "$port"
  start webhook; webhook=$started; wait_http "$url/health"
  start consumer; consumer=$started
  load "$url" "$work/single_e2e.json" --rate 1000 --duration "$secs" --concurrency 32 --verify
  local single_e2e
  single_e2e="p50 $(json "$work/single_e2e.json" 'd["verify"]["pipeline_end_to_end_ms"]["p50_ms"]') ms, p99 $(json "$work/single_e2e.json" 'd["verify"]["pipeline_end_to_end_ms"]["p99_ms"]') ms"

  stop "$consumer"; stop "$webhook"
  local ceiling
  ceiling=$(redis-benchmark -p "$redis_port" -c 32 -n 200000 -q XADD bench:ceiling '*' f v 2>/dev/null | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1)

  start_cluster
  primaries=$(cluster_primaries | tr '\n' ' ')
  replicas=$(for p in "${cluster_ports[@]}"; do
    if [[ " $primaries " != *" $p "* ]]; then echo "$p"; fi
  done | tr '\n' ' ')
  port=$(free_port); url=http://127.0.0.1:$port
  pipeline_env redis cpu_cluster "$port"
  export DAY15_REDIS_MODE=cluster DAY15_REDIS_URL=$cluster_seeds DAY15_REDIS_PARTITIONS=16
  start webhook; webhook=$started; wait_http "$url/health"
  # shellcheck disable=SC2086
  cpu_per_event "16 partitions, 3 primaries + 3 replicas" "$url" "$n" $primaries
  # shellcheck disable=SC2086
  local cluster_read; cluster_read=$(read_cost "$url" $primaries)
  echo
  echo "One \`GET /analytics\` after those events (100 sequential reads): 1 partition: $single_read; 16 partitions merged: $cluster_read."

  stop "$webhook"

  # A fresh key prefix: the latencies of the events drained above are not part of this run.
  pipeline_env redis cluster_e2e "$port"
  export DAY15_REDIS_URL=$cluster_seeds
  start webhook; webhook=$started; wait_http "$url/health"
  start consumer; consumer=$started
  load "$url" "$work/cluster_e2e.json" --rate 1000 --duration "$secs" --concurrency 32 --verify
  r=$work/cluster_e2e.json
  echo
  echo "End to end at 1,000 events/s (\`--rate 1000 --duration $secs --concurrency 32 --verify\`, webhook + 1 consumer), received→applied: 16 partitions on the cluster p50 $(json "$r" 'd["verify"]["pipeline_end_to_end_ms"]["p50_ms"]') ms, p99 $(json "$r" 'd["verify"]["pipeline_end_to_end_ms"]["p99_ms"]') ms (drained: $(json "$r" 'd["verify"]["complete"]')); 1 partition on one server, same run: $single_e2e."
  echo
  echo "Ceiling of the same run: redis-benchmark XADD on the single server, 32 clients: $ceiling."
  stop "$consumer"; stop "$webhook"
  unset DAY15_REDIS_MODE DAY15_REDIS_PARTITIONS
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
  cluster) bench_cluster ;;
  all) bench_backend sqlite; start_redis; pids+=("$redis_pid"); bench_backend redis; bench_cluster ;;
  *) echo "usage: $0 [sqlite|redis|cluster|all] [seconds]" >&2; exit 2 ;;
esac
startup_time
