"""Workflows: a diamond graph run by the workflow engine versus the same nodes one after
another through the image routes, and the engine's own overhead per node.

1. The diamond (issue #17): generate → (remove_background ‖ style_transfer) → composite (the
   cut-out over the painted image, joined in the ingress without a model). `workflow`: one
   POST /v1/workflows/execute (branches at once on the Matting and Generator deployments,
   intermediates kept in memory as arrays). `sequential`: what a client does without
   workflows — POST generations, then remove-background, then style-transfer, each image
   uploaded and downloaded as PNG, then the composite in the client (no route makes one: the
   same `composite_over`, on the decoded PNGs). Rounds interleave the two; medians of the
   wall times. The production graph (serve_config.yaml) with tiny models, API keys on,
   default middleware (bench/_serving.py): the replicas' threads are what ships (Generator:
   num_cpus 2 → 2 torch threads; Matting: num_cpus 1 → 1 onnxruntime thread).
   `--graph inpaint`: the round-3 graph instead (`both`: after the composite rows, at its
   round-3 settings) (joined by an inpaint on the Generator, so
   three of its four nodes are diffusion passes one after another: overlap bound ~1.02x).
2. Engine overhead: the engine alone (in-process, ops that return at once) on a 64-node chain
   and on 64 independent nodes: seconds per node (target ≤ 2 ms).

    .venv/bin/python bench/workflows.py [--rounds 5] [--size 64] [--steps 1]
        [--paint-steps 1] [--graph composite|inpaint|both]
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


def diamond(size: int, steps: int, seed: int, *, paint_steps: int | None = None,
            join: str = "composite") -> dict:
    """The issue's diamond. `join="composite"`: the cut-out over the painting (no model);
    `"inpaint"`: the round-3 graph, the painting repainted inside the cut-out's mask (a third
    diffusion pass on the Generator; `paint_steps` default there: 2 x steps, as it was)."""
    if paint_steps is None:
        paint_steps = steps * 2 if join == "inpaint" else steps
    nodes = {
        "gen": {"op": "generate", "params": {"prompt": "a portrait of a fox",
                                             "size": f"{size}x{size}", "steps": steps,
                                             "seed": seed}},
        "cut": {"op": "remove_background", "in": {"image": "gen.image"}},
        "paint": {"op": "style_transfer", "in": {"image": "gen.image"},
                  "params": {"style": "watercolor", "steps": paint_steps, "seed": seed}}}
    if join == "composite":
        nodes["join"] = {"op": "composite", "in": {"image": "cut.image",
                                                   "background": "paint.image"}}
    else:
        nodes["join"] = {"op": "inpaint", "in": {"image": "paint.image", "mask": "cut.mask"},
                         "params": {"prompt": "a fox", "steps": steps, "seed": seed}}
    return {"nodes": nodes, "outputs": ["join.image"]}


BREAKDOWN: dict[str, list[str]] = {"workflow": [], "sequential": []}
BOUNDS: list[float] = []


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


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
    BOUNDS.append(busy / span)
    BREAKDOWN["workflow"].append(", ".join(
        f"{n} {info['started_at'] - t0:.2f}-{info['ended_at'] - t0:.2f}"
        for n, info in sorted(nodes.items(), key=lambda kv: kv[1]["started_at"]))
        + f"; overlap bound {busy / span:.2f}x")
    return wall


def run_sequential(client, graph: dict) -> float:
    """The diamond's nodes one after another through the routes (PNG in, b64 PNG out)."""
    import numpy as np
    from PIL import Image

    from graphs.workflows import composite_over

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

    def decoded(response) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(
            response.json()["data"][0]["b64_json"]))))

    if nodes["join"]["op"] == "composite":
        # no route composites: the client does it, on the two PNGs it got back
        t = time.perf_counter()
        composite_over(decoded(cut), decoded(paint)[..., :3])
        walls.append(f"join (client) {time.perf_counter() - t:.3f}")
    else:
        # edits: transparent = the area to repaint (the subject the cut-out kept)
        alpha = decoded(cut)[..., 3]
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
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1, help="the generate node's steps")
    ap.add_argument("--paint-steps", type=int, default=None,
                    help="style_transfer's steps (default: --steps; 2 x --steps with "
                    "--graph inpaint)")
    ap.add_argument("--graph", choices=("composite", "inpaint", "both"), default="composite",
                    help="composite: the issue's diamond joined in the ingress; inpaint: the "
                    "round-3 graph (joined by a diffusion pass); both: composite, then the "
                    "round-3 graph at its round-3 settings (128x128, 4 steps, paint 8)")
    ap.add_argument("--skip-http", action="store_true", help="engine overhead only")
    ns = ap.parse_args()
    print(f"machine: {machine()}; load average at start: {loadavg()}")
    overhead = engine_overhead()
    print(f"engine overhead per node (median of 20 runs, 64 nodes): chain "
          f"{overhead['chain'] * 1e3:.3f} ms, wide {overhead['wide'] * 1e3:.3f} ms "
          f"(target <= 2 ms); validate 64 nodes: chain {overhead['validate_chain'] * 1e3:.2f}"
          f" ms, wide {overhead['validate_wide'] * 1e3:.2f} ms (target < 10 ms)")
    if ns.skip_http:
        return
    import httpx

    from bench._serving import production_gateway

    with production_gateway(haproxy=True) as gw:  # the request path as shipped
        key = gw.create_key("bench", scopes=["generate", "tools"],
                            requests_per_minute=1_000_000, images_per_day=1_000_000)
        with httpx.Client(base_url=gw.base_url, timeout=300,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            if ns.graph == "both":  # the round-3 graph at its round-3 settings beside
                runs = [("composite", ns.size, ns.steps, ns.paint_steps),
                        ("inpaint", 128, 4, None)]
            else:
                runs = [(ns.graph, ns.size, ns.steps, ns.paint_steps)]
            for join, size, steps, paint_steps in runs:
                bench_diamond(client, ns.rounds, join, size, steps, paint_steps)


def bench_diamond(client, rounds: int, join: str, size: int, steps: int,
                  paint_steps: int | None) -> None:
    import httpx

    def graph_for(seed: int) -> dict:
        return diamond(size, steps, seed, paint_steps=paint_steps, join=join)

    graph = graph_for(7)
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
    for i in range(rounds):
        graph = graph_for(100 + i)
        wf.append(run_workflow(client, graph))
        seq.append(run_sequential(client, graph))
        print(f"[{join}] round {i + 1}: workflow {wf[-1]:.2f} s, sequential {seq[-1]:.2f} s\n"
              f"  workflow nodes (s from the first start): {BREAKDOWN['workflow'][-1]}\n"
              f"  sequential: {BREAKDOWN['sequential'][-1]}")
    w, s = statistics.median(wf), statistics.median(seq)
    p = graph["nodes"]["paint"]["params"]["steps"]
    print(f"diamond ({join}) {size}x{size}, gen {steps} steps, paint {p} steps, {rounds} "
          f"rounds: workflow {w:.2f} s, sequential through the routes {s:.2f} s -> "
          f"{s / w:.2f}x (target >= 1.4x); overlap bound median "
          f"{statistics.median(BOUNDS[-rounds:]):.2f}x; load average now: {loadavg()}")


if __name__ == "__main__":
    main()
