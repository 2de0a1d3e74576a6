"""Scaling with image size: latency and peak memory of each tool deployment as the input
grows (256² → 512² → 1024²), through the gateway (tiny profile, CPU).

For each deployment (Matting: background removal; Upscaler: x2; FaceSwap: one face;
Generator: text-to-image at that size, 2 steps) and each size: the median end-to-end latency
of `--repeat` requests, the replica's own model time (response metadata), and the replica
process's peak resident memory so far (VmHWM from /proc: sizes run in increasing order, so
the growth from one size to the next is what that size added). The ingress's peak RSS is
printed too (it decodes uploads and encodes results).

    .venv/bin/python bench/scaling.py [--sizes 256 512 1024] [--repeat 3] [--toy]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import gateway, machine, replica_pids  # noqa: E402

DEPLOYMENTS = ("Matting", "Upscaler", "FaceSwap", "Generator")


def png(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def photo(size: int) -> bytes:
    """A gray picture with one skin-coloured disk: a 'face' for the tiny detector and a
    foreground for matting."""
    import cv2
    import numpy as np

    img = np.full((size, size, 3), 128, np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 4, (224, 172, 105), -1)
    return png(img)


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """VmHWM: the process's peak resident memory so far; VmRSS: now (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request(client, base: str, deployment: str, size: int, image: bytes):
    if deployment == "Matting":
        return client.post(f"{base}/v1/images/remove-background",
                           files={"image": ("a.png", image)})
    if deployment == "Upscaler":
        return client.post(f"{base}/v1/images/upscale", files={"image": ("a.png", image)},
                           data={"scale": "2"})
    if deployment == "FaceSwap":
        return client.post(f"{base}/v1/images/face-swap",
                           files={"source": ("s.png", image), "target": ("t.png", image)})
    return client.post(f"{base}/v1/images/generations",
                       json={"prompt": "a lighthouse at dusk", "size": f"{size}x{size}",
                             "steps": 2, "seed": 1})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--toy", action="store_true", help="64² and 128², one request each")
    ns = ap.parse_args(argv)
    sizes, repeat = ([64, 128], 1) if ns.toy else (sorted(ns.sizes), ns.repeat)

    import httpx

    rows: list[str] = []
    summaries: list[str] = []
    with gateway() as base, httpx.Client(timeout=600) as client:
        for deployment in DEPLOYMENTS:  # warm-up: sessions loaded, code paths hot
            r = request(client, base, deployment, 64, photo(64))
            r.raise_for_status()
        pids = replica_pids()  # after the warm-up: every replica is up and has its title
        print(f"# scaling with image size — {machine()}")
        print("| deployment | size | latency p50 | model time p50 | replica RSS | "
              "replica peak RSS | growth of the peak | ingress peak RSS |")
        print("|---|---|---|---|---|---|---|---|")
        for deployment in DEPLOYMENTS:
            name = deployment.lower()
            previous_peak = None
            measured = []
            for size in sizes:
                image = photo(size)
                latencies, model_times, status = [], [], None
                for _ in range(repeat):
                    started = time.perf_counter()
                    r = request(client, base, deployment, size, image)
                    latencies.append(time.perf_counter() - started)
                    status = r.status_code
                    if r.status_code != 200:
                        break
                    timings = r.json()["metadata"].get("timings", {})
                    model = next((timings[k] for k in ("inference_s", "model_s", "total_s")
                                  if k in timings), None)
                    if model is not None:
                        model_times.append(model)
                if status != 200:
                    message = r.json().get("error", {}).get("message", r.text)[:80]
                    print(f"| {name} | {size}² | {status}: {message} | | | | | |", flush=True)
                    continue
                replica = pids.get(deployment) or replica_pids().get(deployment, [])
                peak = max(rss_mb(p) for p in replica)
                now = max(rss_mb(p, "VmRSS") for p in replica)
                ingress = max(rss_mb(p) for p in pids.get("Ingress", []))
                growth = peak - previous_peak if previous_peak is not None else 0.0
                previous_peak = peak
                latency = statistics.median(latencies)
                model_p50 = (f"{statistics.median(model_times) * 1e3:.0f} ms"
                             if model_times else "-")
                measured.append((size, latency, peak))
                rows.append(name)
                print(f"| {name} | {size}² | {latency * 1e3:.0f} ms | {model_p50} | "
                      f"{now:.0f} MiB | {peak:.0f} MiB | +{growth:.0f} MiB | "
                      f"{ingress:.0f} MiB |", flush=True)
            if len(measured) >= 2:
                (s0, l0, p0), (s1, l1, p1) = measured[0], measured[-1]
                summaries.append(f"{name}: {s0}² -> {s1}² ({(s1 / s0) ** 2:.0f}x pixels): "
                                 f"latency x{l1 / l0:.1f}, replica peak +{p1 - p0:.0f} MiB")
        print()
        for line in summaries:
            print(line)
    if not rows:
        print("no size succeeded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
