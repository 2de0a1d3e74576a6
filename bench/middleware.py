"""The cost of the hardening middleware per request, in process (no Ray, no HTTP): a FastAPI
app with ~70 routes and a no-model GET, called as ASGI directly, bare vs the 12 classes
stacked as `middleware.install` did before issue #20 vs the one `RequestPath` layer it
installs now. Rounds are interleaved; the ratios are the result.

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
from graphs.observability import MetricsMiddleware  # noqa: E402


def stacked(app: FastAPI, config: HardeningConfig) -> None:
    """`middleware.install` before issue #20: one class per concern, 12 layers."""
    app.add_middleware(middleware.ConditionalRequests)
    app.add_middleware(middleware.PublicOrigin, public_base_url=config.public_base_url,
                       trusted_proxies=list(config.trusted_proxies),
                       allowed_hosts=list(config.allowed_hosts),
                       fallback_host=config.fallback_host)
    app.add_middleware(middleware.JsonDepthLimit, max_depth=config.max_json_depth)
    app.add_middleware(middleware.BodySizeLimit, max_bytes=config.max_request_bytes)
    app.add_middleware(middleware.RequestTimeout, seconds=config.request_timeout_s,
                       exempt_paths=list(config.timeout_exempt_paths))
    app.add_middleware(middleware.CancelOnDisconnect)
    app.add_middleware(middleware.AdmissionControl, max_in_flight=config.max_in_flight,
                       exempt_paths=list(config.admission_exempt_paths),
                       hold_paths=list(config.admission_hold_paths))
    app.add_middleware(middleware.ErrorEnvelopeGuard)
    cors = middleware.cors_middleware(config.cors_allow_origins)
    app.add_middleware(cors.cls, *cors.args, **cors.kwargs)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(middleware.RequestId)
    app.add_middleware(middleware.SecurityHeaders)


def build(kind: str) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    config = HardeningConfig()
    if kind == "stacked":
        stacked(app, config)
    elif kind == "one layer":
        middleware.install(app, config)
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
    kinds = ["bare", "stacked", "one layer"]
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
