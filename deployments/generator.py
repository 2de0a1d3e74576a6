"""The Stable Diffusion generator deployment.

Concurrent requests are collected by `@serve.batch` (batch size counted in images, not
requests) and the model runs compatible ones in shared pipeline calls. The deployment keeps
a record of the batch sizes it actually ran (`stats`), which the tests and benchmarks read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from ray import serve

from graphs import observability

logger = logging.getLogger("ray.serve")

# Default GPU share of one replica on GPU profiles (SD 1.5 fp16 needs ~3.5 GB at batch 8,
# 512x512; see serve_config.yaml for the production packing of one GPU).
DEFAULT_NUM_GPUS = 0.4


def _images_in(batch: list[Any]) -> int:
    return sum(req.n for req in batch)


@serve.deployment(
    name="Generator",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class Generator:
    def __init__(
        self,
        *,
        model: str = "tiny-sd",
        source: str | None = None,
        allow_fallback: bool = False,
        zoo_dir: str | None = None,
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.005,
        torch_threads: int | None = None,
    ):
        """`torch_threads`: CPU threads for torch (default: Ray's, i.e. the replica's num_cpus;
        more threads than that measured slower here, fighting the other replicas)."""
        import torch

        from models.diffusion import DiffusionModel
        from models.registry import spec_for_source

        if torch_threads:
            torch.set_num_threads(torch_threads)
        spec = spec_for_source(model, family="diffusion", source=source)
        self.model = DiffusionModel.from_spec(spec, zoo_dir=zoo_dir, allow_fallback=allow_fallback)
        self._max_batch_images = max_batch_size
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._serve_batches: Counter[int] = Counter()  # requests per @serve.batch call
        self._pipeline_batches: Counter[int] = Counter()  # images per pipeline call
        self._images = 0
        self._last_error: str | None = None
        self._last_ok = time.monotonic()  # last successful model call (a request or a probe)
        # Diffusers pipelines are not thread-safe (the scheduler holds per-call state): one
        # model call at a time per replica, batches and health probes alike.
        self._model_lock = asyncio.Lock()
        self._probes = 0
        self._queue = observability.QueueDepth("Generator")  # requests waiting for a batch

    async def generate(self, request):
        """Generate images for one `models.diffusion.GenerationRequest`."""
        from models.diffusion import check_inputs

        check_inputs(request, self.model.limits)  # fail this request alone, not its batch
        with self._queue.waiting():
            return await self._batched(request)

    async def generate_stream(self, request, partial_images: int = 0):
        """Generate one request unbatched, streaming events as they happen:
        ``{"type": "progress", "step", "total"}``, ``{"type": "partial", "index", "images"}``
        (`partial_images` previews decoded from intermediate latents), then
        ``{"type": "result", "result": GenerationResult}``. If the caller stops listening
        (client disconnect, job cancelled), denoising stops at the next step."""
        import threading

        from models.diffusion import check_inputs

        check_inputs(request, self.model.limits)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        async with self._model_lock:
            work = asyncio.ensure_future(asyncio.to_thread(
                self.model.generate, [request], cancel=cancel, previews=partial_images,
                on_step=lambda step, total: emit(
                    {"type": "progress", "step": step, "total": total}),
                on_preview=lambda index, images: emit(
                    {"type": "partial", "index": index, "images": images}),
            ))
            try:
                while not work.done() or not events.empty():
                    getter = asyncio.ensure_future(events.get())
                    await asyncio.wait({work, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        yield getter.result()
                    else:
                        getter.cancel()
                [result] = work.result()
                self._images += len(result.images)
                self._last_ok = time.monotonic()
                yield {"type": "result", "result": result}
            finally:
                # Abandoned (client gone, job cancelled): stop denoising at the next step, and
                # keep the lock until the thread is out of the pipeline.
                cancel.set()
                if not work.done():
                    await asyncio.wait({work})

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, batch_size_fn=_images_in)
    async def _batched(self, requests: list) -> list:
        self._serve_batches[len(requests)] += 1
        observability.record_batch("Generator", _images_in(requests))
        started = time.perf_counter()
        try:
            async with self._model_lock:
                results = await asyncio.to_thread(
                    self.model.generate,
                    requests,
                    max_batch_images=self._max_batch_images,
                    on_batch=self._record_pipeline_batch,
                )
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        self._last_error = None
        self._last_ok = time.monotonic()
        for res in results:
            self._images += len(res.images)
            res.timings["batch_s"] = time.perf_counter() - started
        return results

    def _record_pipeline_batch(self, images: int) -> None:
        self._pipeline_batches[images] += 1

    def info(self) -> dict[str, Any]:
        from deployments._common import replica_info

        return replica_info(self.model.info, vars(self.model.limits))

    def stats(self) -> dict[str, Any]:
        return {
            "serve_batches": dict(self._serve_batches),
            "pipeline_batches": dict(self._pipeline_batches),
            "images": self._images,
            "health_probes": self._probes,
            "last_error": self._last_error,
        }

    async def check_health(self) -> None:
        """Probe the model with a 1-step, smallest-size generation, unless a request succeeded
        within the last minute (so a busy replica isn't slowed by probes)."""
        if self._last_error is None and time.monotonic() - self._last_ok < 60:
            return
        from models.diffusion import GenerationRequest

        limits = self.model.limits
        probe = GenerationRequest(prompt="health probe", width=limits.min_side,
                                  height=limits.min_side, steps=1, guidance_scale=0.0, seed=0)
        self._probes += 1
        try:
            async with self._model_lock:
                [result] = await asyncio.wait_for(
                    asyncio.to_thread(self.model.generate, [probe]), timeout=25)
        except Exception as exc:
            raise RuntimeError(f"generator health probe failed: {type(exc).__name__}: {exc}"
                               ) from exc
        if result.images[0].shape != (limits.min_side, limits.min_side, 3):
            raise RuntimeError(f"generator health probe returned {result.images[0].shape}")
        self._last_ok = time.monotonic()
        self._last_error = None
