"""Name-keyed registry of the models we serve, and the resolution of a name to weights.

A spec names a family and where its weights come from: a tiny zoo model (``tiny:<name>``),
a local folder, or a hub model id. ``resolve`` turns a spec into a loadable local path or id
and applies the fallback policy: the ``local`` profile may fall back to the tiny model
(loudly); the ``production`` profile never does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from models import zoo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizeLimits:
    """Image size limits of a generative model (pixels; both sides multiples of `multiple`)."""

    min_side: int
    max_side: int
    default_width: int
    default_height: int
    multiple: int = 8
    max_steps: int = 150


@dataclass(frozen=True)
class VideoLimits:
    """What a video model accepts. Frames are of the form 8k+1 (LTX's VAE compresses 8 frames
    into one latent frame, plus the first); sides are multiples of 32 (its spatial
    compression); fps and duration bounded."""

    min_side: int
    max_side: int
    default_width: int
    default_height: int
    max_frames: int = 257
    min_fps: int = 8
    max_fps: int = 30
    default_fps: int = 24
    max_seconds: float = 10.0
    max_steps: int = 100
    default_steps: int = 30
    multiple: int = 32
    frame_multiple: int = 8


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    source: str
    description: str
    tiny_fallback: str | None = None
    limits: SizeLimits | VideoLimits | None = None
    preview: str | None = None  # registry name of a fast latent decoder for step previews

    @property
    def tiny(self) -> bool:
        return self.source.startswith("tiny:")


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="tiny-sd",
            family="diffusion",
            source="tiny:tiny-sd",
            description="Tiny random-weight Stable Diffusion (built offline; for tests/dev)",
            limits=SizeLimits(32, 512, 64, 64, max_steps=50),
            preview="tiny-taesd",
        ),
        ModelSpec(
            name="sd15",
            family="diffusion",
            source="stable-diffusion-v1-5/stable-diffusion-v1-5",
            description="Stable Diffusion 1.5",
            tiny_fallback="tiny-sd",
            limits=SizeLimits(256, 1024, 512, 512),
            preview="taesd",
        ),
        ModelSpec(
            name="sdxl",
            family="diffusion",
            source="stabilityai/stable-diffusion-xl-base-1.0",
            description="Stable Diffusion XL base 1.0",
            tiny_fallback="tiny-sd",
            limits=SizeLimits(512, 2048, 1024, 1024),
            preview="taesdxl",
        ),
        ModelSpec(
            name="tiny-taesd",
            family="preview",
            source="tiny:tiny-taesd",
            description="Tiny random-weight TAESD latent decoder (step previews of tiny-sd)",
        ),
        ModelSpec(
            name="taesd",
            family="preview",
            source="madebyollin/taesd",
            description="TAESD: fast latent decoder for SD 1.x step previews",
        ),
        ModelSpec(
            name="taesdxl",
            family="preview",
            source="madebyollin/taesdxl",
            description="TAESD for SDXL step previews",
        ),
        ModelSpec(
            name="tiny-insightface",
            family="faceswap",
            source="tiny:tiny-insightface",
            description="Tiny seeded SCRFD/ArcFace/INSwapper set (built offline; detects "
            "warm-coloured disks as faces)",
        ),
        ModelSpec(
            name="inswapper-128",
            family="faceswap",
            source="~/.insightface",
            description="insightface buffalo_l (SCRFD-10G + ArcFace R50) with inswapper_128",
            tiny_fallback="tiny-insightface",
        ),
        ModelSpec(
            name="realesrgan-x4",
            family="upscale",
            source="~/.cache/photostudio/weights/realesrgan",
            description="Real-ESRGAN x4plus (+ x2plus if present): a .pth file or a folder",
            tiny_fallback="tiny-esrgan",
        ),
        ModelSpec(
            name="tiny-u2net",
            family="matting",
            source="tiny:tiny-u2net",
            description="Tiny random-weight U²-Net-shaped matting model (built offline)",
        ),
        ModelSpec(
            name="u2net",
            family="matting",
            source="rembg:u2net",
            description="U²-Net via rembg (`rembg d u2net` puts it in REMBG_HOME)",
            tiny_fallback="tiny-u2net",
        ),
        ModelSpec(
            name="isnet-general-use",
            family="matting",
            source="rembg:isnet-general-use",
            description="IS-Net general use via rembg",
            tiny_fallback="tiny-u2net",
        ),
        ModelSpec(
            name="birefnet-general",
            family="matting",
            source="rembg:birefnet-general",
            description="BiRefNet general via rembg",
            tiny_fallback="tiny-u2net",
        ),
        ModelSpec(
            name="tiny-llm",
            family="llm",
            source="tiny:tiny-llm",
            description="Tiny random-weight Qwen2-architecture chat LM (built offline; its "
            "answers are garbage: for tests/dev)",
        ),
        ModelSpec(
            name="qwen2.5-0.5b-instruct",
            family="llm",
            source="Qwen/Qwen2.5-0.5B-Instruct",
            description="Qwen2.5 0.5B Instruct",
            tiny_fallback="tiny-llm",
        ),
        ModelSpec(
            name="qwen2.5-1.5b-instruct",
            family="llm",
            source="Qwen/Qwen2.5-1.5B-Instruct",
            description="Qwen2.5 1.5B Instruct",
            tiny_fallback="tiny-llm",
        ),
        ModelSpec(
            name="tiny-ltx",
            family="video",
            source="tiny:tiny-ltx",
            description="Tiny random-weight LTX-Video-architecture text/image-to-video model "
            "(built offline; its clips are noise: for tests/dev)",
            limits=VideoLimits(32, 128, 64, 64, max_frames=65, default_fps=8,
                               max_seconds=8.0, max_steps=20, default_steps=2),
        ),
        ModelSpec(
            name="ltx-video",
            family="video",
            source="Lightricks/LTX-Video",
            description="LTX-Video (2B): text-to-video and image-to-video, 768x512 at 24 fps",
            tiny_fallback="tiny-ltx",
            limits=VideoLimits(256, 1280, 768, 512, max_frames=257, max_seconds=10.0),
        ),
        ModelSpec(
            name="tiny-blip",
            family="vision",
            source="tiny:tiny-blip",
            description="Tiny random-weight BLIP captioning + VQA (built offline; its words "
            "are random: for tests/dev)",
        ),
        ModelSpec(
            name="blip-base",
            family="vision",
            source="~/.cache/photostudio/weights/blip",
            description="BLIP base: caption/ (Salesforce/blip-image-captioning-base) and "
            "vqa/ (Salesforce/blip-vqa-base) in one folder",
            tiny_fallback="tiny-blip",
        ),
        ModelSpec(
            name="tiny-esrgan",
            family="upscale",
            source="tiny:tiny-esrgan",
            description="Tiny random-weight Real-ESRGAN x2/x4 (built offline)",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """Return the spec of a model name; `ValueError` naming the known ones otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}"
        ) from None


