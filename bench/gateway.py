"""Gateway overhead and request rate: our full path versus the model in-process and versus a
plain FastAPI + uvicorn app wrapping the same model, with Ray Serve's request path as shipped
(`default`) and tuned (`tuned`).

1. Latency at concurrency 1 on the generator (tiny-sd, 64x64, 2 steps): the model called
   in-process (one torch thread, like the replica), the plain app (subprocess, same model,
   same PNG + base64 answer) and our gateway (HTTP -> HAProxy or Serve proxy -> ingress ->
   Generator replica -> back). "Added" is per request: end-to-end minus the model time the
   server measured for that same request (the replica's `inference_s`), so the model's own
   jitter cancels out; the difference of the p50s against the in-process model is printed too.
2. Requests/s on the no-model route, POST /v1/chat with a `general` message, at a
   concurrency sweep (our gateway, and the plain app answering the same message from the
   same router rules without sessions or Ray).

Targets (issue #8): at most 15 ms p50 added over in-process; at least 300 requests/s on the
chat route. Every target runs in its own process (Ray clusters side by side, the plain app
under uvicorn); measurements interleave target by target, round by round, and the medians
of the rounds are printed. Usage:

    .venv/bin/python bench/gateway.py [--settings default,tuned] [--rounds 3]
        [--concurrency 1 8 32 64] [--seconds 3] [--latency-requests 10] [--toy]
        [--profile-chat SECONDS]

`--profile-chat S`: after the sweep, py-spy records the tuned ingress replica for S seconds
under the chat load (concurrency 32) and prints the top of its profile (needs py-spy and
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
    SETTINGS,
    WORKER_NICENESS,
    Child,
    client_connector,
    free_port,
    machine,
    match_worker_priority,
    pct,
)

CHAT_MESSAGE = "hello, what can you do?"
PROMPT = "a cat in a crown"
# --- children: a Serve gateway, a plain uvicorn app --------------------------------------------

def plain_app(size: int):
    """The same model behind FastAPI, nothing else: JSON in, PNG + base64 JSON out."""
    import torch
    from fastapi import Body, FastAPI

    from graphs.chat import HELP_TEXT
    from graphs.images import encode
    from models.diffusion import DiffusionModel, GenerationRequest
    from models.registry import get_spec
    from router.cascade import Cascade

    torch.set_num_threads(1)
    default_size = f"{size}x{size}"
    model = DiffusionModel.from_spec(get_spec("tiny-sd"))
    cascade = Cascade(classifier=None)  # rules decide a `general` message: no embeddings
    app = FastAPI()

    # (plain dict bodies: this module's postponed annotations can't name local models)
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

    @app.post("/v1/chat")
    async def chat(body: dict = Body(...)) -> dict:
        plan = cascade.plan_fast(str(body["message"]))
        return {"message": HELP_TEXT, "type": "text",
                "data": {"plan": plan.model_dump(mode="json")}}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def plain_child(port: int, size: int) -> None:
    import uvicorn

    uvicorn.run(plain_app(size), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


# --- load ---------------------------------------------------------------------------------------

async def _post_json(session, url: str, body: dict) -> dict:
    async with session.post(url, json=body) as r:
        data = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {data[:300]!r}")
        return json.loads(data)


async def latency_run(session, url: str, n: int, seed0: int, size: int) -> list[tuple]:
    """n generation requests one after another: (end-to-end s, server's model s, the job
    runner's own total_s and store_s when the server reports them)."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        body = await _post_json(session, f"{url}/v1/images/generations", {
            "prompt": PROMPT, "size": f"{size}x{size}", "steps": 2, "seed": seed0 + i})
        e2e = time.perf_counter() - t
        timings = body["metadata"]["timings"]
        out.append((e2e, timings["inference_s"], timings.get("total_s"), timings.get("store_s")))
    return out


