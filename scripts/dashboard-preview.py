#!/usr/bin/env python3
"""Development preview of the dashboard page, without the pipeline.

Serves crates/webhook/assets/dashboard.html at /dashboard (re-read on every request, so edits
show on reload) next to made-up but well-formed /analytics, /stats and /analytics/stream
(Server-Sent Events) documents that grow every second, in the shapes of pipeline_core's
AnalyticsSnapshot and PipelineStats.

    python3 scripts/dashboard-preview.py [--port 8099] [--empty] [--seed 7]

--empty starts with a pipeline that never saw an event (the page's empty state) and adds no
events by itself; POST /webhook/events (the page's curl command) adds one of the posted type.
Stopping and starting the script again shows the page reconnecting. Only a development aid: nothing
in the build or the tests uses it.
"""

import argparse
import json
import random
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "crates/webhook/assets/dashboard.html"
SOURCES = {"organic": 5, "google_ads": 3, "referral": 2, "twitter": 1, "product_hunt": 1}
COUNTRIES = {"US": 6, "DE": 2, "GB": 2, "FR": 1, "IN": 2, "BR": 1}
PLANS = {"starter": (29.0, 5), "pro": (99.0, 3), "team": (249.0, 1), "enterprise": (1990.0, 0.3)}
FEATURES = {"api_call": (200, 6), "export": (5, 2), "report_generated": (3, 1), "seat_added": (2, 1)}
TYPES = {"usage_tracked": 10, "user_signup": 4, "subscription_created": 2, "page_view": 1}


def pick(rng, weights):
    """A key at random; the weight is the value or, for tuples, its last item."""
    return rng.choices(list(weights), [w[-1] if isinstance(w, tuple) else w for w in weights.values()])[0]


