"""Decoding uploads at the edge: every kind of bad file is a clear 4xx-class error."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from graphs.errors import to_api_error
from graphs.images import ImageInputError, decode, encode


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_roundtrip_rgb_and_rgba():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode(encode(rgb, "png")), rgb)
    rgba = np.dstack([rgb, np.full((20, 30), 128, np.uint8)])
    out = decode(encode(rgba, "png"))
    assert out.shape == (20, 30, 4) and np.array_equal(out, rgba)
    assert decode(encode(rgba, "png"), keep_alpha=False).shape == (20, 30, 3)


def test_exif_orientation_is_honoured():
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode(_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.shape[:2] == (40, 20)


@pytest.mark.parametrize("mode", ["P", "L", "LA", "CMYK", "1"])
def test_modes_are_converted_to_8bit_rgb(mode):
    img = Image.new("RGB", (8, 8), (10, 200, 30)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode(_bytes(img, fmt))
    assert out.dtype == np.uint8 and out.shape[2] in (3, 4)


def test_16bit_is_scaled_to_8bit():
    arr = np.full((4, 4), 65535, np.uint16)
    out = decode(_bytes(Image.fromarray(arr), "PNG"))
    assert out.shape == (4, 4, 3) and out.max() == 255


def _bad_files():
    png = _bytes(Image.new("RGB", (64, 64), "blue"), "PNG")
    jpeg = _bytes(Image.new("RGB", (64, 64), "blue"), "JPEG")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("a.txt", "hello")
    gif = io.BytesIO()
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    bomb = _bytes(Image.new("1", (20000, 20000)), "PNG")  # tiny file, 400 Mpx
    return {
        "empty": (b"", 400),
        "text": (b"hello, not an image", 415),
        "zip renamed .png": (zbuf.getvalue(), 415),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415),
        "truncated png": (png[: len(png) // 2], 400),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], 400),
        "gif animation": (gif.getvalue(), 415),
        "decompression bomb": (bomb, 413),
        "20000x1": (_bytes(Image.new("RGB", (20000, 1)), "PNG"), None),
    }


@pytest.mark.parametrize("name", list(_bad_files()))
def test_bad_files_are_rejected_with_a_status(name):
    data, status = _bad_files()[name]
    if status is None:  # a legal, if odd, image under the pixel limit decodes fine
        assert decode(data).shape == (1, 20000, 3)
        with pytest.raises(ImageInputError) as err:
            decode(data, max_pixels=10_000)
        assert err.value.status == 413
        return
    with pytest.raises(ImageInputError) as err:
        decode(data, field="source")
    assert err.value.status == status
    assert str(err.value).startswith("source:")
    api = to_api_error(err.value)
    assert api.status == status and api.param == "source"


def test_upload_byte_limit():
    with pytest.raises(ImageInputError, match="limit is 10") as err:
        decode(b"x" * 11, max_bytes=10)
    assert err.value.status == 413


@pytest.mark.parametrize("accept,expected", [
    (None, None),
    ("", None),
    ("*/*", None),  # no preference: JSON, the default answer
    ("application/json", None),
    ("application/json, image/png;q=0.5", None),
    ("image/png", {"png"}),
    ("image/webp, application/json;q=0.9", {"webp"}),
    ("image/*", {"png", "jpeg", "webp"}),
    ("image/jpg", {"jpeg"}),
    ("image/png;q=0, application/json", None),
    ("image/gif", None),  # not a format we make
    ("image/png; q=bogus", None),
])
def test_accept_header_picks_image_bytes_over_json_only_when_ranked_first(accept, expected):
    from graphs.images import accepted_image_formats

    assert accepted_image_formats(accept) == expected


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_a_recipe_travels_in_the_file(fmt):
    """PNG iTXt / WebP XMP: the recipe reads back exactly, quotes and non-ASCII included; the
    pixels are the same as without it; JPEG and plain images carry none."""
    from graphs.images import read_recipe

    recipe = {"v": 1, "prompt": 'a "quoted" café <scene> & more', "seed": 7, "steps": 2,
              "size": "16x16", "loras": [{"name": "ink", "weight": 0.5}]}
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    blob = encode(image, fmt, quality=100, recipe=recipe)
    assert read_recipe(blob) == recipe
    plain = encode(image, fmt, quality=100)
    assert read_recipe(plain) is None
    decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in (blob, plain)]
    assert np.array_equal(decoded[0], decoded[1])
    assert read_recipe(encode(image, "jpeg", recipe=recipe)) is None
    assert read_recipe(b"not an image") is None
