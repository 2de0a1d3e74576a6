"""Background removal: our endpoint versus rembg's own HTTP server (`rembg s`), side by side.

Same ONNX file (the tiny U²-Net-shaped zoo model), same images (640x480 PNG), same client;
our gateway is the product as shipped: `photostudio serve --profile tiny` with API keys on
and a key from `photostudio keys create`. Ours is measured twice: the default JSON answer
(base64 PNG) and the PNG bytes themselves (`Accept: image/png`, what rembg's server answers).
At each concurrency the servers get the same closed-loop load in turn (the order alternates by
round); printed are the medians of the rounds: images/s, latency, answer bytes, the ratio
ours/theirs, and the CPU time each server's processes spent per image (ours: ingress + Matting
replica + HAProxy + Ray's raylet and GCS; theirs: the rembg process) — CPU per image is what
decides throughput once the cores are full, and it is much less sensitive than images/s to
other work on a shared machine. Usage:

    .venv/bin/python bench/matting.py [--images 50] [--concurrency 1 4 16] [--rounds 2]
        [--profile SECONDS] [--toy]

`--profile S`: afterwards py-spy records, under concurrency 16, our Matting replica and our
ingress (together) and then the rembg server, S seconds each, and prints where their time
goes. Target (issue #8): ours >= 1.5x rembg's images/s at concurrency 16.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    WORKER_NICENESS,
    Child,
    client_connector,
    cpu_seconds,
    free_port,
    machine,
    match_worker_priority,
    pct,
    shipped_gateway,
)

OURS = {"JSON (base64)": {}, "image bytes": {"Accept": "image/png"}}


def make_images(n: int) -> list[bytes]:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = Image.fromarray(rng.integers(0, 60, (480, 640, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        x, y = rng.integers(100, 400), rng.integers(100, 300)
        draw.ellipse([x, y, x + 200, y + 160], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def closed_loop(call, *, requests: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    todo = iter(range(requests))

    async def client():
        for i in todo:
            t = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started), latencies


def start_rembg(model_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "REMBG_HOME": str(model_dir)}
    rembg_cli = str(Path(sys.executable).parent / "rembg")
    proc = subprocess.Popen([rembg_cli, "s", "--host", "127.0.0.1", "--port", str(port),
                             "--no-ui", "--log_level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # the niceness Ray gives our replicas: neither server is favoured
                            # over the other, or over the client
                            preexec_fn=lambda: os.nice(WORKER_NICENESS))
    import httpx

    deadline = time.monotonic() + 180
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api", timeout=2)
            return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("rembg server did not start") from None
            time.sleep(0.5)


async def measure(ns, images, ours_url, token, theirs_url, model_file, our_pids, their_pids):
    import aiohttp

    extras = json.dumps({"model_path": str(model_file)})
    sizes: dict[str, list[int]] = {}

    async def post(session, url, field, i, data=None, params=None, headers=None):
        form = aiohttp.FormData()
        form.add_field(field, images[i % len(images)], filename="a.png",
                       content_type="image/png")
        for k, v in (data or {}).items():
            form.add_field(k, v)
        async with session.post(url, data=form, params=params, headers=headers) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: HTTP {r.status}: {body[:300]!r}")
            return body

    results: dict[tuple[str, int], list[dict]] = {}
    async with aiohttp.ClientSession(connector=client_connector(),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        def ours(mode: str):
            headers = {"Authorization": f"Bearer {token}", **OURS[mode]}

            async def call(i):
                body = await post(session, f"{ours_url}/v1/images/remove-background", "image",
                                  i, headers=headers)
                if mode == "image bytes" and not body.startswith(b"\x89PNG"):
                    raise RuntimeError("our answer is not the PNG asked for")
                if mode != "image bytes" and not json.loads(body)["data"][0]["b64_json"]:
                    raise RuntimeError("no image in our answer")
                sizes.setdefault(mode, []).append(len(body))
            return call

        async def theirs(i):
            body = await post(session, f"{theirs_url}/api/remove", "file", i,
                              data={"model": "u2net_custom"}, params={"extras": extras})
            if not body.startswith(b"\x89PNG"):
                raise RuntimeError("rembg did not return a PNG")
            sizes.setdefault("rembg", []).append(len(body))

        servers = {**{mode: (ours(mode), our_pids) for mode in OURS},
                   "rembg": (theirs, their_pids)}
        for call, _ in servers.values():  # warm-up: sessions loaded, code paths hot
            await closed_loop(call, requests=8, concurrency=4)
        for r in range(ns.rounds):
            for conc in ns.concurrency:
                order = list(servers) if r % 2 == 0 else list(servers)[::-1]
                for name in order:
                    call, pids = servers[name]
                    roles = pids.roles()
                    cpu0 = {role: cpu_seconds(p) for role, p in roles.items()}
                    rate, lat = await closed_loop(call, requests=ns.images, concurrency=conc)
                    by_role = {role: (cpu_seconds(p) - cpu0[role]) / ns.images
                               for role, p in roles.items()}
                    results.setdefault((name, conc), []).append(
                        {"rate": rate, "latencies": lat, "cpu": sum(by_role.values()),
                         "by_role": by_role})
            print(f"round {r + 1}/{ns.rounds} done", file=sys.stderr, flush=True)
        profiles = {}
        if ns.profile:
            from bench.gateway import py_spy_top

            targets = {"JSON (base64)": {"Matting": our_pids.by_role("Matting"),
                                "Ingress": our_pids.by_role("Ingress")},
                       "rembg": {"rembg": their_pids()[0]}}
            for name, pids in targets.items():
                call, _ = servers[name]
                load = asyncio.ensure_future(closed_loop(call, requests=10 ** 6,
                                                         concurrency=16))
                await asyncio.sleep(1.0)
                outs = await asyncio.gather(*(asyncio.to_thread(py_spy_top, pid, ns.profile)
                                              for pid in pids.values()))
                load.cancel()
                await asyncio.gather(load, return_exceptions=True)
                profiles[name] = dict(zip(pids, outs, strict=True))
    return results, profiles, {k: statistics.mean(v) for k, v in sizes.items()}


class OurPids:
    """Our gateway's processes that do the work of a request."""

    def __init__(self, child: Child):
        self.child = child

    def by_role(self, role: str) -> int | None:
        pids = self.child.pids.get(role)
        return pids[0] if pids else None

    def roles(self) -> dict[str, list[int]]:
        return {role: self.child.pids.get(role, [])
                for role in ("Ingress", "Matting", "haproxy", "ProxyActor", "raylet",
                             "gcs_server")}


