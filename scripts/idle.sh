#!/usr/bin/env bash
# What a pipeline at rest costs: the orchestrator with its webhook and 2 consumers on SQLite,
# started in a temp dir, left alone for S seconds after it settled; prints the CPU time (on-CPU
# nanoseconds of every thread, from /proc/<pid>/task/*/schedstat) each process used, as a
# share of one core, and the total. For comparing two builds.
#
#   scripts/idle.sh [--seconds S] [--consumers N]
#
# Defaults: 60 s, 2 consumers. BIN=<dir> runs the orchestrator from another build's
# `target/release`.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=60
consumers=2
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs="$2"; shift 2 ;;
    --consumers) consumers="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "idle.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet -p orchestrator
bin=$(realpath "${BIN:-target/release}")
work=$(mktemp -d)
. scripts/lib.sh
trap stop_pids_and_remove_work EXIT

port=$(free_port)
(cd "$work" && DAY15_CONSUMERS="$consumers" DAY15_WEBHOOK_PORT="$port" \
  exec "$bin/orchestrator" >"$work/orchestrator.out" 2>&1) &
pids+=($!)
wait_http "http://127.0.0.1:$port/health"
sleep 8 # past start-up: the first gauges, the first checks

# On-CPU nanoseconds of all threads of a process.
oncpu() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%d\n", s }'; }
procs=("${pids[0]}" $(ps --ppid "${pids[0]}" -o pid=))
declare -A before
for p in "${procs[@]}"; do before[$p]=$(oncpu "$p"); done
sleep "$secs"
total=0
printf '%-28s %s\n' process "% of a core"
for p in "${procs[@]}"; do
  used=$(( $(oncpu "$p") - ${before[$p]} ))
  total=$((total + used))
  role=$(tr '\0' ' ' </proc/"$p"/cmdline | awk '{ print ($2 == "" ? "orchestrator" : $2) }')
  printf '%-28s %.3f\n' "$role ($p)" "$(echo "$used / ($secs * 10000000)" | bc -l)"
done
printf '%-28s %.3f\n' total "$(echo "$total / ($secs * 10000000)" | bc -l)"
