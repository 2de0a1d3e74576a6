"""Image-tool logic behind the routes: decode once, call the tool's deployment as a recorded
job, encode once. Background removal, face swap, upscale, style transfer (img2img on the
generator) and the deterministic edit ops (run here in the ingress: see `edit_ops`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphs.errors import ApiError
from graphs.generation import GenerationService, Options, fit_to_limits
from graphs.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    Format,
    check_pixel_budget,
    decode,
    probe,
)
from graphs.jobs import JobRunner, Output
from graphs.schemas import ImagesResponse
from graphs.workpool import ImageWorkPool
from models.editing import apply_ops, check_ops, parse_edit_request
from models.faceswap import FaceSwapRequest
from models.matting import MattingRequest
from models.upscale import UpscaleRequest
from router.styles import resolve_style
from telemetry import metrics

EDIT_OPS_INFO = {"name": "edit-ops", "tiny": False, "fallback": False, "fallback_reason": None}


@dataclass(frozen=True)
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS  # one image
    max_upload_bytes: int = DEFAULT_MAX_BYTES  # one file
    max_request_pixels: int = 2 * DEFAULT_MAX_PIXELS  # all the images of one request
    image_threads: int = 2  # image work (decodes, edit ops) at once: graphs.workpool
    image_waiting: int = 32  # ... waiting; more → 503


def parse_color(value: str | None, *, field: str = "bg_color") -> tuple[int, int, int] | None:
    """'#RRGGBB', 'RRGGBB' or 'r,g,b' → (r, g, b)."""
    if value is None or value == "":
        return None
    text = value.strip().lstrip("#")
    try:
        if "," in text:
            rgb = tuple(int(v) for v in text.split(","))
        elif len(text) == 6:
            rgb = tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))
        else:
            raise ValueError
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError
    except ValueError:
        raise ApiError(400, f"{field} must be '#RRGGBB' or 'r,g,b' with values 0-255, "
                       f"got {value!r}", param=field, code="invalid_color") from None
    return rgb  # type: ignore[return-value]


class ToolService:
    def __init__(self, *, handles: dict[str, Any], generation: GenerationService,
                 runner: JobRunner, limits: Limits):
        self.handles = handles
        self.generation = generation
        self.runner = runner
        self.limits = limits
        self._info: dict[str, dict[str, Any]] = {}
        # CPU-heavy image work, off the default executor the record/auth calls use
        self.pool = ImageWorkPool(threads=limits.image_threads,
                                  max_waiting=limits.image_waiting)

    async def info(self, name: str) -> dict[str, Any]:
        if name not in self._info:
            self._info[name] = await self.handles[name].info.remote()
        return self._info[name]

    async def decode(self, data: bytes, field: str, *, keep_alpha: bool = True) -> np.ndarray:
        with metrics.stage_timer("decode", kind="upload"):
            return await self.pool.run(decode, data, field=field,
                                       max_pixels=self.limits.max_pixels,
                                       max_bytes=self.limits.max_upload_bytes,
                                       keep_alpha=keep_alpha)

    async def decode_many(self, uploads: list[tuple[str, bytes]], *, keep_alpha: bool = True
                          ) -> list[np.ndarray]:
        """The images of one request (`(field, bytes)` each): every header is checked and
        their pixels together are held to `max_request_pixels` before any is decoded, so a
        request of many large images is refused before it costs memory. No uploads (a text-only
        chat message): no trip through the image pool."""
        if not uploads:
            return []

        def sizes() -> list[tuple[str, tuple[int, int]]]:
            return [(field, probe(data, field=field, max_pixels=self.limits.max_pixels,
                                  max_bytes=self.limits.max_upload_bytes))
                    for field, data in uploads]

        check_pixel_budget(await self.pool.run(sizes),
                           max_total_pixels=self.limits.max_request_pixels)
        return list(await asyncio.gather(*(self.decode(data, field, keep_alpha=keep_alpha)
                                           for field, data in uploads)))

    # -- array-in, array-out operations (shared by the tool routes and the chat) -------------
    async def matting_op(self, image: np.ndarray, *, output: str = "cutout",
                         bg_color: tuple[int, int, int] | None = None,
                         alpha_matting: bool = False) -> Output:
        res = await self.handles["matting"].remove.remote(MattingRequest(
            image=image, output=output, bg_color=bg_color, alpha_matting=alpha_matting))
        return Output(images=[res.image], model=res.model, batch_size=res.batch_size,
                      timings=res.timings, extra={"output": res.output})

    async def faceswap_op(self, source: np.ndarray, target: np.ndarray, *,
                          target_face_index: int | None = None, all_faces: bool = False
                          ) -> Output:
        res = await self.handles["faceswap"].swap.remote(FaceSwapRequest(
            source=source, target=target, target_face_index=target_face_index,
            all_faces=all_faces))
        return Output(images=[res.image], model=res.model, timings=res.timings,
                      extra={"faces_swapped": res.faces_swapped,
                             "target_faces": len(res.target_faces),
                             "swapped_indices": res.swapped_indices})

    async def upscale_op(self, image: np.ndarray, *, scale: int) -> Output:
        res = await self.handles["upscaler"].upscale.remote(UpscaleRequest(image=image,
                                                                          scale=scale))
        return Output(images=[res.image], model=res.model, timings=res.timings,
                      extra={"scale": res.scale, "tiles": res.tiles})

    async def style_request(self, image: np.ndarray, *, style: str, prompt: str | None,
                            strength: float | None = None, seed: int | None = None,
                            steps: int | None = None, loras: list | None = None):
        """The img2img request a style transfer becomes (through the generation door, at high
        quality unless `steps` says otherwise), and the resolved style."""
        resolved = resolve_style(style, prompt)
        info = await self.generation.model_info()
        request = self.generation.build_request(
            resolved.prompt, Options(quality="high", steps=steps, seed=seed, loras=loras,
                                     negative_prompt=resolved.negative_prompt),
            info, auto_size=fit_to_limits(image.shape[1], image.shape[0], info["limits"]),
            mode="img2img", image=image[..., :3],
            strength=strength if strength is not None else resolved.strength)
        return request, resolved

    async def style_run(self, request, resolved) -> Output:
        """Run a request made by `style_request` on the generator."""
        out = await self.generation.run_request(request)
        out.extra.update({"style": resolved.preset_name or "custom",
                          "strength": request.strength, "prompt": resolved.prompt})
        return out

    # -- background removal ---------------------------------------------------------------
    async def remove_background(self, data: bytes, *, output: str, bg_color: str | None,
                                alpha_matting: bool, output_format: Format, response_format: str,
                                base_url: str, async_job: bool = False
                                ) -> ImagesResponse | str:
        color = parse_color(bg_color)  # its combination with output: RemoveBackgroundForm
        image = await self.decode(data, "image")
        info = await self.info("matting")

        async def work(progress) -> Output:
            return await self.matting_op(image, output=output, bg_color=color,
                                         alpha_matting=alpha_matting)

        return await self.runner.run(
            async_job=async_job,
            kind="remove-background", prompt=None, params={"output": output,
                                                           "alpha_matting": alpha_matting},
            model_info=info, work=work, base_url=base_url, response_format=response_format,
            output_format=output_format)

    # -- face swap --------------------------------------------------------------------------
    async def face_swap(self, source: bytes, target: bytes, *, target_face_index: int | None,
                        all_faces: bool, output_format: Format, response_format: str,
                        base_url: str, async_job: bool = False) -> ImagesResponse | str:
        src, tgt = await self.decode_many([("source", source), ("target", target)],
                                          keep_alpha=False)
        info = await self.info("faceswap")

        async def work(progress) -> Output:
            return await self.faceswap_op(src, tgt, target_face_index=target_face_index,
                                          all_faces=all_faces)

        return await self.runner.run(
            async_job=async_job,
            kind="face-swap", prompt=None,
            params={"target_face_index": target_face_index, "all_faces": all_faces},
            model_info=info, work=work, base_url=base_url, response_format=response_format,
            output_format=output_format)

    # -- upscale ----------------------------------------------------------------------------
    async def upscale(self, data: bytes, *, scale: int, output_format: Format,
                      response_format: str, base_url: str,
                                async_job: bool = False) -> ImagesResponse | str:
        image = await self.decode(data, "image")  # scale: checked by UpscaleForm and the model
        info = await self.info("upscaler")

        async def work(progress) -> Output:
            return await self.upscale_op(image, scale=scale)

        return await self.runner.run(
            async_job=async_job,
            kind="upscale", prompt=None, params={"scale": scale}, model_info=info, work=work,
            base_url=base_url, response_format=response_format, output_format=output_format)

    # -- edit ops ---------------------------------------------------------------------------
    async def edit_ops(self, data: bytes, ops_json: str, *, output_format: Format,
                       response_format: str, base_url: str,
                                async_job: bool = False) -> ImagesResponse | str:
        """Runs in the ingress, on the image-work pool (`graphs.workpool`): each chain is held
        to a work budget (`models.editing.MAX_CHAIN_COST`, checked before any pixel work), and
        a deployment hop would only add two copies of the image."""
        edit = parse_edit_request(ops_json)
        image = await self.decode(data, "image")
        check_ops((image.shape[1], image.shape[0]), edit.ops, max_pixels=self.limits.max_pixels)

        async def work(progress) -> Output:
            out = await self.pool.run(apply_ops, image, edit.ops,
                                      max_pixels=self.limits.max_pixels)
            return Output(images=[out], model="edit-ops")

        return await self.runner.run(
            async_job=async_job,
            kind="edit-ops", prompt=None,
            params={"ops": [op.model_dump() for op in edit.ops]}, model_info=EDIT_OPS_INFO,
            work=work, base_url=base_url, response_format=response_format,
            output_format=output_format)

    # -- style transfer ---------------------------------------------------------------------
    async def style_transfer(self, data: bytes, *, style: str, prompt: str | None,
                             strength: float | None, seed: int | None, steps: int | None,
                             output_format: Format, response_format: str,
                             base_url: str, async_job: bool = False,
                             loras: list | None = None) -> ImagesResponse | str:
        image = await self.decode(data, "image", keep_alpha=False)
        info = await self.generation.model_info()
        request, resolved = await self.style_request(image, style=style, prompt=prompt,
                                                     strength=strength, seed=seed, steps=steps,
                                                     loras=loras)

        async def work(progress) -> Output:
            return await self.style_run(request, resolved)

        return await self.runner.run(
            async_job=async_job,
            kind="style-transfer", prompt=resolved.prompt,
            params={"style": style, "strength": request.strength, "width": request.width,
                    "height": request.height, "steps": request.steps,
                    **({"loras": [{"name": r.name, "weight": r.weight} for r in request.loras]}
                       if request.loras else {})},
            model_info=info, work=work, base_url=base_url, response_format=response_format,
            output_format=output_format, revised_prompt=resolved.prompt)
