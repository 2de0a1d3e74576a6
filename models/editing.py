"""Deterministic image edits (crop, resize, rotate, flip, colour, blur) applied in order.

They run in the ingress, on CPU: each op is one cheap Pillow call, the input is bounded by the
edge's pixel limit and every intermediate image by `MAX_SIDE` / `max_pixels`, and doing them here
saves a deployment hop and a copy of the image.

- The request schema is a discriminated union on ``op`` (`EditOp`), so the OpenAPI schema lists
  every op with its own parameters and an unknown op or parameter is a 400.
- `check_ops` validates the whole chain against the image size *before* any pixel work (crops
  and blur regions inside the image at their step, no intermediate image over the limits) and
  returns the output size; `apply_ops` calls it first, then applies the ops.
- Works on HxWx3 RGB and HxWx4 RGBA uint8 arrays and returns the same kind. Alpha is kept
  through every op: geometric ops move it with the pixels (Pillow resamples RGBA premultiplied,
  so no dark fringes), rotate with ``expand`` gives transparent corners on RGBA unless ``fill``
  says otherwise, and colour ops and blur change the colour only.
- Errors are `common.errors.InputError`s (``ValueError``s) whose `param` is the parameter path
  and whose message starts with it, e.g. ``ops[2].width must be at most 40 ...``;
  `parse_edit_request` turns pydantic's validation errors into the same form for callers that
  get the ops as a JSON string (multipart forms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from PIL import Image, ImageColor, ImageEnhance, ImageFilter, ImageOps
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from common import safe_json
from common.errors import InputError

MAX_OPS = 20
MAX_SIDE = 8192
MAX_PIXELS = 8192 * 4096  # any intermediate image; 32 Mi pixels = 128 MiB as RGBA
MAX_FACTOR = 5.0
MIN_BLUR_RADIUS = 0.1
MAX_BLUR_RADIUS = 100.0
MAX_COLOUR_CHARS = 64
# Work budget of one chain, in cost units (`_Op.cost`: about a nanosecond of one core of the
# 2-core dev machine per unit): ~3 s of CPU. A tiny upload resized to 4096x4096 and blurred 19
# times at radius 100 (~40 s there) is refused before any pixel work.
MAX_CHAIN_COST = 3_000_000_000

Resample = Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"]
Size = tuple[int, int]  # (width, height), as Pillow counts


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # cost units per pixel (measured with Pillow on the 2-core dev machine, ~ns per pixel)
    weight: ClassVar[float] = 10.0

    def output_size(self, size: Size, path: str, max_pixels: int = MAX_PIXELS) -> Size:
        """Size after this op; raises `InputError` (param under `path`) if it can't apply."""
        return size

    def cost(self, size: Size, new: Size) -> float:
        """Work of this op from `size` to `new`, in cost units (see MAX_CHAIN_COST)."""
        return self.weight * max(size[0] * size[1], new[0] * new[1])

    def apply(self, img: Image.Image) -> Image.Image:  # pragma: no cover - every op overrides
        raise NotImplementedError


