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

# Processes in `pids` get SIGTERM and `$work` is removed when the script exits.
pids=()
stop_pids_and_remove_work() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
