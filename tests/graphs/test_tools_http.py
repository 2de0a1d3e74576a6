"""Each image-tool endpoint over real HTTP through the Serve proxy (production graph, tiny
models), bad uploads included."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.models.test_faceswap import SKIN, draw


def png(array: np.ndarray | Image.Image, fmt: str = "PNG", **kw) -> bytes:
    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def image_of(body: dict, i: int = 0) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(body["data"][i]["b64_json"])))
    img.load()
    return img


@pytest.fixture(scope="module")
def photo() -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    return png(arr)


def assert_envelope(r, status: int, param: str | None = None):
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


# -- background removal ---------------------------------------------------------------------

def test_remove_background_gives_an_rgba_cutout(http, photo):
    r = http.post("/v1/images/remove-background", files={"image": ("a.png", photo, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    img = image_of(body)
    assert img.mode == "RGBA" and img.size == (80, 48) and body["output_format"] == "png"
    assert body["metadata"]["model"] == "tiny-u2net" and body["metadata"]["tiny"] is True


def test_remove_background_answers_the_png_itself_when_asked(http, photo):
    """`Accept: image/png` (ranked above JSON): the cut-out's bytes, the same pixels as the
    JSON answer's base64, its id and job in headers; the asset is stored as usual."""
    r = http.post("/v1/images/remove-background", files={"image": ("a.png", photo)},
                  headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-image-size"] == "80x48" and r.headers["x-model"] == "tiny-u2net"
    raw = Image.open(io.BytesIO(r.content))
    as_json = image_of(http.post("/v1/images/remove-background",
                                 files={"image": ("a.png", photo)}).json())
    assert raw.mode == "RGBA" and np.array_equal(np.asarray(raw), np.asarray(as_json))
    stored = http.get(f"/v1/assets/{r.headers['x-asset-id']}")
    assert stored.status_code == 200 and stored.content == r.content
    assert http.get(f"/v1/jobs/{r.headers['x-job-id']}").json()["status"] == "succeeded"
    # JSON ranked first, or no preference: the usual JSON answer
    for accept in ("application/json, image/png;q=0.5", "*/*"):
        r = http.post("/v1/images/remove-background", files={"image": ("a.png", photo)},
                      headers={"Accept": accept})
        assert r.headers["content-type"] == "application/json" and r.json()["data"]


@pytest.mark.parametrize("output,mode", [("mask", "L"), ("solid", "RGB")])
def test_remove_background_mask_and_solid(http, photo, output, mode):
    data = {"output": output}
    if output == "solid":
        data["bg_color"] = "#00ff00"
    r = http.post("/v1/images/remove-background", files={"image": ("a.png", photo)}, data=data)
    assert r.status_code == 200, r.text
    img = image_of(r.json())
    assert img.mode == mode and img.size == (80, 48)


def test_remove_background_rejects_jpeg_cutouts_and_unknown_fields(http, photo):
    r = http.post("/v1/images/remove-background", files={"image": ("a.png", photo)},
                  data={"output_format": "jpeg"})
    assert "png or webp" in assert_envelope(r, 400, "output_format")["message"]
    r = http.post("/v1/images/remove-background", files={"image": ("a.png", photo)},
                  data={"modle": "u2net"})
    assert_envelope(r, 400, "modle")
    r = http.post("/v1/images/remove-background", files={"image": ("a.png", photo)},
                  data={"output": "solid", "bg_color": "purple"})
    assert_envelope(r, 400, "bg_color")


# -- face swap ------------------------------------------------------------------------------

def test_face_swap_returns_an_image_the_size_of_the_target(http):
    source = png(draw(160, 160, [(80, 80, 50)], colour=(230, 120, 90)))
    target = png(draw(240, 160, [(60, 80, 30), (180, 80, 40)]))
    r = http.post("/v1/images/face-swap", files={"source": ("s.png", source),
                                                 "target": ("t.png", target)},
                  data={"all_faces": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert image_of(body).size == (240, 160)
    assert body["metadata"]["extra"]["faces_swapped"] == 2


@pytest.mark.parametrize("which", ["source", "target"])
def test_face_swap_says_which_image_has_no_face(http, which):
    face = png(draw(160, 160, [(80, 80, 50)], colour=SKIN))
    blank = png(draw(160, 160, []))
    files = {"source": ("s.png", blank if which == "source" else face),
             "target": ("t.png", blank if which == "target" else face)}
    r = http.post("/v1/images/face-swap", files=files)
    error = assert_envelope(r, 422, which)
    assert which in error["message"] and error["code"] == "no_face"


def test_face_swap_index_out_of_range_and_missing_file(http):
    face = png(draw(160, 160, [(80, 80, 50)]))
    r = http.post("/v1/images/face-swap", files={"source": ("s.png", face),
                                                 "target": ("t.png", face)},
                  data={"target_face_index": "3"})
    assert "target_face_index" in assert_envelope(r, 400)["message"]
    r = http.post("/v1/images/face-swap", files={"source": ("s.png", face)})
    assert_envelope(r, 400, "target")


# -- upscale --------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 4])
def test_upscale_multiplies_the_size(http, photo, scale):
    r = http.post("/v1/images/upscale", files={"image": ("a.png", photo)},
                  data={"scale": str(scale)})
    assert r.status_code == 200, r.text
    assert image_of(r.json()).size == (80 * scale, 48 * scale)


def test_upscale_keeps_alpha_and_rejects_other_scales(http):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 200
    r = http.post("/v1/images/upscale", files={"image": ("a.png", png(rgba))}, data={"scale": 2})
    assert r.status_code == 200, r.text
    assert image_of(r.json()).mode == "RGBA"
    r = http.post("/v1/images/upscale", files={"image": ("a.png", png(rgba))}, data={"scale": 3})
    assert_envelope(r, 400, "scale")


# -- edit ops -------------------------------------------------------------------------------

def test_edit_ops_apply_in_order(http, photo):
    ops = [{"op": "crop", "x": 10, "y": 4, "width": 40, "height": 30}, {"op": "grayscale"},
           {"op": "rotate", "degrees": 90}]
    r = http.post("/v1/images/edit-ops", files={"image": ("a.png", photo)},
                  data={"ops": json.dumps(ops)})
    assert r.status_code == 200, r.text
    img = np.asarray(image_of(r.json()).convert("RGB"))
    assert img.shape == (40, 30, 3)
    assert np.array_equal(img[..., 0], img[..., 1])


@pytest.mark.parametrize("ops,param", [
    ('[{"op": "crop", "x": 0, "y": 0, "width": 500, "height": 10}]', "ops[0].width"),
    ('[{"op": "brightness", "factor": 9}]', "ops[0].factor"),
    ('[{"op": "sharpen"}]', "ops[0].op"),
    ("not json", "ops"),
    ('[{"op": "blur", "region": {"x": 0, "y": 0, "width": 500, "height": 1}}]',
     "ops[0].region.width"),
])
def test_edit_ops_bad_chains_name_the_op(http, photo, ops, param):
    r = http.post("/v1/images/edit-ops", files={"image": ("a.png", photo)}, data={"ops": ops})
    error = assert_envelope(r, 400, param)
    assert "ops" in error["message"]


# -- style transfer -------------------------------------------------------------------------

def test_styles_are_listed(http):
    styles = http.get("/v1/styles").json()["data"]
    names = {s["name"] for s in styles}
    assert {"watercolor", "anime", "ukiyo-e", "cyberpunk"} <= names


@pytest.mark.parametrize("style", ["watercolor", "in the style of stained glass"])
def test_style_transfer_presets_and_free_text(http, photo, style):
    r = http.post("/v1/images/style-transfer", files={"image": ("a.png", photo)},
                  data={"style": style, "prompt": "a cat", "seed": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    img = image_of(body)
    assert img.mode == "RGB" and img.size[0] % 8 == 0 and img.size[1] % 8 == 0
    expected = "watercolor" if style == "watercolor" else "custom"
    assert body["metadata"]["extra"]["style"] == expected
    assert "a cat" in body["data"][0]["revised_prompt"]


def test_style_transfer_bad_strength(http, photo):
    r = http.post("/v1/images/style-transfer", files={"image": ("a.png", photo)},
                  data={"style": "anime", "strength": "1.5"})
    assert_envelope(r, 400, "strength")


# -- hostile uploads (every tool decodes through the same edge code) --------------------------

def _truncated() -> bytes:
    data = png(np.zeros((64, 64, 3), np.uint8), "JPEG")
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "not an image": (b"definitely not an image", 415),
    "truncated jpeg": (_truncated(), 400),
    "empty file": (b"", 400),
    "decompression bomb": (png(Image.new("1", (20000, 20000))), 413),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', 415),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
@pytest.mark.parametrize("route", ["remove-background", "upscale"])
def test_hostile_uploads_get_4xx_and_the_server_keeps_answering(http, photo, route, name):
    data, status = BAD_UPLOADS[name]
    r = http.post(f"/v1/images/{route}", files={"image": ("x.png", data)})
    assert_envelope(r, status, "image")
    r = http.post(f"/v1/images/{route}", files={"image": ("a.png", photo)})
    assert r.status_code == 200


def test_cmyk_and_exif_uploads_are_converted(http):
    cmyk = png(Image.new("RGB", (40, 20), "red").convert("CMYK"), "JPEG")
    r = http.post("/v1/images/upscale", files={"image": ("c.jpg", cmyk)}, data={"scale": 2})
    assert r.status_code == 200 and image_of(r.json()).size == (80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90°
    rotated = png(Image.new("RGB", (40, 20), "blue"), "JPEG", exif=exif.tobytes())
    r = http.post("/v1/images/upscale", files={"image": ("e.jpg", rotated)}, data={"scale": 2})
    assert r.status_code == 200 and image_of(r.json()).size == (40, 80)


def test_capabilities_list_every_deployment(http):
    caps = http.get("/v1/capabilities").json()
    assert set(caps["deployments"]) == {"generator", "matting", "faceswap", "upscaler", "llm",
                                        "vision", "video"}
    assert caps["deployments"]["vision"]["name"] == "tiny-blip"
    assert caps["deployments"]["llm"]["name"] == "tiny-llm"
    assert caps["deployments"]["matting"]["name"] == "tiny-u2net"
    assert {"/v1/images/remove-background", "/v1/images/face-swap", "/v1/images/upscale",
            "/v1/images/edit-ops", "/v1/images/style-transfer"} <= set(caps["endpoints"])