def spec_for_source(name: str, *, family: str, source: str | None) -> ModelSpec:
    """A registered spec, optionally pointed at other weights (a local path or model id)."""
    spec = get_spec(name)
    if spec.family != family:
        raise ValueError(f"model {name!r} is a {spec.family} model, not {family}")
    if source:
        spec = ModelSpec(
            name=spec.name,
            family=spec.family,
            source=source,
            description=spec.description,
            tiny_fallback=spec.tiny_fallback,
            limits=spec.limits,
            preview=spec.preview,
        )
    return spec


@dataclass(frozen=True)
class Resolved:
    spec: ModelSpec  # the spec actually used (the tiny one after a fallback)
    location: str  # local folder or hub id handed to from_pretrained
    fallback_reason: str | None = None


def resolve(
    spec: ModelSpec, *, zoo_dir: str | os.PathLike | None, allow_fallback: bool, load_check
) -> Resolved:
    """Find the weights of `spec`.

    `load_check(location)` is called for non-tiny sources and must raise `OSError` (or
    `ValueError`) when the weights can't be had (e.g. not cached while offline). With
    `allow_fallback` the tiny model named by the spec is used instead and the reason is
    logged at ERROR level and returned, so callers can surface it.
    """
    if spec.tiny:
        return Resolved(spec, str(zoo.ensure(spec.source.removeprefix("tiny:"), zoo_dir)))
    location = spec.source
    if Path(location).expanduser().exists():
        location = str(Path(location).expanduser())
    try:
        load_check(location)
        return Resolved(spec, location)
    except (OSError, ValueError) as exc:
        if not allow_fallback or not spec.tiny_fallback:
            raise RuntimeError(
                f"could not load weights for model {spec.name!r} from {location!r}: {exc}. "
                "Download them first (e.g. `huggingface-cli download` on a machine with "
                "network, then point the model source at the folder)"
                + ("" if allow_fallback else "; this profile never falls back to tiny models")
            ) from exc
        reason = f"weights for {spec.name!r} ({location}) unavailable: {exc.__class__.__name__}"
        logger.error(
            "FALLING BACK TO TINY MODEL %r: %s. Outputs are from random weights!",
            spec.tiny_fallback,
            reason,
        )
        tiny = get_spec(spec.tiny_fallback)
        return Resolved(
            tiny, str(zoo.ensure(tiny.source.removeprefix("tiny:"), zoo_dir)), reason
        )
