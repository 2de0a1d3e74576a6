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
the tools (style transfer), the chat and workflows. With remote providers configured
(`graphs.providers`), `run_request` goes through the provider router (local first by default,
falling back to the others); without any, it calls the Generator directly, as before. A
`Route` (from `model`='provider/model' and `provider`) pins or orders the providers.
Requests are validated once at the edge by their schema (`graphs.schemas`), and once by the
model's own `check_inputs`.
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
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from common.errors import InputError
from graphs import auth
from graphs.errors import ApiError, to_api_error
from graphs.images import encode
from graphs.jobs import JobRunner, Output
from graphs.providers import LOCAL, ProviderRegistry
from graphs.schemas import ImagesResponse, OutputOptions, Usage, UsageDetails
from models.diffusion import GenerationRequest, check_inputs
from models.lora import LoraRef, check_loras, extract_prompt_loras
from models.matting import MattingRequest
from models.registry import SizeLimits, catalogue, close_matches
from providers import ProviderRequest, ProviderRouter, parse_model_name

logger = logging.getLogger("ray.serve")

# Denoising steps per quality: (real models, tiny models). Resolution is not changed.
QUALITY_STEPS = {"low": (12, 2), "medium": (20, 3), "high": (30, 4)}
INPUT_FIDELITY_STRENGTH = {"high": 0.35, "low": 0.65}  # img2img strength per input_fidelity
COMPOSITE_STRENGTH = 0.75
VARIATION_STRENGTH = 0.55
VARIATION_PROMPT = "a variation of this image, same subject and composition, high quality"
# sizes a request pinned to remote providers may ask for (each provider's capabilities decide)
REMOTE_LIMITS = SizeLimits(min_side=64, max_side=4096, default_width=1024, default_height=1024)
# the request `run_request` routes: the local provider runs exactly it (sizes fitted to the
# Generator, steps, strength), whatever the provider request other backends get says
_LOCAL_REQUEST: ContextVar[GenerationRequest | None] = ContextVar("local_request",
                                                                  default=None)


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
    loras: list[Any] | None = None  # [LoraItem | {"name", "weight"}]
    provider: list[str] | None = None
    preset: str | None = None  # the preset applied (recorded in the images' recipes)

    @classmethod
    def of(cls, body: OutputOptions) -> Options:
        """The options of a request schema (generations, edits)."""
        return cls(**{f: getattr(body, f) for f in cls.__dataclass_fields__
                      if f in type(body).model_fields})

    @property
    def resolved_quality(self) -> str:
        return "medium" if self.quality == "auto" else self.quality


@dataclass(frozen=True)
class Route:
    """Which providers may serve a request. `chain`: the names to try, in order (None: the
    configured order); `model`: the backend's model (None: each one's default); `local`: the
    local Generator may serve it (sizes are then checked against its limits); `sized`: the
    request asked for a size (else remote providers use their default size)."""

    chain: tuple[str, ...] | None = None
    model: str | None = None
    local: bool = True
    sized: bool = False

    def direct(self, router: ProviderRouter | None) -> bool:
        """The Generator is called directly, without the router: no remote provider can
        serve this request."""
        if not self.local:
            return False
        return router is None or self.chain == (LOCAL,) or \
            (self.chain is None and router.names == [LOCAL])


