"""Generation logic behind the OpenAI-compatible Images routes: generations, edits and
variations, streamed or not, run on the generator as recorded jobs.

- quality → denoising steps (QUALITY_STEPS); an explicit `steps` wins.
- background=transparent → generate, then remove the background on the Matting deployment.
- stream=true → Server-Sent Events: `<prefix>.partial_image` (previews decoded from
  intermediate latents by TAESD) then `<prefix>.completed`.
- edits: a mask → inpaint; one image → img2img (input_fidelity high keeps more of it);
  several images → a side-by-side composite of the references, then img2img (see README).

One door for generator work: `build_request` (options → a checked `GenerationRequest`) and
`run_request` (one request on the Generator, as a job step's `Output`), used by these routes,
the tools (style transfer), the chat and workflows. Requests are validated once at the edge by
their schema (`graphs.schemas`), and once by the model's own `check_inputs`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from common.errors import InputError
from graphs import auth
from graphs.errors import ApiError, to_api_error
from graphs.images import encode
from graphs.jobs import JobRunner, Output
from graphs.schemas import ImagesResponse, OutputOptions, Usage, UsageDetails
from models.diffusion import GenerationRequest, check_inputs
from models.matting import MattingRequest
from models.registry import SizeLimits

logger = logging.getLogger("ray.serve")

# Denoising steps per quality: (real models, tiny models). Resolution is not changed.
QUALITY_STEPS = {"low": (12, 2), "medium": (20, 3), "high": (30, 4)}
INPUT_FIDELITY_STRENGTH = {"high": 0.35, "low": 0.65}  # img2img strength per input_fidelity
COMPOSITE_STRENGTH = 0.75
VARIATION_STRENGTH = 0.55
VARIATION_PROMPT = "a variation of this image, same subject and composition, high quality"


def parse_size(size: str, limits: SizeLimits, *, auto: tuple[int, int] | None = None
               ) -> tuple[int, int]:
    if size == "auto":
        return auto or (limits.default_width, limits.default_height)
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


def fit_to_limits(width: int, height: int, limits: dict[str, Any]) -> tuple[int, int]:
    """The generator size closest to an input image: same aspect, within the model's limits,
    multiples of the model's multiple."""
    m, lo, hi = limits["multiple"], limits["min_side"], limits["max_side"]
    scale = min(1.0, hi / max(width, height))
    scale = max(scale, lo / min(width, height))

    def snap(v: float) -> int:
        return int(min(hi, max(lo, round(v / m) * m)))

    return snap(width * scale), snap(height * scale)


def usage_for(prompt: str, images_in: int = 0) -> Usage:
    words = len(re.findall(r"\w+", prompt))
    return Usage(input_tokens=words + images_in, total_tokens=words + images_in,
                 input_tokens_details=UsageDetails(text_tokens=words, image_tokens=images_in))


@dataclass
class Options:
    """The output options shared by generations, edits, variations and the chat's steps (the
    HTTP schemas check their combinations at the edge: `graphs.schemas.OutputOptions`)."""

    n: int = 1
    size: str = "auto"
    quality: str = "auto"
    background: str = "auto"
    output_format: str = "png"
    output_compression: int | None = None
    response_format: str = "b64_json"
    stream: bool = False
    partial_images: int = 0
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    model: str | None = None
    lora: str | None = None

    @classmethod
    def of(cls, body: OutputOptions) -> Options:
        """The options of a request schema (generations, edits)."""
        return cls(**{f: getattr(body, f) for f in cls.__dataclass_fields__
                      if f in OutputOptions.model_fields})

    @property
    def resolved_quality(self) -> str:
        return "medium" if self.quality == "auto" else self.quality


