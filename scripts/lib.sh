# Helpers shared by the scripts in this folder (sourced, not run). Each script makes its own
# temp dir in `$work` before calling `start_redis`.

# A TCP port nothing listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 10 s for URL to answer 2xx.
wait_http() {
  for _ in $(seq 1 500); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.02; done
  echo "no answer from $1" >&2
  return 1
}

# The pipeline-wide `processed` count from a webhook's /stats (cheap enough to poll often).
processed() { curl -s "$1/stats" | grep -o '"processed":[0-9]*' | cut -d: -f2; }

# What a webhook's /health says is queued (waiting, leased or due for a retry): cheaper to
# poll than /stats on a partitioned Redis queue, where /stats merges every partition's maps.
queue_depth() { curl -s "$1/health" | grep -o '"queue_depth":[0-9]*' | cut -d: -f2; }

# Starts a private redis-server without persistence in `$work` on a free port; sets
# `redis_port` and `redis_pid`, and fails if it does not answer within 4 s.
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --logfile "$work/redis.log" &
  redis_pid=$!
  for _ in $(seq 1 200); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0; sleep 0.02; done
  echo "redis-server did not start on port $redis_port" >&2
  return 1
}

# Starts a private Redis Cluster of 3 primaries with one replica each, without persistence, in
# `$work/cluster`; sets `cluster_ports` (all six), `cluster_seeds` (a DAY15_REDIS_URL list) and
# adds the nodes to `pids`. Fails if the cluster is not ok within 30 s.
start_cluster() {
  cluster_ports=()
  local port bus
  for i in 1 2 3 4 5 6; do
    port=$(free_port); bus=$(free_port)
    mkdir -p "$work/cluster/$i"
    redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 1000 --save "" --appendonly no \
      --dir "$work/cluster/$i" --logfile "$work/cluster/$i/redis.log" &
    pids+=($!)
    cluster_ports+=("$port")
  done
  for port in "${cluster_ports[@]}"; do
    for _ in $(seq 1 200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.02; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster_ports[@]}") \
    --cluster-replicas 1 --cluster-yes >"$work/cluster/create.out" 2>&1
  for _ in $(seq 1 300); do
    local ok=0
    for port in "${cluster_ports[@]}"; do
      redis-cli -p "$port" CLUSTER INFO | grep -q 'cluster_state:ok' && ok=$((ok + 1))
    done
    if [ "$ok" = 6 ]; then
      cluster_seeds=$(printf 'redis://127.0.0.1:%s,' "${cluster_ports[@]}")
      cluster_seeds=${cluster_seeds%,}
      return 0
    fi
    sleep 0.1
  done
  echo "the redis cluster did not reach cluster_state:ok" >&2
  return 1
}

# Ports of the cluster nodes that are primaries now.
cluster_primaries() {
  for port in "${cluster_ports[@]}"; do
    if [ "$(redis-cli -p "$port" ROLE | head -1)" = master ]; then echo "$port"; fi
  done
}

# Redis's own CPU time (user + sys, seconds) on the node at port $1 (`INFO cpu`).
redis_cpu() {
  redis-cli -p "$1" INFO cpu | tr -d '\r' \
    | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.6f\n", s }'
}

# Processes in `pids` get SIGTERM and `$work` is removed when the script exits.
pids=()
stop_pids_and_remove_work() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
