"""What every deployment reports about its replica (`info()`): shared, so /v1/capabilities
and the tests read one shape."""

from __future__ import annotations

import os
from typing import Any

from models.base import LoadedInfo


def replica_info(info: LoadedInfo, limits: dict[str, Any]) -> dict[str, Any]:
    import ray

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
        # the replica's actor (namespace "serve"): operators and fault tests address it
        "actor_name": ray.get_runtime_context().get_actor_name() if ray.is_initialized()
        else None,
    }