class GenerationService:
    def __init__(self, *, generator: Any, runner: JobRunner, matting: Any = None,
                 providers: ProviderRegistry | None = None, loras: Any = None):
        """`loras`: the registered LoRA adapters (graphs.loras.LoraService), None: built-in
        ones only."""
        self.generator = generator
        self.runner = runner
        self.matting = matting
        self.providers = providers
        self.loras = loras
        self._info: dict[str, Any] | None = None

    async def model_info(self) -> dict[str, Any]:
        """The Generator's info; also brings the provider router up to date (every request
        for generator work starts here)."""
        if self._info is None:
            self._info = await self.generator.info.remote()
        if self.providers is not None:
            await self.providers.get(self._info)
        if self.loras is not None:
            await self.loras.refresh()  # registered LoRAs, up to date (cached briefly)
        return self._info

    def lora_specs(self, base: str) -> dict[str, Any]:
        """The LoRA adapters that fit base model `base`: the catalogue's and the registered
        ones (as `model_info` last read them)."""
        registered = self.loras.specs(base) if self.loras is not None else {}
        return {**registered, **lora_catalogue(base)}

    def lora_files(self, loras: tuple[LoraRef, ...]) -> tuple[tuple[str, str, str], ...]:
        """(name, asset key, sha256) of the registered ones among `loras`: the Generator
        fetches those files from the asset store (built-in ones it builds or finds)."""
        if self.loras is None or not loras:
            return ()
        cached = self.loras.cached()
        return tuple((r.name, cached[r.name].key, cached[r.name].sha256) for r in loras
                     if r.name in cached and r.name not in lora_catalogue_names())

    @property
    def router(self) -> ProviderRouter | None:
        return self.providers.current if self.providers is not None else None

    # -- request building -----------------------------------------------------------------
    def route(self, opts: Options, info: dict[str, Any]) -> Route:
        """The `Route` of `opts` (`model` may be 'provider/model'; `provider` a chain). 400s
        name the field: an unknown provider, a model nobody serves."""
        router = self.router
        names = router.names if router is not None else [LOCAL]
        pinned, model = parse_model_name(opts.model, names)
        chain = tuple(dict.fromkeys(opts.provider)) if opts.provider else None
        for name in chain or ():
            if name not in names:
                raise ApiError(400, f"no provider named {name!r}; configured: {names} (GET "
                               "/v1/providers)", param="provider", code="provider_not_found")
        if pinned is not None:
            if chain and pinned not in chain:
                raise ApiError(400, f"model {opts.model!r} names provider {pinned!r}, which "
                               f"the provider list {list(chain)} leaves out", param="model",
                               code="provider_mismatch")
            chain = (pinned,)
        local = chain is None or LOCAL in chain
        if model is not None and (pinned == LOCAL or model == info["name"]):
            model = None if model == info["name"] else model
            if model is not None:
                raise ApiError(400, f"model {model!r} is not served by {LOCAL!r}; it serves "
                               f"{info['name']!r}", param="model", code="model_not_found")
        elif model is not None:  # not the Generator's: a remote provider must offer it
            pool = [n for n in (chain or names) if n != LOCAL]
            if not any(model in router.get(n).models for n in pool) and pinned is None:
                offered = [info["name"]] + [f"{n}/{m}" for n in names if n != LOCAL
                                            for m in router.get(n).models]
                raise ApiError(400, f"model {opts.model!r} is not served here; available: "
                               f"{offered}", param="model", code="model_not_found")
            local = False
        return Route(chain=chain, model=model, local=local, sized=opts.size != "auto")

    def build_request(self, prompt: str, opts: Options, info: dict[str, Any], *,
                      auto_size: tuple[int, int] | None = None, route: Route | None = None,
                      **extra: Any) -> GenerationRequest:
        """THE way options become a generator request (routes, tools, chat, workflows):
        model, provider and LoRA checked (`route`, else the route of `opts`), size parsed
        (`auto_size` for 'auto'), quality → steps, then the model's own `check_inputs` (its
        errors name the request field: width/height → size) when the local Generator may
        serve it. `extra`: mode, image, mask, strength."""
        route = route or self.route(opts, info)
        prompt, loras = resolve_loras(prompt, opts.loras, info,
                                      available=self.lora_specs(info["name"]))
        if loras and not route.local:
            raise ApiError(400, "loras run on the local generator only: drop the loras, or the "
                           "provider/model that pins a remote provider", param="loras",
                           code="invalid_combination")
        limits = SizeLimits(**info["limits"]) if route.local else REMOTE_LIMITS
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
            seed=opts.seed, loras=loras, lora_files=self.lora_files(loras), **extra)
        if not route.local:
            return req
        try:
            check_inputs(req, limits)
        except InputError as exc:  # the model's field names, mapped to the request's
            param = "size" if exc.param in ("width", "height") else exc.param
            raise ApiError(exc.status, exc.message, param=param, code=exc.code) from None
        return req

    async def run_request(self, req: GenerationRequest, route: Route | None = None) -> Output:
        """One request, as an `Output` naming the provider that answered and the attempts.
        Directly on the Generator (batched there with other callers') when no remote provider
        can serve it; else through the provider router (a `RoutingError` when none could)."""
        route = route or Route()
        router = self.router
        if route.direct(router) or req.loras:
            started = time.perf_counter()
            res = await for_adapters(self.generator, req).generate.remote(req)
            return Output(images=res.images, model=res.model, seeds=res.seeds,
                          batch_size=res.batch_size, timings=res.timings, provider=LOCAL,
                          loras=res.loras,
                          attempts=[{"provider": LOCAL, "outcome": "ok", "seconds": round(
                              time.perf_counter() - started, 4)}])
        token = _LOCAL_REQUEST.set(req)
        try:
            result = await router.generate(provider_request(req, route), chain=route.chain)
        finally:
            _LOCAL_REQUEST.reset(token)
        seeds = [image.seed for image in result.images]
        return Output(images=[image.array for image in result.images],
                      model=result.model or result.provider,
                      seeds=seeds if any(s is not None for s in seeds) else None,
                      provider=result.provider, attempts=[a.as_dict() for a in result.attempts],
                      extra={"provider_kind": result.kind} if result.provider != LOCAL else {})

    def local_generate(self, request: GenerationRequest) -> Any:
        """The `local` provider's call: the request `run_request` is routing when there is one
        (see `_LOCAL_REQUEST`), else the provider's own conversion."""
        req = _LOCAL_REQUEST.get() or request
        return for_adapters(self.generator, req).generate.remote(req)

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
                  alpha: np.ndarray | None = None, async_job: bool = False,
                  route: Route | None = None) -> ImagesResponse | str:
        params = job_params(opts, req)
        route = route or Route()

        async def work(progress) -> Output:
            if progress.live and route.direct(self.router):
                # an async job on the Generator: stream the denoising steps into its progress
                res = None
                async with _streaming(self.generator, req, 0) as events:
                    async for event in events:
                        if event["type"] == "progress":
                            await progress(0.9 * event["step"] / event["total"],
                                           f"denoising step {event['step']}/{event['total']}")
                        elif event["type"] == "result":
                            res = event["result"]
                res = Output(images=res.images, model=res.model, seeds=res.seeds,
                             batch_size=res.batch_size, timings=res.timings, provider=LOCAL,
                             loras=res.loras)
            else:
                res = await self.run_request(req, route)
            images, extra = await self._finish_images(res.images, opts, alpha)
            return Output(images=images, model=res.model, seeds=res.seeds,
                          batch_size=res.batch_size, timings=res.timings,
                          extra={**res.extra, **extra, "quality": opts.resolved_quality},
                          provider=res.provider, attempts=res.attempts, loras=res.loras,
                          recipes=recipes_for(req, opts, res))

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
        measured = response.usage or Usage()
        response.usage = usage_for(prompt, images_in).model_copy(update={
            "images": measured.images, "pixels": measured.pixels,
            "model_seconds": measured.model_seconds})
        return response

    async def stream(self, *, kind: str, prompt: str, req: GenerationRequest, opts: Options,
                     info: dict[str, Any], base_url: str, event_prefix: str,
                     charge: auth.ImageCharge, images_in: int = 0,
                     alpha: np.ndarray | None = None) -> AsyncIterator[dict[str, str]]:
        """SSE events (sse-starlette dicts). Errors after the stream started become an
        `error` event carrying the usual envelope."""
        previews: asyncio.Queue = asyncio.Queue()
        params = job_params(opts, req)
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
            out = Output(images=images, model=result.model, seeds=result.seeds,
                         batch_size=1, timings=result.timings,
                         extra={**extra, "quality": opts.resolved_quality}, provider=LOCAL,
                         loras=result.loras)
            out.recipes = recipes_for(req, opts, out)  # as the unstreamed path records
            return out

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
        route = self.streamable(self.route(opts, info), opts)
        req = self.build_request(prompt, opts, info, route=route)
        if opts.stream:
            charge = await self.runner.charge_images(opts.n)  # a 429 before the stream
            return self.stream(kind="generations", prompt=prompt, req=req, opts=opts,
                               info=info, base_url=base_url, event_prefix="image_generation",
                               charge=charge)
        return await self.run(kind="generations", prompt=prompt, req=req, opts=opts, info=info,
                              base_url=base_url, async_job=async_job, route=route)

    async def generate_batch(self, items: list[tuple[str, Options]], *, base_url: str
                             ) -> list[str]:
        """One async generation job per (prompt, options), their ids in order. Every item is
        checked first (a 400 names `requests[i].<field>`), so a bad item starts none."""
        info = await self.model_info()
        checked = []
        for i, (prompt, opts) in enumerate(items):
            try:
                route = self.route(opts, info)
                checked.append((prompt, opts, route,
                                self.build_request(prompt, opts, info, route=route)))
            except ApiError as exc:
                exc.param = f"requests[{i}].{exc.param}" if exc.param else f"requests[{i}]"
                raise
        return [await self.run(kind="generations", prompt=prompt, req=req, opts=opts,
                               info=info, base_url=base_url, async_job=True, route=route)
                for prompt, opts, route, req in checked]

    @staticmethod
    def streamable(route: Route, opts: Options) -> Route:
        """stream=true runs on the local Generator (its previews come from its latents)."""
        if opts.stream and (not route.local or (route.chain and route.chain[0] != LOCAL)):
            raise ApiError(400, f"stream=true is served by the {LOCAL!r} provider only: drop "
                           "stream, or the provider/model that pins another one",
                           param="stream", code="invalid_combination")
        return route

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
        route = self.streamable(self.route(opts, info), opts)
        req = self.build_request(prompt, opts, info, auto_size=auto, route=route, mode=mode,
                                 image=source, mask=repaint, strength=strength)
        if opts.stream:
            charge = await self.runner.charge_images(opts.n)
            return self.stream(kind="edits", prompt=prompt, req=req, opts=opts, info=info,
                               base_url=base_url, event_prefix="image_edit", charge=charge,
                               images_in=len(images), alpha=alpha)
        return await self.run(kind="edits", prompt=prompt, req=req, opts=opts, info=info,
                              base_url=base_url, images_in=len(images), alpha=alpha,
                              async_job=async_job, route=route)

    async def variations(self, image: np.ndarray, *, opts: Options, base_url: str,
                         async_job: bool = False):
        info = await self.model_info()
        auto = fit_to_limits(image.shape[1], image.shape[0], info["limits"])
        route = self.route(opts, info)
        req = self.build_request(VARIATION_PROMPT, opts, info, auto_size=auto, route=route,
                                 mode="img2img", image=image[..., :3],
                                 strength=VARIATION_STRENGTH)
        return await self.run(kind="variations", prompt=VARIATION_PROMPT, req=req, opts=opts,
                              info=info, base_url=base_url, images_in=1, async_job=async_job,
                              route=route)


