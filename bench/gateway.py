"""Gateway overhead and request rate, as shipped: `photostudio serve --profile tiny` (API keys
on, a key made with `photostudio keys create`, rate limits, the default middleware and
request path), against two references started in the same run: a plain FastAPI + uvicorn
app, and a bare FastAPI app deployed in Ray Serve with the same request-path settings as
`photostudio serve` (HAProxy, keep-alive, the same `max_ongoing_requests`).

1. Latency at concurrency 1 on the generator (tiny-sd, 64x64, 2 steps): the model called
   in-process (one torch thread, like the replica), the plain app (same model, same PNG +
   base64 answer) and ours (HTTP -> HAProxy -> ingress -> Generator replica -> back). "Added"
   is per request: end-to-end minus the model time the server measured for that request
   (the replica's `inference_s`), so the model's own jitter cancels out.
2. Requests/s on two no-model routes at a concurrency sweep: an authenticated GET
   /v1/styles, and POST /v1/chat with a rules-decided message (session turns recorded).
   The references answer the same bodies from the same code without auth, records or Ray
   (plain) or without our middleware, auth and records (bare Serve).

Targets (issue #20, medians of the rounds, at the sweep's highest concurrency, 32 by
default): GET /v1/styles >= 1,000 req/s and >= 0.8x the bare Serve app; POST /v1/chat
>= 600 req/s; added latency <= 15 ms p50. `--tuned` adds a column: ours with
RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (never the headline). Usage:

    .venv/bin/python bench/gateway.py [--rounds 3] [--concurrency 1 8 32 64] [--seconds 3]
        [--latency-requests 10] [--tuned] [--toy] [--profile SECONDS]

`--profile S`: after the sweep, py-spy records our ingress replica for S seconds under the
GET /v1/styles load (concurrency 32) and prints the top of its profile (needs py-spy and
ptrace rights: run as root or with kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    WORKER_NICENESS,
    Child,
    bare_serve_gateway,
    client_connector,
    cpu_seconds,
    free_port,
    machine,
    match_worker_priority,
    pct,
    reference_app,
    shipped_gateway,
)

CHAT_MESSAGE = "hello, what can you do?"
PROMPT = "a cat in a crown"
OURS = "ours (shipped)"
TUNED = "ours (tuned)"
BARE = "bare Serve"
PLAIN = "plain uvicorn"
ROUTES = {"styles": ("GET", "/v1/styles", None),
          "chat": ("POST", "/v1/chat", {"message": CHAT_MESSAGE})}
TARGET_STYLES_RPS, TARGET_RATIO, TARGET_CHAT_RPS, TARGET_ADDED_MS = 1000, 0.8, 600, 15


# --- the plain app: the reference routes + the same model, under uvicorn -------------------

def plain_app(size: int):
    """The reference routes (bench/_common.py: reference_app) plus the same model behind
    FastAPI, nothing else: JSON in, PNG + base64 JSON out."""
    import torch
    from fastapi import Body

    from graphs.images import encode
    from models.diffusion import DiffusionModel, GenerationRequest
    from models.registry import get_spec

    torch.set_num_threads(1)
    default_size = f"{size}x{size}"
    model = DiffusionModel.from_spec(get_spec("tiny-sd"))
    app = reference_app()

    @app.post("/v1/images/generations")
    def generate(body: dict = Body(...)) -> dict:  # sync: runs in FastAPI's thread pool
        width, height = (int(v) for v in body.get("size", default_size).split("x"))
        [res] = model.generate([GenerationRequest(
            prompt=str(body["prompt"]), width=width, height=height,
            steps=int(body.get("steps", 2)), seed=body.get("seed"))])
        blob = encode(res.images[0], "png")
        return {"created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(blob).decode()}],
                "metadata": {"timings": res.timings}}

    return app


def plain_child(port: int, size: int) -> None:
    import uvicorn

    uvicorn.run(plain_app(size), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


# --- load ---------------------------------------------------------------------------------------

async def _request(session, method: str, url: str, body: dict | None, headers: dict) -> dict:
    async with session.request(method, url, json=body, headers=headers) as r:
        data = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {data[:300]!r}")
        return json.loads(data)


async def latency_run(session, url: str, headers: dict, n: int, seed0: int, size: int
                      ) -> list[tuple]:
    """n generation requests one after another: (end-to-end s, server's model s, the job
    runner's own total_s and store_s when the server reports them)."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        body = await _request(session, "POST", f"{url}/v1/images/generations", {
            "prompt": PROMPT, "size": f"{size}x{size}", "steps": 2, "seed": seed0 + i},
            headers)
        e2e = time.perf_counter() - t
        timings = body["metadata"]["timings"]
        out.append((e2e, timings["inference_s"], timings.get("total_s"), timings.get("store_s")))
    return out


