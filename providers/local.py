"""`local`: our own Generator deployment, through whatever the ingress passes in.

`generate` is a callable taking a `models.diffusion.GenerationRequest` and returning a
`GenerationResult` or an awaitable of one: the ingress passes
`lambda req: generator.generate.remote(req)` (a DeploymentResponse is awaitable), tests a
plain async function. `info` is the Generator's `info()` dict (name, limits, tiny): the
model name and the size limits the capabilities declare. No Ray import here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from providers.base import (
    OUTPUT_FORMATS,
    Capabilities,
    Provider,
    ProviderImage,
    ProviderRequest,
    rgb,
)
from providers.config import LocalSettings


class LocalProvider(Provider):
    kind = "local"
    settings_cls = LocalSettings
    settings: LocalSettings

    def __init__(self, name: str, settings: LocalSettings, *,
                 generate: Callable[[Any], Any], info: dict[str, Any] | None = None):
        if not callable(generate):
            raise ValueError("the local provider needs generate=<callable> (the Generator)")
        self._generate = generate
        self.info = info or {}
        super().__init__(name, settings)

    def _capabilities(self) -> Capabilities:
        from models.diffusion import MAX_IMAGES_PER_REQUEST

        limits = self.info.get("limits") or {}
        return Capabilities(
            text2img=True, img2img=True, inpaint=True, max_n=MAX_IMAGES_PER_REQUEST,
            max_input_images=1, min_side=limits.get("min_side", 64),
            max_side=limits.get("max_side", 2048), multiple=limits.get("multiple", 8),
            transparent_background=False, seed=True, negative_prompt=True, steps=True,
            guidance_scale=True, output_formats=OUTPUT_FORMATS)

    @property
    def models(self) -> list[str]:
        if self.info.get("name"):
            return [self.info["name"]]
        return list(self.settings.models)

    def _default_size(self) -> tuple[int, int]:
        limits = self.info.get("limits") or {}
        return limits.get("default_width", 512), limits.get("default_height", 512)

    def to_generation_request(self, request: ProviderRequest):
        from models.diffusion import GenerationRequest

        width, height = request.size or self._default_size()
        extra: dict[str, Any] = {}
        if request.mode != "text2img":
            extra = dict(mode=request.mode, image=rgb(request.images[0]),
                         strength=request.strength or self.settings.default_strength)
            if request.mask is not None:
                mask = request.mask
                extra["mask"] = mask[..., 0] if mask.ndim == 3 else mask
        return GenerationRequest(
            prompt=request.prompt, negative_prompt=request.negative_prompt, n=request.n,
            width=width, height=height, steps=request.steps or self.settings.default_steps,
            guidance_scale=7.5 if request.guidance_scale is None else request.guidance_scale,
            seed=request.seed, **extra)

    async def generate(self, request: ProviderRequest) -> list[ProviderImage]:
        """Text to image, and (the request carrying images) edits: see `Provider.edit`."""
        req = self.to_generation_request(request)
        try:
            result = self._generate(req)
            if inspect.isawaitable(result):
                result = await result
        except ValueError as exc:  # check_inputs: says what to change
            raise self.error(str(exc), outcome="bad_request") from None
        except Exception as exc:
            # Ray wraps replica errors; match by name so this module needs no Ray import.
            names = {cls.__name__ for cls in type(exc).__mro__}
            cause = getattr(exc, "cause", None)
            if cause is not None:
                names |= {cls.__name__ for cls in type(cause).__mro__}
            if "GenerationCancelled" in names:
                raise self.error("generation cancelled", outcome="cancelled") from None
            if isinstance(cause, ValueError):
                raise self.error(str(cause), outcome="bad_request") from None
            if names & {"BackPressureError", "DeploymentUnavailableError"}:
                raise self.error(f"generator overloaded ({type(exc).__name__})",
                                 outcome="overloaded") from None
            raise self.error(f"generator failed ({type(exc).__name__})",
                             outcome="server_error") from None
        if result is None:
            return []
        seeds = list(getattr(result, "seeds", []) or [])
        return [ProviderImage(array=np.asarray(img), seed=seeds[i] if i < len(seeds) else None,
                              model=getattr(result, "model", None))
                for i, img in enumerate(result.images)]
