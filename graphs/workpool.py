"""The ingress's own bounded pool for CPU-heavy image work (upload decodes, edit ops).

Why a pool of its own: `asyncio.to_thread` runs on the event loop's default executor, which
is also where every API-key lookup and record-store call of the ingress runs. Image work there
(an edit chain of seconds, six at once) held all of its threads, and another tenant's
`GET /v1/jobs` waited 12 s behind it. Image work now runs here:

- at most `threads` run at once, at `niceness` above the replica's (Linux keeps a niceness per
  thread): when the cores are full, the event loop and the record/auth threads run first;
- at most `max_waiting` wait; more is a 503 with `Retry-After` (overload is shed, not queued
  without bound);
- each call runs in a copy of the caller's context (request id, caller), like `to_thread`.

Cost per request is bounded separately (`models.editing.MAX_CHAIN_COST`, the upload limits).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from graphs.errors import ApiError

logger = logging.getLogger("ray.serve")

T = TypeVar("T")


def _lower_thread_priority(increment: int) -> None:
    """(In each new pool thread.) Raise this thread's niceness by `increment`."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError as exc:  # not permitted here: the pool still bounds the work
        logger.info("image-work thread keeps its priority (%s)", exc)


class ImageWorkPool:
    def __init__(self, *, threads: int = 2, max_waiting: int = 32, niceness: int = 5,
                 name: str = "image-work"):
        if threads < 1 or max_waiting < 0:
            raise ValueError(f"threads must be >= 1 and max_waiting >= 0, got {threads}, "
                             f"{max_waiting}")
        self.threads = threads
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name,
                                            initializer=_lower_thread_priority,
                                            initargs=(niceness,))
        self._admitted = 0  # running + waiting: released when the thread is done with it
        self._lock = threading.Lock()
        self.rejected = 0  # calls refused with 503 (stats, tests)

    @property
    def in_use(self) -> int:
        return self._admitted

    def _release(self, _future: Any) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a pool thread; ApiError 503 when the pool is full. A
        cancelled caller frees its place only when its work has left the thread."""
        with self._lock:
            full = self._admitted >= self.threads + self.max_waiting
            if not full:
                self._admitted += 1
        if full:
            self.rejected += 1
            raise ApiError(503, "image processing is at capacity on this replica; retry "
                           "shortly", code="image_work_busy", headers={"Retry-After": "2"})
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        future = self._executor.submit(call)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
