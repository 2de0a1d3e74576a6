"""Stage 3 of the cascade: the LLM, only when the earlier stages are unsure (or a prompt needs
rewriting).

The router talks to the LLM through one tiny protocol: an async callable that takes an
OpenAI chat-completions request dict (``messages``, ``response_format`` with a JSON schema,
``max_tokens``, ``temperature``) and returns the OpenAI ``ChatCompletion`` response dict. Ray
Serve LLM's OpenAI server, a vLLM engine, or a fake in tests all fit. Nothing here raises on a
bad answer: `ask_for_plan` returns either a validated `LLMPlan` or the reason it could not
(absent, timeout, transport error, not JSON, failing the schema), and the cascade then keeps
the earlier stages' plan and records the reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.schemas import INTENTS, Intent, Plan, SessionContext

LLMCallable = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

MAX_STEPS = 5


class LLMStepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, max_length=3000)
    negative_prompt: str | None = Field(None, max_length=3000)
    width: int | None = Field(None, ge=64, le=4096)
    height: int | None = Field(None, ge=64, le=4096)
    n: int | None = Field(None, ge=1, le=10)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    style: str | None = Field(None, max_length=300)
    scale: int | None = Field(None, ge=2, le=8)
    target_face_index: int | None = Field(None, ge=0, le=32)


class LLMStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    intent: Intent
    params: LLMStepParams = Field(default_factory=LLMStepParams)


class LLMPlan(BaseModel):
    """What the LLM must answer: the JSON schema sent as ``response_format``."""

    model_config = ConfigDict(extra="forbid")

    steps: list[LLMStep] = Field(..., min_length=1, max_length=MAX_STEPS)
    confidence: float = Field(..., ge=0.0, le=1.0)


def plan_json_schema() -> dict[str, Any]:
    """The JSON schema of a plan (strict: closed objects, intents enumerated)."""
    params = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "prompt": {"type": "string", "maxLength": 3000,
                       "description": "subject prompt without instruction words"},
            "negative_prompt": {"type": "string", "maxLength": 3000},
            "width": {"type": "integer", "minimum": 64, "maximum": 4096},
            "height": {"type": "integer", "minimum": 64, "maximum": 4096},
            "n": {"type": "integer", "minimum": 1, "maximum": 10},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
            "style": {"type": "string", "maxLength": 300},
            "scale": {"type": "integer", "minimum": 2, "maximum": 8},
            "target_face_index": {"type": "integer", "minimum": 0, "maximum": 32},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["steps", "confidence"],
        "properties": {
            "steps": {
                "type": "array", "minItems": 1, "maxItems": MAX_STEPS,
                "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["intent", "params"],
                    "properties": {"intent": {"type": "string", "enum": list(INTENTS)},
                                   "params": params},
                },
            },
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }


SYSTEM_PROMPT = """You route requests for a photo studio assistant. Turn the user's message \
into an ordered plan of steps; each step's output image feeds the next step.
Intents:
- image_generation: a new image from text (params: prompt, negative_prompt, width, height, n, \
seed, style)
- image_edit: change an existing image by instruction, inpaint, or combine several images \
(params: prompt = the instruction)
- face_swap: put a face from one image onto another (params: target_face_index)
- background_removal: cut out the subject / transparent background
- upscale: increase resolution or size (params: scale)
- style_transfer: repaint an existing image in a style (params: style)
- image_analysis: describe an existing image or answer a question about what it shows
- general: questions, greetings, help (no image operation)
Rules: steps the user says NOT to do are not steps ("don't remove the background" -> no \
background_removal). Questions about how something works are general. Only put in params what \
the message says; prompt is the subject without instruction words. Answer with JSON only."""


def build_plan_request(message: str, *, images: int, context: SessionContext,
                       draft: Plan | None, max_tokens: int = 512) -> dict[str, Any]:
    """The chat-completions request for the plan of `message`."""
    facts = {"message": message, "attached_images": images,
             "session": context.model_dump(exclude_none=True)}
    if draft is not None:
        facts["draft_plan"] = {"steps": [{"intent": s.intent, "params": s.params}
                                         for s in draft.steps],
                               "confidence": draft.confidence, "stage": draft.stage}
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": json.dumps(facts, ensure_ascii=False)},
        ],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "plan", "strict": True,
                                            "schema": plan_json_schema()}},
        "max_tokens": max_tokens,
        "temperature": 0,
    }


class LLMError(Exception):
    """Why an LLM answer could not be used (recorded in `Plan.llm_error`)."""


def response_text(response: Any) -> str:
    """The assistant text of a ChatCompletion dict (or object with model_dump)."""
    if hasattr(response, "model_dump"):
        response = response.model_dump()
    if not isinstance(response, dict):
        raise LLMError(f"response is a {type(response).__name__}, expected a ChatCompletion "
                       "dict")
    if "error" in response and not response.get("choices"):
        raise LLMError(f"LLM returned an error: {str(response['error'])[:200]}")
    try:
        choice = response["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise LLMError("response has no choices[0].message.content") from exc
    if choice.get("finish_reason") == "length":
        raise LLMError("LLM answer was cut off (finish_reason=length)")
    if not isinstance(content, str) or not content.strip():
        raise LLMError("LLM answer is empty")
    return content


def parse_json(text: str) -> Any:
    text = text.strip()
    if text.startswith("```"):  # tolerate a fenced block
        text = text.strip("`")
        text = text[4:] if text.lower().startswith("json") else text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LLMError(f"LLM answer is not valid JSON ({exc.msg} at char {exc.pos}): "
                       f"{text[:80]!r}") from exc


def parse_plan(response: Any) -> LLMPlan:
    data = parse_json(response_text(response))
    try:
        return LLMPlan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise LLMError(f"LLM plan fails validation at {where or 'top level'}: "
                       f"{first.get('msg')}") from exc


@dataclass(frozen=True)
class LLMOutcome:
    plan: LLMPlan | None
    error: str | None
    seconds: float
    tokens: tuple[int, int] = (0, 0)  # prompt, completion (the answer's `usage`)


async def call_llm(llm: LLMCallable | None, request: dict[str, Any], *,
                   timeout_s: float) -> dict[str, Any]:
    """Send `request`; LLMError for absence, timeout or transport failure."""
    if llm is None:
        raise LLMError("no LLM configured")
    try:
        return await asyncio.wait_for(llm(request), timeout=timeout_s)
    except asyncio.TimeoutError as exc:
        raise LLMError(f"LLM did not answer within {timeout_s:g}s") from exc
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any transport/replica failure: the cascade falls back
        raise LLMError(f"LLM call failed: {type(exc).__name__}: {str(exc)[:200]}") from exc


async def ask_for_plan(llm: LLMCallable | None, message: str, *, images: int,
                       context: SessionContext, draft: Plan | None,
                       timeout_s: float) -> LLMOutcome:
    started = time.perf_counter()
    try:
        request = build_plan_request(message, images=images, context=context, draft=draft)
        response = await call_llm(llm, request, timeout_s=timeout_s)
        used = response.get("usage") or {} if isinstance(response, dict) else {}
        tokens = (int(used.get("prompt_tokens") or 0), int(used.get("completion_tokens") or 0))
        plan = parse_plan(response)
    except LLMError as exc:
        return LLMOutcome(None, str(exc), time.perf_counter() - started,
                          locals().get("tokens", (0, 0)))
    return LLMOutcome(plan, None, time.perf_counter() - started, tokens)


def handle_callable(handle: Any) -> LLMCallable:
    """Adapt a Serve DeploymentHandle whose deployment has ``async chat(request) -> dict``."""

    async def call(request: dict[str, Any]) -> dict[str, Any]:
        return await handle.chat.remote(request)

    return call
