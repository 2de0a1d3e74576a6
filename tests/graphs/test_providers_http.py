"""Image providers through the deployed production graph (issue #16): another instance of this
gateway as an `openai` provider (base_url = the gateway's /v1, with a key), pinned with
`provider` / `model='provider/model'`; a dead primary falls back to local with the attempts
saying why; every provider dead → 503 with Retry-After; admin scope for changes; keys never
in GET /v1/providers nor in the logs; the CLI; the batch endpoint."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from graphs import cli
from graphs.cli import free_port
from storage.records import RecordStore
from tests.conftest import wait_until
from tests.providers.servers import png_bytes

SECRET = "sk-never-show-7f3a9c2e41"  # the dead provider's key: must appear nowhere
GEN = {"prompt": "a lighthouse at dusk", "size": "64x64", "steps": 1}


@pytest.fixture(scope="module")
def admin(gateway):
    with httpx.Client(base_url=gateway.base_url, headers=gateway.headers, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def configured(gateway, admin):
    """`peer`: this gateway again, through its OpenAI-compatible API; `dead`: a closed port."""
    model = admin.get("/v1/models").json()["data"][0]["id"]
    peer = {"name": "peer", "kind": "openai", "settings": {
        "base_url": gateway.base_url + "/v1", "api_key": gateway.api_key,
        "gateway_extensions": True, "models": [model], "timeout_s": 120}}
    dead = {"name": "dead", "kind": "openai", "settings": {
        "base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": SECRET,
        "gateway_extensions": True, "models": [model], "timeout_s": 10}}
    try:
        for body in (peer, dead):
            r = admin.post("/v1/providers", json=body)
            assert r.status_code == 201, r.text
        yield model
    finally:
        for name in ("peer", "dead"):
            admin.delete(f"/v1/providers/{name}")


def envelope(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def test_pinned_provider_answers_and_is_recorded(gateway, admin, configured):
    r = admin.post("/v1/images/generations", json={**GEN, "provider": "peer"})
    assert r.status_code == 200, r.text
    meta = r.json()["metadata"]
    assert meta["provider"] == "peer"
    assert [a["provider"] for a in meta["attempts"]] == ["peer"]
    assert meta["attempts"][0]["outcome"] == "ok"
    # model='provider/model' pins the same way
    r = admin.post("/v1/images/generations", json={**GEN, "model": f"peer/{configured}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metadata"]["provider"] == "peer"
    records = RecordStore(gateway.database_url)
    try:  # the job record names the provider; the image is stored under its segment
        job = records.get_job(job_id=body["metadata"]["job_id"], project="default")
        assert job.result["metadata"]["provider"] == "peer"
        asset = records.get_asset(asset_id=body["data"][0]["id"], project="default")
        assert asset.key.startswith("default/peer/generations/")
    finally:
        records.close()


def test_dead_primary_falls_back_to_local(admin, configured):
    r = admin.post("/v1/images/generations", json={**GEN, "provider": ["dead", "local"]})
    assert r.status_code == 200, r.text
    meta = r.json()["metadata"]
    assert meta["provider"] == "local"
    first, last = meta["attempts"]
    assert first["provider"] == "dead" and first["outcome"] in ("connection_error",
                                                                "breaker_open")
    assert last == {**last, "provider": "local", "outcome": "ok"}



def test_edit_and_variation_fall_back_from_dead_to_local(admin, configured):
    """The multipart routes take the chain too (forms: names separated by commas); the chat
    has no provider field (its steps use the configured order), so edits and variations are
    where a client pins one for input images."""
    photo = png_bytes(size=(64, 64), color=(180, 60, 20))
    r = admin.post("/v1/images/edits", data={"prompt": "make it snowy", "size": "64x64",
                                             "provider": "dead,local"},
                   files={"image": ("fox.png", photo, "image/png")})
    r2 = admin.post("/v1/images/variations", data={"size": "64x64", "provider": "dead,local"},
                    files={"image": ("fox.png", photo, "image/png")})
    for response in (r, r2):
        assert response.status_code == 200, response.text
        meta = response.json()["metadata"]
        assert meta["provider"] == "local"
        first, last = meta["attempts"]
        assert first["provider"] == "dead" and first["outcome"] in ("connection_error",
                                                                    "breaker_open")
        assert last == {**last, "provider": "local", "outcome": "ok"}
        assert len(response.json()["data"]) == 1

def test_every_provider_failing_is_a_503_naming_each_attempt(admin, configured):
    r = admin.post("/v1/images/generations", json={**GEN, "provider": "dead"})
    error = envelope(r, 503, "providers_unavailable")
    assert "dead" in error["message"] and int(r.headers["retry-after"]) >= 1
    error = envelope(admin.post("/v1/images/generations", json={**GEN, "provider": "nope"}),
                     400, "provider_not_found")
    assert error["param"] == "provider"
    error = envelope(admin.post("/v1/images/generations",
                                json={**GEN, "provider": "peer", "stream": True}),
                     400, "invalid_combination")
    assert error["param"] == "stream"


def test_providers_listed_without_secrets_and_changes_need_admin(gateway, admin, configured):
    plain = gateway.create_key(scopes=["generate"])
    with httpx.Client(base_url=gateway.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {plain}"}) as c:
        r = c.get("/v1/providers")
        assert r.status_code == 200, r.text
        listed = {p["name"]: p for p in r.json()["data"]}
        assert {"local", "peer", "dead"} <= set(listed)
        assert listed["peer"]["kind"] == "openai" and listed["peer"]["capabilities"]
        assert listed["peer"]["settings"] is None and "breaker" in listed["peer"]
        assert "p50_latency_s" in listed["local"] and "success_rate" in listed["local"]
        envelope(c.post("/v1/providers", json={"name": "x", "kind": "openai",
                                               "settings": {"api_key": "k"}}),
                 403, "insufficient_scope")
        envelope(c.delete("/v1/providers/peer"), 403, "insufficient_scope")
        envelope(c.patch("/v1/providers/peer", json={"settings": {"priority": 1}}),
                 403, "insufficient_scope")
    r = admin.get("/v1/providers")
    assert SECRET not in r.text and gateway.api_key not in r.text
    dead = next(p for p in r.json()["data"] if p["name"] == "dead")
    assert dead["settings"]["api_key"] == "***"
    r = admin.patch("/v1/providers/dead", json={"settings": {"timeout_s": 5}})
    assert r.status_code == 200 and SECRET not in r.text, r.text
    assert r.json()["settings"]["timeout_s"] == 5 and r.json()["settings"]["api_key"] == "***"
    error = envelope(admin.post("/v1/providers", json={"name": "bad", "kind": "runware",
                                                       "settings": {"api_key": 12345678}}),
                     400, "invalid_settings")
    assert "12345678" not in error["message"] and error["param"] == "settings"
    envelope(admin.post("/v1/providers", json={"name": "x", "kind": "teleport"}), 400,
             "unknown_kind")


def test_secrets_never_logged(configured, admin, ray_cluster):
    admin.post("/v1/images/generations", json={**GEN, "provider": "dead"})  # fails, logs
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [p for p in logs.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_batch_answers_one_job_per_prompt(admin, gateway):
    items = [{**GEN, "prompt": f"a boat number {i}"} for i in range(3)]
    r = admin.post("/v1/images/generations/batch", json={"requests": items})
    assert r.status_code == 202, r.text
    jobs = r.json()["data"]
    assert len(jobs) == 3 and len({j["id"] for j in jobs}) == 3

    def done():
        states = [admin.get(f"/v1/jobs/{j['id']}").json()["status"] for j in jobs]
        return all(s in ("succeeded", "failed") for s in states) and states
    assert set(wait_until(done, timeout=120, what="batch jobs")) == {"succeeded"}
    error = envelope(admin.post("/v1/images/generations/batch", json={"requests": [
        GEN, {**GEN, "size": "13x13"}]}), 400, "invalid_size")
    assert error["param"] == "requests[1].size"
    r = admin.post("/v1/images/generations/batch", json={"requests": [GEN] * 21})
    assert r.status_code == 400, r.text


def test_cli_add_list_remove_reaches_the_gateway(gateway, admin, capsys, monkeypatch):
    db = ["--database-url", gateway.database_url]
    monkeypatch.setenv("CLI_PROVIDER_KEY", SECRET)
    assert cli.main(["providers", "add", "from-cli", "--kind", "runware", "--api-key-env",
                     "CLI_PROVIDER_KEY", "--set", "priority=50", *db]) == 0
    with contextlib.ExitStack() as stack:
        stack.callback(cli.main, ["providers", "remove", "from-cli", *db])
        assert cli.main(["providers", "list", *db]) == 0
        out = capsys.readouterr().out
        assert "from-cli  kind=runware  priority=50" in out and SECRET not in out
        # the running gateway picks it up on its reload interval (another replica's change)
        wait_until(lambda: "from-cli" in admin.get("/v1/providers").text, timeout=60,
                   interval=1, what="the gateway to list the CLI's provider")
        assert cli.main(["providers", "remove", "from-cli", *db]) == 0
        assert cli.main(["providers", "remove", "from-cli", *db]) == 1  # gone already
