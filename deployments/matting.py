"""The background-removal (matting) deployment, on rembg sessions.

Concurrent requests are collected by `@serve.batch`; one model call then predicts the masks of
all of them in shared ONNX runs (when the model has a dynamic batch axis) and composes each
request's output (cutout, mask or solid background) with rembg. `stats` records the batch sizes
that actually ran; `check_health` probes the model with a tiny image unless a request has
succeeded recently.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
from ray import serve

from deployments._common import lower_cpu_priority, replica_info
from models.matting import GraphOptimization, MattingModel, MattingRequest, check_inputs
from telemetry import metrics

logger = logging.getLogger("ray.serve")

# GPU share of one replica on GPU profiles (u2net needs well under 1 GB; BiRefNet at
# 1024x1024 ~3-4 GB at batch 4). CPU profiles run it with num_gpus=0.
DEFAULT_NUM_GPUS = 0.1


@serve.deployment(
    name="Matting",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class Matting:
    def __init__(
        self,
        *,
        model: str = "tiny-u2net",
        source: str | None = None,
        zoo_dir: str | None = None,
        rembg_home: str | None = None,
        allow_fallback: bool = False,
        device: str | None = None,
        threads: int | None = None,
        max_batch_size: int = 8,
        batch_wait_timeout_s: float | None = None,
        max_batch_images: int | None = None,
        health_probe_interval_s: float = 60.0,
        health_probe_timeout_s: float = 20.0,
        niceness: int = 0,
        graph_optimization: GraphOptimization = "auto",
    ):
        """`model`: a catalogue matting model (`models.registry`); `source`: an
        .onnx file (or folder with one) to use instead of the named weights; `rembg_home`: where
        named rembg models live (default `$REMBG_HOME` or ~/.rembg); `threads`: onnxruntime
        intra-op threads (default: $OMP_NUM_THREADS, which Ray sets to the replica's num_cpus);
        `max_batch_images`: images per ONNX run (default: 8 on CUDA, 1 on CPU, where batching
        measured no faster); `batch_wait_timeout_s`: how long a batch waits to fill (default
        10 ms on CUDA; none on CPU, where an image per run gains nothing from waiting);
        `niceness`: added to the replica's CPU niceness
        (`deployments._common.lower_cpu_priority`); `graph_optimization`: onnxruntime's level,
        ``auto`` times ``all`` and ``extended`` at load on CPU and keeps the faster
        (`models.matting.MattingModel.load`)."""
        lower_cpu_priority(niceness)

        self.model = MattingModel.from_name(
            model, source=source, zoo_dir=zoo_dir, allow_fallback=allow_fallback, device=device,
            home=rembg_home, threads=threads, graph_optimization=graph_optimization,
        )
        self._max_batch_images = max_batch_images or self.model.max_batch_images
        self._batched.set_max_batch_size(max_batch_size)
        if batch_wait_timeout_s is None:
            batch_wait_timeout_s = 0.01 if self.model.info.device == "cuda" else 0.0
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._probe_interval_s = health_probe_interval_s
        self._probe_timeout_s = health_probe_timeout_s
        self._serve_batches: Counter[int] = Counter()  # requests per @serve.batch call
        self._onnx_batches: Counter[int] = Counter()  # images per ONNX run
        self._onnx_lock = threading.Lock()  # two batches' worker threads count into it
        self._images = 0
        self._probes = 0
        self._last_ok = 0.0  # monotonic time of the last successful model call
        self._last_error: str | None = None

    async def remove(self, request):
        """Remove the background of one `models.matting.MattingRequest`."""
        check_inputs(request, max_side=self.model.max_side)  # fail this request, not its batch
        return await self._batched(request)

    # Two batches at a time: a model call is mostly onnxruntime and PIL, which release the
    # GIL, so while one batch's masks are computed the next one's resizing and compositing
    # run beside it (on CPU a replica of one onnxruntime thread then keeps two cores busy; on
    # a GPU the CPU pre/post-processing overlaps the other batch's inference). BENCHMARKS.md,
    # "Background removal".
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=2)
    async def _batched(self, requests: list) -> list:
        metrics.record_batch("Matting", len(requests))
        self._serve_batches[len(requests)] += 1
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(
                self.model.run,
                requests,
                max_batch_images=self._max_batch_images,
                on_batch=self._record_onnx_batch,
            )
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        self._last_error = None
        self._last_ok = time.monotonic()
        self._images += len(results)
        for res in results:
            res.timings["batch_s"] = time.perf_counter() - started
        return results

    def _record_onnx_batch(self, images: int) -> None:
        with self._onnx_lock:
            self._onnx_batches[images] += 1

    def info(self) -> dict[str, Any]:
        return replica_info(self.model.info, {"max_side": self.model.max_side,
                                                  "max_batch_images": self._max_batch_images})

    def stats(self) -> dict[str, Any]:
        return {
            "session": self.model.info.extra.get("session"),  # rembg session class used
            "onnx_batching": self.model.batchable,  # dynamic batch axis: images share runs
            "serve_batches": dict(self._serve_batches),
            "onnx_batches": dict(self._onnx_batches),
            "images": self._images,
            "health_probes": self._probes,
            "last_error": self._last_error,
        }

    async def check_health(self) -> None:
        """Probe the model on an 8x8 image, unless a request succeeded in the last interval."""
        if self._last_error is None and time.monotonic() - self._last_ok < self._probe_interval_s:
            return
        probe = MattingRequest(image=np.full((8, 8, 3), 128, np.uint8), output="mask")
        self._probes += 1
        try:
            [result] = await asyncio.wait_for(
                asyncio.to_thread(self.model.run, [probe]), timeout=self._probe_timeout_s
            )
        except asyncio.TimeoutError as exc:
            raise RuntimeError(
                f"matting health probe took over {self._probe_timeout_s}s"
            ) from exc
        except Exception as exc:
            raise RuntimeError(f"matting health probe failed: {type(exc).__name__}: {exc}") from exc
        if result.image.shape != (8, 8) or result.image.dtype != np.uint8:
            raise RuntimeError(
                f"matting health probe returned {result.image.shape} {result.image.dtype}, "
                "expected an 8x8 uint8 mask"
            )
        self._last_ok = time.monotonic()
        self._last_error = None