class Pipeline:
    """Aggregates of a made-up event stream, kept the way the consumers keep them."""

    def __init__(self, seed, empty):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.version = 0
        self.processed = self.received = self.duplicates = self.rejected = 0
        self.by_type, self.sources, self.countries = {}, {}, {}
        self.plans, self.features, self.users, self.per_minute = {}, {}, {}, {}
        self.queue_depth, self.dlq_depth = 0, 0
        if not empty:
            now = time.time()
            for ago in range(45, 0, -1):  # a rising, wavy last 45 minutes
                minute = int(now // 60) - ago
                rate = 120 + 90 * (45 - ago) / 45 + 40 * ((ago % 7) - 3) / 3
                for _ in range(int(rate)):
                    self.apply(minute)
            self.dlq_depth = 3

    def apply(self, minute, event_type=None):
        rng, t = self.rng, event_type or pick(self.rng, TYPES)
        user = f"user_{rng.randint(1, 5000):04d}"
        self.processed += 1
        self.received += 1
        self.by_type[t] = self.by_type.get(t, 0) + 1
        bucket = self.per_minute.setdefault(minute, {})
        bucket[t] = bucket.get(t, 0) + 1
        if t == "user_signup":
            s, c = pick(rng, SOURCES), pick(rng, COUNTRIES)
            self.sources[s] = self.sources.get(s, 0) + 1
            self.countries[c] = self.countries.get(c, 0) + 1
        elif t == "subscription_created":
            plan = pick(rng, PLANS)
            amount = PLANS[plan][0] * (10 / 12 if rng.random() < 0.3 else 1)  # annual plans
            count, mrr = self.plans.get(plan, (0, 0.0))
            self.plans[plan] = (count + 1, mrr + amount)
        elif t == "usage_tracked":
            f = pick(rng, FEATURES)
            q = rng.randint(1, FEATURES[f][0])
            events, quantity = self.features.get(f, (0, 0))
            self.features[f] = (events + 1, quantity + q)
            self.users[user] = self.users.get(user, 0) + q
        self.users.setdefault(user, 0)

    def tick(self):
        with self.lock:
            for _ in range(self.rng.randint(1, 7)):
                self.apply(int(time.time() // 60))
            self.queue_depth = self.rng.randint(0, 12)
            self.duplicates += self.rng.randint(0, 1)
            self.version += 1

    def analytics(self):
        now = time.time()
        this_minute = int(now // 60)
        top = sorted(((q, u) for u, q in self.users.items() if q > 0), reverse=True)[:10]
        return {
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "events_processed": self.processed,
            "events_by_type": dict(sorted(self.by_type.items())),
            "unhandled": self.by_type.get("page_view", 0),
            "distinct_users": len(self.users),
            "signups": {"total": self.by_type.get("user_signup", 0),
                        "by_source": self.sources, "by_country": self.countries},
            "subscriptions": {
                "total": self.by_type.get("subscription_created", 0),
                "mrr": round(sum(m for _, m in self.plans.values()), 2),
                "by_plan": {p: {"count": c, "mrr": round(m, 2)} for p, (c, m) in self.plans.items()},
            },
            "usage": {
                "events": self.by_type.get("usage_tracked", 0),
                "quantity": sum(q for _, q in self.features.values()),
                "by_feature": {f: {"events": e, "quantity": q} for f, (e, q) in self.features.items()},
                "top_users": [{"user_id": u, "quantity": q} for q, u in top],
            },
            "events_per_minute": [
                {"minute": datetime.fromtimestamp(m * 60, timezone.utc).strftime("%Y-%m-%dT%H:%M:00Z"),
                 "total": sum(self.per_minute.get(m, {}).values()),
                 "by_type": self.per_minute.get(m, {})}
                for m in range(this_minute - 59, this_minute + 1)
            ],
            "end_to_end_latency": self.latency(2.4, 11.8, 38.5),
        }

    def latency(self, p50, p95, p99):
        if not self.processed:
            return {"count": 0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
        jitter = 1 + self.rng.random() * 0.1
        return {"count": self.processed, "p50_ms": round(p50 * jitter, 3),
                "p95_ms": round(p95 * jitter, 3), "p99_ms": round(p99 * jitter, 3),
                "mean_ms": round(p50 * 1.4, 3)}

    def stats(self):
        return {"backend": "sqlite", "received": self.received + self.duplicates,
                "accepted": self.received, "duplicates": self.duplicates,
                "rejected": 2 if self.processed else 0, "processed": self.processed,
                "failed": 5 if self.processed else 0, "retried": 4 if self.processed else 0,
                "dead_lettered": self.dlq_depth, "unhandled": self.by_type.get("page_view", 0),
                "queue_depth": self.queue_depth, "dlq_depth": self.dlq_depth,
                "latency": {"ingest": self.latency(0.4, 1.1, 2.9),
                            "end_to_end": self.latency(2.4, 11.8, 38.5)}}


def handler(pipeline):
    class Handler(BaseHTTPRequestHandler):
        def send(self, status, ctype, body):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/dashboard":
                self.send(200, "text/html; charset=utf-8", PAGE.read_bytes())
            elif path in ("/analytics", "/stats"):
                with pipeline.lock:
                    doc = pipeline.analytics() if path == "/analytics" else pipeline.stats()
                self.send(200, "application/json", json.dumps(doc).encode())
            elif path == "/analytics/stream":
                self.stream()
            else:
                self.send(404, "application/json", b'{"error":"not_found"}')

        def stream(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = -1
            try:
                while True:
                    with pipeline.lock:
                        fresh = pipeline.version != seen
                        seen = pipeline.version
                        doc = {"analytics": pipeline.analytics(), "stats": pipeline.stats()} if fresh else None
                    if doc:
                        self.wfile.write(f"event: snapshot\ndata: {json.dumps(doc)}\n\n".encode())
                        self.wfile.flush()
                    time.sleep(1)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self):
            try:
                event = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                event_type = str(event["event_type"])
            except (ValueError, KeyError, TypeError):
                return self.send(400, "application/json", b'{"error":"invalid_event"}')
            with pipeline.lock:
                pipeline.apply(int(time.time() // 60), event_type)
                pipeline.version += 1
            self.send(202, "application/json", b'{"status":"accepted"}')

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--empty", action="store_true", help="never any event")
    args = parser.parse_args()
    pipeline = Pipeline(args.seed, args.empty)

    def run():
        while True:
            time.sleep(1)
            if not args.empty:
                pipeline.tick()

    threading.Thread(target=run, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(pipeline))
    server.daemon_threads = True
    print(f"dashboard preview on http://127.0.0.1:{args.port}/dashboard")
    server.serve_forever()


if __name__ == "__main__":
    main()
