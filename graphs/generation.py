"""Generation logic behind the route: validate, record, call the generator, store, answer.

Nothing is lost: the job record exists before work starts and always ends `succeeded` or
`failed` with a reason; each asset is written completely (atomic store) before it is
recorded and returned.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from graphs.errors import ApiError, to_api_error
from graphs.images import CONTENT_TYPES, encode
from graphs.schemas import ImageData, ImageGenerationRequest, ImagesResponse, ResponseMetadata
from models.diffusion import GenerationRequest, check_inputs
from models.registry import SizeLimits
from storage.assets import AssetStore, asset_key
from storage.records import RecordStore, new_id

logger = logging.getLogger("ray.serve")


def parse_size(size: str, limits: SizeLimits) -> tuple[int, int]:
    if size == "auto":
        return limits.default_width, limits.default_height
    width, height = (int(v) for v in size.split("x"))
    ok = all(
        limits.min_side <= v <= limits.max_side and v % limits.multiple == 0
        for v in (width, height)
    )
    if not ok:
        raise ApiError(
            400,
            f"size {size!r} is not supported: width and height must be multiples of "
            f"{limits.multiple} between {limits.min_side} and {limits.max_side} "
            f"(default {limits.default_width}x{limits.default_height}), or 'auto'",
            param="size",
            code="invalid_size",
        )
    return width, height


class GenerationService:
    def __init__(self, *, generator: Any, assets: AssetStore, records: RecordStore,
                 project: str = "default"):
        self.generator = generator
        self.assets = assets
        self.records = records
        self.project = project
        self._info: dict[str, Any] | None = None

    async def model_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = await self.generator.info.remote()
        return self._info

    def build_request(self, body: ImageGenerationRequest, info: dict[str, Any]
                      ) -> GenerationRequest:
        if body.model and body.model != info["name"]:
            raise ApiError(400, f"model {body.model!r} is not served here; available: "
                           f"[{info['name']!r}]", param="model", code="model_not_found")
        limits = SizeLimits(**info["limits"])
        width, height = parse_size(body.size, limits)
        req = GenerationRequest(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt,
            n=body.n,
            width=width,
            height=height,
            steps=body.steps or (4 if info["tiny"] else 25),
            guidance_scale=body.guidance_scale if body.guidance_scale is not None else 7.5,
            seed=body.seed,
        )
        try:
            check_inputs(req, limits)
        except ValueError as exc:
            raise to_api_error(exc) from None
        return req

    async def generate(self, body: ImageGenerationRequest, *, base_url: str) -> ImagesResponse:
        started = time.perf_counter()
        info = await self.model_info()
        req = self.build_request(body, info)
        params = body.model_dump(exclude={"prompt"}, exclude_none=True)
        params.update(width=req.width, height=req.height, steps=req.steps,
                      guidance_scale=req.guidance_scale)
        job_id = await asyncio.to_thread(
            self.records.create_job, kind="generation", prompt=body.prompt, params=params,
            model=info["name"], project=self.project)
        try:
            await asyncio.to_thread(self.records.start_job, job_id=job_id)
            result = await self.generator.generate.remote(req)
            stored = time.perf_counter()
            asset_ids = []
            data = []
            for image, seed in zip(result.images, result.seeds, strict=True):
                asset_id, png = await asyncio.to_thread(self._store, image, job_id)
                asset_ids.append(asset_id)
                data.append(ImageData(
                    id=asset_id,
                    seed=seed,
                    b64_json=base64.b64encode(png).decode() if body.response_format == "b64_json"
                    else None,
                    url=self.asset_url(asset_id, base_url)
                    if body.response_format == "url" else None,
                ))
            timings = {**result.timings, "store_s": time.perf_counter() - stored,
                       "total_s": time.perf_counter() - started}
            await asyncio.to_thread(self.records.finish_job, job_id=job_id, asset_ids=asset_ids,
                                    timings=timings, model=result.model)
        except BaseException as exc:  # cancellation included: the record must not stay running
            reason = to_api_error(exc).message if isinstance(exc, Exception) else "cancelled"
            await asyncio.shield(asyncio.to_thread(self.records.fail_job, job_id=job_id,
                                                   error=f"{type(exc).__name__}: {reason}"))
            raise
        return ImagesResponse(
            created=int(time.time()),
            data=data,
            size=f"{req.width}x{req.height}",
            metadata=ResponseMetadata(
                job_id=job_id,
                model=result.model,
                tiny=info["tiny"],
                fallback=info["fallback"],
                fallback_reason=info["fallback_reason"],
                batch_size=result.batch_size,
                timings=timings,
            ),
        )

    def _store(self, image, job_id: str) -> tuple[str, bytes]:
        png = encode(image, "png")
        asset_id = new_id("img")
        key = asset_key(project=self.project, kind="generations", asset_id=asset_id, ext="png")
        self.assets.put(key=key, data=png, content_type=CONTENT_TYPES["png"])
        height, width = image.shape[:2]
        self.records.add_asset(asset_id=asset_id, job_id=job_id, kind="generation",
                               store=self.assets.name, key=key, content_type="image/png",
                               size_bytes=len(png), width=width, height=height,
                               project=self.project)
        return asset_id, png

    def asset_url(self, asset_id: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/v1/assets/{asset_id}"
