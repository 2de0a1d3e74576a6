"""Stable Diffusion family on diffusers: text2img, img2img and inpaint on one set of weights.

The three AutoPipelines share modules (``from_pipe``), so one replica holds one copy of the
weights. GPU: fp16 + SDPA attention + channels_last; CPU: fp32. Torch and diffusers (and
huggingface_hub, which comes with them) are imported lazily so the request types and
`check_inputs` can be used by the ingress without pulling in torch.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from common.errors import InputError
from models import zoo
from models.base import LoadedInfo, ModelFamily
from models.lora import (
    LoraRef,
    adapter_set_id,
    check_loras,
    lora_layers,
    lora_rank,
    read_lora_file,
)
from models.registry import ModelSpec, SizeLimits, get_spec, resolve

logger = logging.getLogger(__name__)

Mode = Literal["text2img", "img2img", "inpaint"]

MAX_IMAGES_PER_REQUEST = 10
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1


@dataclass
class GenerationRequest:
    """One request; `n` images from one prompt. Images are HxWx3 uint8 arrays."""

    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int | None = None
    mode: Mode = "text2img"
    image: np.ndarray | None = None
    mask: np.ndarray | None = None  # HxW uint8, 255 = repaint
    strength: float = 0.75
    loras: tuple[LoraRef, ...] = ()  # adapters to apply (loaded with `load_adapter` first)
    # registered adapters among `loras`: (name, asset key, sha256) of their files
    lora_files: tuple[tuple[str, str, str], ...] = ()

    @property
    def adapter_set(self) -> str:
        """The canonical adapter-set id ('' without LoRAs): Serve's multiplexed model id."""
        return adapter_set_id(self.loras)

    @property
    def pipeline_steps(self) -> int:
        """`num_inference_steps` for the pipeline. img2img/inpaint run int(steps * strength)
        of them; when that would be 0 (e.g. 1 step at strength 0.6, which diffusers refuses)
        the schedule is lengthened just enough for one step to run."""
        if self.mode == "text2img" or int(self.steps * self.strength) >= 1:
            return self.steps
        steps = math.ceil(1 / self.strength)
        return steps if int(steps * self.strength) >= 1 else steps + 1

    @property
    def effective_steps(self) -> int:
        """Denoising steps that actually run: img2img/inpaint skip the first (1-strength)."""
        if self.mode == "text2img":
            return self.steps
        return max(1, min(self.pipeline_steps, int(self.pipeline_steps * self.strength)))

    def batch_key(self) -> tuple:
        """Requests with equal keys can run in one pipeline call."""
        return (self.mode, self.width, self.height, self.steps, self.guidance_scale,
                self.strength if self.mode != "text2img" else None, self.adapter_set)


class GenerationCancelled(RuntimeError):
    """The caller went away (or cancelled the job): denoising stopped early."""

    def __init__(self, message: str, *, step: int = 0, total: int = 0):
        super().__init__(message)
        self.step = step  # denoising steps that ran before the stop
        self.total = total


class _AllOf:
    """Set when every one of `events` is set: a shared pipeline call stops only when all
    the requests in it are gone."""

    def __init__(self, events: Sequence[Any]):
        self.events = list(events)

    def is_set(self) -> bool:
        return all(e.is_set() for e in self.events)


@dataclass
class GenerationResult:
    images: list[np.ndarray]
    seeds: list[int]
    model: str
    batch_size: int  # images computed together in the pipeline call that made these
    timings: dict[str, float] = field(default_factory=dict)
    loras: list[dict[str, Any]] = field(default_factory=list)  # [{name, weight}] applied


