"""LoRA adapters and the models API over real HTTP (the production graph, tiny models)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

WARM = "tiny-lora-warm"


def _post(gateway, path, **kwargs):
    return httpx.post(f"{gateway.base_url}{path}", headers=gateway.headers, timeout=180,
                      **kwargs)


def _pixels(body) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
                      ).astype(np.int16)


def test_models_lists_the_catalogue_and_the_tiny_loras(gateway):
    get = lambda path: httpx.get(f"{gateway.base_url}{path}", headers=gateway.headers,  # noqa: E731
                                 timeout=60)
    response = get("/v1/models")
    assert response.status_code == 200, response.text
    every = response.json()
    assert every["object"] == "list" and every["data"][0]["deployment"] == "generator"
    assert {"base", "lora", "vae", "upscaler", "matting", "face"} <= {
        m["kind"] for m in every["data"]}
    loras = get("/v1/models?kind=lora").json()["data"]
    assert {m["id"] for m in loras} >= {WARM, "tiny-lora-cool", "tiny-lora-ink"}
    assert all(m["kind"] == "lora" and m["base"] == "tiny-sd" for m in loras)
    one = get(f"/v1/models/{WARM}").json()
    assert (one["object"], one["trigger_words"], one["default_weight"]) == (
        "model", ["warm"], 1.0)
    bad = get("/v1/models?kind=audio")
    assert bad.status_code == 400 and "kinds: base, lora" in bad.json()["error"]["message"]
    missing = get("/v1/models/tiny-lora-wram")
    assert missing.status_code == 404
    assert "did you mean tiny-lora-warm" in missing.json()["error"]["message"]


@pytest.mark.slow
def test_loras_field_and_prompt_syntax_give_the_same_image(gateway):
    body = {"prompt": "a red cat", "size": "64x64", "steps": 2, "seed": 3}
    base = _post(gateway, "/v1/images/generations", json=body)
    field = _post(gateway, "/v1/images/generations",
                  json={**body, "loras": [{"name": WARM, "weight": 0.9}]})
    tagged = _post(gateway, "/v1/images/generations",
                   json={**body, "prompt": f"a red cat <lora:{WARM}:0.9>"})
    assert base.status_code == field.status_code == tagged.status_code == 200, tagged.text
    assert np.array_equal(_pixels(field.json()), _pixels(tagged.json()))
    assert np.abs(_pixels(field.json()) - _pixels(base.json())).mean() > 2.0
    assert field.json()["metadata"]["loras"] == [{"name": WARM, "weight": 0.9}]
    assert base.json()["metadata"]["loras"] == []
    job = httpx.get(f"{gateway.base_url}/v1/jobs/{tagged.json()['metadata']['job_id']}",
                    headers=gateway.headers, timeout=30).json()
    assert job["result"]["metadata"]["loras"] == [{"name": WARM, "weight": 0.9}]


@pytest.mark.slow
def test_loras_on_edits_and_bad_names_are_400s(gateway):
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(png, format="PNG")
    edit = _post(gateway, "/v1/images/edits", files={"image": ("a.png", png.getvalue())},
                 data={"prompt": "a red cat", "steps": "2", "size": "64x64",
                       "loras": json.dumps([{"name": WARM, "weight": 0.5}])})
    assert edit.status_code == 200, edit.text
    assert edit.json()["metadata"]["loras"] == [{"name": WARM, "weight": 0.5}]
    unknown = _post(gateway, "/v1/images/generations",
                    json={"prompt": "a cat", "size": "64x64", "loras": [{"name": "tiny-lora-wrm"}]})
    assert unknown.status_code == 400
    error = unknown.json()["error"]
    assert error["param"] == "loras" and "did you mean tiny-lora-warm" in error["message"]
    six = _post(gateway, "/v1/images/generations",
                json={"prompt": "a cat", "loras": [{"name": WARM}] * 6})
    assert six.status_code == 400  # at most 5
    after = _post(gateway, "/v1/images/generations", json={"prompt": "a cat", "size": "64x64",
                                                           "steps": 1})
    assert after.status_code == 200  # the server is fine after
