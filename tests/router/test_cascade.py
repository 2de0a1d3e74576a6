"""The cascade: which stage decides (recorded with its latency), the embedding stage on unsure
clauses, the LLM stage and its fallbacks (absent, slow, broken, garbage), long-prompt rewriting.

A keyword encoder stands in for the sentence-embedding model here (deterministic, instant);
tests/router/test_embeddings.py runs the real one.
"""

from __future__ import annotations

import asyncio
import json

import jsonschema
import numpy as np
import pytest

from router.cascade import Cascade
from router.embeddings import EmbeddingClassifier
from router.llm import build_plan_request, parse_plan, plan_json_schema
from router.schemas import INTENTS, Plan, SessionContext

G, E, F, B, U, S, Q = ("image_generation", "image_edit", "face_swap", "background_removal",
                       "upscale", "style_transfer", "general")


class KeywordEncoder:
    """One dimension per made-up keyword; a small constant dimension so no vector is zero."""

    name = "keywords"
    VOCAB = {"zorblax": 0, "glimmer": 1, "quux": 2, "howdy": 3}

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), len(self.VOCAB) + 1), np.float32)
        out[:, -1] = 0.2
        for i, text in enumerate(texts):
            for word in text.lower().replace(",", " ").split():
                if word in self.VOCAB:
                    out[i, self.VOCAB[word]] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


EXEMPLARS = [("zorblax", U), ("zorblax zorblax", U), ("glimmer", S), ("glimmer glimmer", S),
             ("quux", G), ("quux quux", G), ("howdy", Q), ("howdy howdy", Q)]


@pytest.fixture
def encoder():
    return KeywordEncoder()


@pytest.fixture
def classifier(encoder):
    return EmbeddingClassifier(encoder, exemplars=EXEMPLARS, cache_dir=None)


def _response(content, finish_reason="stop"):
    return {"id": "c1", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}]}


def _llm_returning(content, calls=None, finish_reason="stop"):
    async def llm(request):
        if calls is not None:
            calls.append(request)
        return _response(content, finish_reason)
    return llm


def test_rules_decide_confident_messages_without_embedding(classifier, encoder):
    encoder.calls.clear()
    plan = Cascade(classifier=classifier).plan_fast("remove the background", 1)
    assert plan.stage == "rules" and plan.intents == [B]
    assert set(plan.timings) == {"rules", "total"}
    assert 0 < plan.timings["rules"] <= plan.timings["total"] < 0.5
    assert encoder.calls == []  # the model never ran


def test_embedding_decides_what_rules_cannot(classifier):
    plan = Cascade(classifier=classifier).plan_fast("zorblax it please", 1)
    assert plan.stage == "embedding" and plan.intents == [U]
    assert plan.timings["embedding"] > 0 and "rules" in plan.timings
    assert plan.steps[0].inputs[0].source == "upload"


def test_embedding_explains_an_unexplained_later_clause(classifier):
    plan = Cascade(classifier=classifier).plan_fast("remove the background, then glimmer it", 1)
    assert plan.intents == [B, S] and plan.stage == "embedding"
    assert plan.steps[1].inputs[0].source == "previous_step"


def test_embedding_confirms_a_weak_rule_guess(classifier):
    rules_only = Cascade().plan_fast("quux castle on a hill", 0)
    both = Cascade(classifier=classifier).plan_fast("quux castle on a hill", 0)
    assert rules_only.intents == both.intents == [G]
    assert rules_only.stage == "rules" and both.stage == "embedding"
    assert both.confidence > rules_only.confidence


def test_no_image_penalises_image_operations(classifier):
    # "zorblax" alone would be an upscale; with no image anywhere it stays weak, and a
    # message that also looks like a generation keeps the rules' generation.
    plan = Cascade(classifier=classifier).plan_fast("zorblax quux", 0)
    assert plan.intents == [G]


@pytest.mark.parametrize("message,images,stage", [
    ("hi", 0, "rules"), ("upscale it", 1, "rules"), ("zorblax", 1, "embedding"),
    ("quux", 0, "embedding"),
])
def test_plan_timings_and_stage_are_recorded_on_every_path(classifier, message, images, stage):
    plan = Cascade(classifier=classifier).plan_fast(message, images)
    assert plan.stage == stage
    assert plan.timings["total"] >= plan.timings["rules"] > 0
    assert ("embedding" in plan.timings) == (stage == "embedding")


# --- LLM ---------------------------------------------------------------------------------

UNSURE = "glorp the thing"  # no cue, no keyword: every stage before the LLM is unsure


