"""The Ingress app's own CPU per request, in process: no Serve, no HTTP server, no other
process on the machine, so a change of a few microseconds shows (the served bench,
bench/gateway.py, moves by ±8 % or more between runs on a shared 2-core VM).

Ours is the real `graphs.ingress.Ingress` (its ``__init__``: a SQLite record store in a temp
dir, API keys on with a key made in that store, usage accounting, the route index and the
routes bound to the instance), called as ASGI with the headers Serve's HTTP server passes
(an ``X-Request-ID``, the key). The reference is the bare app bench/gateway.py deploys
(`bench._common.reference_app`: the same styles list and chat rules, nothing else). The model
deployments' handles are stand-ins that refuse every call: the routes measured need no model.
The chat plans with the rules' default thresholds (the Router's, in the tiny profile).

Per route, CPU per request (process time, best of `--rounds` batches: the chat's session
writer thread counts), ours / bare, and the chat once more with its session write (the
`TurnWriter`) replaced by a no-op, which shows that write's share.

    .venv/bin/python bench/ingress_app.py [--requests 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import machine, reference_app  # noqa: E402

ROUTES = {"styles": ("GET", "/v1/styles", None),
          "chat": ("POST", "/v1/chat", {"message": "hello, what can you do?"})}


class RefusingHandle:
    """A deployment handle whose calls fail: the measured routes must not call a model."""

    def __getattr__(self, name: str) -> RefusingHandle:
        return self

    def options(self, *args, **kwargs) -> RefusingHandle:
        return self

    def remote(self, *args, **kwargs):
        raise RuntimeError("bench/ingress_app.py: this route called a model deployment")


async def ingress_app(data_dir: str, *, turn_writes: bool = True):
    """The Ingress's FastAPI app after its replica's ``__init__``, and the key's headers."""
    from graphs import ingress
    from router.cascade import Cascade

    config = ingress.IngressConfig(profile="tiny", asset_dir=f"{data_dir}/assets",
                                   database_url=f"sqlite:///{data_dir}/records.db")
    instance = object.__new__(ingress.Ingress.func_or_class)
    handles = [RefusingHandle() for _ in range(5)]
    await instance.__init__(*handles, None, config)
    chat = instance.chat_service
    chat._rules, chat._router_stages = Cascade(), {"rules"}  # the Router's info, no Router
    if not turn_writes:
        async def no_write(**turn):
            return "sess_bench"
        chat.turns.add = no_write
    _, token = instance.records.create_api_key(project="default", name="bench",
                                               requests_per_minute=10**9,
                                               images_per_day=10**8)
    # the app Serve serves: the replica's frozen copy (`@serve.ingress` pickles the app), the
    # one the Ingress's __init__ configured, not the module's `ingress.app`
    return instance.app, {"authorization": f"Bearer {token}"}


async def cpu_per_request(app, headers: dict[str, str], route: str, requests: int,
                          rounds: int) -> float:
    """Microseconds of process CPU per request, the best of `rounds` batches."""
    method, path, body = ROUTES[route]
    raw_body = json.dumps(body).encode() if body else b""
    raw = [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*"),
           (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
           *[(k.encode(), v.encode()) for k, v in headers.items()]]
    if raw_body:
        raw += [(b"content-type", b"application/json"),
                (b"content-length", str(len(raw_body)).encode())]
    statuses: list[int] = []

    async def one() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "root_path": "", "query_string": b"", "headers": list(raw),
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw_body, "more_body": False}
            await asyncio.Event().wait()

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)

    for _ in range(min(300, requests)):  # warm: caches, the route index, the key cache
        await one()
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(requests):
            await one()
        best = min(best, (time.process_time() - started) / requests * 1e6)
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"{route}: {len(bad)} answers were not 200 (e.g. {bad[0]})")
    return best


async def measure(requests: int, rounds: int) -> dict[str, float]:
    results: dict[str, float] = {}
    bare = reference_app()
    for route in ROUTES:
        results[f"bare {route}"] = await cpu_per_request(bare, {}, route, requests, rounds)
    with tempfile.TemporaryDirectory(prefix="psapp") as data_dir:
        ours, headers = await ingress_app(data_dir)
        for route in ROUTES:
            results[f"ours {route}"] = await cpu_per_request(ours, headers, route, requests,
                                                             rounds)
    with tempfile.TemporaryDirectory(prefix="psapp") as data_dir:
        ours, headers = await ingress_app(data_dir, turn_writes=False)
        results["ours chat, no session write"] = await cpu_per_request(
            ours, headers, "chat", requests, rounds)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=5000, help="per batch")
    ap.add_argument("--rounds", type=int, default=5, help="batches; the best one counts")
    ns = ap.parse_args()
    results = asyncio.run(measure(ns.requests, ns.rounds))
    print(f"# the Ingress app in process, CPU per request — {machine()}")
    print(f"{ns.rounds} batches of {ns.requests} requests, the best batch; API key on")
    print("| route | bare app | ours | ours - bare |")
    print("|---|---|---|---|")
    for route in ROUTES:
        bare, ours = results[f"bare {route}"], results[f"ours {route}"]
        print(f"| {route} | {bare:.0f} us | {ours:.0f} us | +{ours - bare:.0f} us |")
    no_write = results["ours chat, no session write"]
    print(f"chat without its session write (TurnWriter a no-op): {no_write:.0f} us; the "
          f"write's share: {results['ours chat'] - no_write:.0f} us per request")


if __name__ == "__main__":
    main()
