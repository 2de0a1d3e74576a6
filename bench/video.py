"""Video: tiny-model frames/s in-process vs through the Videos API, and encode's time share.

In-process: `VideoModel.generate` + `encode_video` (what a Video replica does per clip).
Through the API: the production graph (serve_config.yaml, tiny models, API keys on) with the
official `openai` client: `videos.create_and_poll` then `download_content`, one clip at a
time. Target: the API delivers >= 90 % of the in-process frames/s.

    .venv/bin/python bench/video.py [--clips 5] [--seconds 4] [--steps 4] [--size 64x64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine  # noqa: E402
from bench._serving import production_gateway  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", default="64x64")
    ns = ap.parse_args()

    import openai

    from models.registry import get_spec
    from models.video import VideoModel, VideoRequest, encode_video, frames_for

    width, height = (int(x) for x in ns.size.split("x"))
    frames = frames_for(ns.seconds, ns.fps)
    seconds = f"{ns.seconds:g}"
    extra = {"fps": ns.fps, "steps": ns.steps}
    with production_gateway() as gw:
        key = gw.create_key("bench-video", scopes=["generate"], requests_per_minute=100000)
        client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                               timeout=600)
        # the in-process model at the Video replica's CPU priority (Ray workers start at
        # niceness 15, model replicas add model_niceness): on a loaded machine a process at 0
        # would get more CPU than the replica it is compared with
        replica_nice = gw.handle("Video").info.remote().result(timeout_s=60)["niceness"]
        os.nice(max(0, replica_nice - os.nice(0)))
        model = VideoModel.from_spec(get_spec("tiny-ltx"))
        req = VideoRequest(prompt="a cat walking on a beach", width=width, height=height,
                           num_frames=frames, fps=ns.fps, steps=ns.steps, seed=0)
        model.generate(req)  # warm-up, both sides
        client.videos.create_and_poll(prompt="warm-up", seconds=seconds, size=ns.size,
                                      poll_interval_ms=50, extra_body={**extra, "seed": 99})
        gen, enc, api, job_enc, job_total = [], [], [], [], []
        # interleaved round by round: the machine's load drifts, the ratio is the result
        for i in range(ns.clips):
            t = time.perf_counter()
            result = model.generate(VideoRequest(**{**vars(req), "seed": i}))
            gen.append(time.perf_counter() - t)
            t = time.perf_counter()
            encode_video(result.frames, ns.fps)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            video = client.videos.create_and_poll(prompt="a cat walking on a beach",
                                                  seconds=seconds, size=ns.size,
                                                  poll_interval_ms=50,
                                                  extra_body={**extra, "seed": i})
            client.videos.download_content(video.id).read()
            api.append(time.perf_counter() - t)
            timings = (video.model_extra or {})["metadata"]["timings"]
            job_enc.append(timings["encode_s"])
            job_total.append(timings["total_s"])
            print(f"round {i + 1}: in-process {gen[-1] + enc[-1]:.2f} s, API {api[-1]:.2f} s",
                  flush=True)
    local_s = statistics.median(g + e for g, e in zip(gen, enc, strict=True))
    share = statistics.median(e / (g + e) for g, e in zip(gen, enc, strict=True))
    api_s = statistics.median(api)
    print(f"# video — {machine()}; tiny-ltx {ns.size}, {frames} frames ({seconds} s at "
          f"{ns.fps} fps), {ns.steps} steps, {ns.clips} rounds, medians; in-process at the "
          f"replica's niceness {replica_nice}")
    print(f"in-process: generate {statistics.median(gen):.2f} s + encode "
          f"{statistics.median(enc):.3f} s = {local_s:.2f} s/clip -> "
          f"{frames / local_s:.2f} frames/s; encode share {share:.1%}")
    print(f"through the API (keys on, Serve proxy, openai client create_and_poll every 50 ms "
          f"+ download): {api_s:.2f} s/clip -> {frames / api_s:.2f} frames/s = "
          f"{local_s / api_s:.0%} of in-process; in the job: total "
          f"{statistics.median(job_total):.2f} s, encode share "
          f"{statistics.median(e / t for e, t in zip(job_enc, job_total, strict=True)):.1%}")


if __name__ == "__main__":
    main()