def test_unsure_plans_go_to_the_llm(classifier):
    calls = []
    answer = json.dumps({"steps": [{"intent": "upscale", "params": {"scale": 4}}],
                         "confidence": 0.88})
    cascade = Cascade(classifier=classifier, llm=_llm_returning(answer, calls))
    plan = asyncio.run(cascade.plan(UNSURE, 1))
    assert plan.stage == "llm" and plan.intents == [U] and plan.confidence == 0.88
    assert plan.steps[0].params == {"scale": 4}
    assert plan.steps[0].inputs[0].source == "upload"  # inputs resolved as for any stage
    assert plan.llm_error is None and plan.timings["llm"] > 0
    request = calls[0]
    assert request["temperature"] == 0 and request["max_tokens"] > 0
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["schema"] == plan_json_schema()
    facts = json.loads(request["messages"][1]["content"])
    assert facts["message"] == UNSURE and facts["attached_images"] == 1
    assert "draft_plan" in facts


def test_confident_plans_never_call_the_llm(classifier):
    async def llm(request):
        raise AssertionError("the LLM must not be called")

    plan = asyncio.run(Cascade(classifier=classifier, llm=llm).plan(
        "generate a red sneaker and remove the background"))
    assert plan.stage == "rules" and plan.intents == [G, B] and "llm" not in plan.timings


def test_llm_keeps_deterministic_parameters_it_left_out():
    answer = json.dumps({"steps": [{"intent": "image_generation",
                                    "params": {"prompt": "a glorp"}}], "confidence": 0.9})
    cascade = Cascade(llm=_llm_returning(answer), llm_threshold=1.0)
    plan = asyncio.run(cascade.plan("glorp a quux, seed 5, 512x512", 0))
    assert plan.stage == "llm"
    assert plan.steps[0].params == {"prompt": "a glorp", "seed": 5, "width": 512,
                                    "height": 512}


GARBAGE = [
    (_llm_returning("{this is not json"), "not valid JSON"),
    (_llm_returning(""), "LLM answer is empty"),
    (_llm_returning('{"steps": [], "confidence": 0.9}'), "fails validation at steps"),
    (_llm_returning('{"steps": [{"intent": "teleport", "params": {}}], "confidence": 0.9}'),
     "fails validation at steps.0.intent"),
    (_llm_returning('{"steps": [{"intent": "upscale", "params": {"scale": 99}}], '
                    '"confidence": 0.9}'), "fails validation at steps.0.params.scale"),
    (_llm_returning('{"steps": [{"intent": "upscale", "params": {}}], "confidence": 2}'),
     "fails validation at confidence"),
    (_llm_returning('{"steps": [{"intent": "upscale", "params": {"colour": "red"}}], '
                    '"confidence": 0.5}'), "fails validation at steps.0.params.colour"),
    (_llm_returning('["upscale"]'), "fails validation at top level"),
    (_llm_returning('{"steps": [{"intent": "upscale"', finish_reason="length"),
     "cut off (finish_reason=length)"),
]


@pytest.mark.parametrize("llm,reason", GARBAGE)
def test_garbage_from_the_llm_falls_back(classifier, llm, reason):
    fallback = Cascade(classifier=classifier).plan_fast(UNSURE, 1)
    plan = asyncio.run(Cascade(classifier=classifier, llm=llm).plan(UNSURE, 1))
    assert reason in plan.llm_error
    assert plan.stage == fallback.stage != "llm"
    assert plan.intents == fallback.intents and plan.confidence == fallback.confidence
    assert plan.timings["llm"] > 0


def test_broken_slow_or_odd_llms_fall_back(classifier):
    async def raises(request):
        raise ConnectionError("connection refused")

    async def slow(request):
        await asyncio.Event().wait()  # never answers: only the timeout ends it

    async def not_a_dict(request):
        return "hello"

    async def error_body(request):
        return {"error": {"message": "model overloaded", "code": 503}}

    cases = [(raises, "LLM call failed: ConnectionError: connection refused"),
             (slow, "LLM did not answer within 0.05s"),
             (not_a_dict, "response is a str, expected a ChatCompletion dict"),
             (error_body, "LLM returned an error")]
    for llm, reason in cases:
        plan = asyncio.run(Cascade(classifier=classifier, llm=llm, llm_timeout_s=0.05)
                           .plan(UNSURE, 1))
        assert reason in plan.llm_error and plan.stage != "llm"


def test_without_an_llm_unsure_plans_say_so(classifier):
    plan = asyncio.run(Cascade(classifier=classifier).plan(UNSURE, 1))
    assert plan.llm_error == "no LLM configured" and plan.confidence < 0.7


