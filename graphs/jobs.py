"""Running one piece of model work as a recorded job, and storing its images.

Nothing is lost: the job record exists before work starts and always ends `succeeded` or
`failed` with a reason (cancellation included); each image is encoded once, written
completely (atomic store) and recorded before it is returned.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphs.errors import ApiError, to_api_error
from graphs.images import CONTENT_TYPES, Format, encode
from graphs.schemas import ImageData, ImagesResponse, ResponseMetadata
from storage.assets import AssetStore, asset_key
from storage.records import RecordStore, new_id


@dataclass
class Output:
    """What a model step produced, in the shape every tool result is mapped to."""

    images: list[np.ndarray]
    model: str
    seeds: list[int | None] | None = None
    batch_size: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def output_format_for(image: np.ndarray, requested: Format) -> Format:
    """JPEG has no alpha: images with transparency are saved as PNG instead."""
    if requested == "jpeg" and image.ndim == 3 and image.shape[2] == 4:
        return "png"
    return requested


class JobRunner:
    def __init__(self, *, assets: AssetStore, records: RecordStore, project: str = "default"):
        self.assets = assets
        self.records = records
        self.project = project

    async def run(
        self,
        *,
        kind: str,
        prompt: str | None,
        params: dict[str, Any],
        model_info: dict[str, Any],
        work: Callable[[], Awaitable[Output]],
        base_url: str,
        response_format: str = "b64_json",
        output_format: Format = "png",
        compression: int | None = None,
        revised_prompt: str | None = None,
    ) -> ImagesResponse:
        started = time.perf_counter()
        job_id = await asyncio.to_thread(
            self.records.create_job, kind=kind, prompt=prompt, params=params,
            model=model_info["name"], project=self.project)
        try:
            await asyncio.to_thread(self.records.start_job, job_id=job_id)
            out = await work()
            stored = time.perf_counter()
            data: list[ImageData] = []
            formats = []
            seeds = out.seeds or [None] * len(out.images)
            for image, seed in zip(out.images, seeds, strict=True):
                fmt = output_format_for(image, output_format)
                asset_id, blob = await asyncio.to_thread(self._store, image, fmt, job_id, kind,
                                                         compression)
                formats.append(fmt)
                data.append(ImageData(
                    id=asset_id,
                    seed=seed,
                    revised_prompt=revised_prompt,
                    b64_json=base64.b64encode(blob).decode()
                    if response_format == "b64_json" else None,
                    url=self.asset_url(asset_id, base_url) if response_format == "url" else None,
                ))
            timings = {**out.timings, "store_s": time.perf_counter() - stored,
                       "total_s": time.perf_counter() - started}
            await asyncio.to_thread(self.records.finish_job, job_id=job_id,
                                    asset_ids=[d.id for d in data], timings=timings,
                                    model=out.model)
        except BaseException as exc:  # cancellation included: the record must not stay running
            reason = to_api_error(exc).message if isinstance(exc, Exception) else "cancelled"
            await asyncio.shield(asyncio.to_thread(self.records.fail_job, job_id=job_id,
                                                   error=f"{type(exc).__name__}: {reason}"))
            raise
        height, width = out.images[0].shape[:2]
        return ImagesResponse(
            created=int(time.time()),
            data=data,
            size=f"{width}x{height}",
            output_format=formats[0],
            metadata=ResponseMetadata(
                job_id=job_id,
                model=out.model,
                tiny=model_info["tiny"],
                fallback=model_info["fallback"],
                fallback_reason=model_info["fallback_reason"],
                batch_size=out.batch_size,
                timings=timings,
                extra=out.extra,
            ),
        )

    async def store_image(self, image: np.ndarray, *, kind: str, job_id: str | None = None,
                          fmt: Format = "png") -> str:
        """Store one image outside a job's outputs (e.g. a chat upload); return its id."""
        asset_id, _ = await asyncio.to_thread(self._store, image, fmt, job_id, kind)
        return asset_id

    async def load_image(self, asset_id: str) -> np.ndarray:
        """A stored image back as an array (e.g. a chat session's last image)."""
        from graphs.images import decode

        record = await asyncio.to_thread(self.records.get_asset, asset_id=asset_id)
        if record is None:
            raise ApiError(404, f"no asset {asset_id!r}", param="asset_id", code="not_found")
        data = await asyncio.to_thread(self.assets.get, key=record.key)
        return await asyncio.to_thread(decode, data, field="asset", max_pixels=2**31,
                                       max_bytes=2**31)

    def _store(self, image: np.ndarray, fmt: Format, job_id: str | None, kind: str,
               compression: int | None = None) -> tuple[str, bytes]:
        blob = encode(image, fmt, quality=90 if compression is None else compression)
        asset_id = new_id("img")
        key = asset_key(project=self.project, kind=kind, asset_id=asset_id, ext=fmt)
        self.assets.put(key=key, data=blob, content_type=CONTENT_TYPES[fmt])
        height, width = image.shape[:2]
        self.records.add_asset(asset_id=asset_id, job_id=job_id, kind=kind,
                               store=self.assets.name, key=key, content_type=CONTENT_TYPES[fmt],
                               size_bytes=len(blob), width=width, height=height,
                               project=self.project)
        return asset_id, blob

    @staticmethod
    def asset_url(asset_id: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/v1/assets/{asset_id}"
