"""LoRA registration over real HTTP (the production graph, tiny models, API keys on):
POST /v1/models/loras by upload, asset id and server path; checked on the Generator; then
listed, used by name, deleted."""

from __future__ import annotations

import base64
import io
import json
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.lora_files import not_a_lora, other_unet_lora, pickle_lora, tiny_lora

BODY = {"prompt": "a red cat", "size": "64x64", "steps": 2, "seed": 3}


def _pixels(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(
        response.json()["data"][0]["b64_json"])))).astype(np.int16)


@pytest.fixture(scope="module")
def files(zoo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora-files")
    return {"good": tiny_lora(zoo_dir, tmp / "good", seed=4242),
            "other": tiny_lora(zoo_dir, tmp / "other", seed=777),
            "wrong_base": other_unet_lora(tmp / "wrong")}


@pytest.fixture(scope="module")
def keys(gateway):
    return {"models": gateway.create_key(scopes=["generate", "models"], name="models-key"),
            "generate": gateway.create_key(scopes=["generate"], name="generate-only")}


def _client(gateway, token):
    return httpx.Client(base_url=gateway.base_url, timeout=180,
                        headers={"Authorization": f"Bearer {token}"})


def _register(client, name, data, filename="lora.safetensors", **fields):
    form = {"name": name, **{k: v if isinstance(v, str) else json.dumps(v)
                             for k, v in fields.items()}}
    return client.post("/v1/models/loras", data=form,
                       files={"file": (filename, data, "application/octet-stream")})


def _name(prefix="lora"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_upload_list_generate_and_delete(gateway, files, keys):
    name = _name("style")
    with _client(gateway, keys["models"]) as client:
        made = _register(client, name, files["good"], trigger_words="sunset, glow",
                         tags=["style"], default_weight=0.8, description="test style",
                         meta={"dataset_id": "ds_1", "steps": 4})
        assert made.status_code == 201, made.text
        card = made.json()
        assert card["id"] == name and card["kind"] == "lora" and card["base"] == "tiny-sd"
        assert card["registered"] is True and card["rank"] == 4
        assert card["trigger_words"] == ["sunset", "glow"] and card["default_weight"] == 0.8
        assert card["meta"] == {"dataset_id": "ds_1", "steps": 4}
        assert card["size_bytes"] == len(files["good"]) and len(card["sha256"]) == 64

        listed = client.get("/v1/models?kind=lora").json()["data"]
        assert name in {m["id"] for m in listed}
        assert client.get(f"/v1/models/{name}").json()["sha256"] == card["sha256"]

        base = client.post("/v1/images/generations", json=BODY)
        styled = client.post("/v1/images/generations",
                             json={**BODY, "loras": [{"name": name, "weight": 1.0}]})
        zero = client.post("/v1/images/generations",
                           json={**BODY, "loras": [{"name": name, "weight": 0.0}]})
        tagged = client.post("/v1/images/generations",
                             json={**BODY, "prompt": f"a red cat <lora:{name}:1>"})
        for r in (base, styled, zero, tagged):
            assert r.status_code == 200, r.text
        assert np.abs(_pixels(styled) - _pixels(base)).mean() > 2.0  # the adapter acts
        assert np.array_equal(_pixels(zero), _pixels(base))  # weight 0: the base image
        assert np.array_equal(_pixels(tagged), _pixels(styled))  # the prompt syntax too
        assert styled.json()["metadata"]["loras"] == [{"name": name, "weight": 1.0}]
        # default weight (0.8) when none is given: another image than weight 1
        default = client.post("/v1/images/generations", json={**BODY, "loras": [{"name": name}]})
        assert default.json()["metadata"]["loras"] == [{"name": name, "weight": 0.8}]

        again = _register(client, name, files["other"])
        assert again.status_code == 409 and name in again.json()["error"]["message"]

        gone = client.delete(f"/v1/models/loras/{name}")
        assert gone.status_code == 200 and gone.json() == {"id": name, "deleted": True}
        assert client.get(f"/v1/models/{name}").status_code == 404
        used = client.post("/v1/images/generations",
                           json={**BODY, "loras": [{"name": name[:-1]}]})
        assert used.status_code == 400
        assert used.json()["error"]["param"] == "loras"
        after = client.post("/v1/images/generations", json={**BODY, "loras": [{"name": name}]})
        assert after.status_code == 400 and after.json()["error"]["code"] == "lora_not_found"
        assert client.delete(f"/v1/models/loras/{name}").status_code == 404
        builtin = client.delete("/v1/models/loras/tiny-lora-warm")
        assert builtin.status_code == 400 and "built-in" in builtin.json()["error"]["message"]

        # the name is free again: registered with another file, the generator serves the new
        # one (its replica had the old file loaded under that name)
        assert _register(client, name, files["other"]).status_code == 201
        other = client.post("/v1/images/generations",
                            json={**BODY, "loras": [{"name": name, "weight": 1.0}]})
        assert other.status_code == 200
        assert not np.array_equal(_pixels(other), _pixels(styled))
        assert client.delete(f"/v1/models/loras/{name}").status_code == 200


@pytest.mark.slow
def test_bad_files_and_names_are_4xx_and_the_server_serves_on(gateway, files, keys):
    with _client(gateway, keys["models"]) as client:
        def refused(status, *args, **kwargs):
            r = _register(client, *args, **kwargs)
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            return error

        corrupt = refused(400, _name(), files["good"][: len(files["good"]) // 2])
        assert "corrupt" in corrupt["message"] or "not a valid" in corrupt["message"]
        wrong = refused(400, _name(), files["wrong_base"])
        assert wrong["code"] == "lora_does_not_fit"
        assert "does not fit base model 'tiny-sd'" in wrong["message"]
        assert "shapes differ" in wrong["message"]
        pickled = refused(400, _name(), pickle_lora(), filename="style.pt")
        assert "pickle" in pickled["message"] and "runs code" in pickled["message"]
        disguised = refused(400, _name(), pickle_lora())  # a pickle named .safetensors
        assert "pickle" in disguised["message"]
        empty = refused(400, _name(), not_a_lora())
        assert "no LoRA matrices" in empty["message"]
        assert refused(409, "tiny-lora-warm", files["good"])["param"] == "name"
        assert refused(400, "Bad Name!", files["good"])["code"] == "invalid_name"
        assert refused(400, _name(), files["good"], base="sd15")["code"] == "base_not_served"
        assert "did you mean" in refused(400, _name(), files["good"], base="tiny-sdd")[
            "message"]
        nothing = client.post("/v1/models/loras", json={"name": _name()})
        assert nothing.status_code == 400 and nothing.json()["error"]["code"] == "invalid_source"
        unknown = client.post("/v1/models/loras", json={"name": _name(), "asset_id": "x",
                                                          "colour": "red"})
        assert unknown.status_code == 400
        # larger than the request body limit (64 MiB): 413 before it is read
        huge = client.post("/v1/models/loras", content=b"\0" * (64 * 1024 * 1024 + 1),
                           headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert huge.status_code == 413 and huge.json()["error"]["type"] == "request_too_large"

        assert client.get("/v1/models?kind=lora").status_code == 200
        assert client.post("/v1/images/generations", json=BODY).status_code == 200
        warm = client.post("/v1/images/generations",
                           json={**BODY, "loras": [{"name": "tiny-lora-warm"}]})
        assert warm.status_code == 200


@pytest.mark.slow
def test_models_scope_asset_id_and_server_path(gateway, files, keys):
    name = _name("scoped")
    with _client(gateway, keys["generate"]) as client:
        denied = _register(client, name, files["good"])
        assert denied.status_code == 403 and "'models' scope" in denied.json()["error"]["message"]
        assert client.delete("/v1/models/loras/tiny-lora-warm").status_code == 403

    # by asset id: a .safetensors asset of the caller's project (as a training job stores one)
    from storage.assets import LocalAssetStore
    from storage.records import RecordStore, new_id

    asset_id = new_id("as")
    key = f"default/files/{asset_id}.safetensors"
    LocalAssetStore(gateway.data_dir / "assets").put(key=key, data=files["good"],
                                                     content_type="application/octet-stream")
    records = RecordStore(gateway.database_url)
    try:
        records.add_asset(asset_id=asset_id, job_id=None, kind="file", store="local", key=key,
                          content_type="application/octet-stream",
                          size_bytes=len(files["good"]), width=0, height=0)
    finally:
        records.close()
    with _client(gateway, keys["models"]) as client:
        made = client.post("/v1/models/loras", json={"name": name, "asset_id": asset_id})
        assert made.status_code == 201, made.text
        missing = client.post("/v1/models/loras", json={"name": _name(), "asset_id": "as_no"})
        assert missing.status_code == 404
        # a server path needs admin
        imports = gateway.data_dir / "lora-imports"
        imports.mkdir(exist_ok=True)
        (imports / "from-disk.safetensors").write_bytes(files["other"])
        path_body = {"name": _name("disk"), "path": str(imports / "from-disk.safetensors")}
        not_admin = client.post("/v1/models/loras", json=path_body)
        assert not_admin.status_code == 403 and not_admin.json()["error"]["param"] == "path"
        assert client.delete(f"/v1/models/loras/{name}").status_code == 200

    admin = httpx.Client(base_url=gateway.base_url, timeout=180, headers=gateway.headers)
    with admin:
        by_path = admin.post("/v1/models/loras", json=path_body)
        assert by_path.status_code == 201, by_path.text
        outside = admin.post("/v1/models/loras", json={
            "name": _name(), "path": str(gateway.data_dir / "photostudio.db")})
        assert outside.status_code == 400
        assert outside.json()["error"]["code"] == "path_not_allowed"
        escape = admin.post("/v1/models/loras", json={
            "name": _name(), "path": str(imports / ".." / "photostudio.db")})
        assert escape.status_code == 400
        used = admin.post("/v1/images/generations",
                          json={**BODY, "loras": [{"name": path_body["name"]}]})
        assert used.status_code == 200, used.text
        assert admin.delete(f"/v1/models/loras/{path_body['name']}").status_code == 200
