"""Image analysis over real HTTP on the production graph (tiny BLIP in its own Vision
deployment, the tiny face detector, exact colours), the chat's "describe this" (EN/FR), and
prompt enhancement."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.models.test_faceswap import draw


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(gateway):
    with httpx.Client(base_url=gateway.base_url, headers=gateway.headers, timeout=180) as c:
        yield c


def flat() -> np.ndarray:
    image = np.zeros((40, 100, 4), np.uint8)
    # cold colours: the tiny face detector takes warm-coloured areas for faces
    image[:, :50] = (0, 0, 255, 255)
    image[:, 50:80] = (0, 160, 0, 255)
    image[:, 80:] = (0, 255, 0, 0)  # transparent
    return image


def test_analyze_an_upload(client):
    r = client.post("/v1/images/analyze", files={"image": ("f.png", encode(flat()),
                                                          "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "image.analysis"
    assert [(c["hex"], c["share"]) for c in body["colors"]] == [("#0000ff", 0.625),
                                                                 ("#00a000", 0.375)]
    assert body["has_alpha"] and body["transparent_share"] == 0.2
    assert (body["width"], body["height"], body["format"]) == (100, 40, "png")
    assert body["bytes"] > 0 and body["faces"] == {"count": 0, "boxes": []}
    assert isinstance(body["caption"], str) and body["caption"]
    assert body["description"].startswith(body["caption"][:1].upper())
    assert "100x40" in body["description"] and "transparent" in body["tags"]
    assert {"blue", "green", "landscape"} <= set(body["tags"])
    assert body["answer"] is None and body["metadata"]["vision_model"]["tiny"] is True


def test_faces_come_from_the_face_deployment_and_questions_are_answered(client):
    photo = draw(320, 240, [(80, 120, 35), (240, 110, 40)])
    r = client.post("/v1/images/analyze", data={"question": "how many people are there?"},
                    files={"image": ("p.jpg", encode(photo, "JPEG"), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["faces"]["count"] == 2 and body["format"] == "jpeg"
    first, second = body["faces"]["boxes"]
    assert first["x1"] < 80 < first["x2"] and second["x1"] < 240 < second["x2"]
    assert "2 faces" in body["description"] and "face" in body["tags"]
    assert body["question"] == "how many people are there?"
    assert isinstance(body["answer"], str)


def test_analyze_a_stored_asset_and_bad_requests(client):
    gen = client.post("/v1/images/generations", json={"prompt": "a cat", "size": "64x64",
                                                      "steps": 1})
    asset_id = gen.json()["data"][0]["id"]
    r = client.post("/v1/images/analyze", data={"asset_id": asset_id})
    assert r.status_code == 200, r.text
    assert r.json()["asset_id"] == asset_id and (r.json()["width"], r.json()["height"]) == \
        (64, 64)
    both = client.post("/v1/images/analyze", data={"asset_id": asset_id},
                       files={"image": ("f.png", encode(flat()), "image/png")})
    assert both.status_code == 400 and "exactly one of" in both.json()["error"]["message"]
    assert client.post("/v1/images/analyze", data={}).status_code == 400
    missing = client.post("/v1/images/analyze", data={"asset_id": "img_nope"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "asset_id"
    broken = client.post("/v1/images/analyze", files={"image": ("x.png", b"nope", "image/png")})
    assert broken.status_code == 415
    long_q = client.post("/v1/images/analyze", data={"question": "x" * 501},
                         files={"image": ("f.png", encode(flat()), "image/png")})
    assert long_q.status_code == 400 and long_q.json()["error"]["param"] == "question"


@pytest.mark.parametrize("message,language", [("what is in this picture?", "en"),
                                              ("Décris cette photo", "fr")])
def test_chat_describes_the_uploaded_image(client, message, language):
    photo = draw(320, 240, [(160, 120, 40)])
    r = client.post("/v1/chat", data={"message": message},
                    files=[("image", ("p.png", encode(photo), "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "text" and body["data"]["images"] == []
    assert body["metadata"]["language"] == language
    analysis = body["data"]["analysis"]
    assert analysis["faces"]["count"] == 1 and analysis["answer"] is None  # a description
    assert body["message"].startswith(analysis["caption"][:1].upper())
    assert ("1 face" if language == "en" else "1 visage") in body["message"]
    # a follow-up question about the same image (the session's), answered by the VQA model
    again = client.post("/v1/chat", json={"message": "how many people are in this photo?",
                                          "session_id": body["session_id"]})
    assert again.status_code == 200, again.text
    follow = again.json()["data"]["analysis"]
    assert follow["question"] == "how many people are in this photo?"
    assert isinstance(follow["answer"], str) and follow["faces"]["count"] == 1


def test_prompt_enhance_returns_the_refined_prompt_and_what_changed(client):
    r = client.post("/v1/prompts/enhance", json={"prompt": "a cat in a crown, no blur",
                                                 "style": "watercolor"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["original"] == "a cat in a crown, no blur" and body["prompt"] != body["original"]
    assert body["changes"] and all(c["op"] in ("added", "removed", "replaced")
                                   for c in body["changes"])
    added = " ".join(c["after"] for c in body["changes"])
    assert all(term in body["prompt"] for term in body["added_terms"])
    assert any(term.split()[0] in added for term in body["added_terms"])
    assert "blur" in body["negative_prompt"]
    assert client.post("/v1/prompts/enhance", json={"prompt": ""}).status_code == 400
