"""Images per day over real HTTP on the deployed production graph (issue #13, 2 and 3): every
route and every chat plan step is charged the images it really makes, before it runs; what
failed work did not make is refunded; the documented n=1..10 works at every entry point."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

GEN = {"prompt": "a lighthouse", "size": "64x64", "steps": 1}


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def client(gateway, token: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.base_url, timeout=180,
                        headers={"Authorization": f"Bearer {token}"})


def quota_exceeded(r: httpx.Response) -> dict:
    assert r.status_code == 429, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded", error
    return error


def test_a_chat_turn_is_charged_each_image_its_plan_makes(gateway):
    token = gateway.create_key(images_per_day=3)
    with client(gateway, token) as c:
        r = c.post("/v1/chat", json={"message": "create 3 images of a cat in a crown"})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]["images"]) == 3
        # the day is used up: one more image by chat or by the Images API is refused
        quota_exceeded(c.post("/v1/chat", json={"message": "create an image of a fox"}))
        quota_exceeded(c.post("/v1/images/generations", json=GEN))
        # a text answer makes no image and is not refused
        assert c.post("/v1/chat", json={"message": "hello"}).status_code == 200


def test_a_plan_larger_than_the_day_is_refused_before_it_runs(gateway):
    token = gateway.create_key(project="acct-plan", images_per_day=3)
    with client(gateway, token) as c:
        photo = png(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8))
        r = c.post("/v1/chat?async=true", data={"message": "create 4 images of a cat"},
                   files=[("image", ("p.png", photo, "image/png"))])
        error = quota_exceeded(r)
        assert "4 images" in error["message"]
        # refused before anything ran or was kept: no job, no stored upload
        assert c.get("/v1/jobs").json()["data"] == []
        assert c.get("/v1/projects/acct-plan/assets").json()["data"] == []


def test_multi_step_plans_count_every_step(gateway):
    token = gateway.create_key(images_per_day=4)
    with client(gateway, token) as c:
        r = c.post("/v1/chat", json={
            "message": "generate 2 images of a fox and remove the background"})
        assert r.status_code == 200, r.text  # 2 generated + 1 cut out = 3 of 4
        assert c.post("/v1/images/generations", json=GEN).status_code == 200  # the 4th
        quota_exceeded(c.post("/v1/images/generations", json=GEN))


def test_failed_work_is_refunded(gateway):
    """A key of one image a day: work that fails (no face to swap) gives its image back, so
    the next request still gets its one image."""
    token = gateway.create_key(images_per_day=1)
    blank = png(np.full((64, 64, 3), 200, dtype=np.uint8))
    with client(gateway, token) as c:
        r = c.post("/v1/images/face-swap", files={"source": ("s.png", blank, "image/png"),
                                                   "target": ("t.png", blank, "image/png")})
        assert r.status_code == 422, r.text
        r = c.post("/v1/chat", data={"message": "swap the face from the first photo onto the "
                                                "second"},
                   files=[("image", ("s.png", blank, "image/png")),
                          ("image", ("t.png", blank, "image/png"))])
        assert r.status_code == 422, r.text
        assert c.post("/v1/images/generations", json=GEN).status_code == 200
        quota_exceeded(c.post("/v1/images/generations", json=GEN))


@pytest.mark.parametrize("n", [9, 10])
def test_n_9_and_10_work_on_generations_and_variations(http, n):
    r = http.post("/v1/images/generations", json={**GEN, "n": n, "seed": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["data"]) == n
    assert [d["seed"] for d in body["data"]] == [5 + k for k in range(n)]
    photo = png(np.random.default_rng(n).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    r = http.post("/v1/images/variations", data={"n": str(n), "size": "64x64"},
                  files={"image": ("p.png", photo, "image/png")})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == n


def test_n_10_works_in_the_chat(http):
    r = http.post("/v1/chat", json={"message": "generate 10 pictures of a red fox"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]["images"]) == 10


def test_n_over_10_is_a_400_not_a_charge(gateway):
    token = gateway.create_key(images_per_day=12)
    with client(gateway, token) as c:
        r = c.post("/v1/images/generations", json={**GEN, "n": 11})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
        assert c.post("/v1/images/generations", json={**GEN, "n": 10}).status_code == 200
