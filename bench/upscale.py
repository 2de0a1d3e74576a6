"""Upscaler: seconds per output megapixel, in-process model and through the gateway.

    .venv/bin/python bench/upscale.py [--sizes 128 256 512]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import gateway, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--repeat", type=int, default=3)
    ns = ap.parse_args()

    import httpx
    import numpy as np
    from PIL import Image

    from models.upscale import UpscaleModel

    model = UpscaleModel.from_name("tiny-esrgan")
    rng = np.random.default_rng(0)
    print(f"# upscaler — {machine()}; tiny-esrgan (RRDBNet, 8 features, 1 block), tile 256")
    print("| input | scale | in-process s/MP (output) | gateway s/MP (output) |")
    print("|---|---|---|---|")
    results = []
    for size in ns.sizes:
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        for scale in (2, 4):
            model.upscale(arr, scale=scale)  # warm-up
            t = time.perf_counter()
            for _ in range(ns.repeat):
                model.upscale(arr, scale=scale, tile=256)
            per = (time.perf_counter() - t) / ns.repeat
            results.append((size, scale, arr, per / ((size * scale) ** 2 / 1e6)))
    del model
    with gateway() as base, httpx.Client(timeout=600) as client:
        for size, scale, arr, local in results:
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            files = {"image": ("a.png", buf.getvalue())}
            client.post(f"{base}/v1/images/upscale", files=files, data={"scale": scale})
            t = time.perf_counter()
            for _ in range(ns.repeat):
                r = client.post(f"{base}/v1/images/upscale", files=files, data={"scale": scale})
                r.raise_for_status()
            per = (time.perf_counter() - t) / ns.repeat
            print(f"| {size}x{size} | x{scale} | {local:.2f} | "
                  f"{per / ((size * scale) ** 2 / 1e6):.2f} |", flush=True)


if __name__ == "__main__":
    main()
