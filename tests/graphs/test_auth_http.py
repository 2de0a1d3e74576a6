"""API keys through the deployed production graph (real Serve proxy, SQLite records, Redis
limits): 401 / 403 / revoked, 429 with its headers, one project never sees another's
sessions, jobs or assets, signed asset URLs, /readyz."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image


def envelope(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["type"], error
    return error


def client(gateway, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=gateway.base_url, headers=headers, timeout=120)


GEN = {"prompt": "a lighthouse", "size": "64x64", "steps": 1}


def test_no_key_wrong_scope_and_revoked_key(gateway):
    with client(gateway, None) as anon:
        r = anon.post("/v1/images/generations", json=GEN)
        envelope(r, 401, "missing_api_key")
        assert r.headers["www-authenticate"] == "Bearer" and r.headers["x-request-id"]
        assert anon.get("/healthz").status_code == 200  # liveness stays public
        assert anon.get("/openapi.json").json()["components"]["securitySchemes"]["apiKey"]
    tools_only = gateway.create_key(scopes=["tools"])
    with client(gateway, tools_only) as c:
        error = envelope(c.post("/v1/images/generations", json=GEN), 403,
                         "insufficient_scope")
        assert "'generate'" in error["message"]
        envelope(c.post("/v1/chat", json={"message": "hi"}), 403, "insufficient_scope")
        envelope(c.post("/v1/projects", json={"id": "nope"}), 403, "insufficient_scope")
        assert c.get("/v1/jobs").status_code == 200  # reading its own needs no scope
    token = gateway.create_key(scopes=["generate"])
    with client(gateway, token) as c:
        for _ in range(3):  # the key is in the replica's key cache now
            assert c.get("/v1/jobs").status_code == 200
        assert c.post("/v1/images/generations", json=GEN).status_code == 200
        assert gateway.revoke_key(token)  # as `photostudio keys revoke`: announced on Redis
        error = envelope(c.post("/v1/images/generations", json=GEN), 401,
                         "invalid_api_key")  # the very next request
        assert "revoked" in error["message"]


def test_rate_limit_429_with_headers(gateway):
    token = gateway.create_key(requests_per_minute=3, images_per_day=1000)
    with client(gateway, token) as c:
        remaining = [int(c.get("/v1/jobs").headers["x-ratelimit-remaining"])
                     for _ in range(3)]
        assert remaining == [2, 1, 0]
        r = c.get("/v1/jobs")
        envelope(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-remaining"] == "0"


def test_images_per_day_quota(gateway):
    token = gateway.create_key(images_per_day=3)
    with client(gateway, token) as c:
        assert c.post("/v1/images/generations", json={**GEN, "n": 2}).status_code == 200
        r = c.post("/v1/images/generations", json={**GEN, "n": 2})
        error = envelope(r, 429, "quota_exceeded")
        assert "3 images" in error["message"] and int(r.headers["retry-after"]) > 0
        assert r.headers["x-ratelimit-limit"] == "3"
        assert c.post("/v1/images/generations", json=GEN).status_code == 200  # the 3rd image
        envelope(c.post("/v1/images/generations", json=GEN), 429, "quota_exceeded")


@pytest.fixture(scope="module")
def two_projects(gateway):
    """Project `default` (the suite's key) made a session, a job and an asset; `rival` has a
    key of its own."""
    a = gateway.create_key(project="default")
    b = gateway.create_key(project="rival")
    with client(gateway, a) as c:
        chat = c.post("/v1/chat", json={"message": "hello"}).json()
        gen = c.post("/v1/images/generations",
                     json={**GEN, "response_format": "url"}).json()
    return {"a": a, "b": b, "session": chat["session_id"], "job": gen["metadata"]["job_id"],
            "asset": gen["data"][0]["id"], "url": gen["data"][0]["url"]}


def test_projects_are_isolated(gateway, two_projects):
    t = two_projects
    with client(gateway, t["b"]) as rival:
        for path, code in ((f"/v1/sessions/{t['session']}", "not_found"),
                           (f"/v1/jobs/{t['job']}", "not_found"),
                           (f"/v1/assets/{t['asset']}", "not_found"),
                           ("/v1/projects/default", "not_found")):
            envelope(rival.get(path), 404, code)
        envelope(rival.delete(f"/v1/sessions/{t['session']}"), 404, "not_found")
        envelope(rival.delete(f"/v1/assets/{t['asset']}"), 404, "not_found")
        envelope(rival.delete(f"/v1/jobs/{t['job']}"), 404, "not_found")
        envelope(rival.post("/v1/chat", json={"message": "hi", "session_id": t["session"]}),
                 404, "not_found")
        assert t["session"] not in {s["id"] for s in rival.get("/v1/sessions").json()["data"]}
        assert t["job"] not in {j["id"] for j in rival.get("/v1/jobs").json()["data"]}
        assert [p["id"] for p in rival.get("/v1/projects").json()["data"]] == ["rival"]
        assert rival.get("/v1/projects/rival/assets").json()["data"] == []
        envelope(rival.get("/v1/projects/default/assets"), 404, "not_found")
    with client(gateway, t["a"]) as owner:  # the owner still sees all of it
        assert owner.get(f"/v1/sessions/{t['session']}").status_code == 200
        assert owner.get(f"/v1/jobs/{t['job']}").json()["assets"][0]["id"] == t["asset"]
        assert owner.get(f"/v1/assets/{t['asset']}").status_code == 200
        assert t["job"] in {j["id"] for j in owner.get("/v1/jobs?limit=200").json()["data"]}
        assets = owner.get("/v1/projects/default/assets?limit=200").json()["data"]
        assert t["asset"] in {a["id"] for a in assets}


def test_signed_asset_url_works_without_a_key(gateway, two_projects):
    url = two_projects["url"]
    assert "sig=" in url and "expires=" in url and "project=default&" in url
    r = httpx.get(url, timeout=30)  # as an <img> tag would: no Authorization header
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (64, 64)
    envelope(httpx.get(url.replace("sig=", "sig=0"), timeout=30), 403, "invalid_signature")
    # the project is signed: the same URL can't be pointed at another project
    envelope(httpx.get(url.replace("project=default&", "project=rival&"), timeout=30), 403,
             "invalid_signature")
    unsigned = url.split("?")[0]
    envelope(httpx.get(unsigned, timeout=30), 401, "missing_api_key")


def test_readyz_reports_every_deployment(http):
    r = http.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert {"Ingress", "Generator", "Matting", "FaceSwap", "Upscaler", "Router"} <= set(
        body["deployments"])
    assert set(body["deployments"].values()) == {"HEALTHY"}
    assert body["checks"] == {"records": "ok", "rate_limits": "ok"}
