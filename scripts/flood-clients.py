#!/usr/bin/env python3
"""The hostile clients and the samplers of scripts/flood.sh, one role per process.

    flood-clients.py silent  PORT COUNT SECONDS OUT   sockets that connect and send nothing,
                                                      reopened whenever the server closes them
    flood-clients.py sse     PORT COUNT SECONDS OUT   clients of /analytics/stream, held open
    flood-clients.py values  PORT COUNT SECONDS OUT   COUNT user_signup events, each with its own
                                                      metadata.source, in batches of 100 spread
                                                      over SECONDS
    flood-clients.py probe   PORT SECONDS OUT         /health and /analytics twice a second, each
                                                      on a new connection
    flood-clients.py sample  PORT PID OUT             VmRSS of PID every 200 ms, the open
                                                      connections to PORT every second and
                                                      PID's CPU time, until SIGTERM

Every role talks to 127.0.0.1 only, stops by itself after SECONDS (sample: on SIGTERM) and
writes one JSON summary to OUT.
"""
import asyncio
import datetime
import http.client
import json
import os
import signal
import sys
import time

HOST = "127.0.0.1"


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write(out, summary):
    with open(out, "w") as f:
        json.dump(summary, f)


async def silent(port, count, seconds, out):
    stop = time.monotonic() + seconds
    s = {"sockets": count, "opened": 0, "closed_by_server": 0, "connect_errors": 0,
         "open_now": 0, "max_open": 0}
    held = []

    async def one(index):
        # Spread the first connects over a second, as a crowd arrives.
        await asyncio.sleep(index / count)
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
            except (OSError, asyncio.TimeoutError):
                s["connect_errors"] += 1
                await asyncio.sleep(0.2)
                continue
            s["opened"] += 1
            s["open_now"] += 1
            s["max_open"] = max(s["max_open"], s["open_now"])
            try:
                await asyncio.wait_for(reader.read(1), max(0.0, stop - time.monotonic()))
                s["closed_by_server"] += 1
                held.append(time.monotonic() - t0)
            except asyncio.TimeoutError:
                pass  # the run is over, not the server's doing
            except OSError:
                s["closed_by_server"] += 1
                held.append(time.monotonic() - t0)
            finally:
                s["open_now"] -= 1
                writer.close()

    await asyncio.gather(*(one(i) for i in range(count)))
    s["held_s"] = {"min": round(min(held), 2) if held else None,
                   "p50": round(percentile(held, 0.5), 2) if held else None,
                   "max": round(max(held), 2) if held else None}
    del s["open_now"]
    write(out, s)


