#!/usr/bin/env bash
# Runs the crash matrix (tests/crash_matrix.rs) and the Redis Cluster faults
# (tests/redis_cluster.rs) and prints its figures as the Markdown table
# of RELIABILITY.md, followed by the raw `RELIABILITY …` lines it was built from.
#
#   scripts/reliability-figures.sh [extra cargo test filter]
#
# Each test prints one line `RELIABILITY backend=… fault=… sent=… accepted=… applied=… lost=…
# double=… …`; the common columns come first, the rest of each line is kept as "details".
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --workspace --bins
if ! out=$(cargo test --quiet --test crash_matrix --test redis_cluster -- --nocapture "$@" 2>&1); then
  echo "the fault tests failed; their last lines:" >&2
  tail -n 60 <<<"$out" >&2
  exit 1
fi
raw=$(grep -o 'RELIABILITY .*' <<<"$out" | sort)

echo "| backend | fault | sent | accepted | applied | lost | applied twice | details |"
echo "|---|---|---:|---:|---:|---:|---:|---|"
while read -r _ fields; do
  declare -A f=()
  details=()
  for kv in $fields; do
    k=${kv%%=*}
    v=${kv#*=}
    case $k in
      backend|fault|sent|accepted|applied|lost|double) f[$k]=$v ;;
      *) details+=("$k=$v") ;;
    esac
  done
  echo "| ${f[backend]} | ${f[fault]} | ${f[sent]} | ${f[accepted]} | ${f[applied]} | ${f[lost]} | ${f[double]} | ${details[*]} |"
  unset f
done <<<"$raw"
echo
echo '```'
echo "$raw"
echo '```'
