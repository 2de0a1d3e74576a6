"""Generator batching on and off: images/s over HTTP versus client concurrency.

Each configuration is a gateway of its own (tiny profile, `photostudio serve`'s Serve
settings) started side by side; the only difference between them is the builder args
`max_batch_size` / `batch_wait_timeout_s` (config, not code: `off` is max_batch_size 1, so
`@serve.batch` hands the model one request at a time). At each concurrency every
configuration gets the same closed-loop load (tiny-sd, 64x64, 4 steps) in turn, round after
round; the medians of the rounds are printed with the ratio to `off`. Usage:

    .venv/bin/python bench/batching.py [--configs off,8:0.005,16:0.005]
        [--concurrency 1 2 4 8 16] [--requests 32] [--rounds 2] [--toy]

A config is `off`, `on` (the builder's defaults) or `MAX_BATCH_SIZE:BATCH_WAIT_TIMEOUT_S`.

`--shipped` (issue #20, target 5): the product as shipped (`photostudio serve --profile
tiny`, API keys on, a key from `photostudio keys create`) at concurrency 8 against the same
model in this process running batches of 8 (one torch thread, as the replica), interleaved
round by round; target: ours >= 80 % of the in-process batch-8 images/s. It replaces issue
#8's "batching on >= 1.5x off at concurrency 8", which the tiny model's own 1.25-1.29x
batch gain on a CPU makes unreachable (still printed for the off/on comparison).

    .venv/bin/python bench/batching.py --shipped [--rounds 3] [--requests 32] [--steps 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Child, client_connector, machine, pct  # noqa: E402


def parse_config(text: str) -> dict:
    if text == "off":
        return {"max_batch_size": 1}
    if text == "on":
        return {}
    size, _, wait = text.partition(":")
    try:
        return {"max_batch_size": int(size), "batch_wait_timeout_s": float(wait or 0.005)}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"config {text!r}: use off, on or MAX_BATCH_SIZE:BATCH_WAIT_TIMEOUT_S") from None


async def load(session, url: str, *, concurrency: int, requests: int, size: int, steps: int,
               seed0: int) -> dict:
    """`requests` generations from `concurrency` closed-loop clients."""
    latencies: list[float] = []
    batches: Counter[int] = Counter()
    todo = iter(range(requests))

    async def client():
        for i in todo:
            t = time.perf_counter()
            async with session.post(f"{url}/v1/images/generations", json={
                    "prompt": "a cat in a crown", "size": f"{size}x{size}", "steps": steps,
                    "seed": seed0 + i}) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {body[:300]!r}")
            latencies.append(time.perf_counter() - t)
            batches[json.loads(body)["metadata"]["batch_size"]] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"rate": requests / (time.perf_counter() - started), "latencies": latencies,
            "batches": batches}


async def measure(ns, gateways: dict[str, Child]) -> dict:
    import aiohttp

    results: dict[tuple[str, int], list[dict]] = {}
    async with aiohttp.ClientSession(connector=client_connector(),
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        for child in gateways.values():  # warm-up: code paths hot, batches of every size seen
            await load(session, child.url, concurrency=4, requests=8, size=ns.size,
                       steps=ns.steps, seed0=10_000)
        seed = 0
        for r in range(ns.rounds):
            for conc in ns.concurrency:
                n = max(ns.requests, 2 * conc)
                for name, child in gateways.items():
                    results.setdefault((name, conc), []).append(await load(
                        session, child.url, concurrency=conc, requests=n, size=ns.size,
                        steps=ns.steps, seed0=seed))
                    seed += n
            print(f"round {r + 1}/{ns.rounds} done", file=sys.stderr, flush=True)
    return results


def in_process_batch(model, batch: int, size: int, steps: int, seed0: int) -> float:
    """Images/s of one `batch`-image pipeline call of `model` (PNG-encoded, as served)."""
    from graphs.images import encode
    from models.diffusion import GenerationRequest

    reqs = [GenerationRequest(prompt="a cat in a crown", width=size, height=size, steps=steps,
                              seed=seed0 + i) for i in range(batch)]
    started = time.perf_counter()
    results = model.generate(reqs)
    for res in results:
        encode(res.images[0], "png")
    return batch / (time.perf_counter() - started)


def shipped(ns) -> None:
    """Target 5: ours as shipped at concurrency 8 vs the model in-process at batch 8."""
    import os

    import aiohttp
    import torch

    from bench._common import match_worker_priority, shipped_gateway
    from models.diffusion import DiffusionModel
    from models.registry import get_spec

    torch.set_num_threads(1)
    model = DiffusionModel.from_spec(get_spec("tiny-sd"))
    conc = 8
    ours, token = shipped_gateway("ours")
    rates: dict[str, list[float]] = {"in-process batch 8": [], "ours c=8": []}
    batches: Counter[int] = Counter()
    loads: list[float] = []
    try:
        match_worker_priority()

        async def run():
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(connector=client_connector(), headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=600)) as s:
                await load(s, ours.url, concurrency=4, requests=8, size=ns.size,
                           steps=ns.steps, seed0=10_000)  # warm-up
                in_process_batch(model, conc, ns.size, ns.steps, 20_000)
                for r in range(ns.rounds):
                    loads.append(os.getloadavg()[0])
                    rates["in-process batch 8"].append(statistics.median(
                        in_process_batch(model, conc, ns.size, ns.steps, 30_000 + 100 * r + i)
                        for i in range(3)))
                    result = await load(s, ours.url, concurrency=conc,
                                        requests=max(ns.requests, 2 * conc), size=ns.size,
                                        steps=ns.steps, seed0=1000 * r)
                    rates["ours c=8"].append(result["rate"])
                    batches.update(result["batches"])
                    print(f"round {r + 1}/{ns.rounds} done", file=sys.stderr, flush=True)

        asyncio.run(run())
    finally:
        ours.stop()
    ref = statistics.median(rates["in-process batch 8"])
    got = statistics.median(rates["ours c=8"])
    mean_batch = sum(k * v for k, v in batches.items()) / max(1, sum(batches.values()))
    print(f"# generation as shipped vs in-process batch 8 — {machine()}")
    print(f"tiny-sd {ns.size}x{ns.size}, {ns.steps} steps; {ns.rounds} rounds, medians; load "
          f"average at each round: {', '.join(f'{x:.1f}' for x in loads)}")
    print("\n| | images/s per round | median |")
    print("|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | "
              f"{statistics.median(values):.2f} |")
    print(f"\nours: mean batch {mean_batch:.1f} (max {max(batches)})")
    best = max(rates["in-process batch 8"])  # the least disturbed model call of the run
    print(f"\n## target 5: ours at concurrency 8 >= 80 % of in-process batch 8\n"
          f"{got / ref:.0%} of the in-process median ({'met' if got >= 0.8 * ref else 'missed'}); "
          f"{got / best:.0%} of its best round ({'met' if got >= 0.8 * best else 'missed'}, "
          "the conservative reading on a shared machine)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shipped", action="store_true",
                    help="target 5: the shipped gateway at concurrency 8 vs in-process batch 8")
    ap.add_argument("--configs", default="off,on")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--requests", type=int, default=32, help="per cell (at least 2x conc)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--settings", default="haproxy", help="Serve settings (bench/_common.py)")
    ap.add_argument("--generator-threads", type=int, default=None,
                    help="torch threads of the Generator replica in every config "
                         "(AppArgs.generator_torch_threads; default: its num_cpus, 1)")
    ap.add_argument("--toy", action="store_true",
                    help="quick check: off and on, concurrency 1 and 4, 8 requests, 1 round")
    ns = ap.parse_args()
    if ns.shipped:
        shipped(ns)
        return
    if ns.toy:
        ns.configs, ns.concurrency, ns.requests, ns.rounds, ns.steps = "off,on", [1, 4], 8, 1, 2
    names = [c for c in ns.configs.split(",") if c]
    configs = {name: parse_config(name) for name in names}
    if "off" not in configs:
        ap.error("--configs must include off (the baseline of the ratios)")
    gateways: dict[str, Child] = {}
    try:
        for name, args in configs.items():  # one Ray at a time: several at once time out
            extra = ({"generator_torch_threads": ns.generator_threads}
                     if ns.generator_threads else {})
            gateways[name] = Child.gateway(f"batching:{name}", ns.settings, **args, **extra)
            gateways[name].wait_ready()
        results = asyncio.run(measure(ns, gateways))
    finally:
        for child in gateways.values():
            child.stop()
    report(ns, names, configs, results)


def report(ns, names: list[str], configs: dict, results: dict) -> None:
    print(f"# generator batching — {machine()}")
    print(f"tiny-sd {ns.size}x{ns.size}, {ns.steps} steps, Serve settings {ns.settings!r}, "
          f"Generator torch threads {ns.generator_threads or 'default (1)'}; "
          f"{ns.rounds} rounds, median images/s of the rounds; configs: "
          + "; ".join(f"{n} = {configs[n] or 'builder defaults'}" for n in names))
    print("\n| concurrency | " + " | ".join(
        f"{n} images/s | {n} p50 | {n} batches" for n in names) + " | "
        + " | ".join(f"{n} / off" for n in names if n != "off") + " |")
    print("|---|" + "---|---|---|" * len(names) + "---|" * (len(names) - 1))
    ratios: dict[tuple[str, int], float] = {}
    for conc in ns.concurrency:
        cells, rates = [], {}
        for n in names:
            runs = results[(n, conc)]
            rates[n] = statistics.median(r["rate"] for r in runs)
            lat = [x for r in runs for x in r["latencies"]]
            batches = sum((r["batches"] for r in runs), Counter())
            mean_batch = sum(k * v for k, v in batches.items()) / max(1, sum(batches.values()))
            cells.append(f"{rates[n]:.2f} | {statistics.median(lat) * 1e3:.0f} ms "
                         f"(p99 {pct(lat, 99) * 1e3:.0f}) | mean {mean_batch:.1f}, "
                         f"max {max(batches)}")
        for n in names:
            if n != "off":
                ratios[(n, conc)] = rates[n] / rates["off"]
        print(f"| {conc} | " + " | ".join(cells) + " | " + " | ".join(
            f"{ratios[(n, conc)]:.2f}x" for n in names if n != "off") + " |")
    at = 8 if 8 in ns.concurrency else max(ns.concurrency)
    print("\n## issue #8's target (replaced by --shipped's, issue #20): batching on >= 1.5x "
          "images/s at concurrency 8")
    for n in names:
        if n != "off":
            r = ratios[(n, at)]
            print(f"{n}: {r:.2f}x at concurrency {at} "
                  f"({'met' if r >= 1.5 else 'missed'})")
    recommend(ns, names, configs, results)


def recommend(ns, names: list[str], configs: dict, results: dict) -> None:
    """From the curve: the smallest batch size within 10 % of the best images/s at every
    concurrency from 8 up (a bigger batch only adds latency there), and its wait."""
    high = [c for c in ns.concurrency if c >= 8] or [max(ns.concurrency)]
    batched = [n for n in names if n != "off"]
    if not batched:
        return
    rate = {(n, c): statistics.median(r["rate"] for r in results[(n, c)])
            for n in names for c in high}
    size = {n: configs[n].get("max_batch_size", 8) for n in batched}
    good = [n for n in batched
            if all(rate[(n, c)] >= 0.9 * max(rate[(m, c)] for m in batched) for c in high)]
    pick = min(good or batched, key=lambda n: size[n])
    wait = configs[pick].get("batch_wait_timeout_s", 0.005)
    print(f"\n## recommendation (concurrency {', '.join(map(str, high))})")
    print(f"max_batch_size {size[pick]}, batch_wait_timeout_s {wait:g} ({pick}: "
          + ", ".join(f"{rate[(pick, c)]:.2f} images/s at {c}" for c in high)
          + "); requests arriving while a batch runs join the next one, so a longer wait "
          "only adds latency at low concurrency")


if __name__ == "__main__":
    main()
