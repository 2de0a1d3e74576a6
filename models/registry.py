"""The model catalogue: the ONE place that knows model names, kinds, sources, tiny stand-ins
and fallbacks (in the spirit of rembg's ``sessions/`` registry).

How to add a model: add one `ModelSpec` to `CATALOGUE` below. That's all; every deployment
takes a `model` (a name here) and an optional `source` (other weights for it), and looks it
up with `get_spec`. Nothing else lists names.

    ModelSpec(name="my-sd", kind="base", family="diffusion", source="org/repo-or-/local/dir",
              description="...", tiny_fallback="tiny-sd", limits=SizeLimits(...))

Fields (see `ModelSpec`):
- `kind`: what it is for users and ``GET /v1/models?kind=``: one of `KINDS` (base, lora, vae,
  upscaler, matting, face, llm, video, vision). A new kind: add it to `KINDS` and
  `FAMILY_OF_KIND`.
- `family`: the ``models/<family>.py`` file that loads it (diffusion, preview, upscale,
  matting, faceswap, llm).
- `source`: where its weights are: ``tiny:<name>`` (built offline by `builder`), a local
  path (``~`` expanded), a hub id, or ``rembg:<name>`` (matting).
- `tiny_fallback`: the tiny model the ``local`` profile may use (loudly) when the weights are
  missing; ``production`` never falls back (`resolve`).
- `builder`: ``"module:function"`` writing a tiny model into a folder (`models.zoo.ensure`).
- LoRA entries: `base` (the base model name it loads onto), `trigger_words`,
  `default_weight`; `preview_asset`: a sample image (URL or asset id) for UIs.

API: `get_spec(name, kind=, source=)` (the only name -> spec lookup; `ValueError` with close
matches for unknown names), `catalogue(kind=)`, `default_model(deployment, profile)`,
`resolve(spec, ...)` (weights + fallback policy), `close_matches(name, kind=)`.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from models import zoo

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("base", "lora", "vae", "upscaler", "matting", "face", "llm",
                          "video", "vision")
# kind -> the family (models/<family>.py) its entries load with by default
FAMILY_OF_KIND: dict[str, str] = {
    "base": "diffusion", "lora": "diffusion", "vae": "preview", "upscaler": "upscale",
    "matting": "matting", "face": "faceswap", "llm": "llm", "video": "video",
    "vision": "vision",
}


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
    kind: str
    source: str
    description: str
    family: str = ""  # default: FAMILY_OF_KIND[kind]
    tiny_fallback: str | None = None
    limits: SizeLimits | VideoLimits | None = None
    preview: str | None = None  # registry name of a fast latent decoder for step previews
    builder: str | None = None  # "module:function" building a tiny source (models.zoo)
    base: str | None = None  # LoRA/VAE: the base model it fits
    size: str | None = None  # approximate download size, e.g. "4.3 GB"
    tags: tuple[str, ...] = ()
    trigger_words: tuple[str, ...] = ()
    default_weight: float = 1.0
    preview_asset: str | None = None  # a sample image (URL or asset id)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model {self.name!r}: kind {self.kind!r} not in {KINDS}")
        if not self.family:
            object.__setattr__(self, "family", FAMILY_OF_KIND[self.kind])

    @property
    def tiny(self) -> bool:
        return self.source.startswith("tiny:")


_REMBG = {  # rembg session names that run locally from one ONNX file, one mask per image
    "u2net": ("U²-Net, general use (320x320)", "176 MB"),
    "u2netp": ("U²-Net lightweight (320x320)", "4.7 MB"),
    "u2net_human_seg": ("U²-Net trained for people (320x320)", "176 MB"),
    "silueta": ("U²-Net, reduced size (320x320)", "43 MB"),
    "isnet-general-use": ("IS-Net general use (1024x1024)", "179 MB"),
    "isnet-anime": ("IS-Net for anime characters (1024x1024)", "176 MB"),
    "birefnet-general": ("BiRefNet general use (1024x1024)", "973 MB"),
    "birefnet-general-lite": ("BiRefNet general, lite (1024x1024)", "224 MB"),
    "birefnet-portrait": ("BiRefNet for portraits (1024x1024)", "973 MB"),
    "birefnet-dis": ("BiRefNet dichotomous segmentation (1024x1024)", "973 MB"),
    "birefnet-hrsod": ("BiRefNet high-resolution salient objects (1024x1024)", "973 MB"),
    "birefnet-cod": ("BiRefNet camouflaged objects (1024x1024)", "973 MB"),
    "birefnet-massive": ("BiRefNet trained on a massive dataset (1024x1024)", "973 MB"),
    "bria-rmbg": ("BRIA RMBG 2.0 (1024x1024; non-commercial licence)", "1 GB"),
}

CATALOGUE: tuple[ModelSpec, ...] = (
    # --- base (diffusion) models ----------------------------------------------------------
    ModelSpec(name="tiny-sd", kind="base", source="tiny:tiny-sd",
              description="Tiny random-weight Stable Diffusion (built offline; for tests/dev)",
              limits=SizeLimits(32, 512, 64, 64, max_steps=50), preview="tiny-taesd",
              builder="models.zoo:build_tiny_sd", size="8 MB", tags=("tiny", "sd1")),
    ModelSpec(name="sd15", kind="base", source="stable-diffusion-v1-5/stable-diffusion-v1-5",
              description="Stable Diffusion 1.5", tiny_fallback="tiny-sd",
              limits=SizeLimits(256, 1024, 512, 512), preview="taesd", size="4.3 GB",
              tags=("sd1",)),
    ModelSpec(name="sdxl", kind="base", source="stabilityai/stable-diffusion-xl-base-1.0",
              description="Stable Diffusion XL base 1.0", tiny_fallback="tiny-sd",
              limits=SizeLimits(512, 2048, 1024, 1024), preview="taesdxl", size="6.9 GB",
              tags=("sdxl",)),
    # --- LoRA adapters (tiny ones: peft on tiny-sd, built offline; models/zoo.py) -----------
    ModelSpec(name="tiny-lora-warm", kind="lora", source="tiny:tiny-lora-warm",
              description="Tiny random LoRA on tiny-sd's UNet (tests/dev)",
              builder="models.zoo:build_tiny_lora_warm", base="tiny-sd", size="0.2 MB",
              tags=("tiny", "style"), trigger_words=("warm",), default_weight=1.0),
    ModelSpec(name="tiny-lora-cool", kind="lora", source="tiny:tiny-lora-cool",
              description="Tiny random LoRA on tiny-sd's UNet (tests/dev)",
              builder="models.zoo:build_tiny_lora_cool", base="tiny-sd", size="0.1 MB",
              tags=("tiny", "style"), trigger_words=("cool",), default_weight=0.8),
    ModelSpec(name="tiny-lora-ink", kind="lora", source="tiny:tiny-lora-ink",
              description="Tiny random LoRA on tiny-sd's UNet (tests/dev)",
              builder="models.zoo:build_tiny_lora_ink", base="tiny-sd", size="0.1 MB",
              tags=("tiny", "style"), trigger_words=("ink",), default_weight=1.0),
    ModelSpec(name="tiny-lora-duo", kind="lora", source="tiny:tiny-lora-duo",
              description="Tiny random LoRA on tiny-sd's UNet and CLIP text encoder "
              "(tests/dev)", builder="models.zoo:build_tiny_lora_duo", base="tiny-sd",
              size="0.1 MB", tags=("tiny", "style", "text-encoder"), trigger_words=("duo",),
              default_weight=1.0),
    # --- VAEs / latent decoders (step previews) --------------------------------------------
    ModelSpec(name="tiny-taesd", kind="vae", family="preview", source="tiny:tiny-taesd",
              description="Tiny random-weight TAESD latent decoder (step previews of tiny-sd)",
              builder="models.zoo:build_tiny_taesd", base="tiny-sd", tags=("tiny",)),
    ModelSpec(name="taesd", kind="vae", family="preview", source="madebyollin/taesd",
              description="TAESD: fast latent decoder for SD 1.x step previews", base="sd15",
              size="10 MB"),
    ModelSpec(name="taesdxl", kind="vae", family="preview", source="madebyollin/taesdxl",
              description="TAESD for SDXL step previews", base="sdxl", size="10 MB"),
    # --- face ------------------------------------------------------------------------------
    ModelSpec(name="tiny-insightface", kind="face", source="tiny:tiny-insightface",
              description="Tiny seeded SCRFD/ArcFace/INSwapper set (built offline; detects "
              "warm-coloured disks as faces)", builder="models.faceswap:build_tiny_insightface",
              tags=("tiny",)),
    ModelSpec(name="inswapper-128", kind="face", source="~/.insightface",
              description="insightface buffalo_l (SCRFD-10G + ArcFace R50) with inswapper_128",
              tiny_fallback="tiny-insightface", size="0.8 GB"),
    # --- upscalers -------------------------------------------------------------------------
    ModelSpec(name="tiny-esrgan", kind="upscaler", source="tiny:tiny-esrgan",
              description="Tiny random-weight Real-ESRGAN x2/x4 (built offline)",
              builder="models.upscale:build_tiny_esrgan", tags=("tiny",)),
    ModelSpec(name="realesrgan-x4", kind="upscaler",
              source="~/.cache/photostudio/weights/realesrgan",
              description="Real-ESRGAN x4plus (+ x2plus if present): a .pth file or a folder",
              tiny_fallback="tiny-esrgan", size="64 MB"),
    # --- matting ---------------------------------------------------------------------------
    ModelSpec(name="tiny-u2net", kind="matting", source="tiny:tiny-u2net",
              description="Tiny random-weight U²-Net-shaped matting model (built offline)",
              builder="models.matting:build_tiny_u2net", tags=("tiny",)),
    *(ModelSpec(name=name, kind="matting", source=f"rembg:{name}",
                description=f"{text} via rembg (`rembg d {name}` puts it in REMBG_HOME)",
                tiny_fallback="tiny-u2net", size=size)
      for name, (text, size) in _REMBG.items()),
    # --- LLMs ------------------------------------------------------------------------------
    ModelSpec(name="tiny-llm", kind="llm", source="tiny:tiny-llm",
              description="Tiny random-weight Qwen2-architecture chat LM (built offline; its "
              "answers are garbage: for tests/dev)", builder="models.llm:build_tiny_llm",
              tags=("tiny",)),
    ModelSpec(name="qwen2.5-0.5b-instruct", kind="llm", source="Qwen/Qwen2.5-0.5B-Instruct",
              description="Qwen2.5 0.5B Instruct", tiny_fallback="tiny-llm", size="1.0 GB"),
    ModelSpec(name="qwen2.5-1.5b-instruct", kind="llm", source="Qwen/Qwen2.5-1.5B-Instruct",
              description="Qwen2.5 1.5B Instruct", tiny_fallback="tiny-llm", size="3.1 GB"),
    # --- video (text/image-to-video; models/video.py) --------------------------------------
    ModelSpec(name="tiny-ltx", kind="video", source="tiny:tiny-ltx",
              description="Tiny random-weight LTX-Video-architecture text/image-to-video model "
              "(built offline; its clips are noise: for tests/dev)",
              builder="models.video:build_tiny_ltx", tags=("tiny",),
              limits=VideoLimits(32, 128, 64, 64, max_frames=65, default_fps=8,
                                 max_seconds=8.0, max_steps=20, default_steps=2)),
    ModelSpec(name="ltx-video", kind="video", source="Lightricks/LTX-Video",
              description="LTX-Video (2B): text-to-video and image-to-video, 768x512 at 24 fps",
              tiny_fallback="tiny-ltx", size="9.4 GB",
              limits=VideoLimits(256, 1280, 768, 512, max_frames=257, max_seconds=10.0)),
    # --- vision-language (image analysis: caption + VQA; models/vision.py) -----------------
    ModelSpec(name="tiny-blip", kind="vision", source="tiny:tiny-blip",
              description="Tiny random-weight BLIP captioning + VQA (built offline; its words "
              "are random: for tests/dev)", builder="models.vision:build_tiny_blip",
              tags=("tiny",)),
    ModelSpec(name="blip-base", kind="vision", source="~/.cache/photostudio/weights/blip",
              description="BLIP base: caption/ (Salesforce/blip-image-captioning-base) and "
              "vqa/ (Salesforce/blip-vqa-base) in one folder", tiny_fallback="tiny-blip",
              size="2.0 GB"),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in CATALOGUE}
if len(MODELS) != len(CATALOGUE):
    raise ValueError("duplicate model names in CATALOGUE: "
                     + ", ".join(sorted({s.name for s in CATALOGUE
                                         if sum(o.name == s.name for o in CATALOGUE) > 1})))
for _spec in CATALOGUE:
    if _spec.builder:
        zoo.register_builder(_spec.name, _spec.builder)

# The model each deployment serves per profile (AppArgs <deployment>_model overrides it).
DEFAULTS: dict[str, dict[str, str]] = {
    "generator": {"tiny": "tiny-sd", "local": "sd15", "production": "sd15"},
    "matting": {"tiny": "tiny-u2net", "local": "u2net", "production": "u2net"},
    "faceswap": {"tiny": "tiny-insightface", "local": "inswapper-128",
                 "production": "inswapper-128"},
    "upscale": {"tiny": "tiny-esrgan", "local": "realesrgan-x4", "production": "realesrgan-x4"},
    "llm": {"tiny": "tiny-llm", "local": "qwen2.5-1.5b-instruct",
            "production": "qwen2.5-1.5b-instruct"},
    "video": {"tiny": "tiny-ltx", "local": "ltx-video", "production": "ltx-video"},
    "vision": {"tiny": "tiny-blip", "local": "blip-base", "production": "blip-base"},
}
# kind each deployment's model must have
DEPLOYMENT_KIND = {"generator": "base", "matting": "matting", "faceswap": "face",
                   "upscale": "upscaler", "llm": "llm", "video": "video", "vision": "vision"}


def catalogue(kind: str | None = None) -> list[ModelSpec]:
    """Every entry (of `kind`), in catalogue order."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    return [spec for spec in CATALOGUE if kind is None or spec.kind == kind]


def close_matches(name: str, names) -> list[str]:
    """Up to 3 of `names` spelled like `name` (for "did you mean" messages)."""
    return difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)


def get_spec(name: str, *, kind: str | None = None, source: str | None = None) -> ModelSpec:
    """The spec of model `name` (of `kind`, when given), pointed at other weights by `source`
    (a local path or hub id). `ValueError` naming close matches and the known names otherwise.
    The only name -> spec lookup: families and deployments all go through it."""
    spec = MODELS.get(name)
    if spec is None:
        known = sorted(s.name for s in catalogue(kind))
        near = close_matches(name, known)
        raise ValueError(
            f"unknown {kind + ' ' if kind else ''}model {name!r}"
            + (f"; did you mean {', '.join(near)}?" if near else "")
            + f"; available: {', '.join(known)}")
    if kind is not None and spec.kind != kind:
        raise ValueError(f"model {name!r} is a {spec.kind} model, not {kind}")
    return replace(spec, source=str(source)) if source else spec


def default_model(deployment: str, profile: str) -> str:
    """The catalogue name `deployment` serves on `profile` by default."""
    return DEFAULTS[deployment][profile]


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
