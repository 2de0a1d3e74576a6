"""The router's LLM deployment: one handle API, two engines.

The router calls ``await llm.chat.remote(request_dict)`` on a deployment named ``LLM`` and gets
an OpenAI ``ChatCompletion`` dict back (`models.llm` has the protocol, the request checks and
`parse_json_reply`). `LLMServer` is that deployment. Like ``ray.serve.llm``'s own LLMServer it
takes its engine by injection (``engine_cls`` + ``engine_kwargs``; a ``"module:Class"`` string so
it goes through Serve configs), so tests run the real deployment with a small CPU engine:

- ``models.llm:TransformersChatEngine`` (default): transformers on CPU, or on a GPU without
  vLLM. No constrained decoding, no batching: for tests and dev.
- ``deployments.llm:RayLLMEngine``: forwards to a vLLM deployment built by Ray's
  ``ray.serve.llm.build_llm_deployment`` (continuous batching, JSON-schema-constrained decoding
  through vLLM's structured outputs). `llm_deployment` wires it up on GPU clusters.

How the router's call maps onto ``ray.serve.llm`` (its handle API differs from ours): Ray's
``LLMServer.chat`` takes a ``ChatCompletionRequest`` (vLLM's pydantic model) and returns an
async generator, so it must be called with ``handle.options(stream=True)``. For a non-streaming
request the generator yields exactly one item: a ``ChatCompletionResponse`` (→ ``model_dump()``
is our dict) or an ``ErrorResponse`` (``error.code`` 400 → `ValueError`, else `RuntimeError`).
This is what Ray's own OpenAI ingress does (``ray.llm._internal.serve.core.ingress``); the
`RayLLMEngine` here does the same on the router's behalf.

GPU memory: Ray's ``num_gpus`` is a logical share and does not limit memory; vLLM pre-allocates
``gpu_memory_utilization`` x the GPU's memory whatever Ray scheduled. `gpu_memory_utilization_for`
derives it from the GPU fraction and `check_gpu_memory_utilization` refuses a mismatch.

**Untested here:** this machine has no GPU and no vLLM (``ray.serve.llm`` can't even be
imported without vLLM or SGLang). The vLLM path (`vllm_llm_config`, ``build_llm_deployment``,
the real ``ChatCompletionRequest``) is written against Ray 2.60's ``ray.serve.llm`` source and
docs (fractional-GPU guide: ``placement_group_config`` bundles + ``VLLM_RAY_PER_WORKER_GPUS``;
vLLM >= 0.12 ``structured_outputs_config``). The tests cover `RayLLMEngine` against a stand-in
deployment with Ray's handle protocol, and the generated ``LLMConfig`` arguments as data.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import logging
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments._common import replica_info
from models.base import LoadedInfo
from models.llm import check_chat_request
from models.registry import get_spec

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "LLM"
DEFAULT_ENGINE = "models.llm:TransformersChatEngine"
RAY_LLM_ENGINE = "deployments.llm:RayLLMEngine"
RAY_CHAT_REQUEST = "ray.serve.llm.openai_api_models:ChatCompletionRequest"
# GPU share of the LLM on GPU profiles: Qwen2.5-1.5B-Instruct bf16 is ~3.1 GB of weights; 0.2
# of a 24 GB GPU leaves ~1.5 GB for KV cache (max_model_len 4096); serve_config.yaml packs it.
DEFAULT_NUM_GPUS = 0.2
# vLLM's default for a whole GPU (room for the CUDA context and non-torch allocations).
WHOLE_GPU_MEMORY_UTILIZATION = 0.9
# A fractional share may leave a little headroom (Ray's fractional-GPU guide uses 0.49 of 0.5)
# but not more: memory promised to this replica and left unused is wasted.
MIN_SHARE_USED = 0.9


# --- GPU fraction <-> vLLM memory -----------------------------------------------------------

def gpu_memory_utilization_for(num_gpus: float) -> float:
    """vLLM ``gpu_memory_utilization`` for a replica holding `num_gpus` of one GPU: the
    fraction itself for a share (0 < num_gpus < 1), vLLM's 0.9 for a whole GPU."""
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float)) \
            or not 0 < num_gpus <= 1:
        raise ValueError(f"num_gpus must be in (0, 1] for the LLM (a share of one GPU, or one "
                         f"whole GPU), got {num_gpus!r}")
    return WHOLE_GPU_MEMORY_UTILIZATION if num_gpus == 1 else round(float(num_gpus), 4)


