"""Uploads are counted and budgeted before any is decoded or stored (issue #13, 4), and edit
chains are held to a work budget (issue #13, 5) — over real HTTP on the production graph."""

from __future__ import annotations

import functools
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@functools.cache
def big_png() -> bytes:
    """4096x4096 of one colour: 16.7 Mpx for ~50 KB of upload."""
    return png(np.full((4096, 4096, 3), 90, dtype=np.uint8))


@pytest.fixture
def own(gateway):
    """A client of a project of its own (so its gallery and jobs are this test's alone)."""
    import uuid

    project = f"up-{uuid.uuid4().hex[:8]}"
    token = gateway.create_key(project=project)
    with httpx.Client(base_url=gateway.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        c.project = project
        yield c


def nothing_kept(c) -> None:
    assert c.get(f"/v1/projects/{c.project}/assets").json()["data"] == []
    assert c.get("/v1/jobs").json()["data"] == []
    assert c.get("/v1/sessions").json()["data"] == []


def test_chat_refuses_more_than_10_files_while_parsing(own):
    small = png(np.zeros((8, 8, 3), dtype=np.uint8))
    files = [("image", (f"{i}.png", small, "image/png")) for i in range(11)]
    r = own.post("/v1/chat", data={"message": "remove the background"}, files=files)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "too_many_files" and "10" in error["message"]
    nothing_kept(own)


def test_chat_uploads_are_pixel_budgeted_before_decoding(own):
    files = [("image", (f"{i}.png", big_png(), "image/png")) for i in range(3)]  # 50 Mpx
    r = own.post("/v1/chat", data={"message": "remove the background"}, files=files)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "images_too_large" and "pixels" in error["message"]
    nothing_kept(own)


def test_an_accepted_plan_keeps_its_upload(own):
    """Control for the two above: uploads of a plan that runs are kept (follow-ups use them)."""
    photo = png(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    r = own.post("/v1/chat", data={"message": "remove the background"},
                 files=[("image", ("a.png", photo, "image/png"))])
    assert r.status_code == 200  # control: an accepted plan keeps its upload
    kept = own.get(f"/v1/projects/{own.project}/assets").json()["data"]
    assert {a["kind"] for a in kept} >= {"uploads"}


def test_edits_count_the_mask_in_the_budget(own):
    r = own.post("/v1/images/edits", data={"prompt": "snow"},
                 files=[("image[]", ("a.png", big_png(), "image/png")),
                        ("mask", ("m.png", big_png(), "image/png")),
                        ("image[]", ("b.png", big_png(), "image/png"))])
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "images_too_large"
    nothing_kept(own)


def test_an_edit_chain_over_its_work_budget_is_refused_before_any_work(own):
    tiny = png(np.zeros((1, 1, 3), dtype=np.uint8))  # a few dozen bytes
    ops = [{"op": "resize", "width": 4096, "height": 4096}] + [{"op": "blur", "radius": 100}] * 19
    r = own.post("/v1/images/edit-ops", data={"ops": json.dumps(ops)},
                 files={"image": ("t.png", tiny, "image/png")})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "work budget" in error["message"] and error["param"] == "ops[2]"  # the op over it
    assert own.get("/v1/jobs").json()["data"] == []
    # a reasonable chain on the same image still runs
    fine = [{"op": "resize", "width": 512, "height": 512}, {"op": "blur", "radius": 100}]
    r = own.post("/v1/images/edit-ops", data={"ops": json.dumps(fine)},
                 files={"image": ("t.png", tiny, "image/png")})
    assert r.status_code == 200, r.text
