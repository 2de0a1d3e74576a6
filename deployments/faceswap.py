"""The face swap deployment: insightface detection + ArcFace + INSwapper on ONNX Runtime.

A swap is a few small ONNX runs (detector on both images, one embedding, one swapper run
per face), so requests run one by one in a worker thread; ONNX Runtime sessions are
thread-safe. `check_health` runs the detector on a tiny blank image.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from deployments._common import lower_cpu_priority, replica_info
from models.base import check_image
from models.faceswap import FaceDetection, FaceSwapModel, NoFaceError, check_inputs

logger = logging.getLogger("ray.serve")

# Default GPU share of one replica on GPU profiles (buffalo_l + inswapper_128 on the CUDA
# provider need ~1.5 GB; see serve_config.yaml for the packing of one GPU).
DEFAULT_NUM_GPUS = 0.1


@serve.deployment(
    name="FaceSwap",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=8,
    max_queued_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class FaceSwap:
    def __init__(
        self,
        *,
        model: str = "tiny-insightface",
        source: str | None = None,
        zoo_dir: str | None = None,
        allow_fallback: bool = False,
        device: str | None = None,
        niceness: int = 0,
    ):
        """`niceness`: added to the replica's CPU niceness
        (`deployments._common.lower_cpu_priority`)."""
        lower_cpu_priority(niceness)

        self.model = FaceSwapModel.from_name(model, source=source, zoo_dir=zoo_dir,
                                             allow_fallback=allow_fallback, device=device)
        self._swaps = 0
        self._faces_swapped = 0
        self._no_face = {"source": 0, "target": 0}
        self._detections = 0
        self._last_error: str | None = None

    async def swap(self, request):
        """Swap faces for one `models.faceswap.FaceSwapRequest`; returns a `FaceSwapResult`."""
        check_inputs(request)  # bad input fails fast, before taking a worker thread
        started = time.perf_counter()
        try:
            result = await asyncio.to_thread(self.model.run, request)
        except NoFaceError as exc:
            self._no_face[exc.which] += 1
            raise
        except ValueError:
            raise
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        self._last_error = None
        self._swaps += 1
        self._faces_swapped += result.faces_swapped
        result.timings["total_s"] = time.perf_counter() - started
        return result

    async def detect(self, image) -> FaceDetection:
        """Faces in an RGB(A) uint8 image (`models.faceswap.DetectedFace`s, left to right)
        and the detector's time: the detector alone, for image analysis."""
        check_image(image)
        started = time.perf_counter()
        faces = await asyncio.to_thread(self.model.detect, image[..., :3])
        self._detections += 1
        return FaceDetection(faces=faces, timings={"model_s": time.perf_counter() - started})

    def info(self) -> dict[str, Any]:
        return replica_info(self.model.info, {})

    def stats(self) -> dict[str, Any]:
        return {
            "swaps": self._swaps,
            "faces_swapped": self._faces_swapped,
            "no_face": dict(self._no_face),
            "detections": self._detections,
        }

    def check_health(self) -> None:
        try:
            self.model.probe()
        except Exception as exc:
            raise RuntimeError(f"face swap detector probe failed: {exc}") from exc
        if self._last_error and "out of memory" in self._last_error.lower():
            raise RuntimeError(f"face swap unhealthy after: {self._last_error}")
