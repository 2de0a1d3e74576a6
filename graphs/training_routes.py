"""Route helpers of /v1/datasets: the multipart form of POST /v1/datasets/{id}/images."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from graphs.errors import ApiError

MAX_DATASET_FILES = 200  # files (images and zips) per request
_FIELDS = {"image", "image[]", "caption", "caption[]", "zip", "asset_id", "asset_id[]",
           "auto_caption"}

DATASET_IMAGES_BODY = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "caption": {"type": "array", "items": {"type": "string"},
                    "description": "one per image, in order ('' = none)"},
        "zip": {"type": "array", "items": {"type": "string", "format": "binary"},
                "description": "images + .txt captions matched by file stem"},
        "asset_id": {"type": "array", "items": {"type": "string"}},
        "auto_caption": {"type": "boolean", "default": True}}}}}, "required": True}}


async def dataset_images_form(request: Request) -> dict[str, Any]:
    """files, captions, zips, asset_ids and auto_caption of the multipart body (400 saying what
    to send otherwise)."""
    if not request.headers.get("content-type", "").startswith(
            ("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ApiError(400, "send multipart/form-data with `image` files, `zip` files or "
                       "`asset_id` fields (`asset_id`s alone may be url-encoded)",
                       param="image", code="invalid_body")
    try:
        form = await request.form(max_files=MAX_DATASET_FILES, max_fields=2 * MAX_DATASET_FILES)
    except StarletteHTTPException as exc:
        raise ApiError(400, f"{exc.detail} At most {MAX_DATASET_FILES} files per request: "
                       "send more in several requests or in a zip", param="image",
                       code="too_many_files") from None
    unknown = sorted(set(form.keys()) - _FIELDS)
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; accepted: image, caption, zip, "
                       "asset_id, auto_caption", param=unknown[0], code="unknown_parameter")
    images = [f for key in ("image", "image[]") for f in form.getlist(key)]
    if any(isinstance(f, str) for f in images):
        raise ApiError(400, "image must be a file (multipart file part)", param="image")
    captions = [c for key in ("caption", "caption[]") for c in form.getlist(key)]
    if captions and len(captions) != len(images):
        raise ApiError(400, f"{len(captions)} captions for {len(images)} images: give one "
                       "caption per image, in order ('' for none)", param="caption")
    if any(not isinstance(c, str) or len(c) > 2000 for c in captions):
        raise ApiError(400, "each caption must be text of at most 2000 characters",
                       param="caption")
    zips = form.getlist("zip")
    if any(isinstance(z, str) for z in zips):
        raise ApiError(400, "zip must be a file (multipart file part)", param="zip")
    asset_ids = [a for key in ("asset_id", "asset_id[]") for a in form.getlist(key)]
    if any(not isinstance(a, str) or not a for a in asset_ids):
        raise ApiError(400, "asset_id must be an asset id", param="asset_id")
    flag = form.get("auto_caption", "true")
    if not isinstance(flag, str) or flag.lower() not in ("true", "false", "1", "0"):
        raise ApiError(400, "auto_caption must be true or false", param="auto_caption")
    files = []
    for i, upload in enumerate(images):
        files.append(("image" if i == 0 else f"image[{i}]", upload.filename,
                      await upload.read()))
    return {"files": files,
            "captions": [c.strip() or None for c in captions] or [None] * len(files),
            "zips": [await z.read() for z in zips], "asset_ids": asset_ids,
            "auto_caption": flag.lower() in ("true", "1")}
