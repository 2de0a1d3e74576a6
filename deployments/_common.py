"""What every deployment reports about its replica (`info()`): shared, so /v1/capabilities
and the tests read one shape."""

from __future__ import annotations

import os
from typing import Any

import ray

from models.base import LoadedInfo


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