class GenerationService:
    def __init__(self, *, generator: Any, runner: JobRunner, matting: Any = None):
        self.generator = generator
        self.runner = runner
        self.matting = matting
        self._info: dict[str, Any] | None = None

    async def model_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = await self.generator.info.remote()
        return self._info

    # -- request building -----------------------------------------------------------------
    def _check_model(self, opts: Options, info: dict[str, Any]) -> None:
        if opts.model and opts.model != info["name"]:
            raise ApiError(400, f"model {opts.model!r} is not served here; available: "
                           f"[{info['name']!r}]", param="model", code="model_not_found")
        if opts.lora:
            raise ApiError(400, f"LoRA adapter {opts.lora!r} is not loaded; available: none",
                           param="lora", code="lora_not_found")

    def build_request(self, prompt: str, opts: Options, info: dict[str, Any], *,
                      auto_size: tuple[int, int] | None = None, **extra: Any
                      ) -> GenerationRequest:
        """THE way options become a generator request (routes, tools, chat, workflows):
        model and LoRA checked, size parsed (`auto_size` for 'auto'), quality → steps, then
        the model's own `check_inputs` (its errors name the request field: width/height →
        size). `extra`: mode, image, mask, strength."""
        self._check_model(opts, info)
        limits = SizeLimits(**info["limits"])
        width, height = parse_size(opts.size, limits, auto=auto_size)
        steps = opts.steps or QUALITY_STEPS[opts.resolved_quality][1 if info["tiny"] else 0]
        if opts.stream and opts.partial_images:
            # A preview needs a step of its own; img2img runs only steps*strength of them.
            strength = extra.get("strength", 1.0) if extra.get("mode", "text2img") != \
                "text2img" else 1.0
            steps = max(steps, math.ceil((opts.partial_images + 1) / strength))
        req = GenerationRequest(
            prompt=prompt, negative_prompt=opts.negative_prompt, n=opts.n, width=width,
            height=height, steps=steps,
            guidance_scale=opts.guidance_scale if opts.guidance_scale is not None else 7.5,
            seed=opts.seed, **extra)
        try:
            check_inputs(req, limits)
        except InputError as exc:  # the model's field names, mapped to the request's
            param = "size" if exc.param in ("width", "height") else exc.param
            raise ApiError(exc.status, exc.message, param=param, code=exc.code) from None
        return req

    async def run_request(self, req: GenerationRequest) -> Output:
        """One request on the Generator (batched there with other callers'), as an `Output`."""
        res = await self.generator.generate.remote(req)
        return Output(images=res.images, model=res.model, seeds=res.seeds,
                      batch_size=res.batch_size, timings=res.timings)

    # -- running --------------------------------------------------------------------------
    async def _finish_images(self, images: list[np.ndarray], opts: Options,
                             alpha: np.ndarray | None = None) -> tuple[list[np.ndarray], dict]:
        """background=transparent: cut the subject out (Matting), or reuse the input's alpha."""
        if opts.background != "transparent":
            return images, {}
        if alpha is not None:
            out = []
            for img in images:
                a = np.asarray(Image.fromarray(alpha).resize((img.shape[1], img.shape[0])))
                out.append(np.dstack([img, a]))
            return out, {"transparency": "input alpha"}
        if self.matting is None:
            raise ApiError(400, "background=transparent needs the background-removal "
                           "deployment, which is not deployed", param="background")
        results = await asyncio.gather(*(self.matting.remove.remote(
            MattingRequest(image=img, output="cutout")) for img in images))
        return [r.image for r in results], {"transparency": "background removed",
                                           "matting_model": results[0].model}

    async def run(self, *, kind: str, prompt: str, req: GenerationRequest, opts: Options,
                  info: dict[str, Any], base_url: str, images_in: int = 0,
                  alpha: np.ndarray | None = None, async_job: bool = False
                  ) -> ImagesResponse | str:
        params = {k: v for k, v in vars(opts).items() if v is not None}
        params.update(width=req.width, height=req.height, steps=req.steps, mode=req.mode)

        async def work(progress) -> Output:
            if progress.live:  # an async job: stream the denoising steps into its progress
                res = None
                async with _streaming(self.generator, req, 0) as events:
                    async for event in events:
                        if event["type"] == "progress":
                            await progress(0.9 * event["step"] / event["total"],
                                           f"denoising step {event['step']}/{event['total']}")
                        elif event["type"] == "result":
                            res = event["result"]
            else:
                res = await self.run_request(req)
            images, extra = await self._finish_images(res.images, opts, alpha)
            return Output(images=images, model=res.model, seeds=res.seeds,
                          batch_size=res.batch_size, timings=res.timings,
                          extra={**extra, "quality": opts.resolved_quality})

        response = await self.runner.run(
            kind=kind, prompt=prompt, params=params, model_info=info, work=work,
            base_url=base_url, response_format=opts.response_format,
            output_format=opts.output_format, compression=opts.output_compression,
            async_job=async_job, images=opts.n)
        if isinstance(response, str):  # an async job's id
            return response
        return self._openai_fields(response, opts, prompt, images_in)

    def _openai_fields(self, response: ImagesResponse, opts: Options, prompt: str,
                       images_in: int) -> ImagesResponse:
        response.background = "transparent" if opts.background == "transparent" else "opaque"
        response.quality = opts.resolved_quality
        response.usage = usage_for(prompt, images_in)
        return response

    async def stream(self, *, kind: str, prompt: str, req: GenerationRequest, opts: Options,
                     info: dict[str, Any], base_url: str, event_prefix: str,
                     charge: auth.ImageCharge, images_in: int = 0,
                     alpha: np.ndarray | None = None) -> AsyncIterator[dict[str, str]]:
        """SSE events (sse-starlette dicts). Errors after the stream started become an
        `error` event carrying the usual envelope."""
        previews: asyncio.Queue = asyncio.Queue()
        params = {k: v for k, v in vars(opts).items() if v is not None}
        params.update(width=req.width, height=req.height, steps=req.steps, mode=req.mode)
        common = {"background": "transparent" if opts.background == "transparent" else "opaque",
                  "output_format": opts.output_format, "quality": opts.resolved_quality,
                  "size": f"{req.width}x{req.height}"}

        async def work(progress) -> Output:
            result = None
            async with _streaming(self.generator, req, opts.partial_images) as events:
                async for event in events:
                    if event["type"] == "partial":
                        await previews.put(event)
                    elif event["type"] == "result":
                        result = event["result"]
            images, extra = await self._finish_images(result.images, opts, alpha)
            return Output(images=images, model=result.model, seeds=result.seeds,
                          batch_size=1, timings=result.timings,
                          extra={**extra, "quality": opts.resolved_quality})

        job = asyncio.ensure_future(self.runner.run(
            kind=kind, prompt=prompt, params=params, model_info=info, work=work,
            base_url=base_url, response_format="b64_json", output_format=opts.output_format,
            compression=opts.output_compression, images=charge))  # charged before the stream
        try:
            while not job.done() or not previews.empty():
                getter = asyncio.ensure_future(previews.get())
                await asyncio.wait({job, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                event = getter.result()
                b64 = base64.b64encode(await asyncio.to_thread(
                    encode, event["images"][0], "png" if opts.output_format == "png"
                    else opts.output_format)).decode()
                yield {"event": f"{event_prefix}.partial_image", "data": json.dumps({
                    "type": f"{event_prefix}.partial_image", "b64_json": b64,
                    "partial_image_index": event["index"], "created_at": int(time.time()),
                    **common})}
            response = self._openai_fields(job.result(), opts, prompt, images_in)
        except Exception as exc:  # the HTTP status is already sent: report in-band
            error = to_api_error(exc)
            yield {"event": "error", "data": json.dumps({"error": {
                "message": error.message, "type": error.type, "param": error.param,
                "code": error.code}})}
            return
        finally:
            if not job.done():
                job.cancel()  # client went away: the generator stops at the next step
        yield {"event": f"{event_prefix}.completed", "data": json.dumps({
            "type": f"{event_prefix}.completed", "b64_json": response.data[0].b64_json,
            "created_at": int(time.time()), "usage": response.usage.model_dump(),
            "id": response.data[0].id, "metadata": response.metadata.model_dump(),
            **common})}

    # -- entry points ---------------------------------------------------------------------
    async def generate(self, prompt: str, opts: Options, *, base_url: str,
                       async_job: bool = False):
        info = await self.model_info()
        req = self.build_request(prompt, opts, info)
        if opts.stream:
            charge = await self.runner.charge_images(opts.n)  # a 429 before the stream
            return self.stream(kind="generations", prompt=prompt, req=req, opts=opts,
                               info=info, base_url=base_url, event_prefix="image_generation",
                               charge=charge)
        return await self.run(kind="generations", prompt=prompt, req=req, opts=opts, info=info,
                              base_url=base_url, async_job=async_job)

    async def edit(self, images: list[np.ndarray], *, prompt: str, mask: np.ndarray | None,
                   input_fidelity: str, opts: Options, base_url: str, async_job: bool = False):
        info = await self.model_info()
        first = images[0]
        alpha = first[..., 3] if first.shape[2] == 4 else None
        if mask is not None:
            if mask.shape[:2] != first.shape[:2]:
                raise ApiError(400, f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                               f"{first.shape[1]}x{first.shape[0]}: they must match",
                               param="mask", code="mask_size_mismatch")
            if mask.shape[2] != 4:
                raise ApiError(400, "mask must be a PNG with an alpha channel (transparent = "
                               "the area to change)", param="mask", code="mask_without_alpha")
            repaint = np.where(mask[..., 3] < 128, 255, 0).astype(np.uint8)
            source, mode, strength = first[..., :3], "inpaint", 1.0
        elif len(images) == 1:
            source, mode, repaint = first[..., :3], "img2img", None
            strength = INPUT_FIDELITY_STRENGTH[input_fidelity]
        else:
            source, mode, repaint = composite(images), "img2img", None
            strength = COMPOSITE_STRENGTH
        auto = fit_to_limits(source.shape[1], source.shape[0], info["limits"])
        req = self.build_request(prompt, opts, info, auto_size=auto, mode=mode, image=source,
                            mask=repaint, strength=strength)
        if opts.stream:
            charge = await self.runner.charge_images(opts.n)
            return self.stream(kind="edits", prompt=prompt, req=req, opts=opts, info=info,
                               base_url=base_url, event_prefix="image_edit", charge=charge,
                               images_in=len(images), alpha=alpha)
        return await self.run(kind="edits", prompt=prompt, req=req, opts=opts, info=info,
                              base_url=base_url, images_in=len(images), alpha=alpha,
                              async_job=async_job)

    async def variations(self, image: np.ndarray, *, opts: Options, base_url: str,
                         async_job: bool = False):
        info = await self.model_info()
        auto = fit_to_limits(image.shape[1], image.shape[0], info["limits"])
        req = self.build_request(VARIATION_PROMPT, opts, info, auto_size=auto, mode="img2img",
                            image=image[..., :3], strength=VARIATION_STRENGTH)
        return await self.run(kind="variations", prompt=VARIATION_PROMPT, req=req, opts=opts,
                              info=info, base_url=base_url, images_in=1, async_job=async_job)


@contextlib.asynccontextmanager
async def _streaming(generator: Any, req: GenerationRequest, partial_images: int):
    """The generator's event stream, cancelled on the replica when we stop listening early
    (job cancelled, client gone): an abandoned stream would otherwise hold the model."""
    events = generator.options(stream=True).generate_stream.remote(req, partial_images)
    try:
        yield events
    finally:
        events.cancel()


def composite(images: list[np.ndarray]) -> np.ndarray:
    """References side by side (grid, equal cells, letterboxed) on one RGB canvas: the
    img2img starting point for multi-image edits."""
    count = len(images)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    cell = 512 // max(cols, rows) * 1
    canvas = Image.new("RGB", (cell * cols, cell * rows), (127, 127, 127))
    for i, arr in enumerate(images):
        img = Image.fromarray(arr[..., :3])
        img.thumbnail((cell, cell))
        x = (i % cols) * cell + (cell - img.width) // 2
        y = (i // cols) * cell + (cell - img.height) // 2
        canvas.paste(img, (x, y))
    return np.asarray(canvas)
