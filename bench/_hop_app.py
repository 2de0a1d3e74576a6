"""A two-deployment probe app for bench/cluster.py: `HopFront` calls `HopEcho` through a
DeploymentHandle (as the Ingress calls the model deployments) and times each call itself, so
the number is the handle hop alone (Serve's routing, the actor call, the reply), without HTTP.
Where each runs is set from the config (`ray_actor_options.resources`: a node's custom
resource), so one app can put both on one raylet and another put them on two.
"""

from __future__ import annotations

import time

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle


@serve.deployment(max_ongoing_requests=8)
class HopEcho:
    async def __call__(self, payload: np.ndarray) -> np.ndarray:
        return payload


@serve.deployment(max_ongoing_requests=8)
class HopFront:
    def __init__(self, echo: DeploymentHandle):
        self.echo = echo

    async def __call__(self, request) -> dict:
        calls = int(request.query_params.get("calls", "200"))
        side = int(request.query_params.get("side", "0"))
        # an image as the Generator returns it (HxWx3 uint8), or an empty array
        payload = np.zeros((side, side, 3), dtype=np.uint8)
        for _ in range(5):  # warm the handle's routing to the replica
            await self.echo.remote(payload)
        took = []
        for _ in range(calls):
            began = time.perf_counter()
            await self.echo.remote(payload)
            took.append(time.perf_counter() - began)
        return {"latencies_s": took}


def build(args: dict) -> serve.Application:
    return HopFront.bind(HopEcho.bind())
