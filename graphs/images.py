"""Image encoding at the edge: arrays in, bytes out (encoded once, on the way out)."""

from __future__ import annotations

import html
import io
import json
import re
import struct
import zlib
from typing import Any, Literal

import numpy as np

from common.errors import InputError

Format = Literal["png", "jpeg", "webp"]
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PNG_ZLIB_RLE = 3  # zlib.Z_RLE, as Pillow's PNG `compress_type` (the zlib strategy)


RECIPE_KEY = "photostudio:recipe"  # PNG iTXt keyword; XMP attribute (WebP)
_XMP_RECIPE = re.compile(r'photostudio:recipe="([^"]*)"')


def encode(array: np.ndarray, fmt: Format = "png", *, quality: int = 90,
           recipe: dict[str, Any] | None = None) -> bytes:
    """`recipe`: how the image was made, embedded as a PNG iTXt chunk or WebP XMP (JPEG: the
    record only)."""
    blob = _encode(array, fmt, quality=quality, recipe=recipe)
    if recipe is not None and fmt == "png":
        blob = _png_with_text(blob, RECIPE_KEY, json.dumps(recipe, separators=(",", ":")))
    return blob


def _png_with_text(blob: bytes, keyword: str, text: str) -> bytes:
    """The PNG with one iTXt chunk (UTF-8, uncompressed) inserted before IEND."""
    data = keyword.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8")
    chunk = struct.pack(">I", len(data)) + b"iTXt" + data + struct.pack(
        ">I", zlib.crc32(b"iTXt" + data) & 0xFFFFFFFF)
    end = blob.rfind(b"IEND") - 4
    return blob[:end] + chunk + blob[end:]


def read_recipe(data: bytes) -> dict[str, Any] | None:
    """The recipe embedded in a PNG or WebP made here (None: none, or not an image of ours)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            text = getattr(img, "text", {}).get(RECIPE_KEY) if img.format == "PNG" else None
            if text is None and img.format == "WEBP":
                xmp = img.info.get("xmp") or b""
                match = _XMP_RECIPE.search(xmp.decode("utf-8", "replace")
                                           if isinstance(xmp, bytes) else str(xmp))
                text = html.unescape(match.group(1)) if match else None
    except Exception:  # noqa: BLE001 - not an image we can read: no recipe
        return None
    if not text:
        return None
    try:
        recipe = json.loads(text)
    except ValueError:
        return None
    return recipe if isinstance(recipe, dict) else None


def _xmp(recipe: dict[str, Any]) -> bytes:
    value = html.escape(json.dumps(recipe, separators=(",", ":")), quote=True)
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
            '02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:photostudio='
            f'"https://photostudio.dev/ns/1.0/" photostudio:recipe="{value}"/></rdf:RDF>'
            '</x:xmpmeta>').encode()


def _encode(array: np.ndarray, fmt: Format = "png", *, quality: int = 90,
            recipe: dict[str, Any] | None = None) -> bytes:
    if fmt == "png":
        # zlib level 1 with the run-length strategy: on photos and cut-outs measured faster
        # than plain level 1 and about as small as level 6, which is 3-5x slower. OpenCV's
        # encoder (the tools extra) does it in ~2/3 of Pillow's time, same pixels
        # (BENCHMARKS.md, "Background removal"); Pillow otherwise. With OpenCV, every row
        # uses PNG's "up" filter instead of trying all five per row (libpng's default
        # heuristic): a 640x480 RGBA cut-out encodes in about half the time (27 -> 14-18 ms)
        # for 1-6 % more bytes. PNG is lossless.
        blob = _png_cv2(array)
        if blob is not None:
            return blob
    from PIL import Image

    img = Image.fromarray(array)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1, compress_type=PNG_ZLIB_RLE)
    elif fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="WEBP", quality=quality,
                 **({"xmp": _xmp(recipe)} if recipe is not None else {}))
    return buf.getvalue()


def _png_cv2(array: np.ndarray) -> bytes | None:
    """PNG bytes from OpenCV for 8-bit gray/RGB/RGBA arrays; None without OpenCV (or for
    other arrays: Pillow handles them)."""
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3
                                                             and array.shape[2] in (3, 4))):
        return None
    try:
        import cv2
    except ImportError:
        return None
    if array.ndim == 3:  # OpenCV's channel order is BGR(A)
        code = cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        array = cv2.cvtColor(np.ascontiguousarray(array), code)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                           cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                                           cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    return buf.tobytes() if ok else None


# --- decoding uploads ----------------------------------------------------------------------

DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")


class ImageInputError(InputError):
    """A bad upload. `status`: 400 broken, 413 too large, 415 unsupported."""

    def __init__(self, field: str, message: str, *, status: int = 400, code: str = "invalid_image"):
        super().__init__(f"{field}: {message}", param=field, code=code, status=status)
        self.field = field


def _open(data: bytes, *, field: str, max_pixels: int, max_bytes: int):
    """The image's header, checked (format, size, frames) before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageInputError(field, "the file is empty; upload a PNG, JPEG or WebP image")
    if len(data) > max_bytes:
        raise ImageInputError(field, f"the file is {len(data)} bytes; the limit is {max_bytes}",
                              status=413, code="image_too_large")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageInputError(field, "not a recognised image; upload PNG, JPEG or WebP",
                              status=415, code="unsupported_image") from None
    except Image.DecompressionBombError as exc:
        raise ImageInputError(field, f"{exc}; the limit is {max_pixels} pixels", status=413,
                              code="image_too_large") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageInputError(field, f"could not read the image ({exc})") from None
    if img.format not in ACCEPTED_FORMATS:
        raise ImageInputError(field, f"{img.format} images are not supported; upload one of "
                              f"{', '.join(ACCEPTED_FORMATS)}", status=415,
                              code="unsupported_image")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageInputError(field, f"the image is {width}x{height}; it must be at least 1x1")
    if width * height > max_pixels:
        raise ImageInputError(field, f"the image is {width}x{height} = {width * height} pixels; "
                              f"the limit is {max_pixels} pixels", status=413,
                              code="image_too_large")
    if getattr(img, "n_frames", 1) > 1:
        raise ImageInputError(field, "animated images are not supported; upload one frame",
                              status=415, code="unsupported_image")
    return img