async def rate_run(session, url: str, headers: dict, route: str, concurrency: int,
                   seconds: float, cpu_pids: list[int] | None = None
                   ) -> tuple[float, list[float], int, float | None]:
    """Closed loop: `concurrency` clients call `route` (a key of ROUTES) for `seconds` (after
    0.5 s of warm-up not counted). Returns (requests/s, latencies, errors, CPU seconds the
    processes `cpu_pids` spent per counted request, None without pids)."""
    method, path, body = ROUTES[route]
    latencies: list[float] = []
    errors = 0
    counting = False
    stop_at = 0.0

    async def client():
        nonlocal errors
        while True:
            now = time.perf_counter()
            if counting and now >= stop_at:
                return
            try:
                await _request(session, method, f"{url}{path}", body, headers)
                if counting:
                    latencies.append(time.perf_counter() - now)
            except RuntimeError:
                errors += 1

    tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    await asyncio.sleep(0.5)
    cpu_before = cpu_seconds(cpu_pids) if cpu_pids else 0.0
    counting, started = True, time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*tasks)
    cpu = (cpu_seconds(cpu_pids) - cpu_before) / max(1, len(latencies)) if cpu_pids else None
    return len(latencies) / (time.perf_counter() - started), latencies, errors, cpu


def in_process_run(model, n: int, seed0: int, size: int) -> list[tuple]:
    from graphs.images import encode
    from models.diffusion import GenerationRequest

    out = []
    for i in range(n):
        req = GenerationRequest(prompt=PROMPT, width=size, height=size, steps=2, seed=seed0 + i)
        t = time.perf_counter()
        [res] = model.generate([req])
        model_s = time.perf_counter() - t
        base64.b64encode(encode(res.images[0], "png"))
        out.append((model_s, model_s, time.perf_counter() - t))
    return out


def py_spy_top(pid: int, seconds: float, rate: int = 200) -> str:
    """py-spy record of one process for `seconds`; the top of its flat profile as text."""
    out = Path(tempfile.mkdtemp(prefix="pyspy")) / "profile.txt"
    exe = Path(sys.executable).parent / "py-spy"
    proc = subprocess.run([str(exe), "record", "--pid", str(pid), "--duration",
                           str(int(seconds)), "--rate", str(rate), "--format", "raw",
                           "--output", str(out), "--nonblocking"],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return f"py-spy failed: {proc.stderr.strip()[-500:]}"
    return summarize_collapsed(out.read_text())


def summarize_collapsed(text: str, top: int = 18) -> str:
    """Collapsed stacks -> share of samples per leaf-most frame of our code / of every frame."""
    from collections import Counter

    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[_short(frames[-1])] += n
        for f in set(_short(f) for f in frames):
            inclusive[f] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples; self time (leaf frame):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("inclusive (frame anywhere on the stack), project and Serve frames:")
    keep = [(f, n) for f, n in inclusive.most_common()
            if any(k in f for k in ("graphs/", "router/", "storage/", "deployments/",
                                    "serve/_private", "starlette", "fastapi", "sqlalchemy",
                                    "sqlite", "pydantic", "uvicorn"))]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in keep[:top]]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    parts = Path(path).parts
    for anchor in ("site-packages", "main"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor) + 1:])
            break
    return f"{name} ({path})"


