"""Workflows: a diamond graph run by the workflow engine versus the same nodes one after
another through the image routes, and the engine's own overhead per node.

1. The diamond (issue #17): generate → (remove_background ‖ style_transfer) → inpaint of the
   painted image inside the cut-out's mask. `workflow`: one POST /v1/workflows/execute
   (branches at once on the Matting and Generator deployments, intermediates kept in memory
   as arrays). `sequential`: what a client does without workflows — POST generations, then
   remove-background, then style-transfer, then edits (mask from the cut-out), each image
   uploaded and downloaded as PNG. Rounds interleave the two; medians of the wall times.
   The production graph (serve_config.yaml) with tiny models, API keys on, default
   middleware (bench/_serving.py).
2. Engine overhead: the engine alone (in-process, ops that return at once) on a 64-node chain
   and on 64 independent nodes: seconds per node (target ≤ 2 ms).

    .venv/bin/python bench/workflows.py [--rounds 5] [--size 128] [--steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine  # noqa: E402


def diamond(size: int, steps: int, seed: int) -> dict:
    return {"nodes": {
        "gen": {"op": "generate", "params": {"prompt": "a portrait of a fox",
                                             "size": f"{size}x{size}", "steps": steps,
                                             "seed": seed}},
        "cut": {"op": "remove_background", "in": {"image": "gen.image"}},
        "paint": {"op": "style_transfer", "in": {"image": "gen.image"},
                  "params": {"style": "watercolor", "steps": steps * 2, "seed": seed}},
        "join": {"op": "inpaint", "in": {"image": "paint.image", "mask": "cut.mask"},
                 "params": {"prompt": "a fox", "steps": steps, "seed": seed}}},
        "outputs": ["join.image"]}


BREAKDOWN: dict[str, list[str]] = {"workflow": [], "sequential": []}


def run_workflow(client, graph: dict) -> float:
    started = time.perf_counter()
    r = client.post("/v1/workflows/execute", json={"workflow": graph})
    r.raise_for_status()
    wall = time.perf_counter() - started
    # where the time went: each node's start/end (job record timeline), relative to the first
    nodes = r.json()["metadata"]["extra"]["workflow"]["nodes"]
    t0 = min(info["started_at"] for info in nodes.values())
    span = max(info["ended_at"] for info in nodes.values()) - t0
    busy = sum(info["ended_at"] - info["started_at"] for info in nodes.values())
    # what overlap alone can give this graph: the nodes' summed time over the span they took
    BREAKDOWN["workflow"].append(", ".join(
        f"{n} {info['started_at'] - t0:.2f}-{info['ended_at'] - t0:.2f}"
        for n, info in sorted(nodes.items(), key=lambda kv: kv[1]["started_at"]))
        + f"; overlap bound {busy / span:.2f}x")
    return wall


def run_sequential(client, graph: dict) -> float:
    """The diamond's nodes one after another through the routes (PNG in, b64 PNG out)."""
    import numpy as np
    from PIL import Image

    nodes = graph["nodes"]
    started = time.perf_counter()
    walls: list[str] = []

    def timed(name: str, response):
        walls.append(f"{name} {response.elapsed.total_seconds():.2f}")
        response.raise_for_status()
        return response

    gen = timed("gen", client.post("/v1/images/generations", json=nodes["gen"]["params"]))
    png = base64.b64decode(gen.json()["data"][0]["b64_json"])
    cut = timed("cut", client.post("/v1/images/remove-background",
                                   files={"image": ("g.png", png)}))
    p = nodes["paint"]["params"]
    paint = timed("paint", client.post(
        "/v1/images/style-transfer", files={"image": ("g.png", png)},
        data={"style": p["style"], "steps": str(p["steps"]), "seed": str(p["seed"])}))
    # edits: transparent = the area to repaint (the subject the cut-out kept)
    alpha = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        cut.json()["data"][0]["b64_json"]))))[..., 3]
    mask = np.zeros((*alpha.shape, 4), np.uint8)
    mask[..., 3] = np.where(alpha >= 128, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    j = nodes["join"]["params"]
    timed("join", client.post("/v1/images/edits", files={
        "image": ("p.png", base64.b64decode(paint.json()["data"][0]["b64_json"])),
        "mask": ("m.png", buf.getvalue())},
        data={"prompt": j["prompt"], "steps": str(j["steps"]), "seed": str(j["seed"])}))
    BREAKDOWN["sequential"].append(", ".join(walls) + " (s per request)")
    return time.perf_counter() - started


def engine_overhead(nodes: int = 64, repeat: int = 20) -> dict[str, float]:
    from graphs.workflows import CATALOGUE
    from workflows import Engine, validate

    async def op(ctx):
        return {"image": ctx.node}

    ops = dict.fromkeys(CATALOGUE.ops, op)
    chain = {"g": {"op": "generate", "params": {"prompt": "x"}}}
    for i in range(nodes - 1):
        chain[f"u{i}"] = {"op": "upscale", "in": {"image": f"u{i - 1}.image" if i else
                                                  "g.image"}}
    wide = {f"g{i}": {"op": "generate", "params": {"prompt": "x"}} for i in range(nodes)}
    out = {}
    for name, graph in (("chain", chain), ("wide", wide)):
        valid = validate({"nodes": graph}, CATALOGUE)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            asyncio.run(Engine(ops).run(valid, emit=lambda e: None))
            times.append(time.perf_counter() - started)
        out[name] = statistics.median(times) / nodes
        started = time.perf_counter()
        for _ in range(repeat):
            validate({"nodes": graph}, CATALOGUE)
        out[f"validate_{name}"] = (time.perf_counter() - started) / repeat
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--skip-http", action="store_true", help="engine overhead only")
    ns = ap.parse_args()
    print(f"machine: {machine()}")
    overhead = engine_overhead()
    print(f"engine overhead per node (median of 20 runs, 64 nodes): chain "
          f"{overhead['chain'] * 1e3:.3f} ms, wide {overhead['wide'] * 1e3:.3f} ms "
          f"(target <= 2 ms); validate 64 nodes: chain {overhead['validate_chain'] * 1e3:.2f}"
          f" ms, wide {overhead['validate_wide'] * 1e3:.2f} ms (target < 10 ms)")
    if ns.skip_http:
        return
    import httpx

    from bench._serving import production_gateway

    with production_gateway() as gw:
        key = gw.create_key("bench", scopes=["generate", "tools"],
                            requests_per_minute=1_000_000, images_per_day=1_000_000)
        with httpx.Client(base_url=gw.base_url, timeout=300,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            graph = diamond(ns.size, ns.steps, seed=7)
            # warm every deployment and code path (a cold replica's first call can take
            # minutes on a loaded machine: retried past the gateway's 504)
            for run in (run_sequential, run_workflow):
                for _ in range(3):
                    try:
                        run(client, graph)
                        break
                    except httpx.HTTPStatusError as exc:
                        print(f"warm-up {run.__name__}: {exc.response.status_code}; retrying")
            wf, seq = [], []
            for i in range(ns.rounds):
                graph = diamond(ns.size, ns.steps, seed=100 + i)
                wf.append(run_workflow(client, graph))
                seq.append(run_sequential(client, graph))
                print(f"round {i + 1}: workflow {wf[-1]:.2f} s, sequential {seq[-1]:.2f} s\n"
                      f"  workflow nodes (s from the first start): "
                      f"{BREAKDOWN['workflow'][-1]}\n"
                      f"  sequential: {BREAKDOWN['sequential'][-1]}")
            w, s = statistics.median(wf), statistics.median(seq)
            print(f"diamond {ns.size}x{ns.size}, {ns.steps} steps, {ns.rounds} rounds: "
                  f"workflow {w:.2f} s, sequential through the routes {s:.2f} s -> "
                  f"{s / w:.2f}x (target >= 1.4x)")


if __name__ == "__main__":
    main()
