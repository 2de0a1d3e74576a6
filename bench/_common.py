"""Shared bench helpers: a local Ray + the tiny-profile gateway, and a load driver."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def machine() -> str:
    return f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()}), " \
           f"{time.strftime('%Y-%m-%d')}"


@contextmanager
def gateway(port: int = 8199, **app_args):
    """Start a local Ray, deploy the tiny profile with logs quiet; yield the base URL."""
    import ray
    from ray import serve

    from graphs.app import AppArgs, build_app

    tmp = tempfile.mkdtemp(prefix="psbench", dir="/tmp")
    ray.init(num_cpus=8, include_dashboard=False, _temp_dir=tmp, logging_level="ERROR",
             log_to_driver=False)
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
    args = AppArgs(profile="tiny", data_dir=f"{tmp}/data", **app_args)
    serve.run(build_app(args), name="bench", route_prefix="/", logging_config=quiet)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def drive(call: Callable[[int], object], *, requests: int, concurrency: int
          ) -> tuple[float, list[float]]:
    """Run `call(i)` for i in range(requests) with `concurrency` threads; return
    (requests/s, per-request latencies)."""
    latencies: list[float] = []

    def timed(i: int):
        t = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, range(requests)))
    return requests / (time.perf_counter() - started), latencies


def summary(latencies: list[float]) -> str:
    return (f"p50 {statistics.median(latencies) * 1e3:.1f} ms, "
            f"p99 {pct(latencies, 99) * 1e3:.1f} ms")
