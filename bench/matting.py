"""Background removal: our endpoint versus rembg's own HTTP server (`rembg s`), side by side.

Same ONNX file (the tiny U²-Net-shaped zoo model), same 50 images (640x480), same client;
images/s at each concurrency and the ratio ours/theirs. Usage:

    .venv/bin/python bench/matting.py [--images 50] [--concurrency 1 4 8 16]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import drive, gateway, machine, summary  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ns = ap.parse_args()

    import httpx

    from models import zoo

    model_dir = zoo.ensure("tiny-u2net")
    model_file = next(model_dir.glob("*.onnx"))
    images = make_images(ns.images)

    port = free_port()
    env = {**os.environ, "REMBG_HOME": str(model_dir)}
    rembg_cli = str(Path(sys.executable).parent / "rembg")
    rembg = subprocess.Popen([rembg_cli, "s", "--host", "127.0.0.1", "--port", str(port),
                              "--no-ui", "--log_level", "warning"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64))
    extras = json.dumps({"model_path": str(model_file)})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client.get(f"http://127.0.0.1:{port}/api", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or rembg.poll() is not None:
                    raise RuntimeError("rembg server did not start") from None
                time.sleep(0.5)

        def theirs(i: int):
            r = client.post(f"http://127.0.0.1:{port}/api/remove",
                            files={"file": ("a.png", images[i % len(images)])},
                            data={"model": "u2net_custom"}, params={"extras": extras})
            r.raise_for_status()
            if not r.content.startswith(b"\x89PNG"):
                raise RuntimeError("rembg did not return a PNG")

        with gateway() as base:
            def ours(i: int):
                r = client.post(f"{base}/v1/images/remove-background",
                                files={"image": ("a.png", images[i % len(images)])})
                r.raise_for_status()

            for fn in (theirs, ours):  # warm-up: sessions loaded, code paths hot
                for i in range(4):
                    fn(i)
            print(f"# background removal, ours vs `rembg s` — {machine()}")
            print(f"model: {model_file.name} (tiny zoo, same file for both); {ns.images} images "
                  "640x480 PNG; output RGBA PNG")
            print("| concurrency | ours images/s | rembg images/s | ratio | ours latency | "
                  "rembg latency |")
            print("|---|---|---|---|---|---|")
            for conc in ns.concurrency:
                ours_rate, ours_lat = drive(ours, requests=ns.images, concurrency=conc)
                their_rate, their_lat = drive(theirs, requests=ns.images, concurrency=conc)
                print(f"| {conc} | {ours_rate:.1f} | {their_rate:.1f} | "
                      f"{ours_rate / their_rate:.2f}x | {summary(ours_lat)} | "
                      f"{summary(their_lat)} |", flush=True)
    finally:
        rembg.terminate()
        rembg.wait(timeout=30)


if __name__ == "__main__":
    main()
