"""Gallery search over real HTTP on the production graph: job images are tagged in the
background by the image analysis (`auto_tag`, on in serve_config.yaml: tiny BLIP + the tiny
face detector + exact colours), POST /v1/images/analyze with an asset id keeps its analysis
with the asset, and GET /v1/projects/{id}/assets filters by tags and free text, per project."""

from __future__ import annotations

import io
import json
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import wait_until


def flat(rgb: tuple[int, int, int], width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def project(gateway):
    """A project of its own (assets of other modules stay out of its gallery), its key, and
    two flat images stored as edit-ops outputs (a flip keeps them flat)."""
    name = f"gallery-{uuid.uuid4().hex[:8]}"
    token = gateway.create_key(project=name)
    with httpx.Client(base_url=gateway.base_url, timeout=180,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        ids = {}
        for colour, rgb, (w, h) in (("blue", (0, 0, 255), (64, 48)),
                                    ("red", (255, 0, 0), (48, 64))):
            r = c.post("/v1/images/edit-ops", files={"image": ("f.png", flat(rgb, w, h))},
                       data={"ops": json.dumps([{"op": "flip", "direction": "horizontal"}])})
            assert r.status_code == 200, r.text
            ids[colour] = r.json()["data"][0]["id"]
        yield name, c, ids


def gallery(c: httpx.Client, project: str, **params) -> httpx.Response:
    return c.get(f"/v1/projects/{project}/assets", params=params)


def ids_of(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text
    return {a["id"] for a in r.json()["data"]}


def test_job_images_are_tagged_in_the_background_and_found_by_tag_and_text(project, gateway):
    name, c, ids = project

    def tagged() -> bool:
        return all(a["tags"] for a in gallery(c, name).json()["data"])

    wait_until(tagged, timeout=60, interval=0.5, what="the job images' auto-tags")
    listed = gallery(c, name).json()["data"]
    assert {a["id"] for a in listed} == set(ids.values())  # no filter: everything
    by_id = {a["id"]: a for a in listed}
    blue, red = by_id[ids["blue"]], by_id[ids["red"]]
    # the colour and orientation tags are exact; the tiny BLIP's caption words are random
    # (deterministic) words of its small vocabulary, so expectations below are computed
    # from what the listing shows
    assert {"blue", "landscape"} <= set(blue["tags"])
    assert {"red", "portrait"} <= set(red["tags"])
    assert blue["caption"] and "64x48 landscape image mostly blue" in blue["description"]
    assert "48x64 portrait image mostly red" in red["description"]

    def having(*tags: str) -> set[str]:
        return {a["id"] for a in listed if all(t in a["tags"] for t in tags)}

    def matching(*words: str) -> set[str]:
        def hit(a, w):
            text = " ".join(filter(None, (a["caption"], a["description"], a["prompt"])))
            return w in text.lower() or any(t.startswith(w) for t in a["tags"])
        return {a["id"] for a in listed if all(hit(a, w) for w in words)}

    assert ids_of(gallery(c, name, tag="blue")) == having("blue") >= {ids["blue"]}
    assert ids_of(gallery(c, name, tag=["RED", "portrait"])) == having("red", "portrait") \
        >= {ids["red"]}  # all of them, any case
    assert ids_of(gallery(c, name, tag=["blue", "zebra"])) == set()
    assert ids_of(gallery(c, name, q="mostly BLUE")) == matching("mostly", "blue") \
        >= {ids["blue"]}  # every word
    assert ids_of(gallery(c, name, q="48x64")) == {ids["red"]}
    assert ids_of(gallery(c, name, q="landsc")) == matching("landsc") >= {ids["blue"]}
    assert ids_of(gallery(c, name, q="zebra")) == set()
    # another project's key finds nothing of this one, and cannot list it
    other = gateway.create_key(project=f"gallery-other-{uuid.uuid4().hex[:8]}")
    stranger = httpx.get(f"{gateway.base_url}/v1/projects/{name}/assets",
                         params={"tag": "blue"}, timeout=60,
                         headers={"Authorization": f"Bearer {other}"})
    assert stranger.status_code == 404
    bad = gallery(c, name, tag="x" * 65)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tag"
    words = gallery(c, name, q=" ".join(f"w{i}" for i in range(9)))
    assert words.status_code == 400 and words.json()["error"]["param"] == "q"


def test_analyze_by_asset_id_keeps_the_analysis_with_the_asset(project):
    name, c, ids = project
    r = c.post("/v1/images/analyze", data={"asset_id": ids["red"]})
    assert r.status_code == 200, r.text
    analysis = r.json()
    [listed] = gallery(c, name, tag="red").json()["data"]
    assert listed["id"] == ids["red"]
    assert (listed["caption"], listed["description"], listed["tags"]) == (
        analysis["caption"], analysis["description"], analysis["tags"])


def test_auto_tagging_is_usage_of_its_own_route(project):
    name, c, ids = project

    def auto_tag_usage() -> dict | None:
        r = c.get("/v1/usage", params={"group_by": "route"})
        assert r.status_code == 200, r.text
        return {g["group"]: g for g in r.json()["data"]}.get("(auto-tag)")

    wait_until(lambda: auto_tag_usage() is not None, timeout=30, interval=0.5,
               what="the auto-tag usage")
    row = auto_tag_usage()
    assert row["requests"] == 0 and row["images"] == 0  # work of the gateway, not requests
    assert set(row["model_seconds_by_deployment"]) == {"vision", "faceswap"}
