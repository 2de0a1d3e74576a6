"""The router cascade: rules → sentence-embedding classifier → LLM.

- *Rules* (`router.rules`) always run (well under a millisecond). When every step they found
  is confident and no clause is left unexplained, they decide.
- *Embeddings* (`router.embeddings`) look again at the clauses the rules are unsure about (no
  cue, only weak cues, or a sequential clause nothing explains), with a prior from what images
  exist (no image: generation or a question is likelier than an edit).
- *LLM* (`router.llm`), only when still unsure (plan confidence under `llm_threshold`) or
  when a subject prompt needs rewriting (longer than 3,000 characters). Absent, slow or
  wrong, it never breaks a plan: the earlier answer stands and `Plan.llm_error` says why.

Every plan records the stage that decided it and each stage's latency (`Plan.timings`).
Pure Python: the Serve deployment (`deployments/router.py`) wraps this class.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from router import rules as R
from router.embeddings import EmbeddingClassifier, EmbeddingPrediction, confidence
from router.llm import LLMCallable, LLMPlan, ask_for_plan
from router.planner import build_plan, finish_plan
from router.prompts import (
    COMPRESS_ABOVE,
    MAX_PROMPT_CHARS,
    compress_prompt,
    compress_prompt_llm,
)
from router.rules import DraftStep, RuleResult
from router.schemas import PROMPT_INTENTS, READS_IMAGE_INTENTS, Plan, SessionContext, Step
from router.text import blank_spans, squash

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = MAX_PROMPT_CHARS
MAX_IMAGES = 10

# Score adjustments from what images exist (added to the embedding scores).
NO_IMAGE_PENALTY = 0.06  # image-needing intents when there is no image at all
IMAGE_GENERATION_PENALTY = 0.03  # generation when the user attached/has an image
AGREEMENT_BONUS = 0.1  # rules' weak guess and embeddings agree
RULE_BONUS = 0.08  # the intent of the rules' weak guess, added to its embedding score


def check_request(message: Any, images: Any, context: Any) -> tuple[str, int, SessionContext]:
    if not isinstance(message, str):
        raise ValueError(f"message must be a string, got {type(message).__name__}")
    if len(message) > MAX_MESSAGE_CHARS:
        raise ValueError(f"message is {len(message)} characters; the limit is "
                         f"{MAX_MESSAGE_CHARS} characters")
    if isinstance(images, bool) or not isinstance(images, int) or not 0 <= images <= MAX_IMAGES:
        raise ValueError(f"images must be an integer from 0 to {MAX_IMAGES} (the number of "
                         f"attached images), got {images!r}")
    if context is None:
        context = SessionContext()
    elif isinstance(context, dict):
        context = SessionContext.model_validate(context)
    elif not isinstance(context, SessionContext):
        raise ValueError("context must be a SessionContext, a dict with last_image_id, "
                         f"last_prompt, last_intent, last_style, or None; got "
                         f"{type(context).__name__}")
    return message, images, context


class Cascade:
    """Plans chat messages. `classifier=None` skips the embedding stage; `llm=None` the LLM."""

    def __init__(self, *, classifier: EmbeddingClassifier | None = None,
                 llm: LLMCallable | None = None, llm_timeout_s: float = 20.0,
                 rules_threshold: float = R.RULES_THRESHOLD, llm_threshold: float = 0.7,
                 offload: Callable[..., Awaitable[Any]] | None = None):
        """`offload`: in `plan`, run the embedding stage off the event loop with it (servers:
        `asyncio.to_thread`, or a replica's model thread, `deployments._common.ModelThread.run`);
        None: inline."""
        self.classifier = classifier
        self.llm = llm
        self.llm_timeout_s = llm_timeout_s
        self.rules_threshold = rules_threshold
        self.llm_threshold = llm_threshold
        self.offload = offload

    # --- stages 1 and 2 ---------------------------------------------------------------------

    def plan_fast(self, message: str, images: int = 0,
                  context: SessionContext | dict | None = None) -> Plan:
        """Rules and embeddings only (no LLM): synchronous, a few milliseconds."""
        plan, _result = self._fast(*check_request(message, images, context))
        return plan

    def _fast(self, message: str, images: int, context: SessionContext
              ) -> tuple[Plan, RuleResult]:
        started = time.perf_counter()
        if not message.strip():
            return self._empty(images, context, started), R.analyze("", images, context)
        result = R.analyze(message, images, context)
        timings = {"rules": time.perf_counter() - started}
        return self._after_rules(result, timings, started), result

    def _needs_embeddings(self, result: RuleResult) -> bool:
        return self.classifier is not None and result.confidence < self.rules_threshold

    def _after_rules(self, result: RuleResult, timings: dict[str, float],
                     started: float) -> Plan:
        """The embedding stage (when the rules are unsure) and the plan."""
        steps, confidence, stage = result.steps, result.confidence, "rules"
        if self._needs_embeddings(result):
            t = time.perf_counter()
            steps, confidence, used = self._embedding_stage(result)
            timings["embedding"] = time.perf_counter() - t
            if used:
                stage = "embedding"
        if not steps:  # nothing at all: treat as a question/chat turn
            steps = [DraftStep(R.Q, 0, len(result.folded), [], 0.3,
                               region=(0, len(result.folded)))]
            confidence = 0.3
        timings["total"] = time.perf_counter() - started
        return build_plan(result, steps, stage=stage, confidence=confidence, timings=timings)

    def _empty(self, images: int, context: SessionContext, started: float) -> Plan:
        question = ("What would you like me to do with this image?" if images
                    else "What would you like me to create or edit?")
        elapsed = time.perf_counter() - started
        return Plan(steps=[Step(intent="general", params={})], confidence=1.0, stage="rules",
                    timings={"rules": elapsed, "total": elapsed}, clarification=question)

    def _embed_text(self, result: RuleResult, span: tuple[int, int]) -> str:
        """The clause as the classifier should see it: without parameters (sizes, seeds,
        negative terms) and without negated operations."""
        drop = result.params.claimed() + [c.span for c in result.cues if c.negated]
        text = blank_spans(result.original, drop)[span[0]:span[1]]
        return squash(text) or squash(result.original[span[0]:span[1]])

    def _classify(self, result: RuleResult, span: tuple[int, int], position: int,
                  favor: str | None = None) -> EmbeddingPrediction:
        prediction = self.classifier.classify(self._embed_text(result, span))
        has_image = result.images > 0 or bool(result.context.last_image_id) or position > 0
        scores = dict(prediction.scores)
        for intent in scores:
            if not has_image and intent in READS_IMAGE_INTENTS and intent != R.G:
                scores[intent] -= NO_IMAGE_PENALTY
            if has_image and intent == R.G:
                scores[intent] -= IMAGE_GENERATION_PENALTY
        if re.search(r"\?\s*$", result.folded[span[0]:span[1]]):
            scores[R.Q] = scores.get(R.Q, 0.0) + 0.03
        if favor in scores:
            scores[favor] += RULE_BONUS
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        (best, score), (_, second) = ranked[0], ranked[1]
        return EmbeddingPrediction(intent=best, confidence=confidence(score, score - second),
                                   score=round(score, 4), margin=round(score - second, 4),
                                   scores=scores, neighbors=prediction.neighbors)

    def _embedding_stage(self, result: RuleResult) -> tuple[list[DraftStep], float, bool]:
        """Re-examine unsure clauses; returns (steps, confidence, whether embeddings decided
        anything)."""
        steps = [DraftStep(s.intent, s.start, s.end, list(s.cues), s.confidence, s.stage,
                           s.style, s.region) for s in result.steps]
        used = False
        if result.general:
            pred = self._classify(result, (0, len(result.folded)), 0)
            if pred.intent == R.Q:
                steps[0].confidence = min(0.97, max(steps[0].confidence, pred.confidence)
                                          + AGREEMENT_BONUS)
                steps[0].stage = "embedding"
                return steps, steps[0].confidence, True
            return steps, result.confidence, False
        if not steps:
            for seg in result.segments:
                text = result.folded[seg.span[0]:seg.span[1]]
                if not R.content_words(text):
                    continue
                pred = self._classify(result, seg.span, len(steps))
                steps.append(DraftStep(pred.intent, seg.span[0], seg.span[0], [],
                                       pred.confidence, stage="embedding"))
            steps = _merge_same(_drop_chatter(steps))
            used = bool(steps)
        else:
            for step in steps:
                if step.confidence >= self.rules_threshold:
                    continue
                seg = R.segment_of(result.segments, step.start)
                span = seg.span if len(result.segments) > 1 else (0, len(result.folded))
                pred = self._classify(result, span, steps.index(step), favor=step.intent)
                used = True
                if pred.intent == step.intent:
                    step.confidence = min(0.97, max(step.confidence, pred.confidence)
                                          + AGREEMENT_BONUS)
                    step.stage = "embedding"
                elif pred.confidence > step.confidence and not _impossible(pred.intent, result,
                                                                            steps.index(step)):
                    step.intent, step.confidence, step.stage = pred.intent, pred.confidence, \
                        "embedding"
                    step.cues = [c for c in step.cues if c.intent == pred.intent]
            for seg in result.uncovered:
                pred = self._classify(result, seg.span, 1)
                used = True
                if pred.intent == R.Q:
                    continue  # a trailing "thanks!" or aside, not an operation
                new = DraftStep(pred.intent, seg.span[0], seg.span[0], [], pred.confidence,
                                stage="embedding")
                # after the steps written before it (keeps the rules' "after/before" order)
                at = max((i + 1 for i, st in enumerate(steps) if st.start < new.start),
                         default=0)
                steps.insert(at, new)
            steps = _merge_same(steps)
        R.attach_regions(result, steps)
        for step in steps:
            if step.intent in (R.G, R.S) and not step.style:
                inside = [m for m in result.styles
                          if step.region[0] <= m.span[0] < step.region[1]]
                step.style = inside[0].value if inside else None
        confidence = min((s.confidence for s in steps), default=0.0)
        return steps, confidence, used

    def plan_if_rules_decide(self, message: str, images: int = 0,
                             context: SessionContext | dict | None = None, *,
                             embeddings: bool, llm: bool) -> Plan | None:
        """The plan `plan` returns when the rules alone decide it, else None (the embedding or
        LLM stage would look at the message, or a prompt needs rewriting).

        `embeddings` / `llm`: whether the cascade that would otherwise plan the message (a
        Router deployment) has those stages; this cascade's own thresholds must be that
        one's. Well under a millisecond and no model: a caller in front of the Router
        answers rule-decided messages (greetings, clear operations) without the hop."""
        message, images, context = check_request(message, images, context)
        started = time.perf_counter()
        if not message.strip():
            return self._empty(images, context, started)
        result = R.analyze(message, images, context)
        if embeddings and result.confidence < self.rules_threshold:
            return None
        plan = self._after_rules(result, {"rules": time.perf_counter() - started}, started)
        if plan.stage != "rules":
            return None
        if plan.confidence < self.llm_threshold:
            if llm:
                return None
            plan = plan.model_copy(update={"llm_error": "no LLM configured"})
        if any(s.intent in PROMPT_INTENTS and len(s.params.get("prompt") or "") > COMPRESS_ABOVE
               for s in plan.steps):
            return None
        return plan.model_copy(update={"timings": dict(plan.timings,
                                                       total=time.perf_counter() - started)})

    # --- stage 3 ----------------------------------------------------------------------------

    async def plan(self, message: str, images: int = 0,
                   context: SessionContext | dict | None = None) -> Plan:
        """The full cascade. Never raises on LLM trouble (see `Plan.llm_error`)."""
        message, images, context = check_request(message, images, context)
        started = time.perf_counter()
        if not message.strip():
            return self._empty(images, context, started)
        result = R.analyze(message, images, context)
        timings = {"rules": time.perf_counter() - started}
        if self.offload is not None and self._needs_embeddings(result):
            # ~10 ms of model time: keep the event loop free for other requests
            plan = await self.offload(self._after_rules, result, timings, started)
        else:
            plan = self._after_rules(result, timings, started)
        if self.llm is not None and plan.confidence < self.llm_threshold and message.strip():
            outcome = await ask_for_plan(self.llm, message, images=images, context=context,
                                         draft=plan, timeout_s=self.llm_timeout_s)
            timings = dict(plan.timings, llm=outcome.seconds)
            if outcome.plan is not None:
                plan = self._from_llm(outcome.plan, plan, result, images, context, timings)
            else:
                logger.warning("router LLM stage unusable, keeping %s plan: %s", plan.stage,
                               outcome.error)
                plan = plan.model_copy(update={"llm_error": outcome.error, "timings": timings})
            plan = plan.model_copy(update={"llm_tokens": list(outcome.tokens)})
        elif self.llm is None and plan.confidence < self.llm_threshold and message.strip():
            plan = plan.model_copy(update={"llm_error": "no LLM configured"})
        plan = await self._rewrite_long_prompts(plan)
        timings = dict(plan.timings, total=time.perf_counter() - started)
        return plan.model_copy(update={"timings": timings})

    def _from_llm(self, answer: LLMPlan, draft: Plan, result: RuleResult, images: int,
                  context: SessionContext, timings: dict[str, float]) -> Plan:
        steps: list[Step] = []
        for i, step in enumerate(answer.steps):
            params = {k: v for k, v in step.params.model_dump().items() if v is not None}
            # Deterministic extractions fill what the LLM left out (it may drop a seed).
            same = next((s for s in draft.steps if s.intent == step.intent), None)
            if same is not None:
                for key, value in same.params.items():
                    params.setdefault(key, value)
            steps.append(Step(intent=step.intent, params=params,
                              text=draft.steps[i].text if i < len(draft.steps) else ""))
        plan = Plan(steps=steps, confidence=round(answer.confidence, 3), stage="llm",
                    timings=timings, language=draft.language, warnings=list(draft.warnings))
        return finish_plan(plan, images=images, context=context, language=draft.language)

    async def _rewrite_long_prompts(self, plan: Plan) -> Plan:
        long = [i for i, s in enumerate(plan.steps) if s.intent in PROMPT_INTENTS
                and len(s.params.get("prompt") or "") > COMPRESS_ABOVE]
        if not long:
            return plan
        steps = [s.model_copy(deep=True) for s in plan.steps]
        warnings = list(plan.warnings)
        llm_error = plan.llm_error
        t = time.perf_counter()
        for i in long:
            prompt = steps[i].params["prompt"]
            if self.llm is not None:
                text, error, method = await compress_prompt_llm(prompt, self.llm,
                                                                timeout_s=self.llm_timeout_s)
            else:
                text, error, method = compress_prompt(prompt), "no LLM configured", \
                    "deterministic"
            steps[i].params["prompt"] = text
            warnings.append(f"step {i} prompt compressed from {len(prompt)} to {len(text)} "
                            f"characters ({method})")
            llm_error = llm_error or error
        timings = dict(plan.timings)
        timings["llm" if self.llm is not None else "rewrite"] = (
            timings.get("llm", 0.0) + time.perf_counter() - t)
        return plan.model_copy(update={"steps": steps, "warnings": warnings,
                                       "llm_error": llm_error, "timings": timings})


def _impossible(intent: str, result: RuleResult, position: int) -> bool:
    """An image operation with no image anywhere, where the rules saw a generation."""
    has_image = result.images > 0 or bool(result.context.last_image_id) or position > 0
    return intent in READS_IMAGE_INTENTS and intent != R.G and not has_image and not re.search(
        r"\b(?:this|that|my|it|these|cette|ce|ma|mon|mes)\b", result.folded)


def _drop_chatter(steps: list[DraftStep]) -> list[DraftStep]:
    """General clauses next to operations ("hi! make it bigger") are not steps."""
    if any(s.intent != R.Q for s in steps):
        return [s for s in steps if s.intent != R.Q]
    return steps[:1]


def _merge_same(steps: list[DraftStep]) -> list[DraftStep]:
    merged: list[DraftStep] = []
    for step in steps:
        if merged and merged[-1].intent == step.intent:
            merged[-1].confidence = min(merged[-1].confidence, step.confidence)
            merged[-1].cues += step.cues
            continue
        merged.append(step)
    return merged