def check_gpu_memory_utilization(num_gpus: float, gpu_memory_utilization: float) -> None:
    """Refuse a vLLM memory share that disagrees with the replica's GPU fraction.

    With a share (num_gpus < 1), ``gpu_memory_utilization`` must lie in
    ``[0.9 * num_gpus, num_gpus]``: above it vLLM takes memory Ray promised to the other
    deployments on that GPU (they then fail with CUDA OOM); well below it the share is wasted.
    With a whole GPU any value in (0, 1] is allowed.
    """
    gpu_memory_utilization_for(num_gpus)  # validates num_gpus
    gmu = gpu_memory_utilization
    if isinstance(gmu, bool) or not isinstance(gmu, (int, float)) or not 0 < gmu <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gmu!r}")
    if num_gpus < 1 and not MIN_SHARE_USED * num_gpus - 1e-9 <= gmu <= num_gpus + 1e-9:
        raise ValueError(
            f"gpu_memory_utilization {gmu:g} disagrees with the LLM's GPU fraction num_gpus "
            f"{num_gpus:g}: vLLM pre-allocates gpu_memory_utilization x GPU memory whatever Ray "
            f"schedules, so it must be between {MIN_SHARE_USED * num_gpus:.4g} and "
            f"{num_gpus:g} (use gpu_memory_utilization_for({num_gpus:g}) = "
            f"{gpu_memory_utilization_for(num_gpus):g}, or change num_gpus)")


# --- engine loading ---------------------------------------------------------------------------

def load_engine_cls(engine_cls: str | type) -> type:
    """A class, or a ``"module:Class"`` string naming one."""
    if isinstance(engine_cls, type):
        return engine_cls
    if not isinstance(engine_cls, str) or engine_cls.count(":") != 1:
        raise ValueError(f"engine_cls must be a class or a 'module:Class' string, got "
                         f"{engine_cls!r}")
    module, name = engine_cls.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"engine_cls {engine_cls!r} can't be imported: {exc}") from exc


def _limits(info: LoadedInfo) -> dict[str, Any]:
    return dict(info.extra.get("limits", {}))


# --- the deployment ---------------------------------------------------------------------------

