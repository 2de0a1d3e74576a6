"""The vision-language deployment (BLIP captioning + VQA, `models/vision.py`).

Generation on one model object runs one call at a time (the model's own lock), in a worker
thread so the replica's event loop keeps answering health checks; Serve's
`max_ongoing_requests` / `max_queued_requests` bound the queue. `check_health` captions a tiny
image.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray import serve

from deployments._common import ModelThread, lower_cpu_priority, replica_info
from models.base import check_image
from models.vision import VisionLanguageModel, check_question

# Default GPU share on GPU profiles: BLIP base captioning + VQA in fp16 need ~1.2 GB of
# weights + ~1 GB of activations (serve_config.yaml packs one GPU).
DEFAULT_NUM_GPUS = 0.1


def _timed(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`'s result with ``timings["model_s"]``: the call's own time (run on
    the model thread, so a call's wait behind another is not counted as its model time)."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    result.timings["model_s"] = time.perf_counter() - started
    return result


@serve.deployment(
    name="Vision",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=8,
    max_queued_requests=32,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class Vision:
    def __init__(self, *, model: str = "tiny-blip", source: str | None = None,
                 zoo_dir: str | None = None, allow_fallback: bool = False,
                 device: str | None = None, niceness: int = 0):
        lower_cpu_priority(niceness)
        # every torch call of this replica on one thread, the loading included (ModelThread):
        # calls run one after another there; each one's `model_s` is its own run, not its wait
        self._thread = ModelThread("vision-model")
        self.model = self._thread.call(VisionLanguageModel.from_name, model, source=source,
                                       zoo_dir=zoo_dir, allow_fallback=allow_fallback,
                                       device=device)
        self._requests = 0
        self._questions = 0
        self._model_s = 0.0

    async def analyze(self, image: np.ndarray, question: str | None = None):
        """Caption `image` and answer `question` (None: caption only): a `VisionResult`."""
        check_image(image)
        question = check_question(question)
        result = await self._thread.run(_timed, self.model.run, image, question=question)
        self._requests += 1
        self._questions += question is not None
        self._model_s += result.timings["model_s"]
        return result

    async def captions(self, images: list[np.ndarray], max_new_tokens: int | None = None):
        """One caption per image, batched (dataset auto-captions): a `CaptionBatch`
        (``captions`` in the images' order, ``model``, ``timings["model_s"]``: the model's
        time, for usage accounting as the ``vision`` deployment's). At most
        `MAX_CAPTION_BATCH` images per call; InputError (a 400) for bad input."""
        kwargs = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        result = await self._thread.run(_timed, self.model.captions, images, **kwargs)
        self._requests += 1
        self._model_s += result.timings["model_s"]
        return result

    def info(self) -> dict[str, Any]:
        return replica_info(self.model.info, {
            "questions": self.model.answers_questions})

    def stats(self) -> dict[str, Any]:
        return {"requests": self._requests, "questions": self._questions,
                "model_s": self._model_s}

    def check_health(self) -> None:
        probe = np.full((8, 8, 3), 127, dtype=np.uint8)
        self.model.run(probe, max_new_tokens=2)
