"""The request path's small holes (issue #13 items 9, 11-15) through Serve's proxy and the
production graph (the `gateway` fixture). Unit tests of each mechanism: test_request_path.py.
"""

from __future__ import annotations

import io
import json
import socket
import time
from datetime import datetime, timezone
from urllib.parse import urlparse

import httpx
import pytest
from PIL import Image

from graphs.serve_proxy import valid_request_id
from tests.conftest import wait_until

DEEP = "[" * 10_000 + "]" * 10_000


def envelope(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def asset_url(gateway) -> str:
    """A signed asset URL, as `response_format=url` gives it."""
    with httpx.Client(base_url=gateway.base_url, headers=gateway.headers, timeout=120) as c:
        r = c.post("/v1/images/generations", json={
            "prompt": "a small boat", "response_format": "url", "size": "64x64", "steps": 2})
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["url"]


# --- 9 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/plan", "/v1/images/generations",
                                  "/v1/prompts/refine"])
def test_deep_json_bodies_are_400(http, path):
    r = http.post(path, content=DEEP, headers={"content-type": "application/json"})
    error = envelope(r, 400)
    assert error["code"] == "json_too_deep" and "nested deeper than 64" in error["message"]


def test_deep_chat_body_without_json_content_type_is_400(http):
    # /v1/chat parses any non-multipart body as JSON itself
    r = http.post("/v1/chat", content=DEEP, headers={"content-type": "text/plain"})
    assert "nested deeper than 64" in envelope(r, 400)["message"]


def test_deep_multipart_json_fields_are_400(http):
    r = http.post("/v1/chat", files={"message": (None, "hello"), "context": (None, DEEP)})
    error = envelope(r, 400)
    assert error["param"] == "context" and "nested deeper than 64" in error["message"]
    r = http.post("/v1/images/edit-ops", files={"image": ("a.png", png_bytes())},
                  data={"ops": DEEP})
    error = envelope(r, 400)
    assert error["message"].startswith("ops must be a JSON list") and \
        "nested deeper than 64" in error["message"]


# --- 11 -------------------------------------------------------------------------------------


def _stats(gateway) -> dict:
    return gateway.handle("Generator").stats.remote().result(timeout_s=30)


@pytest.mark.slow  # a 50-step generation to walk away from
def test_a_synchronous_request_is_cancelled_when_its_client_leaves(gateway, http):
    """Even when the client asks Serve not to watch for its disconnect (Serve's own
    per-request hint): the gateway drops the hint and cancels the request itself; the
    generator stops early and the job ends `cancelled`."""
    since = datetime.now(timezone.utc).isoformat()
    before = _stats(gateway)["cancelled"]
    url = urlparse(gateway.base_url)
    payload = json.dumps({"prompt": "a sync request whose client leaves", "size": "256x256",
                          "steps": 50}).encode()
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(f"POST /v1/images/generations HTTP/1.1\r\nHost: {url.netloc}\r\n"
                 f"Authorization: Bearer {gateway.api_key}\r\n"
                 "X-Request-Disconnect-Disabled: ?1\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                 "\r\n".encode() + payload)
    try:
        busy = wait_until(lambda: (s := _stats(gateway))["model_busy"] and s, timeout=60,
                          interval=0.1, what="the generator to start denoising")
        wait_until(lambda: _stats(gateway)["denoising_steps"] >= busy["denoising_steps"] + 2,
                   timeout=60, interval=0.1, what="a step or two")
    finally:
        sock.close()

    def interrupted():
        stats = _stats(gateway)
        return stats if stats["cancelled"]["interrupted_calls"] > \
            before["interrupted_calls"] else None

    last = wait_until(interrupted, timeout=40, what="the generator to stop the call"
                      )["cancelled"]["last_interrupt"]
    assert last["total_steps"] == 50 and last["steps_run"] < 50, last

    def cancelled_job():
        jobs = http.get("/v1/jobs", params={"status": "cancelled", "created_after": since,
                                            "limit": 200}).json()["data"]
        return [j for j in jobs if j["kind"] == "generations"] or None

    wait_until(cancelled_job, timeout=30, what="the abandoned request's job to be cancelled")


# --- 12 -------------------------------------------------------------------------------------


def test_client_host_headers_do_not_choose_urls_or_redirects(http, gateway):
    body = {"prompt": "a lighthouse", "response_format": "url", "size": "64x64", "steps": 2}
    own = http.post("/v1/images/generations", json=body)
    assert own.json()["data"][0]["url"].startswith(gateway.base_url + "/v1/assets/")
    evil = {"Host": "evil.example", "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https"}
    r = http.post("/v1/images/generations", json=body, headers=evil)
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    assert "evil" not in url and url.startswith("http://"), url
    job = http.get(f"/v1/jobs/{r.json()['metadata']['job_id']}", headers=evil).json()
    assert all("evil" not in a["url"] for a in job["assets"])
    redirect = http.get("/v1/jobs/", headers=evil, follow_redirects=False)
    assert redirect.status_code == 307, redirect.text
    assert "evil" not in redirect.headers["location"]


# --- 13 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["<script>alert(1)</script>" + "x" * 10_000, "a b"])
def test_unsafe_request_ids_are_replaced(http, given):
    r = http.get("/v1/jobs", headers={"X-Request-ID": given})
    ids = r.headers.get_list("x-request-id")
    assert len(ids) == 1 and ids[0] != given and valid_request_id(ids[0]), ids[0][:200]
    assert http.get("/healthz", headers={"X-Request-ID": "client-7.ok"}
                    ).headers.get_list("x-request-id") == ["client-7.ok"]


# --- 14 -------------------------------------------------------------------------------------


def test_no_store_and_nosniff_on_authenticated_answers(http, asset_url):
    asset_path = urlparse(asset_url).path
    for r in (http.get("/v1/jobs"), http.get(asset_path), http.get("/v1/assets/img_missing"),
              httpx.get(asset_url, timeout=30)):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
    assert http.get("/v1/jobs").headers["cache-control"] == "no-store"
    assert http.get(asset_path).headers["cache-control"] == "no-store"  # with the API key


def test_signed_asset_urls_are_private_until_they_expire(asset_url):
    r = httpx.get(asset_url, timeout=30)
    assert r.status_code == 200
    directive, max_age = r.headers["cache-control"].split(", max-age=")
    expires = int(dict(p.split("=") for p in urlparse(asset_url).query.split("&"))["expires"])
    assert directive == "private" and 0 < int(max_age) <= expires - time.time() + 1


# --- 15 -------------------------------------------------------------------------------------


def test_head_and_if_none_match_on_asset_urls(http, asset_url):
    get = httpx.get(asset_url, timeout=30)
    etag = get.headers["etag"]
    head = httpx.head(asset_url, timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == etag
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["content-type"] == "image/png"
    keyed = http.head(urlparse(asset_url).path)
    assert keyed.status_code == 200 and keyed.headers["etag"] == etag
    for method in ("GET", "HEAD"):
        r = httpx.request(method, asset_url, headers={"If-None-Match": etag}, timeout=30)
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    changed = httpx.get(asset_url, headers={"If-None-Match": '"other"'}, timeout=30)
    assert changed.status_code == 200 and changed.content == get.content