# --- main ---------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-requests", type=int, default=10,
                    help="requests per target per round at concurrency 1")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--seconds", type=float, default=3.0, help="per rate measurement")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tuned", action="store_true",
                    help="add a column: ours with RAY_SERVE_THROUGHPUT_OPTIMIZED=1")
    ap.add_argument("--profile", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--toy", action="store_true",
                    help="quick check: 1 round, 3 requests, concurrency 1 and 4, 1 s each")
    ap.add_argument("--child", choices=["plain"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child == "plain":
        return plain_child(ns.port, ns.size)
    if ns.toy:
        ns.rounds, ns.latency_requests = 1, 3
        ns.concurrency, ns.seconds = [1, 4], 1.0

    import torch

    from models.diffusion import DiffusionModel
    from models.registry import get_spec

    torch.set_num_threads(1)
    model = DiffusionModel.from_spec(get_spec("tiny-sd"))
    port = free_port()
    plain = Child(PLAIN, [sys.executable, __file__, "--child", "plain", "--port", str(port),
                          "--size", str(ns.size)], url=f"http://127.0.0.1:{port}",
                  nice=WORKER_NICENESS)  # as Ray runs our replicas
    children: list[Child] = [plain]
    targets: dict[str, tuple[str, dict]] = {}
    try:
        plain.wait_ready()
        targets[PLAIN] = (plain.url, {})
        # one Ray at a time: several starting at once time out on 2 cores
        bare = bare_serve_gateway(BARE)
        children.append(bare)
        targets[BARE] = (bare.url, {})
        ours, token = shipped_gateway(OURS)
        children.append(ours)
        targets[OURS] = (ours.url, {"Authorization": f"Bearer {token}"})
        if ns.tuned:
            tuned, tuned_token = shipped_gateway(
                TUNED, env={"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"})
            children.append(tuned)
            targets[TUNED] = (tuned.url, {"Authorization": f"Bearer {tuned_token}"})
        match_worker_priority()  # the client and the in-process model, like the servers
        results = asyncio.run(measure(ns, model, targets, {c.name: c for c in children}))
    finally:
        for child in children:
            child.stop()
    report(ns, results)


def ingress_pids(child: Child | None) -> list[int] | None:
    """The process serving HTTP requests in `child`: our Ingress replica, the bare app's
    replica (deployment ``Bare``); the plain uvicorn server itself."""
    if child is None:
        return None
    pids = child.pids.get("Ingress") or child.pids.get("Bare")
    return pids or [child.proc.pid]


async def measure(ns, model, targets: dict[str, tuple[str, dict]],
                  children: dict[str, Child]) -> dict:
    import aiohttp

    with_model = [t for t in targets if t != BARE]
    lat: dict[str, list[tuple]] = {"in-process": [], **{t: [] for t in with_model}}
    rates: dict[tuple[str, str, int], list[tuple[float, list[float], int]]] = {}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=client_connector(), timeout=timeout) as session:
        for name, (url, headers) in targets.items():  # warm-up: code paths hot
            if name in with_model:
                await latency_run(session, url, headers, 3, 10_000, ns.size)
            for route in ROUTES:
                await rate_run(session, url, headers, route, 8, 1.0 if not ns.toy else 0.3)
        in_process_run(model, 2, 10_000, ns.size)
        seed = 0
        for r in range(ns.rounds):
            lat["in-process"] += in_process_run(model, ns.latency_requests, seed, ns.size)
            for name in with_model:
                url, headers = targets[name]
                lat[name] += await latency_run(session, url, headers, ns.latency_requests,
                                               seed, ns.size)
            seed += ns.latency_requests
            for route in ROUTES:
                for conc in ns.concurrency:
                    for name, (url, headers) in targets.items():
                        rates.setdefault((route, name, conc), []).append(
                            await rate_run(session, url, headers, route, conc, ns.seconds,
                                           ingress_pids(children.get(name))))
            print(f"round {r + 1}/{ns.rounds} done", file=sys.stderr, flush=True)
        profile = None
        pids = children[OURS].pids.get("Ingress") if ns.profile else None
        if pids:
            url, headers = targets[OURS]
            spy = asyncio.ensure_future(asyncio.to_thread(py_spy_top, pids[0], ns.profile))
            await asyncio.sleep(0.5)
            await rate_run(session, url, headers, "styles", 32, ns.profile)
            profile = await spy
    return {"latency": lat, "rates": rates, "targets": list(targets), "profile": profile}


def _split(name: str, rows: list[tuple]) -> str:
    """Where our added time goes, from the job runner's own timings (p50 of each part)."""
    if name == "in-process" or rows[0][2] is None:
        return "- | - | -"
    runner = [x[2] - x[3] - x[1] for x in rows]
    store = [x[3] for x in rows]
    outside = [x[0] - x[2] for x in rows]
    return " | ".join(f"{statistics.median(v) * 1e3:.1f} ms" for v in (runner, store, outside))


def _rate(rates, route: str, target: str, conc: int) -> float:
    return statistics.median(r[0] for r in rates[(route, target, conc)])


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def report(ns, results: dict) -> None:
    lat, rates, targets = results["latency"], results["rates"], results["targets"]
    ms = 1e3
    print(f"# gateway overhead, as shipped — {machine()}")
    print(f"{OURS}: `photostudio serve --profile tiny` (API keys on, key from `photostudio keys "
          f"create`, default middleware and request path); {BARE}: a bare FastAPI app in Serve "
          f"with the same request-path settings; {PLAIN}: FastAPI under uvicorn, no Ray"
          + (f"; {TUNED}: {OURS} + RAY_SERVE_THROUGHPUT_OPTIMIZED=1" if TUNED in targets
             else ""))
    print(f"\n## latency at concurrency 1 (POST /v1/images/generations, tiny-sd {ns.size}x"
          f"{ns.size}, 2 steps; {ns.rounds} rounds x {ns.latency_requests} requests)")
    print("| target | end-to-end p50 | p99 | model p50 | added p50 (per request) | added p99 | "
          "p50 minus in-process p50 | of which: job runner around the model call | "
          "storing (encode, asset, record) | outside the runner (HTTP, routing, job "
          "create/finish) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = statistics.median(x[0] for x in lat["in-process"])
    for name, rows in lat.items():
        e2e = [x[2] if name == "in-process" else x[0] for x in rows]
        added = [x[2] - x[1] if name == "in-process" else x[0] - x[1] for x in rows]
        print(f"| {name}{' (model + PNG + base64)' if name == 'in-process' else ''} | "
              f"{statistics.median(e2e) * ms:.1f} ms | {pct(e2e, 99) * ms:.1f} ms | "
              f"{statistics.median(x[1] for x in rows) * ms:.1f} ms | "
              f"{statistics.median(added) * ms:.1f} ms | {pct(added, 99) * ms:.1f} ms | "
              f"{(statistics.median(e2e) - base) * ms:+.1f} ms | {_split(name, rows)} |")
    for route, (method, path, body) in ROUTES.items():
        what = f"{method} {path}" + (f" {json.dumps(body)}" if body else "")
        print(f"\n## {what} (no model; {ns.rounds} rounds x {ns.seconds:g} s per cell; median "
              f"of the rounds)")
        print(f"| concurrency ({route}) | " + " | ".join(f"{t} req/s | p50 | p99"
                                                        for t in targets) + " |")
        print("|---|" + "---|---|---|" * len(targets))
        for conc in ns.concurrency:
            cells = []
            for t in targets:
                runs = rates[(route, t, conc)]
                all_lat = [x for r in runs for x in r[1]] or [float("nan")]
                errors = sum(r[2] for r in runs)
                cells.append(f"{_rate(rates, route, t, conc):.0f}"
                             f"{f' ({errors} errors)' if errors else ''} | "
                             f"{statistics.median(all_lat) * ms:.1f} ms | "
                             f"{pct(all_lat, 99) * ms:.1f} ms")
            print(f"| {conc} | " + " | ".join(cells) + " |")
    top = max(ns.concurrency)
    print(f"\n## CPU per request of the process serving HTTP (concurrency {top}; ours: the "
          f"Ingress replica, {BARE}: its replica, {PLAIN}: the uvicorn process; median of the "
          f"rounds)")
    print("| route | " + " | ".join(f"{t}" for t in targets) + f" | {BARE} / {OURS} |")
    print("|---|" + "---|" * len(targets) + "---|")
    for route in ROUTES:
        cpu = {t: statistics.median(r[3] for r in rates[(route, t, top)])
               if all(r[3] is not None for r in rates[(route, t, top)]) else None
               for t in targets}
        ratio = (f"{cpu[BARE] / cpu[OURS]:.2f}x" if cpu.get(BARE) and cpu.get(OURS) else "-")
        print(f"| {route} | " + " | ".join(f"{cpu[t] * 1e6:.0f} us" if cpu[t] else "-"
                                          for t in targets) + f" | {ratio} |")
    print(f"\n## targets (at concurrency {top})")
    for name in [t for t in (OURS, TUNED) if t in targets]:
        styles, bare = _rate(rates, "styles", name, top), _rate(rates, "styles", BARE, top)
        ratio = styles / bare if bare else 0.0
        chat = _rate(rates, "chat", name, top)
        added = statistics.median(x[0] - x[1] for x in lat[name]) * ms
        print(f"{name}: GET /v1/styles {styles:.0f} req/s (target >= {TARGET_STYLES_RPS}: "
              f"{verdict(styles >= TARGET_STYLES_RPS)}); {ratio:.2f}x {BARE} {bare:.0f} req/s "
              f"(target >= {TARGET_RATIO}: {verdict(ratio >= TARGET_RATIO)}); POST /v1/chat "
              f"{chat:.0f} req/s (target >= {TARGET_CHAT_RPS}: "
              f"{verdict(chat >= TARGET_CHAT_RPS)}); added p50 {added:.1f} ms (target <= "
              f"{TARGET_ADDED_MS} ms: {verdict(added <= TARGET_ADDED_MS)}); {PLAIN} "
              f"{_rate(rates, 'styles', PLAIN, top):.0f} req/s")
    if results["profile"]:
        print(f"\n## py-spy: {OURS} ingress replica under GET /v1/styles (concurrency 32)")
        print(results["profile"])


if __name__ == "__main__":
    main()
