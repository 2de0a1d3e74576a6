"""The cost of the hardening middleware per request, in process (no Ray, no HTTP): a FastAPI
app with ~70 routes and a no-model GET, called as ASGI directly, bare vs with the one
`RequestPath` layer `middleware.install` puts on it. Rounds are interleaved; the ratio is
the result. (Until the per-concern classes were removed, a third column stacked them as
`install` did before issue #20: BENCHMARKS.md keeps those numbers.)

    .venv/bin/python bench/middleware.py [--requests 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fastapi import FastAPI  # noqa: E402

from graphs import errors, middleware  # noqa: E402
from graphs.middleware import HardeningConfig  # noqa: E402


def build(kind: str) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    if kind == "one layer":
        middleware.install(app, HardeningConfig())
    for i in range(70):  # routes before the one asked for, like the gateway's
        app.add_api_route(f"/v1/r{i}/{{item_id}}", lambda item_id: {"id": item_id})

    @app.get("/v1/styles")
    async def styles() -> dict:
        return {"data": [{"id": "photo"}, {"id": "anime"}, {"id": "watercolor"}]}

    return app


async def drive(app, n: int) -> float:
    scope_base = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
                  "path": "/v1/styles", "raw_path": b"/v1/styles", "root_path": "",
                  "query_string": b"", "server": ("127.0.0.1", 8000),
                  "client": ("127.0.0.1", 5555),
                  "headers": [(b"host", b"localhost:8000"), (b"accept", b"*/*"),
                              (b"authorization", b"Bearer psk_x")]}

    statuses = []
    never = asyncio.Event()

    def receiver():
        sent = False

        async def receive():  # the body once, then (as a server does) wait for a disconnect
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await never.wait()
        return receive

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.perf_counter()
    for _ in range(n):
        await app(dict(scope_base, headers=list(scope_base["headers"])), receiver(), send)
    elapsed = time.perf_counter() - started
    assert set(statuses) == {200}, set(statuses)
    return elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kinds = ["bare", "one layer"]
    apps = {k: build(k) for k in kinds}

    async def run():
        for app in apps.values():  # lifespan-less warm-up (builds the middleware stack)
            await drive(app, 200)
        times = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:
                times[k].append(await drive(apps[k], args.requests))
        return times

    times = asyncio.run(run())
    load = os.getloadavg()[0]
    print(f"in-process ASGI, GET /v1/styles-like route, {args.requests} requests x "
          f"{args.rounds} rounds, load average {load:.1f}")
    bare = statistics.median(times["bare"])
    print("| app | us/request (median) | req/s (one core) | x bare |")
    print("|---|---|---|---|")
    for k in kinds:
        t = statistics.median(times[k])
        print(f"| {k} | {t * 1e6:.0f} | {1 / t:,.0f} | {t / bare:.2f} |")


if __name__ == "__main__":
    main()
