"""Image encoding at the edge: arrays in, bytes out (encoded once, on the way out)."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np

Format = Literal["png", "jpeg", "webp"]
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode(array: np.ndarray, fmt: Format = "png", *, quality: int = 90) -> bytes:
    from PIL import Image

    img = Image.fromarray(array)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)  # speed over size: we encode per request
    elif fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="WEBP", quality=quality)
    return buf.getvalue()