class TheirPids:
    def __init__(self, pid: int):
        self.pid = pid

    def roles(self) -> dict[str, list[int]]:
        return {"rembg": [self.pid]}

    def __call__(self) -> list[int]:
        return [self.pid]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--toy", action="store_true",
                    help="quick check: 8 images, concurrency 1 and 4, one round")
    ns = ap.parse_args()
    if ns.toy:
        ns.images, ns.concurrency, ns.rounds = 8, [1, 4], 1

    from models import zoo

    model_dir = zoo.ensure("tiny-u2net")
    model_file = next(model_dir.glob("*.onnx"))
    images = make_images(ns.images)
    rembg, theirs_url = start_rembg(model_dir)
    ours = None
    try:
        ours, token = shipped_gateway("matting")
        match_worker_priority()  # the client too, now that Ray's daemons have started
        results, profiles, sizes = asyncio.run(measure(
            ns, images, ours.url, token, theirs_url, model_file, OurPids(ours),
            TheirPids(rembg.pid)))
    finally:
        if ours is not None:
            ours.stop()
        rembg.terminate()
        rembg.wait(timeout=30)
    report(ns, images, model_file, results, profiles, sizes)


def report(ns, images, model_file, results, profiles, sizes) -> None:
    print(f"# background removal, ours vs `rembg s` — {machine()}")
    print(f"model: {model_file.name} (tiny zoo, same file for both); {ns.images} images 640x480 "
          f"PNG (mean {statistics.mean(map(len, images)) / 1e3:.0f} kB); output RGBA PNG; ours "
          f"as shipped (photostudio serve, API key on, job + asset recorded) answering JSON "
          f"(base64) or the image bytes (Accept: image/png); rembg: the PNG bytes; "
          f"{ns.rounds} rounds, medians")
    print("\n| concurrency | our answer | ours images/s | rembg images/s | ratio | "
          "ours p50 / p99 | rembg p50 / p99 | ours CPU per image | rembg CPU per image | "
          "CPU ratio rembg/ours | answer kB ours / rembg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratio_at: dict[tuple[str, int], float] = {}

    def cell(name: str, conc: int) -> tuple[float, float, float, float]:
        runs = results[(name, conc)]
        lat = [x for r in runs for x in r["latencies"]]
        return (statistics.median(r["rate"] for r in runs), statistics.median(lat),
                pct(lat, 99), statistics.median(r["cpu"] for r in runs))

    for conc in ns.concurrency:
        t = cell("rembg", conc)
        for mode in OURS:
            o = cell(mode, conc)
            ratio_at[(mode, conc)] = o[0] / t[0]
            print(f"| {conc} | {mode} | {o[0]:.1f} | {t[0]:.1f} | {o[0] / t[0]:.2f}x | "
                  f"{o[1] * 1e3:.0f} / {o[2] * 1e3:.0f} ms | {t[1] * 1e3:.0f} / "
                  f"{t[2] * 1e3:.0f} ms | {o[3] * 1e3:.0f} ms | {t[3] * 1e3:.0f} ms | "
                  f"{t[3] / o[3]:.2f}x | {sizes[mode] / 1e3:.1f} / {sizes['rembg'] / 1e3:.1f} |")
    parts = []
    for conc in ns.concurrency:
        runs = results[("JSON (base64)", conc)]
        parts.append(f"concurrency {conc}: " + ", ".join(
            f"{role} {statistics.median(r['by_role'][role] for r in runs) * 1e3:.0f} ms"
            for role in runs[0]["by_role"]))
    print("\nCPU per image by process (ours, JSON answers), median of the rounds: "
          + "; ".join(parts))
    top = max(ns.concurrency)
    for mode in OURS:
        ratio = ratio_at[(mode, top)]
        print(f"\n## target ({mode}): ours >= 1.5x rembg's images/s at concurrency 16: "
              f"{ratio:.2f}x at concurrency {top} ({'met' if ratio >= 1.5 else 'missed'})")
    for name, by_target in profiles.items():
        for target, text in by_target.items():
            print(f"\n## py-spy: {name} — {target} (concurrency 16)")
            print(text)


if __name__ == "__main__":
    main()