class Region(BaseModel):
    """A rectangle in pixels; (x, y) is its top-left corner."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: int = Field(..., ge=0, le=MAX_SIDE, description="left edge, pixels from the left")
    y: int = Field(..., ge=0, le=MAX_SIDE, description="top edge, pixels from the top")
    width: int = Field(..., ge=1, le=MAX_SIDE)
    height: int = Field(..., ge=1, le=MAX_SIDE)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.width, self.y + self.height)


def _check_inside(box: Region | CropOp, size: Size, path: str) -> None:
    w, h = size
    for pos, ext, limit in (("x", "width", w), ("y", "height", h)):
        start, extent = getattr(box, pos), getattr(box, ext)
        if start >= limit:
            raise InputError(f"{path}.{pos} must be less than the image {ext} ({limit} at this "
                             f"step; the image is {w}x{h}), got {start}", param=f"{path}.{pos}")
        if start + extent > limit:
            raise InputError(f"{path}.{ext} must be at most {limit - start} so that {pos}+{ext} "
                             f"stays inside the image ({w}x{h} at this step), got {extent}",
                             param=f"{path}.{ext}")


def _too_big(size: Size, max_pixels: int) -> bool:
    return max(size) > MAX_SIDE or size[0] * size[1] > max_pixels


def _on_colour(img: Image.Image, fn) -> Image.Image:
    """Apply `fn` to the colour channels only; the alpha channel is kept as it was."""
    if img.mode != "RGBA":
        return fn(img)
    alpha = img.getchannel("A")
    out = fn(img.convert("RGB"))  # RGBA -> RGB drops alpha (no compositing)
    out.putalpha(alpha)
    return out


class CropOp(_Op):
    """Keep the rectangle (x, y, width, height); it must lie inside the image."""

    op: Literal["crop"] = "crop"
    weight: ClassVar[float] = 1.0
    x: int = Field(..., ge=0, le=MAX_SIDE, description="left edge, pixels from the left")
    y: int = Field(..., ge=0, le=MAX_SIDE, description="top edge, pixels from the top")
    width: int = Field(..., ge=1, le=MAX_SIDE)
    height: int = Field(..., ge=1, le=MAX_SIDE)

    def output_size(self, size: Size, path: str, max_pixels: int = MAX_PIXELS) -> Size:
        _check_inside(self, size, path)
        return (self.width, self.height)

    def apply(self, img: Image.Image) -> Image.Image:
        return img.crop((self.x, self.y, self.x + self.width, self.y + self.height))


class ResizeOp(_Op):
    """Resize to width x height; give one of them to keep the aspect ratio."""

    op: Literal["resize"] = "resize"
    width: int | None = Field(None, ge=1, le=MAX_SIDE)
    height: int | None = Field(None, ge=1, le=MAX_SIDE)
    resample: Resample = Field("lanczos", description="resampling filter")

    @model_validator(mode="after")
    def _one_side(self) -> ResizeOp:
        if self.width is None and self.height is None:
            raise ValueError("give width, height or both (one keeps the aspect ratio)")
        return self

    def target_size(self, size: Size) -> Size:
        w, h = size
        nw = self.width if self.width is not None else max(1, round(w * self.height / h))
        nh = self.height if self.height is not None else max(1, round(h * self.width / w))
        return (nw, nh)

    def cost(self, size: Size, new: Size) -> float:
        return self.weight * (size[0] * size[1] + new[0] * new[1])

    def output_size(self, size: Size, path: str, max_pixels: int = MAX_PIXELS) -> Size:
        new = self.target_size(size)
        if _too_big(new, max_pixels):
            field = "width" if self.width is not None else "height"
            kept = "" if self.width and self.height else " (the other side keeps the aspect ratio)"
            raise InputError(f"{path}.{field} must give an image of at most {MAX_SIDE} pixels per "
                             f"side and {max_pixels:,} pixels in all, got {new[0]}x{new[1]}{kept}",
                             param=f"{path}.{field}")
        return new

    def apply(self, img: Image.Image) -> Image.Image:
        return img.resize(self.target_size(img.size),
                          resample=Image.Resampling[self.resample.upper()])


class RotateOp(_Op):
    """Rotate counter-clockwise by `degrees` about the centre (Pillow's convention)."""

    op: Literal["rotate"] = "rotate"
    degrees: float = Field(..., allow_inf_nan=False,
                           description="counter-clockwise; negative turns clockwise")
    expand: bool = Field(True, description="grow the canvas to hold the whole rotated image "
                                           "(false keeps the size and cuts the corners)")
    fill: str | None = Field(None, max_length=MAX_COLOUR_CHARS,
                             description="colour of the uncovered corners: '#rrggbb', "
                                         "'#rrggbbaa', a CSS name or 'rgb(...)'; default "
                                         "transparent for RGBA images, black for RGB")

    @field_validator("fill")
    @classmethod
    def _colour(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ImageColor.getrgb(value)
            except ValueError:
                raise ValueError(f"not a colour: {value!r}; use '#rrggbb', '#rrggbbaa', a CSS "
                                 "name such as 'white', or 'rgb(r, g, b)'") from None
        return value

    def output_size(self, size: Size, path: str, max_pixels: int = MAX_PIXELS) -> Size:
        new = rotated_size(size, self.degrees) if self.expand else size
        if new != size and _too_big(new, max_pixels):
            raise InputError(f"{path}.expand would grow the image to {new[0]}x{new[1]}, over the "
                             f"limit of {MAX_SIDE} pixels per side and {max_pixels:,} pixels in "
                             "all; set expand to false or resize first", param=f"{path}.expand")
        return new

    def cost(self, size: Size, new: Size) -> float:
        right_angle = self.degrees % 90.0 == 0.0  # a transpose; any other angle resamples
        return (10.0 if right_angle else 80.0) * max(size[0] * size[1], new[0] * new[1])

    def _fill_for(self, mode: str) -> tuple[int, ...]:
        if self.fill is None:
            return (0, 0, 0, 0) if mode == "RGBA" else (0, 0, 0)
        colour = ImageColor.getcolor(self.fill, mode)
        if mode == "RGBA":
            # Pillow rotates RGBA premultiplied (as "RGBa"), and the fill goes in unconverted.
            r, g, b, a = colour
            colour = (r * a // 255, g * a // 255, b * a // 255, a)
        return tuple(colour)

    def apply(self, img: Image.Image) -> Image.Image:
        return img.rotate(self.degrees, resample=Image.Resampling.BICUBIC, expand=self.expand,
                          fillcolor=self._fill_for(img.mode))


def rotated_size(size: Size, degrees: float) -> Size:
    """Canvas size of `Image.rotate(degrees, expand=True)`, computed as Pillow does."""
    w, h = size
    angle = degrees % 360.0
    if angle in (0.0, 180.0):
        return (w, h)
    if angle in (90.0, 270.0):
        return (h, w)
    rad = -math.radians(angle)
    a, b = round(math.cos(rad), 15), round(math.sin(rad), 15)
    d, e = round(-math.sin(rad), 15), round(math.cos(rad), 15)
    cx, cy = w / 2, h / 2
    c = a * -cx + b * -cy + 0.0 + cx
    f = d * -cx + e * -cy + 0.0 + cy
    xs = [a * x + b * y + c for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [d * x + e * y + f for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
    return (math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys)))


class FlipOp(_Op):
    """Mirror the image: horizontal swaps left and right, vertical swaps top and bottom."""

    op: Literal["flip"] = "flip"
    direction: Literal["horizontal", "vertical"]

    def apply(self, img: Image.Image) -> Image.Image:
        return ImageOps.mirror(img) if self.direction == "horizontal" else ImageOps.flip(img)


_FACTOR = Field(..., ge=0.0, le=MAX_FACTOR, allow_inf_nan=False,
                description=f"0 to {MAX_FACTOR:g}; 1 leaves the image unchanged")


class BrightnessOp(_Op):
    """Scale brightness: 0 is black, 1 unchanged, 2 twice as bright."""

    op: Literal["brightness"] = "brightness"
    factor: float = _FACTOR

    def apply(self, img: Image.Image) -> Image.Image:
        return _on_colour(img, lambda rgb: ImageEnhance.Brightness(rgb).enhance(self.factor))


class ContrastOp(_Op):
    """Scale contrast about the mean grey: 0 is flat grey, 1 unchanged."""

    op: Literal["contrast"] = "contrast"
    weight: ClassVar[float] = 30.0
    factor: float = _FACTOR

    def apply(self, img: Image.Image) -> Image.Image:
        return _on_colour(img, lambda rgb: ImageEnhance.Contrast(rgb).enhance(self.factor))


class SaturationOp(_Op):
    """Scale colour saturation: 0 is greyscale, 1 unchanged, 2 twice as colourful."""

    op: Literal["saturation"] = "saturation"
    weight: ClassVar[float] = 35.0
    factor: float = _FACTOR

    def apply(self, img: Image.Image) -> Image.Image:
        return _on_colour(img, lambda rgb: ImageEnhance.Color(rgb).enhance(self.factor))


class GrayscaleOp(_Op):
    """Convert to grey (ITU-R 601 luma); the result keeps 3 (or 4) equal colour channels."""

    op: Literal["grayscale"] = "grayscale"
    weight: ClassVar[float] = 15.0

    def apply(self, img: Image.Image) -> Image.Image:
        return _on_colour(img, lambda rgb: ImageOps.grayscale(rgb).convert("RGB"))


class BlurOp(_Op):
    """Gaussian blur of the whole image, or only of `region`."""

    op: Literal["blur"] = "blur"
    radius: float = Field(4.0, ge=MIN_BLUR_RADIUS, le=MAX_BLUR_RADIUS, allow_inf_nan=False,
                          description="standard deviation of the Gaussian, in pixels")
    region: Region | None = Field(None, description="blur only this rectangle (e.g. a face "
                                                    "or a licence plate)")

    def output_size(self, size: Size, path: str, max_pixels: int = MAX_PIXELS) -> Size:
        if self.region is not None:
            _check_inside(self.region, size, f"{path}.region")
        return size

    def cost(self, size: Size, new: Size) -> float:
        if self.region is None:
            pixels = size[0] * size[1]
        else:  # the region and its margin (see apply)
            pad = 2 * (math.ceil(3 * self.radius) + 4)
            pixels = min(size[0], self.region.width + pad) * min(size[1],
                                                                 self.region.height + pad)
        return (60.0 + 0.7 * self.radius) * pixels

    def _blur(self, img: Image.Image) -> Image.Image:
        kernel = ImageFilter.GaussianBlur(self.radius)
        if img.mode != "RGBA":
            return img.filter(kernel)
        # Blur premultiplied colour so transparent pixels don't bleed their (arbitrary) colour
        # into the visible ones, then keep the original alpha.
        out = img.convert("RGBa").filter(kernel).convert("RGBA")
        out.putalpha(img.getchannel("A"))
        return out

    def apply(self, img: Image.Image) -> Image.Image:
        if self.region is None:
            return self._blur(img)
        # Blur a margin around the region too, so the region looks exactly as it would in a
        # blurred whole image (no hard edge), then paste back only the region itself.
        x0, y0, x1, y1 = self.region.box
        pad = math.ceil(3 * self.radius) + 4
        px0, py0 = max(0, x0 - pad), max(0, y0 - pad)
        px1, py1 = min(img.width, x1 + pad), min(img.height, y1 + pad)
        blurred = self._blur(img.crop((px0, py0, px1, py1)))
        inner = blurred.crop((x0 - px0, y0 - py0, x1 - px0, y1 - py0))
        out = img.copy()
        out.paste(inner, (x0, y0))
        return out


EditOp = Annotated[
    CropOp | ResizeOp | RotateOp | FlipOp | BrightnessOp | ContrastOp | SaturationOp
    | GrayscaleOp | BlurOp,
    Field(discriminator="op"),
]
OP_NAMES: tuple[str, ...] = ("crop", "resize", "rotate", "flip", "brightness", "contrast",
                             "saturation", "grayscale", "blur")


class EditRequest(BaseModel):
    """The edit ops, applied in the order given."""

    model_config = ConfigDict(extra="forbid")

    ops: list[EditOp] = Field(..., min_length=1, max_length=MAX_OPS,
                              description=f"1 to {MAX_OPS} edits, applied in order")


_OPS_ADAPTER: TypeAdapter[list[EditOp]] = TypeAdapter(list[EditOp])


def param_path(loc: Sequence[Any]) -> str:
    """('ops', 2, 'resize', 'width') -> 'ops[2].width' (the union tag is dropped)."""
    out = ""
    prev_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_index = True
            continue
        if prev_index and part in OP_NAMES:
            prev_index = False
            continue  # pydantic puts the discriminator's value in the location
        out += f".{part}" if out else str(part)
        prev_index = False
    return out


def _as_input_error(exc: ValidationError, prefix: str = "") -> InputError:
    """The first error as 'path: message' (pydantic's message, lower-cased start), with the
    path as `param`."""
    err = exc.errors(include_url=False)[0]
    loc = ((prefix,) if prefix else ()) + tuple(err.get("loc", ()))
    path = param_path(loc) or "ops"
    kind, given = err["type"], err.get("input")
    if kind == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        path += ".op"
        tag = given.get("op") if isinstance(given, dict) else None
        got = f"got {tag!r}" if kind == "union_tag_invalid" else "it is missing"
        msg = f"must be one of {', '.join(OP_NAMES)}; {got}"
    elif kind == "extra_forbidden":
        msg = "unknown parameter; remove it"
    elif kind == "missing":
        msg = "is required"
    else:
        msg = err["msg"]
        if isinstance(given, str | int | float | bool):
            msg = f"{msg}, got {given!r}"
    msg = msg[:1].lower() + msg[1:]
    extra = exc.error_count() - 1
    more = f" (and {extra} more error{'s' if extra > 1 else ''})" if extra else ""
    return InputError(f"{path}: {msg}{more}", param=path)


def parse_edit_request(data: str | bytes | list[Any] | dict[str, Any]) -> EditRequest:
    """Validate ops from a JSON string (e.g. a multipart form field), a list or ``{"ops": ...}``.

    Raises `InputError` with the parameter path as `param` and first in the message, e.g.
    ``ops[1].factor: input should be less than or equal to 5, got 9.0``.
    """
    if isinstance(data, str | bytes):
        try:  # depth-limited: never RecursionError
            data = safe_json.loads(data, what="ops", param="ops")
        except ValueError as exc:  # json.JSONDecodeError, or JsonTooDeep (an InputError)
            raise InputError(f"ops must be a JSON list of edit ops ({exc})", param="ops",
                             code=getattr(exc, "code", "invalid_json")) from None
    if isinstance(data, list):
        data = {"ops": data}
    if not isinstance(data, dict):
        raise InputError(f"ops must be a list of edit ops, got {type(data).__name__}",
                         param="ops")
    try:
        return EditRequest.model_validate(data)
    except ValidationError as exc:
        raise _as_input_error(exc) from None


def _coerce_ops(ops: Sequence[Any]) -> list[_Op]:
    if isinstance(ops, EditRequest):
        ops = ops.ops
    if not isinstance(ops, Sequence) or isinstance(ops, str | bytes):
        raise InputError(f"ops must be a list of edit ops, got {type(ops).__name__}",
                         param="ops")
    if not 1 <= len(ops) <= MAX_OPS:
        raise InputError(f"ops must have 1 to {MAX_OPS} items, got {len(ops)}", param="ops")
    if all(isinstance(op, _Op) for op in ops):
        return list(ops)
    try:
        return list(_OPS_ADAPTER.validate_python(
            [op.model_dump() if isinstance(op, _Op) else op for op in ops]))
    except ValidationError as exc:
        raise _as_input_error(exc, "ops") from None


def check_ops(size: Size, ops: Sequence[EditOp], *, max_pixels: int = MAX_PIXELS,
              max_cost: float = MAX_CHAIN_COST) -> Size:
    """Check the chain against an image of `size` (width, height); return the output size.

    Cheap (no pixels): call it as soon as the image size is known to reject a bad chain before
    any work: geometry, and the chain's total work (`chain_cost`) against `max_cost`. Raises
    `InputError` whose `param` is the op's parameter path (``ops[2].width``; ``ops[2]`` for
    the work budget), which its message starts with.
    """
    checked = _coerce_ops(ops)
    w, h = size
    if w < 1 or h < 1 or max(w, h) > MAX_SIDE or w * h > max_pixels:
        raise InputError(f"image must be 1 to {MAX_SIDE} pixels per side and at most "
                         f"{max_pixels:,} pixels in all, got {w}x{h}", param="image")
    total = 0.0
    for i, op in enumerate(checked):
        new = op.output_size(size, f"ops[{i}]", max_pixels)
        total += op.cost(size, new)
        if total > max_cost:
            raise InputError(
                f"ops[{i}] takes the chain over its work budget ({total / max_cost:.1f}x of "
                f"{max_cost:,.0f} units by this op, ~ pixels x op weight): apply fewer ops, a "
                "smaller blur radius or region, or work on a smaller image", param=f"ops[{i}]")
        size = new
    return size


def chain_cost(size: Size, ops: Sequence[EditOp], *, max_pixels: int = MAX_PIXELS) -> float:
    """The chain's total work on an image of `size`, in cost units (no budget applied)."""
    total = 0.0
    for i, op in enumerate(_coerce_ops(ops)):
        new = op.output_size(size, f"ops[{i}]", max_pixels)
        total += op.cost(size, new)
        size = new
    return total


def apply_ops(image: np.ndarray, ops: Sequence[EditOp], *,
              max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Apply `ops` in order to an HxWx3 (RGB) or HxWx4 (RGBA) uint8 array; same kind out.

    The whole chain is checked first (`check_ops`), so a bad op fails before any pixel work.
    The input array is not modified.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError("image must be an HxWx3 (RGB) or HxWx4 (RGBA) uint8 array, got shape "
                         f"{image.shape} dtype {image.dtype}")
    checked = _coerce_ops(ops)
    expected = check_ops((image.shape[1], image.shape[0]), checked, max_pixels=max_pixels)
    img = Image.fromarray(np.ascontiguousarray(image))
    for op in checked:
        img = op.apply(img)
    if img.size != expected:  # check_ops mirrors Pillow's geometry; a mismatch is a bug
        raise RuntimeError(f"edit chain gave {img.size}, check_ops predicted {expected}")
    return np.array(img)


__all__ = [
    "BlurOp", "BrightnessOp", "ContrastOp", "CropOp", "EditOp", "EditRequest", "FlipOp",
    "GrayscaleOp", "MAX_OPS", "MAX_PIXELS", "MAX_SIDE", "OP_NAMES", "Region", "ResizeOp",
    "MAX_CHAIN_COST", "RotateOp", "SaturationOp", "apply_ops", "chain_cost", "check_ops",
    "param_path", "parse_edit_request",
    "rotated_size",
]
