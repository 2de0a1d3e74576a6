"""The one interface every image backend implements, its request/result types, its
capabilities and its errors.

- `ProviderRequest`: what the ingress asks for (prompt, n, size, seed, negative prompt, input
  images, mask, ...). Input images and masks are decoded arrays (the ingress decodes uploads
  once); the mode follows from them: a mask → inpaint, images → img2img, else text2img.
- `ProviderImage`: one output, always decoded (HxWx3 or HxWx4 uint8) after checks (size limit,
  content type vs magic bytes, pixel limit); `data`/`content_type` keep the bytes the backend
  sent, when it sent bytes.
- `Capabilities`: what a provider can honour. `unmet(request)` names every input the provider
  would have to drop; the router never sends a request to a provider with an unmet input.
  Hard requirements: the mode (img2img / inpaint), the number of input images, n, the size
  (an exact size list, an aspect-ratio list, or a side range), transparent background, an
  explicit seed, a negative prompt. Hints, passed where supported and otherwise ignored:
  steps, guidance_scale, strength, output_format (images come back decoded and the edge
  encodes them in the format asked for).
- `ProviderError`: one exception type; `retryable` says whether another provider may answer
  (timeouts, connection errors, 5xx, 429, a 200 without images, bad output, the provider's own
  auth/credit problems), `counts` whether it is the provider's fault (breaker), `status` the
  HTTP status the ingress should answer with when it is the final error.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

if TYPE_CHECKING:
    from providers.config import ProviderSettings

logger = logging.getLogger("photostudio.providers")

Mode = Literal["text2img", "img2img", "inpaint"]
Background = Literal["auto", "opaque", "transparent"]
OutputFormat = Literal["png", "jpeg", "webp"]
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")

ProgressCallback = Callable[[float, str], Awaitable[None] | None]


@dataclass
class ProviderRequest:
    """One generation or edit. `width`/`height` None: the provider's default size.

    `mask`: HxW uint8, 255 = repaint (the Generator's convention; adapters convert it to
    their backend's). `images`: input images, HxWx3 or HxWx4 uint8. `model`: the backend's
    model for this request (None: the provider's default). `on_progress(fraction, message)`:
    called with progress where the backend reports it (ComfyUI, Leonardo polls)."""

    prompt: str
    n: int = 1
    width: int | None = None
    height: int | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    images: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None
    strength: float | None = None
    background: Background = "auto"
    output_format: OutputFormat = "png"
    model: str | None = None
    on_progress: ProgressCallback | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height are given together or not at all")
        if self.mask is not None and not self.images:
            raise ValueError("a mask needs an input image to repaint")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {list(OUTPUT_FORMATS)}, "
                             f"got {self.output_format!r}")

    @property
    def mode(self) -> Mode:
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.images else "text2img"

    @property
    def size(self) -> tuple[int, int] | None:
        return None if self.width is None else (self.width, self.height)


@dataclass(frozen=True)
class ProviderImage:
    """One output image, decoded. `data`/`content_type`: the backend's encoded bytes (None
    when it handed over an array, as the local Generator does)."""

    array: np.ndarray
    data: bytes | None = None
    content_type: str | None = None
    seed: int | None = None
    revised_prompt: str | None = None
    model: str | None = None

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])


def aspect_ratio(width: int, height: int) -> float:
    return width / height


def parse_ratio(ratio: str) -> float:
    w, h = ratio.split(":")
    return float(w) / float(h)


def nearest_ratio(width: int, height: int, ratios: Sequence[str],
                  tolerance: float = 0.02) -> str | None:
    """The ratio in `ratios` within `tolerance` (relative) of width:height, else None."""
    want = aspect_ratio(width, height)
    best = min(ratios, key=lambda r: abs(parse_ratio(r) - want), default=None)
    if best is None or abs(parse_ratio(best) - want) / want > tolerance:
        return None
    return best


@dataclass(frozen=True)
class Capabilities:
    """What a provider can honour (see the module doc for hard inputs vs hints)."""

    text2img: bool = True
    img2img: bool = False
    inpaint: bool = False
    max_n: int = 1
    max_input_images: int = 1
    # Size: exact sizes (WxH) if given; else aspect ratios ("16:9") if given; else a range.
    sizes: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...] = ()
    min_side: int = 64
    max_side: int = 2048
    multiple: int = 8
    transparent_background: bool = False
    seed: bool = False
    negative_prompt: bool = False
    steps: bool = False
    guidance_scale: bool = False
    output_formats: tuple[str, ...] = ("png",)

    def with_overrides(self, overrides: dict[str, Any] | None) -> Capabilities:
        if not overrides:
            return self
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return dataclasses.replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def unmet(self, request: ProviderRequest) -> list[str]:
        """Every input of `request` this provider would drop or cannot do, as
        'param: why' strings (param: the request parameter); empty when it covers it."""
        reasons: list[str] = []
        mode = request.mode
        if not getattr(self, mode):
            param = {"text2img": "prompt", "img2img": "image", "inpaint": "mask"}[mode]
            reasons.append(f"{param}: {mode} not supported")
        if len(request.images) > max(self.max_input_images, 0):
            reasons.append(f"image: {len(request.images)} input images, at most "
                           f"{self.max_input_images}")
        if request.n > self.max_n:
            reasons.append(f"n: {request.n} images, at most {self.max_n}")
        if request.size is not None:
            width, height = request.size
            size = f"{width}x{height}"
            if self.sizes:
                if size not in self.sizes:
                    reasons.append(f"size: {size} not in {list(self.sizes)}")
            elif self.aspect_ratios:
                if nearest_ratio(width, height, self.aspect_ratios) is None:
                    reasons.append(f"size: aspect ratio of {size} not in "
                                   f"{list(self.aspect_ratios)}")
            elif not all(self.min_side <= v <= self.max_side and v % self.multiple == 0
                         for v in (width, height)):
                reasons.append(f"size: {size} outside {self.min_side}-{self.max_side} "
                               f"(multiples of {self.multiple})")
        if request.background == "transparent" and not self.transparent_background:
            reasons.append("background: transparent not supported")
        if request.seed is not None and not self.seed:
            reasons.append("seed: a fixed seed is not supported")
        if request.negative_prompt and not self.negative_prompt:
            reasons.append("negative_prompt: not supported")
        return reasons


# -- errors ------------------------------------------------------------------------------

# outcome → (retryable, counts against the provider's breaker, HTTP status for the ingress)
OUTCOMES: dict[str, tuple[bool, bool, int]] = {
    "timeout": (True, True, 504),
    "connection_error": (True, True, 503),
    "server_error": (True, True, 502),
    "rate_limited": (True, True, 429),
    "overloaded": (True, True, 503),
    "no_images": (True, True, 502),
    "too_few_images": (True, False, 502),
    "bad_output": (True, True, 502),
    "auth_error": (True, True, 502),  # our key for that backend: not the client's fault
    "not_found": (True, True, 502),  # wrong base URL / model on that backend
    "bad_request": (False, False, 400),
    "content_policy": (False, False, 400),
    "unsupported": (False, False, 400),
    "cancelled": (False, False, 499),
}


class ProviderError(Exception):
    """A provider call failed. `outcome` is one of OUTCOMES; `retry_after` (seconds) when the
    backend said when to come back (429/503 Retry-After)."""

    def __init__(self, message: str, *, outcome: str, provider: str = "",
                 status: int | None = None, code: str | None = None,
                 param: str | None = None, retry_after: float | None = None,
                 upstream_status: int | None = None):
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        super().__init__(message)
        self.message = message
        self.outcome = outcome
        self.provider = provider
        self.retryable, self.counts, default_status = OUTCOMES[outcome]
        self.status = status or default_status
        self.code = code or outcome
        self.param = param
        self.retry_after = retry_after
        self.upstream_status = upstream_status

    def __str__(self) -> str:
        return f"{self.provider}: {self.message}" if self.provider else self.message


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` with every configured secret replaced by ***."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


# -- images ------------------------------------------------------------------------------

MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"WEBP", 8, "image/webp"),
)
CONTENT_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                 "image/webp": "webp"}


def sniff(data: bytes) -> str | None:
    for magic, offset, content_type in MAGIC:
        if data[offset:offset + len(magic)] == magic:
            if content_type == "image/webp" and data[:4] != b"RIFF":
                continue
            return content_type
    return None


def decode_image(data: bytes, *, declared_type: str | None = None, max_bytes: int,
                 max_pixels: int, provider: str = "", **meta: Any) -> ProviderImage:
    """Check and decode one image a backend returned: at most `max_bytes`, PNG/JPEG/WebP by
    its magic bytes, the same type as `declared_type` (a Content-Type or mimeType) when one
    was declared, at most `max_pixels` before decoding. A failed check is `bad_output`."""
    from PIL import Image

    def bad(message: str) -> ProviderError:
        return ProviderError(message, outcome="bad_output", provider=provider)

    if len(data) > max_bytes:
        raise bad(f"returned an image of {len(data)} bytes; the limit is {max_bytes}")
    kind = sniff(data)
    if kind is None:
        raise bad("returned bytes that are not a PNG, JPEG or WebP image")
    if declared_type:
        declared = declared_type.split(";")[0].strip().lower()
        if CONTENT_TYPES.get(declared, declared) != CONTENT_TYPES[kind]:
            raise bad(f"declared {declared} but sent {kind}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise bad(f"returned a {img.width}x{img.height} image; the limit is "
                          f"{max_pixels} pixels")
            mode = "RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB"
            array = np.asarray(img.convert(mode))
    except ProviderError:
        raise
    except Exception as exc:  # truncated / corrupt data: PIL raises many types
        raise bad(f"returned an image that does not decode ({type(exc).__name__})") from None
    return ProviderImage(array=array, data=data, content_type=kind, **meta)


def encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def rgb(array: np.ndarray) -> np.ndarray:
    return array[..., :3] if array.ndim == 3 else np.dstack([array] * 3)


# -- the interface -----------------------------------------------------------------------

class Provider(abc.ABC):
    """One backend. Subclasses set `kind` and `settings_cls`, implement `generate` (text2img)
    and, where they can, `edit` (img2img / inpaint), and declare `default_capabilities`."""

    kind: ClassVar[str]
    settings_cls: ClassVar[type[ProviderSettings]]
    default_capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, name: str, settings: ProviderSettings):
        self.name = name
        self.settings = settings
        self.capabilities = self._capabilities().with_overrides(settings.capabilities)

    def _capabilities(self) -> Capabilities:
        """Capabilities before the operator's overrides (may depend on the settings)."""
        return self.default_capabilities

    @property
    def models(self) -> list[str]:
        return list(self.settings.models)

    @property
    def default_model(self) -> str | None:
        return self.settings.models[0] if self.settings.models else None

    def model_for(self, request: ProviderRequest) -> str | None:
        return request.model or self.default_model

    def secrets(self) -> list[str]:
        return self.settings.secret_values()

    async def run(self, request: ProviderRequest) -> list[ProviderImage]:
        """`generate` for text2img, `edit` for the other modes."""
        if request.mode == "text2img":
            return await self.generate(request)
        return await self.edit(request)

    @abc.abstractmethod
    async def generate(self, request: ProviderRequest) -> list[ProviderImage]:
        """Text to image."""

    async def edit(self, request: ProviderRequest) -> list[ProviderImage]:
        """Image to image / inpaint: by default the same wire call as `generate` (its request
        carries the images) for a provider that declares it can edit; override when a backend
        edits through another endpoint."""
        if self.capabilities.img2img or self.capabilities.inpaint:
            return await self.generate(request)
        raise ProviderError(f"{self.kind} providers do not edit images", outcome="unsupported",
                            provider=self.name)

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release here
        """Release clients/connections."""

    def error(self, message: str, *, outcome: str, **kwargs: Any) -> ProviderError:
        return ProviderError(scrub(message, self.secrets()), outcome=outcome,
                             provider=self.name, **kwargs)

    def decode(self, data: bytes, *, declared_type: str | None = None,
               **meta: Any) -> ProviderImage:
        return decode_image(data, declared_type=declared_type,
                            max_bytes=self.settings.max_image_bytes,
                            max_pixels=self.settings.max_image_pixels, provider=self.name,
                            **meta)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
