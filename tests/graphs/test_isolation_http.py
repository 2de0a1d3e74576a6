"""Project isolation by id, over real HTTP on the deployed production graph (issue #13, 1).

Every route and body field that takes an id is enumerated from the gateway's own OpenAPI
document, so a new route (datasets, workflows, LoRAs, videos…) fails
`test_every_id_taking_route_and_field_is_covered` until its foreign-id case is added to
`FOREIGN_ID_CASES`. Each case sends project B's key with an id of project A: the answer is the
404 envelope, nothing of A is changed, and B never gets A's pixels (no job of B succeeds on
them, no asset appears in B's gallery).
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from router.schemas import SessionContext
from storage.records import RecordStore
from tests.conftest import wait_until


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def client(gateway, token: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.base_url, timeout=120,
                        headers={"Authorization": f"Bearer {token}"})


def not_found(r: httpx.Response) -> dict:
    assert r.status_code == 404, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["type"] == "not_found_error" and error["message"], error
    return error


@pytest.fixture(scope="module")
def projects(gateway, zoo_dir, tmp_path_factory):
    """Two projects with a key each; A owns a job, its output image, a chat session, a
    chat upload, a registered LoRA, a dataset and a (finished) training; B owns a dataset."""
    from tests.lora_files import tiny_lora

    a = gateway.create_key(project="iso-a", scopes=["generate", "tools", "chat", "models"])
    b = gateway.create_key(project="iso-b", scopes=["generate", "tools", "chat", "models"])
    photo = np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    with client(gateway, a) as ca:
        r = ca.post("/v1/images/generations",
                    json={"prompt": "a lighthouse", "size": "64x64", "steps": 1, "seed": 3})
        assert r.status_code == 200, r.text
        generated = r.json()
        r = ca.post("/v1/videos", json={"prompt": "a clip of A", "seconds": 1,
                                        "size": "64x64", "steps": 1})
        assert r.status_code == 200, r.text
        video_id = r.json()["id"]
        wait_until(lambda: ca.get(f"/v1/videos/{video_id}").json()["status"] == "completed",
                   timeout=300, interval=0.3, what="project A's video")
        r = ca.post("/v1/chat", data={"message": "remove the background"},
                    files=[("image", ("a.png", png(photo), "image/png"))])
        assert r.status_code == 200, r.text
        chat = r.json()
        r = ca.post("/v1/workflows", json={"name": "A's flow", "workflow": {
            "nodes": {"gen": {"op": "generate", "params": {"prompt": "a lighthouse",
                                                             "size": "64x64", "steps": 1}}},
            "outputs": ["gen.image"]}})
        assert r.status_code in (200, 201), r.text
        workflow_id = r.json()["id"]
        r = ca.post("/v1/presets", json={"kind": "image", "title": "A's look",
                                         "prompt_template": "{prompt}, in A's style"})
        assert r.status_code in (200, 201), r.text
        preset_id = r.json()["id"]
        lora = tiny_lora(zoo_dir, tmp_path_factory.mktemp("iso-lora"), seed=5)
        r = ca.post("/v1/models/loras", data={"name": "iso-a-style"},
                    files={"file": ("a.safetensors", lora, "application/octet-stream")})
        assert r.status_code == 201, r.text
        r = ca.post("/v1/datasets", json={"name": "A's set"})
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        r = ca.post(f"/v1/datasets/{dataset_id}/images", data={"auto_caption": "false"},
                    files=[("image", (f"{i}.png", png(np.roll(photo, 7 * i, axis=1)),
                                      "image/png")) for i in range(2)])
        assert r.status_code == 201, r.text
        dataset_image_id = r.json()["added"][0]["id"]
        r = ca.post("/v1/trainings", json={"dataset_id": dataset_id, "name": "iso-a-trained",
                                           "steps": 2, "rank": 2, "resolution": 64})
        assert r.status_code == 202, r.text
        training_id = r.json()["id"]
        wait_until(lambda: ca.get(f"/v1/trainings/{training_id}").json()["status"]
                   in ("succeeded", "failed"), timeout=300, interval=0.3,
                   what="project A's training")
        training_status = ca.get(f"/v1/trainings/{training_id}").json()["status"]
    with client(gateway, b) as cb:
        r = cb.post("/v1/datasets", json={"name": "B's set"})
        assert r.status_code == 201, r.text
        dataset_b = r.json()["id"]
    records = RecordStore(gateway.database_url)
    try:
        session = records.get_session(session_id=chat["session_id"], project="iso-a")
        upload_id = session.messages[0].image_ids[0]
    finally:
        records.close()
    return {
        "a": a, "b": b, "photo": photo,
        "job_id": generated["metadata"]["job_id"], "asset_id": generated["data"][0]["id"],
        "asset_b64": generated["data"][0]["b64_json"], "session_id": chat["session_id"],
        "upload_id": upload_id, "chat_url": chat["data"]["images"][0]["url"],
        "video_id": video_id, "workflow_id": workflow_id, "preset_id": preset_id,
        "lora": "iso-a-style", "dataset_id": dataset_id, "training_id": training_id,
        "training_status": training_status, "dataset_b": dataset_b,
        "dataset_image_id": dataset_image_id,
    }


# (method, OpenAPI path, where the id goes) for every id a request can carry
FOREIGN_ID_CASES: dict[tuple[str, str, str], str] = {
    ("GET", "/v1/jobs/{job_id}", "path"): "job_id",
    ("DELETE", "/v1/jobs/{job_id}", "path"): "job_id",
    ("GET", "/v1/jobs/{job_id}/events", "path"): "job_id",
    ("GET", "/v1/sessions/{session_id}", "path"): "session_id",
    ("DELETE", "/v1/sessions/{session_id}", "path"): "session_id",
    ("GET", "/v1/assets/{asset_id}", "path"): "asset_id",
    ("DELETE", "/v1/assets/{asset_id}", "path"): "asset_id",
    ("GET", "/v1/videos/{video_id}", "path"): "video_id",
    ("DELETE", "/v1/videos/{video_id}", "path"): "video_id",
    ("GET", "/v1/videos/{video_id}/content", "path"): "video_id",
    ("POST", "/v1/videos/{video_id}/remix", "path"): "video_id",
    ("POST", "/v1/videos/{video_id}/upscale", "path"): "video_id",
    ("GET", "/v1/projects/{project_id}", "path"): "project_id",
    ("GET", "/v1/projects/{project_id}/assets", "path"): "project_id",
    ("POST", "/v1/chat", "session_id"): "session_id",
    ("POST", "/v1/chat", "context.last_image_id"): "asset_id",
    ("POST", "/v1/chat", "context.last_image_id (upload)"): "upload_id",
    ("POST", "/v1/chat/plan", "session_id"): "session_id",
    ("POST", "/v1/chat/plan", "context.last_image_id"): "asset_id",
    ("POST", "/v1/images/analyze", "asset_id"): "asset_id",
    ("GET", "/v1/assets/{asset_id}/recipe", "path"): "asset_id",
    ("POST", "/v1/assets/{asset_id}/remix", "path"): "asset_id",
    ("GET", "/v1/workflows/{workflow_id}", "path"): "workflow_id",
    ("PATCH", "/v1/workflows/{workflow_id}", "path"): "workflow_id",
    ("DELETE", "/v1/workflows/{workflow_id}", "path"): "workflow_id",
    ("POST", "/v1/workflows/execute", "workflow_id"): "workflow_id",
    ("GET", "/v1/workflows/jobs/{job_id}/events", "path"): "job_id",
    ("GET", "/v1/presets/{preset_id}", "path"): "preset_id",
    ("DELETE", "/v1/presets/{preset_id}", "path"): "preset_id",
    ("POST", "/v1/presets/{preset_id}/apply", "path"): "preset_id",
    ("DELETE", "/v1/models/loras/{name}", "path"): "name",
    ("POST", "/v1/models/loras", "asset_id"): "asset_id",
    ("GET", "/v1/datasets/{dataset_id}", "path"): "dataset_id",
    ("DELETE", "/v1/datasets/{dataset_id}", "path"): "dataset_id",
    ("GET", "/v1/datasets/{dataset_id}/stats", "path"): "dataset_id",
    ("POST", "/v1/datasets/{dataset_id}/images", "path"): "dataset_id",
    ("POST", "/v1/datasets/{dataset_id}/images", "asset_id"): "asset_id",
    ("PATCH", "/v1/datasets/{dataset_id}/images/{image_id}", "path"): "dataset_id",
    ("DELETE", "/v1/datasets/{dataset_id}/images/{image_id}", "path"): "dataset_id",
    # A's image named under B's own dataset
    ("PATCH", "/v1/datasets/{dataset_id}/images/{image_id}", "path (in B's dataset)"):
        "dataset_image_id",
    ("DELETE", "/v1/datasets/{dataset_id}/images/{image_id}", "path (in B's dataset)"):
        "dataset_image_id",
    ("POST", "/v1/trainings", "dataset_id"): "dataset_id",
    ("GET", "/v1/trainings/{training_id}", "path"): "training_id",
    ("DELETE", "/v1/trainings/{training_id}", "path"): "training_id",
    ("GET", "/v1/trainings/{training_id}/events", "path"): "training_id",
    ("GET", "/v1/trainings/{training_id}/metrics", "path"): "training_id",
}
# fields named like ids that are not references to existing records
NOT_REFERENCES = {
    ("POST", "/v1/projects", "id"),  # the id of the project being created
    # image providers are the gateway's own backends, shared by every project (no secrets
    # shown; writes need the admin scope: tests/graphs/test_providers_http.py)
    ("GET", "/v1/providers/{name}", "path"), ("PATCH", "/v1/providers/{name}", "path"),
    ("DELETE", "/v1/providers/{name}", "path"),
    # a fixed list of suggestion categories (subjects, styles, lighting…), the same for all
    ("GET", "/v1/suggestions/by-category/{category}", "path"),
    # the model catalogue (models/registry.py) is the gateway's, shared by every project;
    # registered LoRAs join it for every project (usable by all; deleting one takes its own
    # project's key or admin: the DELETE case above)
    ("GET", "/v1/models/{model_id}", "path"),
}


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _id_fields(spec: dict, schema: dict, prefix: str = "") -> list[str]:
    schema = _resolve(spec, schema)
    out = []
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        if name == "id" or name.endswith("_id") or name.endswith("_ids"):
            out.append(path)
        if name == "context":  # free-form JSON object: the session context's fields
            out += [f"{path}.{f}" for f in SessionContext.model_fields
                    if f.endswith("_id") or f.endswith("_ids")]
        out += _id_fields(spec, prop, f"{path}.") if "properties" in _resolve(spec, prop) \
            else []
    return out


def test_every_id_taking_route_and_field_is_covered(http):
    spec = http.get("/openapi.json").json()
    found = set()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            method = method.upper()
            for param in op.get("parameters", []):
                if param["in"] == "path" or param["name"].endswith("_id"):
                    found.add((method, path, param["in"] if param["in"] == "path"
                               else param["name"]))
            for media in op.get("requestBody", {}).get("content", {}).values():
                for field in _id_fields(spec, media.get("schema", {})):
                    found.add((method, path, field))
    covered = {(m, p, f.split(" ")[0]) for m, p, f in FOREIGN_ID_CASES} | NOT_REFERENCES
    missing = sorted(found - covered)
    assert not missing, ("routes/fields that take an id have no foreign-id case in "
                         f"FOREIGN_ID_CASES: {missing}")
    assert ("POST", "/v1/chat", "context.last_image_id") in found  # the walk sees the context


def _gallery(c: httpx.Client, project: str) -> list[str]:
    r = c.get(f"/v1/projects/{project}/assets", params={"limit": 200})
    assert r.status_code == 200, r.text
    return [a["id"] for a in r.json()["data"]]


@pytest.mark.parametrize("case", list(FOREIGN_ID_CASES), ids=lambda c: f"{c[0]} {c[1]} {c[2]}")
def test_a_foreign_id_is_a_404_and_changes_nothing(gateway, projects, case):
    method, path, where = case
    foreign = {"job_id": projects["job_id"], "session_id": projects["session_id"],
               "asset_id": projects["asset_id"], "upload_id": projects["upload_id"],
               "project_id": "iso-a", "video_id": projects["video_id"],
               "workflow_id": projects["workflow_id"],
               "preset_id": projects["preset_id"], "name": projects["lora"],
               "dataset_id": projects["dataset_id"], "training_id": projects["training_id"],
               "dataset_image_id": projects["dataset_image_id"]}[FOREIGN_ID_CASES[case]]
    with client(gateway, projects["b"]) as cb, client(gateway, projects["a"]) as ca:
        before_b = _gallery(cb, "iso-b")
        if where == "path" and path.endswith("/images"):  # add B's image to A's dataset
            r = cb.post(path.replace("{dataset_id}", foreign), data={"auto_caption": "false"},
                        files=[("image", ("b.png", png(projects["photo"]), "image/png"))])
        elif where.startswith("path"):
            body = {"overrides": {}} if path == "/v1/assets/{asset_id}/remix" else \
                {"prompt": "mine now"} if path.endswith(("/remix", "/apply")) else \
                {"scale": 2} if path.endswith("/upscale") else \
                {"caption": "mine now"} if path.endswith("{image_id}") and method == "PATCH" \
                else {"name": "mine now"} if method == "PATCH" else None
            url = path.replace("{" + FOREIGN_ID_CASES[case] + "}", foreign)
            if "{image_id}" in path:  # A's dataset with A's image, or B's with A's image
                url = url.replace("{image_id}", projects["dataset_image_id"]).replace(
                    "{dataset_id}", projects["dataset_b"])
            r = cb.request(method, url, json=body)
        elif where == "session_id":
            r = cb.post(path, json={"message": "make it bigger", "session_id": foreign})
        elif where == "asset_id" and path == "/v1/models/loras":  # register A's file
            r = cb.post(path, json={"name": "iso-b-taken", "asset_id": foreign})
        elif where == "asset_id" and path.endswith("/images"):  # A's image into B's dataset
            r = cb.post(path.replace("{dataset_id}", projects["dataset_b"]),
                        data={"asset_id": foreign, "auto_caption": "false"})
        elif where == "dataset_id":  # train on A's dataset
            r = cb.post(path, json={"dataset_id": foreign, "name": "iso-b-trained",
                                    "steps": 2, "rank": 2, "resolution": 64})
        elif where == "asset_id":  # a form field (image analysis)
            r = cb.post(path, data={"asset_id": foreign})
        elif where == "workflow_id":  # run a saved workflow of A
            r = cb.post(path, json={"workflow_id": foreign})
        else:  # the chat context names an image of A
            r = cb.post(path, json={"message": "remove the background",
                                    "context": {"last_image_id": foreign}})
        error = not_found(r)
        assert foreign in error["message"]
        # nothing of A changed; nothing of A reached B
        assert ca.get(f"/v1/jobs/{projects['job_id']}").json()["status"] == "succeeded"
        assert ca.get(f"/v1/sessions/{projects['session_id']}").status_code == 200
        assert ca.get(f"/v1/assets/{projects['asset_id']}").status_code == 200
        assert ca.get(f"/v1/videos/{projects['video_id']}").json()["status"] == "completed"
        assert ca.get(f"/v1/workflows/{projects['workflow_id']}").json()["name"] == "A's flow"
        assert ca.get(f"/v1/presets/{projects['preset_id']}").json()["title"] == "A's look"
        assert ca.get(f"/v1/models/{projects['lora']}").json()["owned_by"] == "iso-a"
        assert cb.get("/v1/models/iso-b-taken").status_code == 404
        assert cb.get("/v1/models/iso-b-trained").status_code == 404
        dataset = ca.get(f"/v1/datasets/{projects['dataset_id']}").json()
        assert dataset["images"] == 2, dataset
        assert [i["caption"] for i in dataset["data"]] == [None, None], dataset
        assert ca.get(f"/v1/trainings/{projects['training_id']}").json()["status"] == \
            projects["training_status"]
        assert cb.get(f"/v1/datasets/{projects['dataset_b']}").json()["images"] == 0
        assert _gallery(cb, "iso-b") == before_b
        jobs_b = cb.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
        assert not any(j["kind"] == "chat" for j in jobs_b)


def test_async_chat_on_a_foreign_image_is_refused_before_a_job(gateway, projects):
    with client(gateway, projects["b"]) as cb:
        before = cb.get("/v1/jobs").json()["data"]
        r = cb.post("/v1/chat?async=true", json={
            "message": "remove the background",
            "context": {"last_image_id": projects["asset_id"]}})
        not_found(r)
        assert cb.get("/v1/jobs").json()["data"] == before


def test_the_owner_still_reads_its_image_through_the_chat(gateway, projects):
    """The resolver is scoped, not closed: A's own id works, and gives A's pixels."""
    with client(gateway, projects["a"]) as ca:
        r = ca.post("/v1/chat", json={"message": "remove the background",
                                      "context": {"last_image_id": projects["asset_id"]}})
        assert r.status_code == 200, r.text
        assert r.json()["type"] == "image"


def test_a_signed_url_is_bound_to_its_project(gateway, projects):
    url = httpx.URL(projects["chat_url"])
    assert url.params["project"] == "iso-a"
    assert httpx.get(str(url), timeout=30).status_code == 200  # no key needed
    forged = url.copy_set_param("project", "iso-b")
    r = httpx.get(str(forged), timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_signature"
    # the signature of one asset opens no other asset
    other = url.copy_with(path=f"/v1/assets/{projects['asset_id']}")
    assert httpx.get(str(other), timeout=30).status_code in (403, 404)


@pytest.mark.parametrize("listing", ["/v1/jobs", "/v1/sessions", "/v1/projects/iso-b/assets"])
@pytest.mark.parametrize("ident", [[1, 2], {"a": 1}, None, "x" * 500])
def test_crafted_cursors_are_a_400(gateway, projects, listing, ident):
    raw = json.dumps({"k": listing.rsplit("/", 1)[-1], "t": "2026-01-01T00:00:00+00:00",
                      "i": ident})
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    with client(gateway, projects["b"]) as cb:
        r = cb.get(listing, params={"cursor": cursor[:512]})
        assert r.status_code == 400, r.text
        assert "cursor" in r.json()["error"]["message"]
