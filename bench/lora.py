"""LoRA adapters: switch latency, cold load, and throughput with 1/3/10 adapters vs the naive
per-request load/unload loop users report as slow (diffusers #8953, #9297, #11816).

In-process on the tiny SD model (CPU), one torch thread like a Generator replica:
- warm switch: `set_adapters` between two loaded adapter sets (what a cached set costs);
- cold load: `load_lora_weights(adapter_name=)` of a safetensors LoRA not yet loaded;
- images/s at concurrency 8 (8 requests waiting, as a replica's batch sees them), requests
  spread over N distinct adapters: ours (adapters cached, one pipeline call per adapter set,
  `DiffusionModel.generate` + `activate`) vs naive (per request: load_lora_weights, generate,
  unload_lora_weights).

Through the shipped gateway (`--http`): `photostudio serve --profile tiny` with API keys on
(bench/_common.py `shipped_gateway`), the LoRAs registered over HTTP (POST /v1/models/loras
with a `models`-scoped key made by `photostudio keys create`), then over HTTP:
- register: upload + check on the Generator + store, per adapter;
- warm switch: generation latency alternating between two cached adapter sets, minus the
  latency of repeating one set (what a switch adds end to end);
- images/s at concurrency 8 with 1, 3 and 10 distinct adapters (the shipped Generator keeps 4
  adapter sets: with 10, sets are evicted and loaded again, as they would be).

GPU (`--device cuda`): the same, plus the hotswap path: `enable_lora_hotswap(target_rank=)`,
`torch.compile` of the UNet after the first adapter, later adapters loaded with `hotswap=True`
into the same slot (no recompilation; adapters of rank > target_rank are refused). Usage:

    .venv/bin/python bench/lora.py [--requests 24] [--steps 2] [--device cpu|cuda] [--http]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, drive, machine, shipped_gateway, summary  # noqa: E402


def adapters(n: int, root: Path) -> dict[str, str]:
    """n tiny LoRA files (catalogue ones first, then more seeded ones)."""
    from models import zoo

    out = {}
    for i in range(n):
        folder = root / f"bench-lora-{i}"
        if not folder.exists():
            folder.mkdir(parents=True)
            zoo.build_tiny_lora(folder, seed=1000 + i)
        out[f"bench-lora-{i}"] = str(folder)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny-sd")
    ap.add_argument("--hotswap-rank", type=int, default=8)
    ap.add_argument("--http", action="store_true", help="through the shipped gateway over "
                    "HTTP (API keys on) instead of in-process")
    ns = ap.parse_args()
    if ns.http:
        return http_bench(ns)

    import torch

    import models  # noqa: F401  (torchvision guard)
    from models.diffusion import DiffusionModel, GenerationRequest
    from models.lora import LoraRef, read_lora_file

    if ns.device == "cpu":
        torch.set_num_threads(1)
    root = Path(tempfile.gettempdir()) / "photostudio-bench-lora"
    files = adapters(10, root)
    names = list(files)
    model = DiffusionModel.from_name(ns.model, device=ns.device)
    pipe = model._pipes["text2img"]

    def request(i: int, loras=()) -> GenerationRequest:
        return GenerationRequest(prompt="a cat in a crown", width=ns.size, height=ns.size,
                                 steps=ns.steps, seed=i, loras=tuple(loras))

    print(f"# LoRA bench — {machine()}; model {ns.model} on {ns.device}, {ns.size}px, "
          f"{ns.steps} steps")
    cold = []
    for name in names[:3]:
        cold.append(model.load_adapter(name, files[name]))
    print(f"cold load (load_lora_weights, adapter_name=): median "
          f"{statistics.median(cold) * 1000:.1f} ms ({len(cold)} adapters)")
    a, b = (LoraRef(names[0], 1.0),), (LoraRef(names[1], 0.7), LoraRef(names[2], 0.5))
    switches = []
    for _ in range(20):
        for s in (a, b):
            started = time.perf_counter()
            model.activate(s)
            switches.append(time.perf_counter() - started)
    print(f"warm switch (set_adapters, 3 loaded): median {statistics.median(switches) * 1000:.1f}"
          f" ms, p90 {sorted(switches)[int(0.9 * len(switches))] * 1000:.1f} ms")
    for name in names[:3]:
        model.unload_adapter(name)

    for distinct in (1, 3, 10):
        reqs = [request(i, (LoraRef(names[i % distinct], 1.0),)) for i in range(ns.requests)]
        # ours: adapters cached after their first load; 8 waiting requests per round, one
        # pipeline call per adapter set among them (what the Generator does)
        started = time.perf_counter()
        for k in range(0, len(reqs), 8):
            wave = reqs[k:k + 8]
            for ref in {r.loras[0] for r in wave}:
                model.load_adapter(ref.name, files[ref.name])
            model.generate(wave, max_batch_images=8)
        ours = len(reqs) / (time.perf_counter() - started)
        for name in names[:distinct]:
            model.unload_adapter(name)
        # naive: load, generate, unload per request
        started = time.perf_counter()
        for r in reqs:
            pipe.load_lora_weights(read_lora_file(files[r.loras[0].name]),
                                   adapter_name=r.loras[0].name)
            pipe.set_adapters([r.loras[0].name], adapter_weights=[1.0])
            model.generate([GenerationRequest(**{**vars(r), "loras": ()})])
            pipe.unload_lora_weights()
        naive = len(reqs) / (time.perf_counter() - started)
        model._active = None
        print(f"concurrency 8, {distinct:>2} distinct adapters: ours {ours:.2f} img/s, naive "
              f"load/unload loop {naive:.2f} img/s ({ours / naive:.1f}x)")

    if ns.device.startswith("cuda"):
        hotswap(ns, files, names)


def hotswap(ns, files: dict[str, str], names: list[str]) -> None:
    """GPU: enable_lora_hotswap + torch.compile; swapping adapters never recompiles."""
    import torch

    from models.diffusion import DiffusionModel, GenerationRequest
    from models.lora import read_lora_file

    model = DiffusionModel.from_name(ns.model, device=ns.device)
    pipe = model._pipes["text2img"]
    model.enable_hotswap(ns.hotswap_rank)
    pipe.load_lora_weights(read_lora_file(files[names[0]]), adapter_name="slot")
    pipe.unet = torch.compile(pipe.unet)
    req = GenerationRequest(prompt="a cat", width=ns.size, height=ns.size, steps=ns.steps,
                            seed=0)
    started = time.perf_counter()
    model.generate([req])  # compiles
    print(f"hotswap: first call (compile) {time.perf_counter() - started:.1f} s")
    swaps, calls = [], []
    for name in names[1:6]:
        started = time.perf_counter()
        pipe.load_lora_weights(read_lora_file(files[name]), adapter_name="slot", hotswap=True)
        swaps.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.generate([req])
        calls.append(time.perf_counter() - started)
    print(f"hotswap: swap median {statistics.median(swaps) * 1000:.1f} ms, call after swap "
          f"median {statistics.median(calls) * 1000:.1f} ms (no recompilation)")


def http_bench(ns) -> None:
    """The shipped gateway over HTTP: register, warm switch, images/s at c=8."""
    import os
    import subprocess

    import httpx

    root = Path(tempfile.gettempdir()) / "photostudio-bench-lora"
    files = adapters(10, root)
    child, _ = shipped_gateway("lora")
    try:
        made = subprocess.run(
            [sys.executable, "-m", "graphs.cli", "keys", "create", "--project", "default",
             "--name", "bench-lora", "--scope", "generate", "--scope", "models",
             "--requests-per-minute", "100000000", "--images-per-day", "100000000"],
            cwd=REPO, capture_output=True, text=True,
            env={**os.environ, "PHOTOSTUDIO_DATA_DIR": _data_dir(child)})
        if made.returncode != 0:
            raise RuntimeError(f"keys create failed: {made.stderr[-500:]}")
        token = made.stdout.strip().splitlines()[-1]
        client = httpx.Client(base_url=child.url, timeout=300,
                              headers={"Authorization": f"Bearer {token}"})
        print(f"# LoRA bench over HTTP — {machine()}; shipped gateway (photostudio serve "
              f"--profile tiny, API keys on), {ns.size}px, {ns.steps} steps")
        names, registered = list(files), []
        for name in names:
            blob = (Path(files[name]) / "pytorch_lora_weights.safetensors").read_bytes()
            started = time.perf_counter()
            r = client.post("/v1/models/loras", data={"name": name},
                            files={"file": (f"{name}.safetensors", blob)})
            registered.append(time.perf_counter() - started)
            if r.status_code != 201:
                raise RuntimeError(f"register {name}: {r.status_code} {r.text[:300]}")
        print(f"register (upload + check on the Generator + store), {len(names)} adapters: "
              f"{summary(registered)}")

        def generate(i: int, loras: list[dict]) -> None:
            r = client.post("/v1/images/generations", json={
                "prompt": "a cat in a crown", "size": f"{ns.size}x{ns.size}",
                "steps": ns.steps, "seed": i, "loras": loras})
            if r.status_code != 200:
                raise RuntimeError(f"generation: {r.status_code} {r.text[:300]}")

        a = [{"name": names[0], "weight": 1.0}]
        b = [{"name": names[1], "weight": 0.7}, {"name": names[2], "weight": 0.5}]
        for s in (a, b):
            generate(0, s)  # both sets cached on the replica
        same, alternating = [], []
        for i in range(10):
            for target, s in ((same, a), (same, a), (alternating, b), (alternating, a)):
                started = time.perf_counter()
                generate(i, s)
                target.append(time.perf_counter() - started)
        switch = statistics.median(alternating) - statistics.median(same)
        print(f"one set repeated: {summary(same)}; alternating two cached sets: "
              f"{summary(alternating)}; warm switch adds {switch * 1000:.0f} ms (median)")
        for distinct in (1, 3, 10):
            rate, lat = drive(lambda i, d=distinct: generate(
                i, [{"name": names[i % d], "weight": 1.0}]), requests=ns.requests,
                concurrency=8)
            print(f"concurrency 8, {distinct:>2} distinct adapters: {rate:.2f} img/s "
                  f"({summary(lat)})")
        client.close()
    finally:
        child.stop()


def _data_dir(child) -> str:
    """The shipped gateway's data dir (its serve command's --data-dir)."""
    cmd = child.proc.args
    return cmd[cmd.index("--data-dir") + 1]


if __name__ == "__main__":
    main()