async def rate_run(session, url: str, concurrency: int, seconds: float
                   ) -> tuple[float, list[float], int]:
    """Closed loop: `concurrency` clients POST /v1/chat for `seconds` (after 0.5 s of warm-up
    not counted). Returns (requests/s, latencies, errors)."""
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
                await _post_json(session, f"{url}/v1/chat", {"message": CHAT_MESSAGE})
                if counting:
                    latencies.append(time.perf_counter() - now)
            except RuntimeError:
                errors += 1

    tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    await asyncio.sleep(0.5)
    counting, started = True, time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*tasks)
    return len(latencies) / (time.perf_counter() - started), latencies, errors


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
    ap.add_argument("--settings", default="default,tuned",
                    help=f"comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-requests", type=int, default=10,
                    help="requests per target per round at concurrency 1")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--seconds", type=float, default=3.0, help="per rate measurement")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--profile-chat", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--toy", action="store_true",
                    help="quick check: tuned only, 1 round, 3 requests, concurrency 1 and 4")
    ap.add_argument("--child", choices=["plain"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child == "plain":
        return plain_child(ns.port, ns.size)
    if ns.toy:
        ns.settings, ns.rounds, ns.latency_requests = "tuned", 1, 3
        ns.concurrency, ns.seconds = [1, 4], 1.0
    names = [s for s in ns.settings.split(",") if s]
    unknown = set(names) - set(SETTINGS)
    if unknown:
        ap.error(f"unknown settings {sorted(unknown)}; choose from {list(SETTINGS)}")

    import torch

    from models.diffusion import DiffusionModel
    from models.registry import get_spec

    torch.set_num_threads(1)
    model = DiffusionModel.from_spec(get_spec("tiny-sd"))
    port = free_port()
    plain = Child("plain", [sys.executable, __file__, "--child", "plain", "--port", str(port),
                            "--size", str(ns.size)], url=f"http://127.0.0.1:{port}",
                  nice=WORKER_NICENESS)  # as Ray runs our replicas
    serves: dict[str, Child] = {}
    try:
        plain.wait_ready()
        for name in names:  # one Ray at a time: several starting at once time out on 2 cores
            serves[name] = Child.gateway(f"serve:{name}", name)
            serves[name].wait_ready()
        match_worker_priority()  # the client and the in-process model, like the servers
        results = asyncio.run(measure(ns, model, plain, serves))
    finally:
        for child in (plain, *serves.values()):
            child.stop()
    report(ns, names, results)


async def measure(ns, model, plain: Child, serves: dict[str, Child]) -> dict:
    import aiohttp

    targets = {"plain FastAPI": plain.url, **{f"ours ({n})": c.url for n, c in serves.items()}}
    lat: dict[str, list[tuple]] = {"in-process": [], **{t: [] for t in targets}}
    rates: dict[tuple[str, int], list[tuple[float, list[float], int]]] = {}
    conn = client_connector()
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        for url in targets.values():  # warm-up: code paths hot, first-minute slowness spent
            await latency_run(session, url, 3, 10_000, ns.size)
            await rate_run(session, url, 8, 1.0 if not ns.toy else 0.3)
        in_process_run(model, 2, 10_000, ns.size)
        seed = 0
        for r in range(ns.rounds):
            lat["in-process"] += in_process_run(model, ns.latency_requests, seed, ns.size)
            for name, url in targets.items():
                lat[name] += await latency_run(session, url, ns.latency_requests, seed, ns.size)
            seed += ns.latency_requests
            for conc in ns.concurrency:
                for name, url in targets.items():
                    rates.setdefault((name, conc), []).append(
                        await rate_run(session, url, conc, ns.seconds))
            print(f"round {r + 1}/{ns.rounds} done", file=sys.stderr, flush=True)
        profile = None
        if ns.profile_chat and "tuned" in serves and serves["tuned"].pids.get("Ingress"):
            pid = serves["tuned"].pids["Ingress"][0]
            spy = asyncio.ensure_future(asyncio.to_thread(py_spy_top, pid, ns.profile_chat))
            await asyncio.sleep(0.5)
            await rate_run(session, serves["tuned"].url, 32, ns.profile_chat)
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


def report(ns, names: list[str], results: dict) -> None:
    lat, rates, targets = results["latency"], results["rates"], results["targets"]
    print(f"# gateway overhead — {machine()}")
    print("settings: " + "; ".join(f"{n} = {SETTINGS[n]}" for n in names))
    print(f"\n## latency at concurrency 1 (POST /v1/images/generations, tiny-sd {ns.size}x"
          f"{ns.size}, 2 steps; {ns.rounds} rounds x {ns.latency_requests} requests)")
    print("| target | end-to-end p50 | p99 | model p50 | added p50 (per request) | added p99 | "
          "p50 minus in-process p50 | of which: job runner around the model call | "
          "storing (encode, asset, record) | outside the runner (HTTP, routing, job "
          "create/finish) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = statistics.median(x[0] for x in lat["in-process"])
    ms = 1e3
    for name in ["in-process", *targets]:
        rows = lat[name]
        e2e = [x[2] if name == "in-process" else x[0] for x in rows]
        added = [x[2] - x[1] if name == "in-process" else x[0] - x[1] for x in rows]
        print(f"| {name}{' (model + PNG + base64)' if name == 'in-process' else ''} | "
              f"{statistics.median(e2e) * ms:.1f} ms | {pct(e2e, 99) * ms:.1f} ms | "
              f"{statistics.median(x[1] for x in rows) * ms:.1f} ms | "
              f"{statistics.median(added) * ms:.1f} ms | {pct(added, 99) * ms:.1f} ms | "
              f"{(statistics.median(e2e) - base) * ms:+.1f} ms | {_split(name, rows)} |")
    print(f"\n## POST /v1/chat {{'message': {CHAT_MESSAGE!r}}} (no model; {ns.rounds} rounds x "
          f"{ns.seconds:g} s per cell; median of the rounds)")
    print("| concurrency | " + " | ".join(f"{t} req/s | p50 | p99" for t in targets) + " |")
    print("|---|" + "---|---|---|" * len(targets))
    best: dict[str, float] = {}
    for conc in ns.concurrency:
        cells = []
        for t in targets:
            runs = rates[(t, conc)]
            rate = statistics.median(r[0] for r in runs)
            all_lat = [x for r in runs for x in r[1]]
            errors = sum(r[2] for r in runs)
            best[t] = max(best.get(t, 0.0), rate)
            cells.append(f"{rate:.0f}{f' ({errors} errors)' if errors else ''} | "
                         f"{statistics.median(all_lat) * ms:.1f} ms | "
                         f"{pct(all_lat, 99) * ms:.1f} ms")
        print(f"| {conc} | " + " | ".join(cells) + " |")
    print("\n## targets")
    for name in names:
        t = f"ours ({name})"
        added = statistics.median(x[0] - x[1] for x in lat[t])
        print(f"{name}: added p50 {added * ms:.1f} ms (target <= 15 ms: "
              f"{'met' if added <= 0.015 else 'missed'}); chat best {best[t]:.0f} req/s "
              f"(target >= 300: {'met' if best[t] >= 300 else 'missed'}); "
              f"plain FastAPI best {best['plain FastAPI']:.0f} req/s")
    if results["profile"]:
        print("\n## py-spy: tuned ingress replica under chat load (concurrency 32)")
        print(results["profile"])


if __name__ == "__main__":
    main()