async def sse(port, count, seconds, out):
    stop = time.monotonic() + seconds
    s = {"clients": count, "served": 0, "refused_429": 0, "other": {}, "errors": 0,
         "ended_early": 0, "snapshots": 0, "bytes": 0}
    pattern = b"event: snapshot"
    request = (f"GET /analytics/stream HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()

    async def one():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        except (OSError, asyncio.TimeoutError):
            s["errors"] += 1
            return
        try:
            writer.write(request)
            status = await asyncio.wait_for(reader.readline(), 10)
        except (OSError, asyncio.TimeoutError):
            s["errors"] += 1
            writer.close()
            return
        try:
            parts = status.split()
            code = parts[1].decode() if len(parts) > 1 else "none"
            if code == "429":
                s["refused_429"] += 1
                return
            if code != "200":
                s["other"][code] = s["other"].get(code, 0) + 1
                return
            s["served"] += 1
            tail = b""
            while True:
                left = stop - time.monotonic()
                if left <= 0:
                    break
                try:
                    data = await asyncio.wait_for(reader.read(65536), left)
                except asyncio.TimeoutError:
                    break
                except OSError:
                    data = b""
                if not data:
                    s["ended_early"] += 1
                    break
                s["bytes"] += len(data)
                buf = tail + data
                s["snapshots"] += buf.count(pattern)
                tail = buf[-(len(pattern) - 1):]
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    write(out, s)


def values(port, count, seconds, out):
    batch = 100
    batches = (count + batch - 1) // batch
    interval = seconds / batches
    s = {"events": count, "requests": 0, "statuses": {}, "accepted": 0, "errors": 0}
    run = f"{time.time_ns():x}"
    conn = None
    start = time.monotonic()
    for b in range(batches):
        pause = start + b * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        events = [{"event_id": f"flood_{run}_{i}", "event_type": "user_signup",
                   "user_id": f"flood_user_{i}", "timestamp": now,
                   "metadata": {"source": f"flood-source-{i:05d}"}}
                  for i in range(b * batch, min(count, (b + 1) * batch))]
        body = json.dumps({"events": events})
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
            conn.request("POST", "/webhook/batch", body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
            code = str(answer.status)
            if answer.status == 202:
                s["accepted"] += json.loads(data).get("results", {}).get("accepted", 0)
        except (OSError, http.client.HTTPException, ValueError):
            code = "transport"
            s["errors"] += 1
            conn = None
        s["requests"] += 1
        s["statuses"][code] = s["statuses"].get(code, 0) + 1
    write(out, s)


def probe(port, seconds, out):
    stop = time.monotonic() + seconds
    health, sizes, failures = [], [], {}
    while time.monotonic() < stop:
        t_next = time.monotonic() + 0.5
        for path in ("/health", "/analytics"):
            t0 = time.monotonic()
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
                conn.request("GET", path)
                answer = conn.getresponse()
                body = answer.read()
                conn.close()
                ok = answer.status == 200
                key = f"{path} {answer.status}"
            except (OSError, http.client.HTTPException):
                ok, key = False, f"{path} transport"
            ms = (time.monotonic() - t0) * 1000
            if not ok:
                failures[key] = failures.get(key, 0) + 1
            elif path == "/health":
                health.append(ms)
            else:
                sizes.append(len(body))
        time.sleep(max(0.0, t_next - time.monotonic()))
    r = lambda v: None if v is None else round(v, 1)
    write(out, {"health_ms": {"count": len(health), "p50": r(percentile(health, 0.5)),
                              "p99": r(percentile(health, 0.99)),
                              "max": r(max(health) if health else None)},
                "analytics_bytes": {"count": len(sizes), "min": min(sizes, default=None),
                                    "max": max(sizes, default=None),
                                    "last": sizes[-1] if sizes else None},
                "failures": failures})


def open_connections(port):
    """Server-side ESTABLISHED sockets of PORT: local port PORT, state 01."""
    wanted = f":{port:04X}"
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split(None, 4)
                    if fields[1].endswith(wanted) and fields[3] == "01":
                        n += 1
        except OSError:
            pass
    return n


def cpu_seconds(pid):
    """User + system CPU time of PID so far, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def sample(port, pid, out):
    started = time.monotonic()
    cpu_first = cpu_seconds(pid)
    cpu_last = cpu_first
    rss, conns = [], []
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    turn = 0
    while not stopping:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss.append(int(line.split()[1]))
        except OSError:
            break  # the process is gone; the script reports it
        cpu_last = cpu_seconds(pid) or cpu_last
        if turn % 5 == 0:
            conns.append([round(time.monotonic() - started), open_connections(port)])
        turn += 1
        time.sleep(0.2)
    write(out, {"rss_kb": {"samples": len(rss), "first": rss[0] if rss else None,
                           "max": max(rss, default=None), "last": rss[-1] if rss else None},
                "cpu_s": round(cpu_last - cpu_first, 2) if cpu_first is not None else None,
                "seconds": round(time.monotonic() - started, 1),
                "connections": conns})


def main():
    role, args = sys.argv[1], sys.argv[2:]
    if role == "silent":
        asyncio.run(silent(int(args[0]), int(args[1]), float(args[2]), args[3]))
    elif role == "sse":
        asyncio.run(sse(int(args[0]), int(args[1]), float(args[2]), args[3]))
    elif role == "values":
        values(int(args[0]), int(args[1]), float(args[2]), args[3])
    elif role == "probe":
        probe(int(args[0]), float(args[1]), args[2])
    elif role == "sample":
        sample(int(args[0]), int(args[1]), args[2])
    else:
        sys.exit(f"unknown role {role}")


if __name__ == "__main__":
    main()