RECIPE_VERSION = 1


def recipes_for(req: GenerationRequest, opts: Options, res: Output, **extra: Any
                ) -> list[dict[str, Any]] | None:
    """Each image's recipe (text-to-image only: an edit's input image is not part of
    it): what POST /v1/assets/{id}/remix runs again, LoRA adapters (resolved, with their
    weights) included."""
    if req.mode != "text2img":
        return None
    seeds = res.seeds or [None] * len(res.images)
    base = {"v": RECIPE_VERSION, "kind": "generation", "prompt": req.prompt,
            "negative_prompt": req.negative_prompt, "model": res.model,
            "provider": res.provider, "steps": req.steps,
            "guidance_scale": req.guidance_scale, "size": f"{req.width}x{req.height}",
            "quality": opts.resolved_quality, "background": opts.background,
            "preset": opts.preset,
            **({"loras": [{"name": r.name, "weight": r.weight} for r in req.loras]}
               if req.loras else {}), **extra}
    return [{**{k: v for k, v in base.items() if v is not None}, "seed": seed}
            for seed in seeds]


def job_params(opts: Options, req: GenerationRequest) -> dict[str, Any]:
    """What the job record keeps of a request: its options, as run (LoRAs resolved)."""
    params = {k: v for k, v in vars(opts).items() if v is not None and k != "loras"}
    params.update(width=req.width, height=req.height, steps=req.steps, mode=req.mode)
    if req.loras:
        params["loras"] = [{"name": r.name, "weight": r.weight} for r in req.loras]
    return params


