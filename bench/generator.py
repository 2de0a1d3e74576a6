"""Generator throughput and gateway overhead (tiny profile, CPU).

Prints images/s through the full path (HTTP -> Serve proxy -> ingress -> generator) at
concurrency 1 and 8, and the per-request overhead of ingress+proxy: end-to-end latency minus
the model time the replica itself measured (same request), next to the same model called
in-process with the replica's thread count (1). Usage:

    .venv/bin/python bench/generator.py [--requests 24] [--steps 4] [--size 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import drive, gateway, machine, pct  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ns = ap.parse_args()

    from models.diffusion import DiffusionModel, GenerationRequest
    from models.registry import get_spec

    payload = {"prompt": "a cat in a crown", "size": f"{ns.size}x{ns.size}", "steps": ns.steps}

    # In-process baseline: the same model, no Ray, no HTTP, one torch thread like the replica
    # (Ray gives a replica OMP/torch threads = its num_cpus).
    import torch

    torch.set_num_threads(1)
    model = DiffusionModel.from_spec(get_spec("tiny-sd"))
    req = GenerationRequest(prompt=payload["prompt"], width=ns.size, height=ns.size,
                            steps=ns.steps, seed=0)
    model.generate([req])  # warm-up
    direct = []
    for i in range(ns.requests):
        req.seed = i
        t = time.perf_counter()
        model.generate([req])
        direct.append(time.perf_counter() - t)
    del model

    with gateway() as base:
        import httpx

        client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64))
        batches: list[int] = []
        overheads: list[float] = []

        def one(i):
            t = time.perf_counter()
            r = client.post(f"{base}/v1/images/generations", json={**payload, "seed": i})
            r.raise_for_status()
            meta = r.json()["metadata"]
            batches.append(meta["batch_size"])
            overheads.append(time.perf_counter() - t - meta["timings"]["inference_s"])

        for i in range(3):
            one(i)  # warm-up
        results = {}
        for conc in (1, 8):
            batches.clear()
            overheads.clear()
            rate, lat = drive(one, requests=ns.requests, concurrency=conc)
            results[conc] = (rate, lat, max(batches), list(overheads))

    print(f"# generator — {machine()}; tiny-sd {ns.size}x{ns.size}, {ns.steps} steps, "
          f"{ns.requests} requests")
    print(f"in-process model (1 thread): {1 / statistics.median(direct):.2f} images/s, "
          f"p50 {statistics.median(direct) * 1e3:.1f} ms")
    for conc, (rate, lat, maxb, _) in results.items():
        print(f"HTTP concurrency {conc}: {rate:.2f} images/s, p50 {pct(lat, 50) * 1e3:.1f} ms, "
              f"p99 {pct(lat, 99) * 1e3:.1f} ms, largest batch {maxb}")
    over = results[1][3]
    print(f"gateway overhead at concurrency 1 (end-to-end minus the replica's model time): "
          f"p50 {pct(over, 50) * 1e3:.1f} ms, p99 {pct(over, 99) * 1e3:.1f} ms; "
          f"end-to-end p50 minus in-process p50: "
          f"{(pct(results[1][1], 50) - statistics.median(direct)) * 1e3:.1f} ms")
    print(f"images/s, concurrency 8 vs 1: {results[8][0] / results[1][0]:.2f}x")


if __name__ == "__main__":
    main()