@serve.deployment(
    name=DEPLOYMENT_NAME,
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=60,
)
class LLMServer:
    """OpenAI chat completions for the router, on an injected `models.llm.ChatEngine`.

    `engine_cls`/`engine_kwargs`: the engine and its constructor arguments (the transformers
    engine takes ``model``, ``source``, ``zoo_dir``, ``allow_fallback``, ...).
    `start_timeout_s`: the engine must be constructed (weights loaded) within this time, else
    the replica fails to start with a clear error instead of hanging.
    `health_probe_interval_s`/`health_probe_timeout_s`: `check_health` runs the engine's probe
    (a 1-token generation) unless a request succeeded within the interval, and fails when the
    probe takes longer than the timeout.
    """

    def __init__(self, *, engine_cls: str | type = DEFAULT_ENGINE,
                 engine_kwargs: dict[str, Any] | None = None, start_timeout_s: float = 600.0,
                 health_probe_interval_s: float = 30.0, health_probe_timeout_s: float = 30.0):
        if not start_timeout_s > 0:
            raise ValueError(f"start_timeout_s must be > 0, got {start_timeout_s!r}")
        cls = load_engine_cls(engine_cls)
        started = time.perf_counter()
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm-engine-start")
        future = pool.submit(cls, **(engine_kwargs or {}))
        try:
            self.engine = future.result(timeout=start_timeout_s)
        except concurrent.futures.TimeoutError:
            raise RuntimeError(
                f"LLM engine {cls.__name__} did not start within {start_timeout_s:g}s (loading "
                "weights / starting the engine); raise start_timeout_s or check the weights' "
                "location") from None
        finally:
            pool.shutdown(wait=False)
        self.start_s = time.perf_counter() - started
        self._probe_interval_s = health_probe_interval_s
        self._probe_timeout_s = health_probe_timeout_s
        self._requests = 0
        self._errors = 0
        self._bad_requests = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._probes = 0
        self._last_ok = 0.0
        self._last_error: str | None = None
        info = self.engine.info()
        logger.info("LLM engine %s ready in %.1fs: %s from %s (%s)%s", cls.__name__,
                    self.start_s, info.name, info.source, info.device,
                    f"; FALLBACK: {info.fallback_reason}" if info.fallback else "")

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        """One OpenAI chat-completions request dict -> an OpenAI ``ChatCompletion`` dict.
        A bad request raises `ValueError` naming the field."""
        try:
            response = await self.engine.chat(request)
        except ValueError:
            self._bad_requests += 1
            raise
        except Exception as exc:
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        self._requests += 1
        usage = response.get("usage") or {}
        self._prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self._completion_tokens += int(usage.get("completion_tokens") or 0)
        self._last_ok = time.monotonic()
        self._last_error = None
        return response

    def info(self) -> dict[str, Any]:
        info = self.engine.info()
        return replica_info(info, _limits(info) | {"engine": info.extra.get("engine")})

    def stats(self) -> dict[str, Any]:
        return {"requests": self._requests, "errors": self._errors,
                "bad_requests": self._bad_requests, "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens, "health_probes": self._probes,
                "start_s": self.start_s, "last_error": self._last_error}

    async def check_health(self) -> None:
        """Probe the engine (1-token generation) unless a request succeeded recently."""
        if self._last_error is None and time.monotonic() - self._last_ok < self._probe_interval_s:
            return
        self._probes += 1
        try:
            await asyncio.wait_for(self.engine.check_health(), timeout=self._probe_timeout_s)
        except asyncio.TimeoutError as exc:
            raise RuntimeError(f"LLM health probe took over {self._probe_timeout_s:g}s") from exc
        except Exception as exc:
            raise RuntimeError(f"LLM health probe failed: {type(exc).__name__}: {exc}") from exc
        self._last_ok = time.monotonic()
        self._last_error = None


# --- the vLLM engine: a ChatEngine over a ray.serve.llm LLMServer handle ---------------------

class RayLLMEngine:
    """`models.llm.ChatEngine` that forwards to Ray Serve LLM's ``LLMServer`` (vLLM).

    `server`: a handle to the deployment built by ``ray.serve.llm.build_llm_deployment`` (bind
    the application into ``engine_kwargs``; Serve replaces it by a handle). `model_id`: its
    served model id. `request_cls`: the request model, vLLM's ``ChatCompletionRequest`` as Ray
    re-exports it (importing it needs vLLM on the node running this replica).
    Requests are checked with `models.llm.check_chat_request` first, so both engines refuse the
    same things with the same messages.

    The replica running this adapter imports vLLM's request model, so vLLM must be installed on
    its node too (one cluster image with ``ray[llm]`` everywhere, or give the ``LLM``
    deployment a custom resource only GPU nodes have). It needs no GPU itself.
    """

    def __init__(self, *, server: Any, model_id: str, model_source: str | None = None,
                 num_gpus: float | None = None, gpu_memory_utilization: float | None = None,
                 max_model_len: int | None = None, max_tokens_limit: int = 4096,
                 request_cls: str | type = RAY_CHAT_REQUEST):
        self._server = server.options(stream=True)
        self.model_id = model_id
        self.max_tokens_limit = max_tokens_limit
        if isinstance(request_cls, str):
            try:
                request_cls = load_engine_cls(request_cls)
            except ValueError as exc:
                raise RuntimeError(
                    f"{exc}. ray.serve.llm needs vLLM (or SGLang): install the GPU extra "
                    "(`pip install 'ray[llm]'`) on the nodes running the LLM deployments") from exc
        self._request_cls = request_cls
        self._info = LoadedInfo(
            name=model_id, family="llm", source=model_source or model_id, tiny=False,
            device="cuda", dtype="auto",
            extra={"engine": "vllm (ray.serve.llm)", "served_model_name": model_id,
                   "limits": {"max_tokens": max_tokens_limit, "context_length": max_model_len,
                              "structured_outputs": True, "num_gpus": num_gpus,
                              "gpu_memory_utilization": gpu_memory_utilization}})

    def info(self) -> LoadedInfo:
        return self._info

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        checked = check_chat_request(request, max_tokens_limit=self.max_tokens_limit)
        checked["model"] = self.model_id  # Ray's LLMServer serves exactly one model id
        checked["stream"] = False
        body = self._request_cls(**checked)
        items = []
        async for item in self._server.chat.remote(body, None):
            items.append(item)
        if len(items) != 1 or isinstance(items[0], list):
            raise RuntimeError(f"ray.serve.llm returned {len(items)} items for a non-streaming "
                               "chat request, expected one ChatCompletionResponse")
        return _response_dict(items[0])

    async def check_health(self) -> None:
        response = await self.chat({"messages": [{"role": "user", "content": "ping"}],
                                    "max_tokens": 1, "temperature": 0})
        if not response.get("choices"):
            raise RuntimeError("vLLM health probe returned no choices")


