"""The super-resolution deployment (Real-ESRGAN-family weights through spandrel).

One upscale runs at a time per replica: tiling bounds the model's memory per image, and
serialising requests keeps a replica's peak memory at one tile's worth however many requests
are queued (Serve's `max_ongoing_requests`/`max_queued_requests` do the queueing and
backpressure). `stats` records what ran; `check_health` runs a real forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray import serve

from deployments._common import ModelThread, lower_cpu_priority, replica_info
from models.upscale import UpscaleModel, check_inputs, check_tiling

logger = logging.getLogger("ray.serve")

# Default GPU share of one replica on GPU profiles: Real-ESRGAN x4plus in fp16 with 256 px
# tiles (+32 px overlap) needs ~1-2 GB; serve_config.yaml sets the production packing.
DEFAULT_NUM_GPUS = 0.2

HEALTH_PROBE_SIDE = 8


@serve.deployment(
    name="Upscaler",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=8,
    max_queued_requests=32,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class Upscaler:
    def __init__(
        self,
        *,
        model: str = "tiny-esrgan",
        source: str | None = None,
        zoo_dir: str | None = None,
        tile: int = 256,
        tile_overlap: int = 32,
        allow_fallback: bool = False,
        niceness: int = 0,
    ):
        """`niceness`: added to the replica's CPU niceness
        (`deployments._common.lower_cpu_priority`)."""
        lower_cpu_priority(niceness)

        check_tiling(tile, tile_overlap)
        # every torch call of this replica on one thread, the loading included (ModelThread)
        self._thread = ModelThread("upscaler-model")
        self.model = self._thread.call(UpscaleModel.from_name, model, source=source,
                                       zoo_dir=zoo_dir, allow_fallback=allow_fallback)
        self._tile = tile
        self._tile_overlap = tile_overlap
        self._lock = asyncio.Lock()
        self._requests = 0
        self._output_pixels = 0
        self._tiles = 0
        self._inference_s = 0.0
        self._last_error: str | None = None

    async def upscale(self, request):
        """Upscale one `models.upscale.UpscaleRequest`; returns an `UpscaleResult`."""
        # Fail a bad request at once, before it waits for the model.
        check_inputs(request.image, request.scale, limits=self.model.limits,
                     scales=self.model.scales)
        queued = time.perf_counter()
        async with self._lock:
            started = time.perf_counter()
            try:
                result = await self._thread.run(
                    self.model.upscale, request.image, scale=request.scale, tile=self._tile,
                    tile_overlap=self._tile_overlap,
                )
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                raise
        self._last_error = None
        self._requests += 1
        self._output_pixels += result.image.shape[0] * result.image.shape[1]
        self._tiles += result.tiles
        self._inference_s += result.timings.get("inference_s", 0.0)
        result.timings["queue_s"] = started - queued
        return result

    def info(self) -> dict[str, Any]:
        return replica_info(self.model.info, vars(self.model.limits) | {
            "scales": list(self.model.scales), "tile": self._tile,
            "tile_overlap": self._tile_overlap})

    def stats(self) -> dict[str, Any]:
        megapixels = self._output_pixels / 1e6
        return {
            "requests": self._requests,
            "output_megapixels": megapixels,
            "tiles": self._tiles,
            "inference_s": self._inference_s,
            "s_per_output_megapixel": self._inference_s / megapixels if megapixels else None,
        }

    def check_health(self) -> None:
        """A real forward pass on a tiny image at every served scale."""
        if self._last_error and "out of memory" in self._last_error.lower():
            raise RuntimeError(f"upscaler unhealthy after: {self._last_error}")
        probe = np.full((HEALTH_PROBE_SIDE, HEALTH_PROBE_SIDE, 3), 127, dtype=np.uint8)
        for scale in self.model.scales:
            out = self.model.upscale(probe, scale=scale, tile=None).image
            side = HEALTH_PROBE_SIDE * scale
            if out.shape != (side, side, 3):
                raise RuntimeError(f"upscaler probe x{scale} gave shape {out.shape}")