def test_plan_schema_accepts_valid_plans_and_rejects_invalid_ones():
    schema = plan_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"steps": [{"intent": "image_generation", "params": {"prompt": "a cat", "n": 2}},
                      {"intent": "background_removal", "params": {}}], "confidence": 0.8}
    jsonschema.validate(good, schema)
    assert parse_plan(_response(json.dumps(good))).steps[1].intent == B
    assert schema["properties"]["steps"]["items"]["properties"]["intent"]["enum"] == list(
        INTENTS)
    for bad in ({"steps": [], "confidence": 1}, {"steps": [{"intent": "x", "params": {}}],
                                                  "confidence": 1}, {"confidence": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_request_carries_context_and_draft():
    draft = Plan(steps=[], confidence=0.4, stage="embedding")
    request = build_plan_request("make it pop", images=0,
                                 context=SessionContext(last_image_id="a1"), draft=draft)
    facts = json.loads(request["messages"][1]["content"])
    assert facts["session"] == {"last_image_id": "a1"}
    assert facts["draft_plan"] == {"steps": [], "confidence": 0.4, "stage": "embedding"}


# --- long prompts ------------------------------------------------------------------------

LONG = "generate " + "a lighthouse on a rocky cliff at night, " + ", ".join(
    f"wave number {i} crashing on the rocks" for i in range(200)) + ", oil painting, 8k"


def test_long_prompts_are_compressed_deterministically_without_llm():
    plan = asyncio.run(Cascade().plan(LONG))
    prompt = plan.steps[0].params["prompt"]
    assert len(plan.steps[0].text) > 3000 and len(prompt) < 3000
    assert prompt.startswith("a lighthouse on a rocky cliff at night")
    assert "oil painting" in prompt and "8k" in prompt
    assert "compressed" in plan.warnings[0] and "deterministic" in plan.warnings[0]


def test_long_prompts_are_rewritten_by_the_llm():
    short = "a lighthouse on a rocky cliff at night, crashing waves, oil painting, 8k"
    plan = asyncio.run(Cascade(llm=_llm_returning(json.dumps({"prompt": short}))).plan(LONG))
    assert plan.stage == "rules" and plan.steps[0].params["prompt"] == short
    assert "(llm)" in plan.warnings[0] and plan.llm_error is None and plan.timings["llm"] > 0


def test_long_prompt_rewrite_falls_back_on_garbage():
    plan = asyncio.run(Cascade(llm=_llm_returning("nope")).plan(LONG))
    assert len(plan.steps[0].params["prompt"]) < 3000
    assert "not valid JSON" in plan.llm_error and "deterministic" in plan.warnings[0]


# --- the rules-only shortcut (a caller in front of the Router deployment) --------------------

def _without_timings(plan: Plan) -> dict:
    return plan.model_dump(exclude={"timings"})


@pytest.mark.parametrize("with_llm", [False, True])
def test_rules_shortcut_gives_the_full_cascades_plan_or_none(classifier, with_llm):
    """Every labelled message: when the shortcut answers, the full cascade (embeddings, and an
    LLM or none) plans exactly the same; when it doesn't, a later stage had work to do."""
    from pathlib import Path

    from router.eval import load_cases

    data = Path(__file__).resolve().parents[1] / "data"
    calls: list = []
    llm = _llm_returning(json.dumps({"steps": [{"intent": Q, "params": {}}],
                                     "confidence": 0.9}), calls) if with_llm else None
    full = Cascade(classifier=classifier, llm=llm)
    local = Cascade()  # no models at all, as the ingress holds it
    decided = deferred = 0
    cases = [c for name in ("eval", "dev", "holdout")
             for c in load_cases(data / f"router_{name}.jsonl")]
    for case in [*cases, {"message": "", "images": 0}, {"message": LONG, "images": 0}]:
        images, context = case.get("images", 0), case.get("context")
        quick = local.plan_if_rules_decide(case["message"], images, context,
                                           embeddings=True, llm=with_llm)
        calls.clear()
        plan = asyncio.run(full.plan(case["message"], images, context))
        if quick is None:
            deferred += 1
            continue
        decided += 1
        assert _without_timings(quick) == _without_timings(plan), case["message"]
        assert quick.stage == "rules" and set(quick.timings) == {"rules", "total"}
        assert calls == []
    assert decided > 0 and deferred > 0
    # the everyday cases the shortcut is for
    hello = local.plan_if_rules_decide("hello, what can you do?", embeddings=True, llm=True)
    assert hello is not None and hello.intents == [Q]
    assert local.plan_if_rules_decide(LONG, embeddings=False, llm=False) is None


def test_rules_shortcut_defers_what_only_later_stages_decide(classifier):
    local = Cascade()
    assert local.plan_if_rules_decide("glorp a quux", 0, embeddings=True, llm=True) is None
    # without those stages the rules' answer stands, as the full cascade's would
    alone = local.plan_if_rules_decide("glorp a quux", 0, embeddings=False, llm=False)
    assert alone is not None
    assert _without_timings(alone) == _without_timings(
        asyncio.run(Cascade().plan("glorp a quux", 0)))
    assert alone.llm_error == "no LLM configured"


def test_the_llm_stages_tokens_reach_the_plan_for_usage_accounting():
    answer = json.dumps({"steps": [{"intent": "image_generation",
                                    "params": {"prompt": "a glorp"}}], "confidence": 0.9})

    async def llm(request):
        return {**_response(answer), "usage": {"prompt_tokens": 120, "completion_tokens": 17}}

    plan = asyncio.run(Cascade(llm=llm, llm_threshold=1.0).plan("glorp a quux", 0))
    assert plan.stage == "llm" and plan.llm_tokens == [120, 17]
    rules_only = asyncio.run(Cascade(llm=llm).plan("remove the background", 1))
    assert rules_only.llm_tokens is None  # the LLM never ran
