"""The video deployment: text-to-video and image-to-video (models/video.py, LTX-Video).

Video is long work (seconds to minutes a clip): one clip runs at a time per replica, and the
production config gives it `max_ongoing_requests` 2 (one running, one waiting) with a short
queue behind, so the autoscaler sees the backlog and overflow gets a quick 503 instead of a
hang. `generate` streams ``{"type": "progress", "step", "total"}`` after every denoising step,
then ``{"type": "result", ...}`` with the clip already encoded (MP4 + poster + optional
preview). The replica encodes: frames are ~150 MB raw for 121 frames of 768x512 and the MP4 is
~1-3 MB, so encoding here spares the object store and the ingress's CPU. If the caller stops
listening (job cancelled, client gone), denoising stops at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from ray import serve

from deployments._common import ModelThread, lower_cpu_priority, replica_info
from models.registry import get_spec
from models.video import VideoModel, VideoRequest, check_inputs, encode_video

logger = logging.getLogger("ray.serve")

# Default GPU share of one replica on GPU profiles: LTX-Video 2B bf16 (~4 GB) + its T5-XXL
# text encoder (~9.5 GB bf16) + activations/VAE decode with tiling: ~20-28 GB (an 80 GB GPU;
# serve_config.yaml sets the production packing).
DEFAULT_NUM_GPUS = 0.35
# A replica that has not finished a step (or a probe) for this long while busy is unhealthy.
STALL_S = 300.0


@serve.deployment(
    name="Video",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=2,
    max_queued_requests=8,
    health_check_period_s=10,
    health_check_timeout_s=60,
)
class Video:
    def __init__(self, *, model: str = "tiny-ltx", source: str | None = None,
                 allow_fallback: bool = False, zoo_dir: str | None = None,
                 niceness: int = 0, torch_threads: int | None = None):
        import torch

        lower_cpu_priority(niceness)
        # every torch call of this replica on one thread, the loading included (ModelThread)
        self._thread = ModelThread("video-model")
        spec = get_spec(model, kind="video", source=source)

        def load() -> VideoModel:
            if torch_threads:
                torch.set_num_threads(torch_threads)  # OpenMP's setting is per thread
            return VideoModel.from_spec(spec, zoo_dir=zoo_dir, allow_fallback=allow_fallback)

        self.model = self._thread.call(load)
        self._lock = asyncio.Lock()  # one clip at a time: pipelines are not thread-safe
        self._clips = 0
        self._frames = 0
        self._steps = 0
        self._cancelled = 0
        self._probes = 0
        self._inference_s = 0.0
        self._encode_s = 0.0
        self._last_error: str | None = None
        self._last_ok = time.monotonic()  # last finished clip, probe or denoising step

    async def generate(self, request: VideoRequest, preview: str | None = None):
        """Stream progress events, then ``{"type": "result", "video": EncodedVideo, "seed",
        "model", "timings"}``."""
        check_inputs(request, self.model.limits)  # a bad request fails before it waits
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def on_step(step: int, total: int) -> None:  # from the model's thread
            self._steps += 1
            self._last_ok = time.monotonic()
            loop.call_soon_threadsafe(events.put_nowait,
                                      {"type": "progress", "step": step, "total": total})

        def render():
            result = self.model.generate(request, on_step=on_step, cancel=cancel)
            encoded = encode_video(result.frames, result.fps, preview=preview)
            return result, encoded

        queued = time.perf_counter()
        async with self._lock:
            started = time.perf_counter()
            work = asyncio.ensure_future(self._thread.run(render))
            try:
                while not work.done() or not events.empty():
                    getter = asyncio.ensure_future(events.get())
                    await asyncio.wait({work, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        yield getter.result()
                    else:
                        getter.cancel()
                try:
                    result, encoded = work.result()
                except Exception as exc:
                    if type(exc).__name__ != "VideoCancelled":
                        self._last_error = f"{type(exc).__name__}: {exc}"
                    raise
                self._last_error = None
                self._last_ok = time.monotonic()
                self._clips += 1
                self._frames += encoded.frames
                self._inference_s += result.timings["inference_s"]
                self._encode_s += encoded.timings["encode_s"]
                timings = {**result.timings, **encoded.timings,
                           "queue_s": started - queued}
                yield {"type": "result", "video": encoded, "seed": result.seed,
                       "model": result.model, "timings": timings}
            finally:
                if not work.done():  # abandoned: stop at the next step, keep the lock till out
                    cancel.set()
                    self._cancelled += 1
                    await asyncio.wait({work})

    def info(self) -> dict[str, Any]:
        return replica_info(self.model.info, vars(self.model.limits))

    def stats(self) -> dict[str, Any]:
        return {"clips": self._clips, "frames": self._frames, "denoising_steps": self._steps,
                "cancelled": self._cancelled, "health_probes": self._probes,
                "inference_s": self._inference_s, "encode_s": self._encode_s,
                "busy": self._lock.locked(), "last_error": self._last_error}

    async def check_health(self) -> None:
        """A busy replica is healthy while its steps advance; an idle one with no success in
        the last minute (or whose last clip failed) runs a real 1-step, smallest clip."""
        if self._lock.locked():
            if time.monotonic() - self._last_ok > STALL_S:
                raise RuntimeError(f"video replica busy without progress for {STALL_S:.0f}s")
            return
        if self._last_error is None and time.monotonic() - self._last_ok < 60:
            return
        limits = self.model.limits
        side = limits.min_side
        probe = VideoRequest(prompt="health probe", width=side, height=side,
                             num_frames=limits.frame_multiple + 1, fps=limits.max_fps,
                             steps=1, guidance_scale=1.0, seed=0)
        self._probes += 1
        try:
            async with self._lock:
                result = await asyncio.wait_for(
                    self._thread.run(self.model.generate, probe), timeout=50)
        except Exception as exc:
            raise RuntimeError(f"video health probe failed: {type(exc).__name__}: {exc}"
                               ) from exc
        if result.frames.shape != (probe.num_frames, side, side, 3):
            raise RuntimeError(f"video health probe returned {result.frames.shape}")
        self._last_ok = time.monotonic()
        self._last_error = None
