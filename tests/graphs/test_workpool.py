"""The ingress's image-work pool (issue #13, 5): image work never takes the threads the
record-store and API-key calls use, is bounded, and sheds with a 503 when full."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from graphs.errors import ApiError
from graphs.workpool import ImageWorkPool
from models.editing import MAX_CHAIN_COST, chain_cost, check_ops, parse_edit_request
from tests.conftest import async_wait_until


def test_a_full_image_pool_leaves_the_default_executor_free_and_sheds_the_rest():
    async def scenario():
        pool = ImageWorkPool(threads=2, max_waiting=1, niceness=0)
        release = threading.Event()
        busy = [asyncio.ensure_future(pool.run(release.wait)) for _ in range(3)]  # 2 + 1
        await async_wait_until(lambda: pool.in_use == 3, timeout=30, what="3 places taken")
        # the record/auth path (asyncio.to_thread) still runs at once
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "record"), 5) == "record"
        with pytest.raises(ApiError) as full:
            await pool.run(lambda: None)
        assert full.value.status == 503 and full.value.headers["Retry-After"]
        assert pool.rejected == 1
        release.set()
        assert await asyncio.gather(*busy) == [True, True, True]
        assert pool.in_use == 0
        pool.shutdown()

    asyncio.run(scenario())


def test_a_cancelled_caller_frees_its_place_only_when_the_thread_is_done():
    async def scenario():
        pool = ImageWorkPool(threads=1, max_waiting=0, niceness=0)
        release = threading.Event()
        task = asyncio.ensure_future(pool.run(release.wait))
        await async_wait_until(lambda: pool.in_use == 1, timeout=30, what="the place taken")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ApiError):  # the thread still works for the gone caller
            await pool.run(lambda: None)
        release.set()
        await async_wait_until(lambda: pool.in_use == 0, timeout=30,
                               what="the thread to end and free its place")
        assert await pool.run(lambda: 7) == 7
        pool.shutdown()

    asyncio.run(scenario())


def test_pool_threads_run_at_a_lower_priority():
    async def scenario():
        pool = ImageWorkPool(threads=1, niceness=3)
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        theirs = await pool.run(lambda: os.getpriority(os.PRIO_PROCESS,
                                                       threading.get_native_id()))
        pool.shutdown()
        return mine, theirs

    mine, theirs = asyncio.run(scenario())
    assert theirs == min(19, mine + 3)


def test_the_chain_budget_refuses_the_abusive_chain_and_admits_real_ones():
    abusive = parse_edit_request([{"op": "resize", "width": 4096, "height": 4096}]
                                 + [{"op": "blur", "radius": 100}] * 19)
    assert chain_cost((1, 1), abusive.ops) > 10 * MAX_CHAIN_COST
    with pytest.raises(ValueError, match=r"^ops\[\d+\] takes the chain over its work budget"):
        check_ops((1, 1), abusive.ops)
    real = parse_edit_request([{"op": "crop", "x": 0, "y": 0, "width": 4000, "height": 3000},
                               {"op": "rotate", "degrees": 7}, {"op": "contrast", "factor": 1.2},
                               {"op": "blur", "radius": 20}])
    width, height = check_ops((4096, 4096), real.ops)  # admitted (rotate grows the canvas)
    assert width > 4000 and height > 3000
    assert chain_cost((4096, 4096), real.ops) < MAX_CHAIN_COST
