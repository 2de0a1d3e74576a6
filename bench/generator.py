"""Generator throughput and gateway overhead (tiny profile, CPU).

Prints images/s through the full path (HTTP -> Serve proxy -> ingress -> generator) at
concurrency 1 and 8, and the per-request overhead of ingress+proxy versus calling the same
model in-process. Usage:

    .venv/bin/python bench/generator.py [--requests 24] [--steps 4] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ns = ap.parse_args()

    import httpx
    import ray
    from ray import serve

    from graphs.app import AppArgs, build_app
    from models.diffusion import DiffusionModel, GenerationRequest
    from models.registry import get_spec

    payload = {"prompt": "a cat in a crown", "size": f"{ns.size}x{ns.size}", "steps": ns.steps}

    # In-process baseline: the same model, no Ray, no HTTP.
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

    tmp = tempfile.mkdtemp(prefix="psbench", dir="/tmp")
    ray.init(num_cpus=8, include_dashboard=False, _temp_dir=tmp, logging_level="ERROR",
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8199},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    serve.run(build_app(AppArgs(profile="tiny", data_dir=f"{tmp}/data")), name="bench",
              route_prefix="/", logging_config={"log_level": "WARNING",
                                                "enable_access_log": False})
    url = "http://127.0.0.1:8199/v1/images/generations"
    client = httpx.Client(timeout=300)

    def one(i):
        t = time.perf_counter()
        r = client.post(url, json={**payload, "seed": i})
        r.raise_for_status()
        return time.perf_counter() - t, r.json()["metadata"]["batch_size"]

    for i in range(3):
        one(i)  # warm-up
    results = {}
    for conc in (1, 8):
        t = time.perf_counter()
        with ThreadPoolExecutor(conc) as pool:
            out = list(pool.map(one, range(ns.requests)))
        wall = time.perf_counter() - t
        results[conc] = (ns.requests / wall, [o[0] for o in out], max(o[1] for o in out))

    print(f"# generator bench — {platform.node()} {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}, tiny-sd {ns.size}x{ns.size}, {ns.steps} steps, "
          f"{ns.requests} requests")
    print(f"in-process model: {1 / statistics.median(direct):.2f} images/s, "
          f"p50 {statistics.median(direct) * 1e3:.1f} ms")
    for conc, (ips, lat, maxb) in results.items():
        print(f"HTTP concurrency {conc}: {ips:.2f} images/s, p50 {pct(lat, 50) * 1e3:.1f} ms, "
              f"p99 {pct(lat, 99) * 1e3:.1f} ms, largest batch {maxb}")
    overhead = pct(results[1][1], 50) - statistics.median(direct)
    print(f"ingress+proxy overhead at concurrency 1: {overhead * 1e3:.1f} ms p50 per request")
    print(f"batching speed-up, concurrency 8 vs 1: {results[8][0] / results[1][0]:.2f}x")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
