"""What every deployment reports about its replica (`info()`): shared, so /v1/capabilities
and the tests read one shape."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import ray

from models.base import LoadedInfo

T = TypeVar("T")

HandleTransport = Literal["grpc", "actor"]


def with_transport(handle: Any, transport: HandleTransport) -> Any:
    """`handle` (a DeploymentHandle) with its calls sent over `transport`. ``grpc``: Serve's
    by-value calls (``_by_reference=False``) to the inter-deployment gRPC server every
    replica runs: arguments and results pickled into the call, no object store, no
    streaming-generator actor task per call (1-1.6 ms less per call at concurrency 1 on 2
    cores: BENCHMARKS.md, "Gateway overhead", session 8). ``actor``: Ray actor calls, Serve's
    default (for clusters whose nodes open only Ray's own ports to each other; the replicas'
    gRPC servers listen on random ports)."""
    return handle.options(_by_reference=False) if transport == "grpc" else handle


def replica_info(info: LoadedInfo, limits: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": info.name,
        "family": info.family,
        "source": info.source,
        "tiny": info.tiny,
        "fallback": info.fallback,
        "fallback_reason": info.fallback_reason,
        "device": info.device,
        "dtype": info.dtype,
        "limits": limits,
        # Outside a replica (unit tests) get_gpu_ids() would start a local Ray: don't.
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),  # lower_cpu_priority's effect
        # the replica's actor (namespace "serve"): operators and fault tests address it
        "actor_name": ray.get_runtime_context().get_actor_name() if ray.is_initialized()
        else None,
    }


def lower_cpu_priority(increment: int) -> int:
    """Raise this process's niceness by `increment` (capped at 19), every thread of it: Linux
    keeps a niceness per thread, and threads started later inherit their creator's. Model
    replicas call it so that, on a node whose cores are full, the request path (Ingress,
    HAProxy, Serve's proxy) runs first: it sheds overload with quick 503s and answers
    health checks instead of queueing behind batch work that a few ms of delay does not
    hurt. No effect while cores are free; raising niceness needs no privilege. Returns the
    niceness now (unchanged when `increment` <= 0)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if increment <= 0:
        return current
    target = min(19, current + increment)
    tids = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), target)
        except OSError:  # the thread ended meanwhile
            pass
    return target


class ModelThread:
    """The one thread a replica's torch work runs on: the model's loading, every model call,
    adapter loads, health probes (Generator, Router, Upscaler, Video, Vision).

    Why one: torch's CPU kernels run on OpenMP thread teams, one team per calling thread, and
    a process whose torch work is spread over several threads runs it slower — tiny-sd at
    64x64, one step, two torch threads, in one process: 35 ms when loaded and run on one
    thread, 61-67 ms when run on another thread than the one that loaded it (as
    `asyncio.to_thread` did: worker threads, none of them the loader); in the Generator
    replica 51.6 → 46.4 ms p50 (BENCHMARKS.md, "One thread for a replica's model"). And
    `torch.set_num_threads` (OpenMP's per-thread setting) only reaches the thread that calls
    it: here, the thread every call runs on.

    `call` runs a function on it and waits (from ``__init__``); `run` awaits it from the
    event loop, with the caller's context variables (as `asyncio.to_thread`). Calls run one
    after another, in order: a replica holds one model, whose kernels use the cores anyway."""

    def __init__(self, name: str):
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.thread_id: int | None = None  # the thread's ident, once it has run something

    def _enter(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.thread_id = threading.get_ident()
        return fn(*args, **kwargs)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the model thread and return its result (blocking: for
        ``__init__``, never from the event loop)."""
        return self._pool.submit(self._enter, fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Await `fn(*args, **kwargs)` run on the model thread. Cancelling the await does not
        stop a call that has started (as with `asyncio.to_thread`): callers that must know
        when the model is free wait for the future they were given (`asyncio.wait`)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(
            self._pool, functools.partial(context.run, self._enter, fn, *args, **kwargs))