def probe(data: bytes, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
          max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[int, int]:
    """(width, height) from the header alone, with every check `decode` makes before it
    decodes: cheap, so a request's uploads can be budgeted before any of them is decoded."""
    return _open(data, field=field, max_pixels=max_pixels, max_bytes=max_bytes).size


def check_pixel_budget(sizes: list[tuple[str, tuple[int, int]]], *, max_total_pixels: int
                       ) -> None:
    """The uploads of one request together (`(field, (width, height))` each, from `probe`)
    stay within `max_total_pixels`: decoding them all is what holds memory."""
    total = sum(w * h for _, (w, h) in sizes)
    if total > max_total_pixels:
        largest = max(sizes, key=lambda item: item[1][0] * item[1][1])
        raise ImageInputError(
            largest[0], f"the {len(sizes)} images of this request have {total} pixels "
            f"together; the limit per request is {max_total_pixels} pixels: send fewer or "
            f"smaller images", status=413, code="images_too_large")


def image_format(data: bytes) -> str | None:
    """The file format (png, jpeg, webp…) from the header of bytes `decode` accepted."""
    from PIL import Image

    try:
        return (Image.open(io.BytesIO(data)).format or "").lower() or None
    except Exception:  # noqa: BLE001 - a format we can't name is reported as None
        return None


def decode(data: bytes, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
           max_bytes: int = DEFAULT_MAX_BYTES, keep_alpha: bool = True) -> np.ndarray:
    """Decode an uploaded image once, at the edge, to an HxWx3 (or HxWx4) uint8 array.

    Honours EXIF orientation; converts palette, grayscale, CMYK and 16-bit images to 8-bit
    RGB(A); refuses non-images, truncated files, animations, and images over `max_pixels`
    (checked from the header, before pixels are decoded: a decompression-bomb guard).
    """
    from PIL import Image, ImageOps

    img = _open(data, field=field, max_pixels=max_pixels, max_bytes=max_bytes)
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ImageInputError(field, f"the image data is broken or truncated ({exc})") from None
    return _to_8bit_rgb(img, field=field, keep_alpha=keep_alpha)


def _to_8bit_rgb(img, *, field: str, keep_alpha: bool) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16"):
        arr = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.stack([arr] * 3, axis=-1)
    if mode in ("I", "F"):
        raise ImageInputError(field, f"{mode} (32-bit) images are not supported; convert to "
                              "8-bit RGB", status=415, code="unsupported_image")
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info)
    target = "RGBA" if has_alpha and keep_alpha else "RGB"
    if mode != target:
        img = img.convert(target)
    return np.asarray(img, dtype=np.uint8).copy()


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    """An Accept header's media ranges with their q values (RFC 9110 §12.5.1)."""
    ranges = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q))
    return ranges


def accepted_image_formats(accept: str | None) -> set[str] | None:
    """The image formats (`png`, `jpeg`, `webp`) a client asks for *instead of* JSON, by its
    Accept header: an image type (``image/png``, ``image/*``) ranked above JSON. None: it
    wants the JSON answer (no header, ``*/*``, ``application/json``, or JSON ranked first)."""
    if not accept:
        return None
    ranges = _media_ranges(accept)
    json_q = max((q for media, q in ranges
                  if media in ("application/json", "application/*", "*/*")), default=0.0)
    formats: set[str] = set()
    best = 0.0
    for media, q in ranges:
        if q <= 0 or not media.startswith("image/"):
            continue
        subtype = media.removeprefix("image/")
        named = {"*": set(CONTENT_TYPES), "jpg": {"jpeg"}}.get(subtype,
                                                               {subtype} & set(CONTENT_TYPES))
        if named:
            formats |= named
            best = max(best, q)
    return formats if formats and best > json_q else None
