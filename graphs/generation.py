"""Generation logic behind the route: validate, then run the generator as a recorded job."""

from __future__ import annotations

import logging
from typing import Any

from graphs.errors import ApiError, to_api_error
from graphs.jobs import JobRunner, Output
from graphs.schemas import ImageGenerationRequest, ImagesResponse
from models.diffusion import GenerationRequest, check_inputs
from models.registry import SizeLimits

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
    def __init__(self, *, generator: Any, runner: JobRunner):
        self.generator = generator
        self.runner = runner
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
        info = await self.model_info()
        req = self.build_request(body, info)
        params = body.model_dump(exclude={"prompt"}, exclude_none=True)
        params.update(width=req.width, height=req.height, steps=req.steps,
                      guidance_scale=req.guidance_scale)

        async def work() -> Output:
            res = await self.generator.generate.remote(req)
            return Output(images=res.images, model=res.model, seeds=res.seeds,
                          batch_size=res.batch_size, timings=res.timings)

        return await self.runner.run(kind="generations", prompt=body.prompt, params=params,
                                     model_info=info, work=work, base_url=base_url,
                                     response_format=body.response_format)