def _response_dict(item: Any) -> dict[str, Any]:
    data = item.model_dump() if hasattr(item, "model_dump") else item
    if not isinstance(data, dict):
        raise RuntimeError(f"ray.serve.llm returned {type(item).__name__}, expected a "
                           "ChatCompletionResponse")
    if "error" in data and "choices" not in data:  # vLLM's ErrorResponse
        error = data["error"] or {}
        message = f"vLLM: {error.get('message')} ({error.get('type')})"
        if error.get("code") == 400:
            raise ValueError(message)
        raise RuntimeError(message)
    return data


# --- app building -----------------------------------------------------------------------------

class LLMAppConfig(BaseModel):
    """How to deploy the LLM (builder args; ``serve_config.yaml`` can fill them)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="auto: vLLM when num_gpus > 0 and vllm is importable where the app "
        "is built, else transformers. Set vllm explicitly on GPU clusters.")
    model: str = Field("tiny-llm", description="models.llm name, e.g. qwen2.5-1.5b-instruct")
    source: str | None = Field(None, description="weights: local folder or hub id")
    served_model_name: str | None = Field(None, description="model id in responses")
    num_gpus: float = Field(0.0, ge=0, le=1, description="GPU share of one replica; 0 = CPU")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM; default gpu_memory_utilization_for(num_gpus)")
    max_model_len: int = Field(4096, ge=256, description="vLLM context length (KV cache size)")
    max_tokens_limit: int = Field(1024, ge=1, le=4096, description="largest max_tokens allowed")
    structured_outputs_backend: str = Field("xgrammar", description="vLLM structured outputs")
    accelerator_type: str | None = Field(None, description="e.g. L4, A10G, H100 (vLLM)")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    zoo_dir: str | None = None
    allow_fallback: bool = False
    start_timeout_s: float = Field(600.0, gt=0)
    vllm_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra vLLM engine args (override the defaults)")


def _use_vllm(config: LLMAppConfig) -> bool:
    if config.backend != "auto":
        return config.backend == "vllm"
    return config.num_gpus > 0 and importlib.util.find_spec("vllm") is not None


def _served_name(config: LLMAppConfig) -> str:
    return config.served_model_name or config.model


def vllm_llm_config(config: LLMAppConfig) -> dict[str, Any]:
    """The keyword arguments of ``ray.serve.llm.LLMConfig`` for `config` (plain data, so it
    is checked without vLLM). GPU share, vLLM memory and structured outputs agree by
    construction; a ``gpu_memory_utilization`` that disagrees with ``num_gpus`` (given directly
    or in ``vllm_engine_kwargs``) is refused."""
    if config.num_gpus <= 0:
        raise ValueError("num_gpus must be > 0 for the vLLM backend (vLLM needs a GPU); use "
                         "backend=transformers on CPU")
    spec = get_spec(config.model, kind="llm", source=config.source)
    if spec.tiny:
        raise ValueError(f"model {config.model!r} is a tiny zoo model for the transformers "
                         "engine; vLLM needs real weights (e.g. qwen2.5-1.5b-instruct, or "
                         "source= a local folder or hub id)")
    gmu = config.gpu_memory_utilization or gpu_memory_utilization_for(config.num_gpus)
    engine_kwargs: dict[str, Any] = {
        "gpu_memory_utilization": gmu,
        "max_model_len": config.max_model_len,
        # vLLM >= 0.12 (Ray 2.60 pins 0.29): JSON-schema response_format is enforced by this
        # backend; the old guided_decoding_backend / guided_json were removed.
        "structured_outputs_config": {"backend": config.structured_outputs_backend},
        "enforce_eager": config.num_gpus < 1,  # CUDA graphs cost memory a share can't spare
        **config.vllm_engine_kwargs,
    }
    check_gpu_memory_utilization(config.num_gpus, engine_kwargs["gpu_memory_utilization"])
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": _served_name(config), "model_source": spec.source},
        "engine_kwargs": engine_kwargs,
        "deployment_config": {"autoscaling_config": {"min_replicas": config.min_replicas,
                                                     "max_replicas": config.max_replicas}},
    }
    if config.num_gpus < 1:
        # Ray's fractional-GPU recipe: the vLLM worker's bundle holds the share, and vLLM is
        # told the same share (else its Ray workers ask for a whole GPU).
        kwargs["placement_group_config"] = {"bundles": [{"GPU": config.num_gpus, "CPU": 1}]}
        kwargs["runtime_env"] = {"env_vars": {"VLLM_RAY_PER_WORKER_GPUS": str(config.num_gpus),
                                              "VLLM_DISABLE_COMPILE_CACHE": "1"}}
    if config.accelerator_type:
        kwargs["accelerator_type"] = config.accelerator_type
    return kwargs


def llm_deployment(config: LLMAppConfig | dict[str, Any] | None = None) -> serve.Application:
    """The bound ``LLM`` deployment for `config`; bind it into the graph and hand the router
    its handle. With vLLM: Ray's LLMServer (``vLLM:<model id>``) behind our ``LLM`` adapter."""
    if not isinstance(config, LLMAppConfig):
        config = LLMAppConfig(**(config or {}))
    if config.min_replicas > config.max_replicas:
        raise ValueError(f"min_replicas ({config.min_replicas}) must be <= max_replicas "
                         f"({config.max_replicas})")
    if _use_vllm(config):
        kwargs = vllm_llm_config(config)
        try:  # needs vLLM (or SGLang): only GPU clusters have it
            from ray.serve.llm import LLMConfig, build_llm_deployment
        except ImportError as exc:
            raise RuntimeError(
                f"backend vllm needs ray.serve.llm with vLLM ({exc}); install the GPU extra "
                "(`pip install 'ray[llm]'`) or use backend=transformers") from exc
        server = build_llm_deployment(LLMConfig(**kwargs), name_prefix="vLLM:")
        return LLMServer.options(ray_actor_options={"num_cpus": 0.5, "num_gpus": 0}).bind(
            engine_cls=RAY_LLM_ENGINE,
            engine_kwargs={"server": server, "model_id": _served_name(config),
                           "model_source": kwargs["model_loading_config"]["model_source"],
                           "num_gpus": config.num_gpus,
                           "gpu_memory_utilization":
                               kwargs["engine_kwargs"]["gpu_memory_utilization"],
                           "max_model_len": config.max_model_len,
                           "max_tokens_limit": config.max_tokens_limit},
            start_timeout_s=config.start_timeout_s)
    actor: dict[str, Any] = {"num_cpus": 1}
    if config.num_gpus > 0:
        actor["num_gpus"] = config.num_gpus
    return LLMServer.options(ray_actor_options=actor).bind(
        engine_cls=DEFAULT_ENGINE,
        engine_kwargs={"model": config.model, "source": config.source,
                       "zoo_dir": config.zoo_dir, "allow_fallback": config.allow_fallback,
                       "served_model_name": config.served_model_name,
                       "max_tokens_limit": config.max_tokens_limit,
                       # on CUDA, torch's allocator is capped at the replica's share
                       "gpu_memory_fraction": config.num_gpus or None},
        start_timeout_s=config.start_timeout_s)


def build_llm_app(args: dict[str, Any] | LLMAppConfig | None = None) -> serve.Application:
    """Serve app builder (``import_path: deployments.llm:build_llm_app``, ``args:`` an
    `LLMAppConfig`): the LLM on its own, e.g. to try a model on a cluster."""
    return llm_deployment(args)
