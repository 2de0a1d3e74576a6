"""The Router deployment: its class called directly (no Ray), and under Ray Serve with a
handle, alone and with an LLM deployment that answers garbage."""

from __future__ import annotations

import asyncio

import pytest
from ray import serve

from deployments.router import Router
from router.schemas import Plan, PromptValidation, RefinedPrompt


@pytest.fixture(scope="module")
def rules_router():
    return Router.func_or_class(use_embeddings=False)


@pytest.fixture(scope="module")
def full_router():
    return Router.func_or_class()


def test_plan_refine_validate_without_ray(rules_router):
    plan = asyncio.run(rules_router.plan("generate a red sneaker and remove the background"))
    assert isinstance(plan, Plan)
    assert plan.intents == ["image_generation", "background_removal"] and plan.stage == "rules"
    follow = asyncio.run(rules_router.plan("make it bigger", 0, {"last_image_id": "a9"}))
    assert follow.steps[0].inputs[0].image_id == "a9"

    refined = asyncio.run(rules_router.refine("a lighthouse, no boats", style="watercolor"))
    assert isinstance(refined, RefinedPrompt) and refined.style == "watercolor"
    assert refined.negative_prompt.startswith("boats, ")

    result = rules_router.validate("x" * 10_001)
    assert isinstance(result, PromptValidation) and result.error.code == "prompt_too_long"
    with pytest.raises(ValueError, match="images must be an integer from 0 to 10"):
        asyncio.run(rules_router.plan("upscale", images=11))


def test_embeddings_run_on_the_thread_that_loaded_the_model(full_router, monkeypatch):
    """Suggestions, the chat's embedding stage and the health probe all encode on the
    replica's model thread (deployments._common.ModelThread), where the encoder was loaded."""
    import threading

    loader = full_router._thread.thread_id
    assert loader is not None and loader != threading.get_ident()
    encoder = full_router.classifier.encoder
    seen = []
    real = encoder.encode

    def spy(texts, *args, **kwargs):
        seen.append(threading.get_ident())
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(encoder, "encode", spy)

    async def calls():
        found = await full_router.suggest("sunset over a quiet harbour", 5)
        plan = await full_router.plan("something dreamy with soft colours")
        await full_router.check_health()
        return found, plan

    found, plan = asyncio.run(calls())
    assert len(found) == 5 and plan.stage in ("embedding", "rules")
    assert seen and set(seen) == {loader}


def test_info_and_stats(rules_router, full_router):
    assert rules_router.info()["stages"] == ["rules"]
    info = full_router.info()
    assert info["stages"] == ["rules", "embedding"] and info["llm"] is False
    assert info["embedding"]["exemplars"] > 200 and info["prompt_limits"]["max_chars"] == 10_000
    asyncio.run(rules_router.plan("remove the background", 1))
    assert rules_router.stats()["decided_by"]["rules"] >= 1


def test_check_health_embeds_a_string(full_router, monkeypatch):
    asyncio.run(full_router.check_health())  # the real model answers

    def broken(texts):
        raise RuntimeError("model weights corrupted")

    monkeypatch.setattr(full_router.classifier.encoder, "encode", broken)
    with pytest.raises(RuntimeError, match="router embedding probe failed: RuntimeError: model"):
        asyncio.run(full_router.check_health())

    monkeypatch.setattr(full_router.classifier.encoder, "encode",
                        lambda texts: __import__("numpy").full((1, 3), float("nan")))
    with pytest.raises(RuntimeError, match=r"returned shape \(3,\), expected \(384,\)"):
        asyncio.run(full_router.check_health())


def test_missing_embedding_model_fails_at_start(tmp_path):
    with pytest.raises(RuntimeError, match="does not exist; pass a local sentence-transformers"):
        Router.func_or_class(embedding_model=str(tmp_path / "nope"))


@serve.deployment(name="GarbageLLM")
class GarbageLLM:
    """Answers every chat request with malformed JSON, the way a broken model might."""

    def __init__(self):
        self.requests = 0

    async def chat(self, request: dict) -> dict:
        self.requests += 1
        assert request["response_format"]["type"] == "json_schema"
        return {"id": "x", "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": '{"steps": [ oops'}}]}

    def count(self) -> int:
        return self.requests


@pytest.mark.slow
def test_router_under_serve(ray_cluster):
    handle = serve.run(Router.bind(), name="router-test", route_prefix=None)
    try:
        plan = handle.plan.remote("upscale this, then cut it out", images=1).result(
            timeout_s=60)
        assert plan.intents == ["upscale", "background_removal"]
        assert plan.steps[1].inputs[0].source == "previous_step"
        unsure = handle.plan.remote("this one is a bit too small to print, could you help",
                                    images=1).result(timeout_s=60)
        assert "embedding" in unsure.timings  # the model ran inside the replica
        refined = handle.refine.remote("a cat", style="anime").result(timeout_s=60)
        assert refined.style == "anime" and "cel shading" in refined.prompt
        assert handle.validate.remote("").result(timeout_s=60).error.code == "empty_prompt"
        assert handle.info.remote().result(timeout_s=60)["stages"] == ["rules", "embedding"]
    finally:
        serve.delete("router-test")


@pytest.mark.slow
def test_router_survives_an_llm_returning_garbage(ray_cluster):
    app = Router.options(name="RouterWithLLM").bind(
        llm=GarbageLLM.bind(), use_embeddings=False, llm_threshold=1.0)  # always ask the LLM
    handle = serve.run(app, name="router-llm-test", route_prefix=None)
    try:
        plan = handle.plan.remote("remove the background and upscale it 2x",
                                  images=1).result(timeout_s=60)
        assert plan.intents == ["background_removal", "upscale"] and plan.stage == "rules"
        assert "LLM answer is not valid JSON" in plan.llm_error
        assert plan.steps[1].params == {"scale": 2} and plan.timings["llm"] > 0
        stats = handle.stats.remote().result(timeout_s=30)
        assert stats["llm_errors"] == 1 and "not valid JSON" in stats["last_llm_error"]
        llm = serve.get_deployment_handle("GarbageLLM", app_name="router-llm-test")
        assert llm.count.remote().result(timeout_s=30) == 1
    finally:
        serve.delete("router-llm-test")
