"""The real `openai` Python client against our OpenAI-compatible Images routes, on the
deployed production graph (tiny models) through the Serve proxy."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.api_key, max_retries=0,
                         timeout=120)


def png_bytes(width=64, height=48, alpha: int | None = None, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    if alpha is not None:
        arr = np.dstack([arr, np.full((height, width), alpha, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def test_generate_b64(client):
    res = client.images.generate(prompt="a cat in a crown", n=2, size="64x48",
                                 extra_body={"seed": 1})
    assert len(res.data) == 2
    assert all(decode(d.b64_json).size == (64, 48) for d in res.data)
    assert res.size == "64x48" and res.output_format == "png"
    assert res.quality == "medium" and res.background == "opaque"
    assert res.usage.input_tokens_details.text_tokens == 5  # words of the prompt


def test_generate_url(client):
    res = client.images.generate(prompt="a lighthouse", response_format="url", size="64x64")
    data = httpx.get(res.data[0].url, timeout=30)
    assert data.status_code == 200 and Image.open(io.BytesIO(data.content)).size == (64, 64)


def test_generate_transparent_webp_and_jpeg_compression(client):
    res = client.images.generate(prompt="a red sneaker", background="transparent",
                                 output_format="webp", size="64x64")
    img = decode(res.data[0].b64_json)
    assert img.format == "WEBP" and img.mode == "RGBA" and res.background == "transparent"
    small = client.images.generate(prompt="a cat", output_format="jpeg", output_compression=5,
                                   size="64x64", extra_body={"seed": 3})
    big = client.images.generate(prompt="a cat", output_format="jpeg", output_compression=95,
                                 size="64x64", extra_body={"seed": 3})
    assert decode(small.data[0].b64_json).format == "JPEG"
    assert len(small.data[0].b64_json) < len(big.data[0].b64_json)


def test_quality_maps_to_steps(client, gateway):
    from storage.records import RecordStore

    records = RecordStore(f"sqlite:///{gateway.data_dir / 'photostudio.db'}")
    steps = {}
    for quality in ("low", "high"):
        res = client.images.generate(prompt="a tree", quality=quality, size="64x64")
        job_id = res.model_extra["metadata"]["job_id"]
        steps[quality] = records.get_job(job_id=job_id, project="default").params["steps"]
    assert steps["low"] < steps["high"]


def test_generate_stream_with_partial_images(client):
    events = list(client.images.generate(prompt="a fox", stream=True, partial_images=2,
                                         size="64x64"))
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert all(decode(e.b64_json).size == (64, 64) for e in events)
    assert events[-1].usage.input_tokens > 0


def test_edit_with_one_image(client):
    res = client.images.edit(image=("a.png", png_bytes()), prompt="make it snowy",
                             input_fidelity="high")
    img = decode(res.data[0].b64_json)
    assert img.size[0] % 8 == 0 and img.size[0] / img.size[1] == pytest.approx(64 / 48, 0.1)


def test_edit_with_three_reference_images(client):
    res = client.images.edit(image=[("a.png", png_bytes(seed=1)), ("b.png", png_bytes(seed=2)),
                                    ("c.png", png_bytes(seed=3))],
                             prompt="the three objects on one table", size="64x64")
    assert decode(res.data[0].b64_json).size == (64, 64)


def test_edit_with_a_mask_inpaints(client):
    image = png_bytes(64, 64)
    mask = np.full((64, 64, 4), 255, np.uint8)
    mask[16:48, 16:48, 3] = 0  # transparent square: repaint it
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    res = client.images.edit(image=("a.png", image), mask=("m.png", buf.getvalue()),
                             prompt="a hat", size="64x64")
    assert decode(res.data[0].b64_json).size == (64, 64)


def test_edit_keeps_transparent_inputs(client):
    res = client.images.edit(image=("a.png", png_bytes(64, 64, alpha=0)), prompt="a ghost",
                             background="transparent", size="64x64")
    img = decode(res.data[0].b64_json)
    assert img.mode == "RGBA" and np.asarray(img)[..., 3].max() == 0


def test_edit_stream(client):
    events = list(client.images.edit(image=("a.png", png_bytes()), prompt="snow", stream=True,
                                     partial_images=1))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]


def test_create_variation(client):
    res = client.images.create_variation(image=("a.png", png_bytes()), n=2, size="64x64")
    assert len(res.data) == 2 and all(decode(d.b64_json).size == (64, 64) for d in res.data)


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"tiny-sd", "tiny-u2net", "tiny-insightface", "tiny-esrgan"} <= ids


def _bad_mask() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((10, 10, 4), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("call,param,needle", [
    (lambda c: c.images.generate(prompt="x", background="transparent", output_format="jpeg"),
     "background", "png or webp"),
    (lambda c: c.images.generate(prompt="x", n=11), "n", "10"),
    (lambda c: c.images.generate(prompt="x", size="1000x1000"), "size", "multiples of 8"),
    (lambda c: c.images.generate(prompt="x", size="huge"), "size", "size"),
    (lambda c: c.images.generate(prompt="x", model="dall-e-3"), "model", "tiny-sd"),
    (lambda c: c.images.generate(prompt="x" * 12_000), "prompt", "10000"),
    (lambda c: c.images.generate(prompt="x", stream=True, n=2), "n", "n=1"),
    (lambda c: c.images.edit(image=("a.png", png_bytes()), mask=("m.png", _bad_mask()),
                             prompt="x"), "mask", "must match"),
    (lambda c: c.images.edit(image=[(f"{i}.png", png_bytes(8, 8)) for i in range(17)],
                             prompt="x"), "image", "16"),
])
def test_invalid_combinations_are_bad_requests(client, call, param, needle):
    with pytest.raises(openai.BadRequestError) as err:
        call(client)
    body = err.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == param, body
    assert needle in body["message"]
