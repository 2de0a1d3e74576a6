"""ToolService's upload handling, without a cluster."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from graphs.tools import Limits, ToolService


def _service() -> ToolService:
    return ToolService(handles={}, generation=None, runner=None, limits=Limits())


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_no_uploads_take_no_trip_through_the_image_pool():
    tools = _service()

    async def refuse(*args, **kwargs):
        raise AssertionError("a text-only request does not queue image work")

    tools.pool.run = refuse
    assert asyncio.run(tools.decode_many([])) == []


def test_uploads_are_decoded_in_order_and_the_request_pixel_budget_holds():
    tools = _service()
    first, second = asyncio.run(tools.decode_many([("image", _png(4, 3)),
                                                   ("image[1]", _png(2, 5))]))
    assert first.shape == (3, 4, 3) and second.shape == (5, 2, 3)
    assert np.all(first == [10, 20, 30])
    small = ToolService(handles={}, generation=None, runner=None,
                        limits=Limits(max_request_pixels=20))
    with pytest.raises(Exception, match="pixels"):
        asyncio.run(small.decode_many([("image", _png(4, 3)), ("image[1]", _png(3, 3))]))