def check_inputs(req: GenerationRequest, limits: SizeLimits) -> None:
    """Raise `InputError` (a `ValueError`) naming the field, as `param` and in the message, and
    the allowed range (diffusers-style)."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise InputError("prompt must be a non-empty string", param="prompt")
    if not 1 <= req.n <= MAX_IMAGES_PER_REQUEST:
        raise InputError(f"n must be between 1 and {MAX_IMAGES_PER_REQUEST}, got {req.n}",
                         param="n")
    for fname in ("width", "height"):
        value = getattr(req, fname)
        if not limits.min_side <= value <= limits.max_side or value % limits.multiple:
            raise InputError(
                f"{fname} must be a multiple of {limits.multiple} between {limits.min_side} "
                f"and {limits.max_side}, got {value}", param=fname,
            )
    if not 1 <= req.steps <= limits.max_steps:
        raise InputError(f"steps must be between 1 and {limits.max_steps}, got {req.steps}",
                         param="steps")
    if not 0.0 <= req.guidance_scale <= MAX_GUIDANCE:
        raise InputError(
            f"guidance_scale must be between 0 and {MAX_GUIDANCE}, got {req.guidance_scale}",
            param="guidance_scale",
        )
    if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
        raise InputError(f"seed must be between 0 and {MAX_SEED}, got {req.seed}", param="seed")
    if req.mode != "text2img":
        if req.image is None:
            raise InputError(f"image is required for {req.mode}", param="image")
        if not 0.0 < req.strength <= 1.0:
            raise InputError(f"strength must be in (0, 1], got {req.strength}",
                             param="strength")
    if req.mode == "inpaint" and req.mask is None:
        raise InputError("mask is required for inpaint", param="mask")
    check_loras(req.loras)


class DiffusionModel(ModelFamily):
    family = "diffusion"
    kind = "base"

    def __init__(self, pipe: Any, *, info: LoadedInfo, limits: SizeLimits,
                 preview_decoder: Any = None):
        self._pipes: dict[Mode, Any] = {"text2img": pipe}
        self._info = info
        self.limits = limits
        # A fast latent decoder (TAESD) for step previews; None: previews use the full VAE.
        self.preview_decoder = preview_decoder
        self._adapters: dict[str, str] = {}  # LoRA adapters loaded: name -> file
        self._active: str | None = None  # adapter set the pipeline is set to ('' = none)
        self._hotswap_rank: int | None = None  # enable_lora_hotswap's target_rank (GPU)

    # -- LoRA adapters ----------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def enable_hotswap(self, target_rank: int) -> None:
        """GPU + torch.compile: `enable_lora_hotswap(target_rank=)` before the first adapter
        and `compile` after; later adapters load with ``hotswap=True`` into a slot of the
        evicted one, so swapping never recompiles. Limit: adapters of rank <= `target_rank`
        (bigger ones are refused at registration), and one adapter active at a time."""
        self._pipes["text2img"].enable_lora_hotswap(target_rank=target_rank)
        self._hotswap_rank = target_rank

    def load_adapter(self, name: str, location: str) -> float:
        """Load LoRA `name` from a .safetensors file/folder with diffusers'
        `load_lora_weights(adapter_name=name)` (never a pipeline reload). `ValueError` saying
        why when it is not a LoRA for this base model (pickle, corrupt, other base: no layer
        matched, or shapes differ); nothing stays loaded then. Returns the seconds it took."""
        if name in self._adapters:
            return 0.0
        started = time.perf_counter()
        self._load_state(name, read_lora_file(location))
        self._adapters[name] = str(location)
        self._active = None  # loading may have activated it: set adapters again
        return time.perf_counter() - started

    def adapter_location(self, name: str) -> str | None:
        """Where loaded adapter `name` came from (None: not loaded)."""
        return self._adapters.get(name)

    def check_adapter(self, state: dict) -> dict[str, Any]:
        """Does this LoRA state dict load onto this base model, every layer of it? Loaded
        under a scratch name and deleted again (the served adapters are untouched).
        `ValueError` saying why not (other base: keys or shapes differ; rank over the
        hot-swap limit); else what it holds: ``{"layers", "rank", "components"}``."""
        rank = lora_rank(state)
        if not rank:
            raise ValueError("the file holds no LoRA matrices (no lora_A/lora_B, lora_down/"
                             "lora_up keys): is it a LoRA?")
        if self._hotswap_rank is not None and rank > self._hotswap_rank:
            raise ValueError(f"rank {rank} is over this generator's hot-swap limit "
                             f"(target_rank={self._hotswap_rank}): retrain or resize the LoRA")
        scratch = f"_check_{uuid.uuid4().hex[:12]}"
        try:
            self._load_state(scratch, state, label="the LoRA")
        except ValueError as exc:
            raise ValueError(str(exc).replace(f".{scratch}", "")) from None
        try:
            counts = self._layers_of(scratch)
        finally:
            self._drop(scratch)
            self._active = None
        expected = len(lora_layers(state))
        if sum(counts.values()) < expected:
            raise ValueError(f"the LoRA does not fit base model {self._info.name!r}: only "
                             f"{sum(counts.values())} of its {expected} layers exist there "
                             "(keys of another model?)")
        return {"layers": expected, "rank": rank, "components": sorted(counts)}

    def _load_state(self, name: str, state: dict, label: str | None = None) -> None:
        label = label or f"LoRA {name!r}"
        pipe = self._pipes["text2img"]
        try:
            pipe.load_lora_weights(state, adapter_name=name)
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError,
                ImportError) as exc:
            self._drop(name)
            raise ValueError(f"{label} does not fit base model {self._info.name!r}: "
                             f"{_first_line(exc)}") from None
        loaded = {a for lst in pipe.get_list_adapters().values() for a in lst}
        if name not in loaded:
            self._drop(name)
            raise ValueError(f"{label} does not fit base model {self._info.name!r}: "
                             "none of its layers match (made for another base model?)")

    def _layers_of(self, name: str) -> dict[str, int]:
        """Layers of each pipeline component carrying adapter `name` (peft LoRA layers)."""
        import torch

        pipe = self._pipes["text2img"]
        counts: dict[str, int] = {}
        for component in ("unet", "transformer", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, component, None)
            if module is None:
                continue
            n = sum(1 for m in module.modules()
                    if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict)
                    and name in m.lora_A)
            if n:
                counts[component] = n
        return counts

    def unload_adapter(self, name: str) -> None:
        """Delete adapter `name` from the pipeline (LRU eviction): `set_adapters` stays as fast
        as with only the cached ones."""
        if self._adapters.pop(name, None) is not None:
            self._drop(name)
            self._active = None

    def _drop(self, name: str) -> None:
        pipe = self._pipes["text2img"]
        loaded = {a for lst in pipe.get_list_adapters().values() for a in lst}
        if name in loaded:
            pipe.delete_adapters(name)

    def activate(self, loras: tuple[LoraRef, ...]) -> None:
        """Set the pipeline to exactly these adapters and weights (`set_adapters`); no
        adapters: LoRA layers off. Cheap when already set."""
        key = adapter_set_id(loras)
        if key == self._active:
            return
        pipe = self._pipes["text2img"]
        missing = [r.name for r in loras if r.name not in self._adapters]
        if missing:
            raise ValueError(f"LoRA adapters not loaded: {', '.join(missing)}")
        if not loras:
            if self._adapters:
                pipe.disable_lora()
        else:
            pipe.enable_lora()
            pipe.set_adapters([r.name for r in loras], adapter_weights=[r.weight for r in loras])
        self._active = key

    def load_preview_decoder(self, source: str) -> bool:
        """Load a TAESD-style `AutoencoderTiny` for previews. Previews are a nicety: on
        failure, log and keep decoding previews with the pipeline's own VAE."""
        from diffusers import AutoencoderTiny

        pipe = self._pipes["text2img"]
        try:
            taesd = AutoencoderTiny.from_pretrained(source, dtype=pipe.vae.dtype)
        except (OSError, ValueError) as exc:
            logger.warning("no preview decoder from %s (%s); previews use the full VAE",
                           source, exc.__class__.__name__)
            return False
        self.preview_decoder = taesd.to(pipe.device)
        return True

    def decode_preview(self, latents: Any) -> list[np.ndarray]:
        """Intermediate latents → RGB uint8 previews (TAESD when loaded, else the VAE)."""
        import torch

        decoder = self.preview_decoder or self._pipes["text2img"].vae
        with torch.inference_mode():
            out = decoder.decode(latents.to(decoder.dtype) / decoder.config.scaling_factor)
        images = (out.sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        return list((images * 255).round().astype(np.uint8))

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str, *, name: str, device: str | None = None,
             limits: SizeLimits | None = None, tiny: bool = False,
             fallback_reason: str | None = None) -> DiffusionModel:
        import torch
        from diffusers import AutoPipelineForText2Image

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        kwargs: dict[str, Any] = {"dtype": dtype}
        if not tiny:
            kwargs["safety_checker"] = None  # moderation is the gateway's job, not the model's
        started = time.perf_counter()
        pipe = AutoPipelineForText2Image.from_pretrained(source, **kwargs)
        pipe = pipe.to(device)
        if device.startswith("cuda"):
            from diffusers.models.attention_processor import AttnProcessor2_0

            pipe.unet.set_attn_processor(AttnProcessor2_0())  # SDPA (flash/mem-efficient)
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        pipe.set_progress_bar_config(disable=True)
        logger.info("loaded %s from %s on %s/%s in %.2fs", name, source, device, dtype,
                    time.perf_counter() - started)
        info = LoadedInfo(name=name, family=cls.family, source=source, tiny=tiny, device=device,
                          dtype=str(dtype).removeprefix("torch."),
                          fallback_reason=fallback_reason)
        return cls(pipe, info=info, limits=limits or SizeLimits(64, 2048, 512, 512))

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, zoo_dir: str | None = None,
                  allow_fallback: bool = False, device: str | None = None) -> DiffusionModel:
        """Resolve a registry spec to weights (tiny zoo, local folder or hub id) and load."""

        def check(location: str) -> None:
            from huggingface_hub import snapshot_download

            if not Path(location).exists():
                snapshot_download(location, allow_patterns=["model_index.json"])

        resolved = resolve(spec, zoo_dir=zoo_dir, allow_fallback=allow_fallback, load_check=check)
        model = cls.load(resolved.location, name=resolved.spec.name, device=device,
                         limits=resolved.spec.limits, tiny=resolved.spec.tiny,
                         fallback_reason=resolved.fallback_reason)
        if resolved.spec.preview:
            preview = get_spec(resolved.spec.preview)
            location = (str(zoo.ensure(preview.source.removeprefix("tiny:"), zoo_dir))
                        if preview.tiny else preview.source)
            model.load_preview_decoder(location)
        return model

    @property
    def info(self) -> LoadedInfo:
        return self._info

    def _pipe(self, mode: Mode) -> Any:
        if mode not in self._pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            cls = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            pipe = cls.from_pipe(self._pipes["text2img"])  # shares modules: no new weights
            pipe.set_progress_bar_config(disable=True)
            self._pipes[mode] = pipe
        return self._pipes[mode]

    # -- inference ------------------------------------------------------------------------
    def run(self, requests: Sequence[GenerationRequest], **kwargs: Any) -> list[GenerationResult]:
        return self.generate(requests, **kwargs)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_batch_images: int = 16,
        on_step: Callable[[int, int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        previews: int = 0,
        on_preview: Callable[[int, list[np.ndarray]], None] | None = None,
        cancel: Any = None,
        on_cancelled: Callable[[int, int, int], None] | None = None,
    ) -> list[GenerationResult | None]:
        """Run requests, grouping compatible ones into shared pipeline calls.

        Each image gets its own seeded generator, so a request's images depend on its seed
        only, not on what it was batched with (up to float rounding). `on_batch(images)` is
        called for each pipeline call, `on_step(step, total)` after each denoising step, and
        `on_preview(index, images)` with `previews` evenly spaced intermediate decodes.

        Cancellation: `cancel` is one event for the whole call (anything with ``is_set()``,
        e.g. a threading.Event) or a sequence of them, one per request.
        - One event: once set, denoising stops at the next step and `GenerationCancelled` is
          raised.
        - Per request (a batch of callers): a request whose event is set before its pipeline
          call starts is dropped from it; a running pipeline call stops at the next step only
          when the events of all its requests are set (the others still want their images).
          Cancelled requests get ``None`` in the returned list, which stays aligned with
          `requests`; nothing is raised.
        `on_cancelled(steps_run, total_steps, images)` is called for each pipeline call
        stopped early and for each request dropped before its call (``steps_run`` 0).

        A request of more than `max_batch_images` images runs in parts of at most that many
        (consecutive seeds, so its images are the same as in one call); its result joins them.
        """
        for req in requests:
            check_inputs(req, self.limits)
        if max_batch_images < 1:
            raise ValueError(f"max_batch_images must be at least 1, got {max_batch_images}")
        if any(req.n > max_batch_images for req in requests):
            return self._generate_in_parts(
                requests, max_batch_images=max_batch_images, on_step=on_step,
                on_batch=on_batch, previews=previews, on_preview=on_preview, cancel=cancel,
                on_cancelled=on_cancelled)
        per_request = cancel is not None and not hasattr(cancel, "is_set")
        cancels = list(cancel) if per_request else None
        if cancels is not None and len(cancels) != len(requests):
            raise ValueError(f"cancel: got {len(cancels)} events for {len(requests)} requests")
        seeds = [
            req.seed if req.seed is not None else secrets.randbelow(MAX_SEED) for req in requests
        ]
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.batch_key(), []).append(i)
        def run(chunk: list[int]) -> None:
            if cancels is None:
                try:
                    self._run_chunk(requests, seeds, chunk, results, on_step, on_batch,
                                    previews, on_preview, cancel)
                except GenerationCancelled as exc:
                    if on_cancelled is not None:
                        on_cancelled(exc.step, exc.total, sum(requests[i].n for i in chunk))
                    raise
                return
            live = []
            for i in chunk:  # callers already gone are dropped before the call starts
                if cancels[i].is_set():
                    if on_cancelled is not None:
                        on_cancelled(0, requests[i].effective_steps, requests[i].n)
                else:
                    live.append(i)
            if not live:
                return
            try:
                self._run_chunk(requests, seeds, live, results, on_step, on_batch, previews,
                                on_preview, _AllOf([cancels[i] for i in live]))
            except GenerationCancelled as exc:  # every caller in it left: results stay None
                if on_cancelled is not None:
                    on_cancelled(exc.step, exc.total, sum(requests[i].n for i in live))

        for indices in groups.values():
            # Split a group into chunks of at most max_batch_images images (whole requests).
            chunk: list[int] = []
            count = 0
            for i in indices:
                if chunk and count + requests[i].n > max_batch_images:
                    run(chunk)
                    chunk, count = [], 0
                chunk.append(i)
                count += requests[i].n
            if chunk:
                run(chunk)
        return results

    def _generate_in_parts(self, requests: Sequence[GenerationRequest], *,
                           max_batch_images: int, cancel: Any = None, **kwargs: Any
                           ) -> list[GenerationResult | None]:
        """`generate` with each request split into parts of at most `max_batch_images` images;
        part k of a request starts at its seed + k * max_batch_images."""
        per_request = cancel is not None and not hasattr(cancel, "is_set")
        cancels = list(cancel) if per_request else None
        if cancels is not None and len(cancels) != len(requests):
            raise ValueError(f"cancel: got {len(cancels)} events for {len(requests)} requests")
        parts: list[GenerationRequest] = []
        owners: list[int] = []  # the request each part belongs to
        for i, req in enumerate(requests):
            seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED)
            for offset in range(0, req.n, max_batch_images):
                parts.append(replace(req, n=min(max_batch_images, req.n - offset),
                                     seed=(seed + offset) % (MAX_SEED + 1)))
                owners.append(i)
        part_cancel = [cancels[i] for i in owners] if cancels is not None else cancel
        results = self.generate(parts, max_batch_images=max_batch_images, cancel=part_cancel,
                                **kwargs)
        joined: list[GenerationResult | None] = []
        for i in range(len(requests)):
            mine = [results[k] for k, owner in enumerate(owners) if owner == i]
            if any(r is None for r in mine):  # cancelled (its caller left): no result
                joined.append(None)
                continue
            joined.append(GenerationResult(
                images=[img for r in mine for img in r.images],
                seeds=[s for r in mine for s in r.seeds],
                model=mine[0].model,
                batch_size=max(r.batch_size for r in mine),
                timings={"inference_s": sum(r.timings.get("inference_s", 0.0) for r in mine)},
                loras=mine[0].loras,
            ))
        return joined

    def _run_chunk(self, requests, seeds, indices, results, on_step, on_batch, previews=0,
                   on_preview=None, cancel=None) -> None:
        import torch

        first = requests[indices[0]]
        prompts: list[str] = []
        negatives: list[str] = []
        generators = []
        images, masks = [], []
        per_request_seeds: dict[int, list[int]] = {}
        device = self._info.device
        gen_device = "cpu" if device == "mps" else device
        for i in indices:
            req = requests[i]
            per_request_seeds[i] = [(seeds[i] + k) % (MAX_SEED + 1) for k in range(req.n)]
            for s in per_request_seeds[i]:
                prompts.append(req.prompt)
                negatives.append(req.negative_prompt or "")
                generators.append(torch.Generator(gen_device).manual_seed(s))
                if req.image is not None:
                    images.append(_to_pil(req.image, (first.width, first.height)))
                if req.mask is not None:
                    masks.append(_to_pil(req.mask, (first.width, first.height)))
        kwargs: dict[str, Any] = dict(
            prompt=prompts,
            negative_prompt=negatives,
            num_inference_steps=first.pipeline_steps,
            guidance_scale=first.guidance_scale,
            generator=generators,
            output_type="np",
        )
        if first.mode == "text2img":
            kwargs.update(width=first.width, height=first.height)
        else:
            kwargs.update(image=images, strength=first.strength)
            if first.mode == "inpaint":
                kwargs.update(mask_image=masks, width=first.width, height=first.height)
        # Preview after these steps (1-based), evenly spaced, never the last one (that is the
        # final image).
        total = first.effective_steps
        preview_steps = preview_schedule(total, previews) if on_preview else []
        stopped_at: list[int] = []  # steps run when the cancel was seen
        if on_step is not None or preview_steps or cancel is not None:
            def _callback(pipe, step, timestep, callback_kwargs):
                if cancel is not None and cancel.is_set():
                    pipe._interrupt = True  # diffusers skips the remaining steps
                    stopped_at.append(step + 1)
                    return callback_kwargs
                if on_step is not None:
                    on_step(step + 1, total)
                if step + 1 in preview_steps:
                    on_preview(preview_steps.index(step + 1),
                               self.decode_preview(callback_kwargs["latents"]))
                return callback_kwargs

            kwargs["callback_on_step_end"] = _callback
        self.activate(first.loras)  # one adapter set per call (it is in the batch key)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self._pipe(first.mode)(**kwargs).images
        elapsed = time.perf_counter() - started
        if stopped_at or (cancel is not None and cancel.is_set()):
            step = stopped_at[0] if stopped_at else total
            raise GenerationCancelled(f"generation cancelled after {step} of {total} steps",
                                      step=step, total=total)
        if on_batch is not None:
            on_batch(len(prompts))
        arrays = (np.clip(np.asarray(out), 0.0, 1.0) * 255).round().astype(np.uint8)
        offset = 0
        for i in indices:
            n = requests[i].n
            results[i] = GenerationResult(
                images=[arrays[offset + k] for k in range(n)],
                seeds=per_request_seeds[i],
                model=self._info.name,
                batch_size=len(prompts),
                timings={"inference_s": elapsed},
                loras=[{"name": r.name, "weight": r.weight} for r in requests[i].loras],
            )
            offset += n


def preview_schedule(steps: int, previews: int) -> list[int]:
    """1-based steps after which to decode `previews` previews, spread over the run."""
    if previews <= 0 or steps <= 1:
        return []
    chosen = sorted({max(1, min(steps - 1, round(steps * (k + 1) / (previews + 1))))
                     for k in range(previews)})
    return chosen


def _to_pil(array: np.ndarray, size: tuple[int, int]):
    img = Image.fromarray(array)
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


def _first_line(exc: BaseException) -> str:
    """The gist of a load error: the first line, or for torch's "Error(s) in loading
    state_dict" the first size mismatch it lists (which layer, which shapes)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    mismatch = next((line for line in lines if line.startswith("size mismatch")), None)
    if mismatch is not None:
        return f"shapes differ ({len([x for x in lines if x.startswith('size mismatch')])} " \
               f"layers), e.g. {mismatch[:300]}"
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
