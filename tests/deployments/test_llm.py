"""The LLM deployment: the class called directly, the real deployment under Serve with the CPU
engine, the vLLM adapter against a stand-in with ray.serve.llm's handle protocol, and the
GPU-share / vLLM-memory rules of the app builder."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from deployments.llm import (
    LLMAppConfig,
    LLMServer,
    RayLLMEngine,
    check_gpu_memory_utilization,
    gpu_memory_utilization_for,
    llm_deployment,
    vllm_llm_config,
)
from models.base import LoadedInfo
from tests.deployments import INFO_KEYS

ASK = [{"role": "system", "content": "Answer with JSON only."},
       {"role": "user", "content": "make it a watercolor"}]


def _request(**extra) -> dict[str, Any]:
    return {"messages": ASK, "max_tokens": 16, "temperature": 0, **extra}


@pytest.fixture(scope="module")
def server(zoo_dir):
    return LLMServer.func_or_class(engine_kwargs={"model": "tiny-llm", "zoo_dir": str(zoo_dir)})


# -- the class, without Ray ------------------------------------------------------------------

def test_chat_info_stats(server):
    response = asyncio.run(server.chat(_request()))
    assert response["object"] == "chat.completion"
    assert response["usage"]["completion_tokens"] == 16
    info = server.info()
    assert set(info) == INFO_KEYS
    assert (info["name"], info["family"], info["tiny"], info["fallback"]) == (
        "tiny-llm", "llm", True, False)
    assert info["limits"] == {"max_tokens": 4096, "context_length": 2048,
                              "structured_outputs": False, "gpu_memory_fraction": None,
                              "engine": "transformers"}
    stats = server.stats()
    assert stats["requests"] >= 1 and stats["completion_tokens"] >= 16
    assert stats["start_s"] > 0 and stats["last_error"] is None


def test_bad_request_is_a_value_error_and_counted(server):
    before = server.stats()["bad_requests"]
    with pytest.raises(ValueError, match=r"messages\[0\]\.role must be one of"):
        asyncio.run(server.chat({"messages": [{"role": "bot", "content": "x"}]}))
    assert server.stats()["bad_requests"] == before + 1
    assert server.stats()["last_error"] is None  # a bad request is not an unhealthy engine


def test_check_health_probes_unless_a_request_just_succeeded(server):
    server._last_ok = 0.0
    before = server.stats()["health_probes"]
    asyncio.run(server.check_health())
    assert server.stats()["health_probes"] == before + 1
    asyncio.run(server.check_health())  # the probe itself counts as a recent success
    assert server.stats()["health_probes"] == before + 1


class _StuckEngine:
    """An engine whose start never finishes (until released)."""

    release = threading.Event()

    def __init__(self):
        self.release.wait(timeout=30)


class _FlakyEngine:
    """An engine that answers, fails or hangs on command."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.hang = asyncio.Event()

    def info(self) -> LoadedInfo:
        return LoadedInfo(name="flaky", family="llm", source="test", tiny=True, device="cpu",
                          dtype="float32", extra={"engine": "flaky", "limits": {}})

    async def chat(self, request):
        if self.mode == "crash":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"choices": [{"message": {"role": "assistant", "content": "{}"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1}}

    async def check_health(self):
        if self.mode == "hang":
            await self.hang.wait()
        if self.mode == "crash":
            raise RuntimeError("engine dead")


def test_engine_start_timeout_fails_the_replica_clearly():
    try:
        with pytest.raises(RuntimeError, match=r"LLM engine _StuckEngine did not start within "
                                               r"0.2s"):
            LLMServer.func_or_class(engine_cls=_StuckEngine, start_timeout_s=0.2)
    finally:
        _StuckEngine.release.set()


def test_engine_cls_must_name_a_class():
    with pytest.raises(ValueError, match=r"engine_cls must be a class or a 'module:Class'"):
        LLMServer.func_or_class(engine_cls="models.llm.TransformersChatEngine")
    with pytest.raises(ValueError, match=r"engine_cls 'models.llm:NoSuchEngine' can't be "
                                         r"imported"):
        LLMServer.func_or_class(engine_cls="models.llm:NoSuchEngine")


def test_engine_failures_make_the_replica_probe_and_report_unhealthy():
    server = LLMServer.func_or_class(engine_cls=_FlakyEngine, engine_kwargs={"mode": "crash"},
                                     health_probe_timeout_s=0.2)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        asyncio.run(server.chat(_request()))
    assert server.stats()["errors"] == 1 and "illegal memory" in server.stats()["last_error"]
    with pytest.raises(RuntimeError, match=r"LLM health probe failed: RuntimeError: engine dead"):
        asyncio.run(server.check_health())
    server.engine.mode = "hang"
    with pytest.raises(RuntimeError, match=r"LLM health probe took over 0.2s"):
        asyncio.run(server.check_health())
    server.engine.mode = "ok"
    asyncio.run(server.check_health())
    asyncio.run(server.chat(_request()))
    assert server.stats()["last_error"] is None and server.stats()["requests"] == 1


# -- the vLLM adapter, against ray.serve.llm's handle protocol ------------------------------

class FakeChatCompletionRequest(BaseModel):
    """Stands in for vLLM's ChatCompletionRequest (a pydantic model; unknown fields refused)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    n: int = 1
    user: str | None = None


class FakeChatCompletionResponse(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, int]


class FakeErrorResponse(BaseModel):
    error: dict[str, Any]


async def _ray_llm_server_chat(request: FakeChatCompletionRequest):
    """What ray.serve.llm's LLMServer.chat returns for a non-streaming request: an async
    generator yielding one ChatCompletionResponse (or one ErrorResponse)."""
    last = request.messages[-1]["content"]
    if last in ("bad", "broken"):
        code = 400 if last == "bad" else 500
        yield FakeErrorResponse(error={"message": f"{last} request", "type": "Err",
                                       "code": code})
        return
    # Echo what arrived, as JSON (vLLM would follow response_format's schema).
    content = json.dumps({"model": request.model, "max_tokens": request.max_tokens,
                          "response_format": request.response_format, "stream": request.stream})
    yield FakeChatCompletionResponse(
        id="chatcmpl-1", created=1, model=request.model,
        choices=[{"index": 0, "message": {"role": "assistant", "content": content},
                  "finish_reason": "stop"}],
        usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12})


class _FakeHandle:
    """A DeploymentHandle stand-in: .options(stream=True).chat.remote(body, raw) -> async gen."""

    def __init__(self):
        self.stream = False
        self.chat = self

    def options(self, *, stream: bool):
        self.stream = stream
        return self

    def remote(self, body, raw_request_info):
        assert self.stream and raw_request_info is None
        return _ray_llm_server_chat(body)


def _adapter(**kwargs) -> RayLLMEngine:
    return RayLLMEngine(server=_FakeHandle(), model_id="qwen-test",
                        request_cls=FakeChatCompletionRequest, **kwargs)


def test_ray_llm_engine_maps_our_dict_onto_ray_llm_server():
    engine = _adapter(num_gpus=0.2, gpu_memory_utilization=0.2, max_model_len=4096)
    fmt = {"type": "json_schema", "json_schema": {"name": "plan", "schema": {"type": "object"}}}
    response = asyncio.run(engine.chat(_request(model="anything", response_format=fmt)))
    assert response["object"] == "chat.completion" and response["usage"]["total_tokens"] == 12
    sent = json.loads(response["choices"][0]["message"]["content"])
    assert sent == {"model": "qwen-test", "max_tokens": 16, "response_format": fmt,
                    "stream": False}
    info = engine.info()
    assert info.extra["limits"] == {"max_tokens": 4096, "context_length": 4096,
                                    "structured_outputs": True, "num_gpus": 0.2,
                                    "gpu_memory_utilization": 0.2}
    asyncio.run(engine.check_health())


def test_ray_llm_engine_errors():
    engine = _adapter(max_tokens_limit=64)
    with pytest.raises(ValueError, match=r"max_tokens must be an integer between 1 and 64"):
        asyncio.run(engine.chat(_request(max_tokens=65)))
    with pytest.raises(ValueError, match=r"vLLM: bad request \(Err\)"):
        asyncio.run(engine.chat({"messages": [{"role": "user", "content": "bad"}]}))
    with pytest.raises(RuntimeError, match=r"vLLM: broken request"):
        asyncio.run(engine.chat({"messages": [{"role": "user", "content": "broken"}]}))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_without_vllm_the_adapter_says_what_to_install():
    with pytest.raises(RuntimeError, match=r"ray.serve.llm needs vLLM .*ray\[llm\]"):
        RayLLMEngine(server=_FakeHandle(), model_id="qwen-test")
    with pytest.raises(RuntimeError, match=r"backend vllm needs ray.serve.llm with vLLM"):
        llm_deployment({"backend": "vllm", "model": "qwen2.5-1.5b-instruct", "num_gpus": 0.2})


# -- GPU share and vLLM memory ---------------------------------------------------------------

def test_gpu_memory_utilization_follows_the_gpu_fraction():
    assert gpu_memory_utilization_for(0.2) == 0.2
    assert gpu_memory_utilization_for(0.49) == 0.49
    assert gpu_memory_utilization_for(1) == 0.9
    for bad in (0, -0.1, 1.5, True, "0.2"):
        with pytest.raises(ValueError, match=r"num_gpus must be in \(0, 1\]"):
            gpu_memory_utilization_for(bad)
    check_gpu_memory_utilization(0.2, 0.2)
    check_gpu_memory_utilization(0.2, 0.19)  # a little headroom is fine
    check_gpu_memory_utilization(1, 0.95)
    with pytest.raises(ValueError, match=r"gpu_memory_utilization 0.3 disagrees with the LLM's "
                                         r"GPU fraction num_gpus 0.2.*between 0.18 and 0.2"):
        check_gpu_memory_utilization(0.2, 0.3)
    with pytest.raises(ValueError, match=r"gpu_memory_utilization 0.1 disagrees"):
        check_gpu_memory_utilization(0.2, 0.1)


def test_vllm_llm_config_matches_memory_to_the_gpu_share():
    kwargs = vllm_llm_config(LLMAppConfig(backend="vllm", model="qwen2.5-1.5b-instruct",
                                          num_gpus=0.2, max_replicas=2))
    assert kwargs == {
        "model_loading_config": {"model_id": "qwen2.5-1.5b-instruct",
                                 "model_source": "Qwen/Qwen2.5-1.5B-Instruct"},
        "engine_kwargs": {"gpu_memory_utilization": 0.2, "max_model_len": 4096,
                          "structured_outputs_config": {"backend": "xgrammar"},
                          "enforce_eager": True},
        "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}},
        "placement_group_config": {"bundles": [{"GPU": 0.2, "CPU": 1}]},
        "runtime_env": {"env_vars": {"VLLM_RAY_PER_WORKER_GPUS": "0.2",
                                     "VLLM_DISABLE_COMPILE_CACHE": "1"}},
    }
    whole = vllm_llm_config(LLMAppConfig(model="qwen2.5-1.5b-instruct", source="/w/qwen",
                                         served_model_name="planner", num_gpus=1,
                                         accelerator_type="L4"))
    assert whole["engine_kwargs"]["gpu_memory_utilization"] == 0.9
    assert not whole["engine_kwargs"]["enforce_eager"]
    assert "placement_group_config" not in whole and "runtime_env" not in whole
    assert whole["model_loading_config"] == {"model_id": "planner", "model_source": "/w/qwen"}
    assert whole["accelerator_type"] == "L4"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"gpu_memory_utilization": 0.5}, r"gpu_memory_utilization 0.5 disagrees"),
        ({"vllm_engine_kwargs": {"gpu_memory_utilization": 0.9}},
         r"gpu_memory_utilization 0.9 disagrees"),
        ({"num_gpus": 0}, r"num_gpus must be > 0 for the vLLM backend"),
        ({"model": "tiny-llm"}, r"tiny zoo model .* vLLM needs real weights"),
        ({"model": "gpt-17"}, r"unknown llm model 'gpt-17'"),
    ],
)
def test_vllm_llm_config_refuses_what_cannot_work(config, message):
    base = {"backend": "vllm", "model": "qwen2.5-1.5b-instruct", "num_gpus": 0.2}
    with pytest.raises(ValueError, match=message):
        vllm_llm_config(LLMAppConfig(**(base | config)))


def test_transformers_deployment_takes_the_gpu_share():
    app = llm_deployment({"backend": "auto", "model": "tiny-llm", "num_gpus": 0.2,
                          "zoo_dir": "/z"})
    deployment = app._bound_deployment
    if importlib.util.find_spec("vllm") is None:  # auto: no vLLM here -> transformers
        assert deployment.name == "LLM"
        assert deployment.ray_actor_options["num_gpus"] == 0.2
        kwargs = deployment.init_kwargs
        assert kwargs["engine_cls"] == "models.llm:TransformersChatEngine"
        assert kwargs["engine_kwargs"]["gpu_memory_fraction"] == 0.2
        assert kwargs["engine_kwargs"]["zoo_dir"] == "/z"
    cpu = llm_deployment(None)._bound_deployment
    assert "num_gpus" not in cpu.ray_actor_options
    assert cpu.init_kwargs["engine_kwargs"]["gpu_memory_fraction"] is None
    with pytest.raises(ValueError, match=r"min_replicas \(3\) must be <= max_replicas \(1\)"):
        llm_deployment({"min_replicas": 3})
    with pytest.raises(ValueError, match="extra"):
        LLMAppConfig(gpu_fraction=0.2)


# -- under Serve -----------------------------------------------------------------------------

@pytest.mark.slow  # a Serve app of its own
def test_the_real_deployment_serves_chat_under_serve(ray_cluster, zoo_dir):
    from openai.types.chat import ChatCompletion
    from ray import serve

    from models.llm import LLMReplyError, json_schema_response_format, parse_json_reply

    app = LLMServer.bind(engine_kwargs={"model": "tiny-llm", "zoo_dir": str(zoo_dir)})
    handle = serve.run(app, name="llm-test", route_prefix=None)
    try:
        schema = {"type": "object", "required": ["intent"]}
        request = _request(response_format=json_schema_response_format("plan", schema))
        responses = [r.result(timeout_s=120)
                     for r in [handle.chat.remote(request) for _ in range(4)]]
        for response in responses:
            ChatCompletion.model_validate(response)
            assert response["usage"]["completion_tokens"] == 16
        texts = {r["choices"][0]["message"]["content"] for r in responses}
        assert len(texts) == 1  # greedy: concurrent requests get the same answer
        with pytest.raises(LLMReplyError):  # the router's check sees the garbage for what it is
            parse_json_reply(texts.pop(), schema)
        with pytest.raises(ValueError, match=r"max_tokens must be an integer between 1 and "
                                             r"4096, got 0"):
            handle.chat.remote(_request(max_tokens=0)).result(timeout_s=60)
        info = handle.info.remote().result(timeout_s=30)
        assert set(info) == INFO_KEYS and info["name"] == "tiny-llm" and info["gpu_ids"] == []
        handle.check_health.remote().result(timeout_s=60)
        stats = handle.stats.remote().result(timeout_s=30)
        assert stats["requests"] == 4 and stats["bad_requests"] == 1
    finally:
        serve.delete("llm-test")


@pytest.mark.slow
def test_vllm_adapter_and_gpu_share_under_serve(ray_cluster, zoo_dir):
    """The adapter gets Ray's LLMServer stand-in as a handle nested in engine_kwargs (as
    `llm_deployment` binds it), and the transformers deployment gets its GPU share."""
    from ray import serve

    fake_server = serve.deployment(name="vLLM:qwen-test")(FakeRayLLMServer).bind()
    adapter = LLMServer.bind(
        engine_cls="deployments.llm:RayLLMEngine",
        engine_kwargs={"server": fake_server, "model_id": "qwen-test",
                       "request_cls": "tests.deployments.test_llm:FakeChatCompletionRequest"})
    handle = serve.run(adapter, name="llm-adapter-test", route_prefix=None)
    try:
        response = handle.chat.remote(_request()).result(timeout_s=60)
        assert json.loads(response["choices"][0]["message"]["content"])["model"] == "qwen-test"
        with pytest.raises(ValueError, match=r"vLLM: bad request"):
            handle.chat.remote({"messages": [{"role": "user", "content": "bad"}]}).result(
                timeout_s=60)
        assert handle.info.remote().result(timeout_s=30)["limits"]["engine"] == \
            "vllm (ray.serve.llm)"
    finally:
        serve.delete("llm-adapter-test")

    gpu = llm_deployment({"backend": "transformers", "model": "tiny-llm", "num_gpus": 0.2,
                          "zoo_dir": str(zoo_dir)})
    handle = serve.run(gpu, name="llm-gpu-share-test", route_prefix=None)
    try:
        info = handle.info.remote().result(timeout_s=30)
        assert info["gpu_ids"] == ["0"] and info["cuda_visible_devices"] == "0"
        assert info["limits"]["gpu_memory_fraction"] == 0.2
        assert handle.chat.remote(_request()).result(timeout_s=60)["usage"][
            "completion_tokens"] == 16
    finally:
        serve.delete("llm-gpu-share-test")


class FakeRayLLMServer:
    """A deployment with ray.serve.llm LLMServer's handle API: `chat(request,
    raw_request_info)` returns an async generator."""

    async def chat(self, request, raw_request_info=None):
        return _ray_llm_server_chat(request)