def for_adapters(generator: Any, req: GenerationRequest) -> Any:
    """The Generator handle for `req`: with LoRAs, its adapter set is the multiplexed model
    id, so Serve routes it to a replica that already holds those adapters."""
    if not req.loras:
        return generator
    return generator.options(multiplexed_model_id=req.adapter_set)


def lora_catalogue(base: str) -> dict[str, Any]:
    """The built-in LoRA adapters that fit base model `base` (catalogue entries), by name."""
    return {spec.name: spec for spec in catalogue("lora") if spec.base == base}


def lora_catalogue_names() -> set[str]:
    return {spec.name for spec in catalogue("lora")}


def resolve_loras(prompt: str, items: list[Any] | None, info: dict[str, Any],
                  available: dict[str, Any] | None = None
                  ) -> tuple[str, tuple[LoraRef, ...]]:
    """The prompt without A1111 ``<lora:name:w>`` tags, and the request's adapters (the
    `loras` field first, then the tags; weights default to the adapter's default_weight).
    400 naming close matches for names that don't fit the served base model. `available`:
    the adapters to choose from (default: the built-in ones for the served base;
    `GenerationService.lora_specs` adds the registered ones)."""
    clean, tagged = extract_prompt_loras(prompt)
    wanted = [(getattr(i, "name", None) or i["name"],
               i.weight if hasattr(i, "weight") else i.get("weight"), "loras")
              for i in items or ()] + [(name, w, "prompt") for name, w in tagged]
    if not wanted:
        return prompt, ()
    if available is None:
        available = lora_catalogue(info["name"])
    refs = []
    for name, weight, param in wanted:
        spec = available.get(name)
        if spec is None:
            near = close_matches(name, available)
            raise ApiError(400, f"unknown LoRA adapter {name!r} for base model "
                           f"{info['name']!r}" + (f"; did you mean {', '.join(near)}?" if near
                                                  else "")
                           + f"; available: {', '.join(sorted(available)) or 'none'} (GET "
                           "/v1/models?kind=lora)", param=param, code="lora_not_found")
        refs.append(LoraRef(name, float(weight if weight is not None
                                        else spec.default_weight)))
    try:
        check_loras(refs)
    except InputError as exc:
        raise ApiError(400, exc.message, param="loras", code="invalid_loras") from None
    if not clean.strip():
        raise ApiError(400, "the prompt has only <lora:...> tags: describe the image too",
                       param="prompt", code="invalid_value")
    return clean, tuple(refs)


def provider_request(req: GenerationRequest, route: Route) -> ProviderRequest:
    """A generator request as the providers take it (sizes only when the caller asked for
    one: remote backends otherwise use their own default)."""
    edit = req.mode != "text2img"
    return ProviderRequest(
        prompt=req.prompt, n=req.n, width=req.width if route.sized else None,
        height=req.height if route.sized else None, negative_prompt=req.negative_prompt,
        seed=req.seed, steps=req.steps, guidance_scale=req.guidance_scale,
        images=[req.image] if edit and req.image is not None else [],
        mask=req.mask if edit else None, strength=req.strength if edit else None,
        model=route.model)


@contextlib.asynccontextmanager
async def _streaming(generator: Any, req: GenerationRequest, partial_images: int):
    """The generator's event stream, cancelled on the replica when we stop listening early
    (job cancelled, client gone): an abandoned stream would otherwise hold the model."""
    events = for_adapters(generator, req).options(stream=True).generate_stream.remote(
        req, partial_images)
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
