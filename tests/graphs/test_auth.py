"""The auth gate in process (no Ray): a real Starlette app behind `AuthMiddleware`, keys in a
SQLite record store, limits in memory and in the real Redis (shared like replicas share it)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid

import httpx
import pytest
from fastapi import FastAPI

from graphs import auth, errors, middleware
from graphs.auth import AuthConfig, AuthMiddleware
from graphs.errors import ApiError
from graphs.quotas import QuotaConfig, Quotas
from storage.records import RecordStore


@pytest.fixture
def records(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'auth.db'}")
    yield store
    store.close()


def make_app(records, request_path: bool = False, **config) -> httpx.AsyncClient:
    """The gate alone, or (`request_path`) with the ingress's request path outside it, which
    adds the gate's X-RateLimit-* headers itself (`errors.Exchange`)."""
    app = FastAPI()
    errors.install(app)
    app.add_middleware(AuthMiddleware)
    if request_path:
        middleware.install(app)

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.post("/v1/images/generations")
    async def generate():
        await app.state.auth_gate.charge_images(2)
        return {"project": auth.current_project()}

    @app.post("/v1/images/upscale")
    async def upscale():
        return {"project": auth.current_project()}

    @app.get("/v1/assets/{asset_id}")
    async def asset(asset_id: str):
        p = auth.current()
        return {"project": p.project, "signed": p.signed_asset}

    gate = auth.configure(app, records=records, config=AuthConfig(**config))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    client.gate = gate
    return client


def sync(fn):
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return run


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def envelope(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


WITH_AND_WITHOUT_REQUEST_PATH = pytest.mark.parametrize(
    "request_path", [False, True], ids=["gate-alone", "with-request-path"])


@WITH_AND_WITHOUT_REQUEST_PATH
@sync
async def test_keys_scopes_and_revocation(records, request_path):
    _, token = records.create_api_key(project="default", name="t", scopes=["generate"])
    # key cache off: every request reads the store (the cache has tests of its own below)
    async with make_app(records, request_path, key_cache_ttl_s=0) as client:
        assert (await client.get("/healthz")).status_code == 200  # public
        r = await client.post("/v1/images/generations")
        envelope(r, 401, "missing_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        envelope(await client.post("/v1/images/generations",
                                   headers={"Authorization": "Basic abc"}),
                 401, "invalid_authorization")
        envelope(await client.post("/v1/images/generations", headers=bearer("psk_nope")),
                 401, "invalid_api_key")
        ok = await client.post("/v1/images/generations", headers=bearer(token))
        assert ok.status_code == 200 and ok.json() == {"project": "default"}
        assert ok.headers["x-ratelimit-limit"] == "600"
        assert int(ok.headers["x-ratelimit-remaining"]) == 599
        error = envelope(await client.post("/v1/images/upscale", headers=bearer(token)),
                         403, "insufficient_scope")
        assert "'tools'" in error["message"]
        key_id = records.authenticate_api_key(token=token).id
        records.revoke_api_key(key_id=key_id)
        error = envelope(await client.post("/v1/images/generations", headers=bearer(token)),
                         401, "invalid_api_key")
        assert "revoked" in error["message"]


@WITH_AND_WITHOUT_REQUEST_PATH
@sync
async def test_requests_per_minute_and_images_per_day(records, request_path):
    _, token = records.create_api_key(project="default", name="t", requests_per_minute=3,
                                      images_per_day=5)
    async with make_app(records, request_path) as client:
        for _ in range(2):  # 2 images each: 4 of 5
            assert (await client.post("/v1/images/generations",
                                      headers=bearer(token))).status_code == 200
        r = await client.post("/v1/images/generations", headers=bearer(token))
        envelope(r, 429, "quota_exceeded")  # the third request, but 6 images > 5
        assert 0 < int(r.headers["retry-after"]) <= 24 * 3600
        # the images window's headers, not the requests window's beside them
        assert r.headers.get_list("x-ratelimit-limit") == ["5"]
        assert r.headers.get_list("x-ratelimit-remaining") == ["1"]
        r = await client.post("/v1/images/upscale", headers=bearer(token))
        envelope(r, 429, "rate_limited")  # 4th request in the minute > 3
        assert 0 < int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-limit"] == "3"
        assert r.headers["x-ratelimit-remaining"] == "0"


@sync
async def test_auth_off_acts_in_the_configured_project(records):
    async with make_app(records, enabled=False, project="studio") as client:
        r = await client.post("/v1/images/upscale")
        assert r.status_code == 200 and r.json() == {"project": "studio"}
        assert "x-ratelimit-limit" not in r.headers


@sync
async def test_signed_asset_urls(records):
    async with make_app(records) as client:
        query = client.gate.sign("img_1", "p1")
        assert query.startswith("?project=p1&expires=") and "&sig=" in query
        r = await client.get(f"/v1/assets/img_1{query}")
        # the request it allows reads the asset through the project it was signed for
        assert r.status_code == 200 and r.json() == {"project": "p1", "signed": "img_1"}
        envelope(await client.get(f"/v1/assets/img_2{query}"), 403, "invalid_signature")
        # the project is signed too: another project in the same URL is refused
        forged = query.replace("project=p1", "project=p2")
        envelope(await client.get(f"/v1/assets/img_1{forged}"), 403, "invalid_signature")
        envelope(await client.get("/v1/assets/img_1"), 401, "missing_api_key")
        # a URL without its project (the older format) is no signed URL at all
        unscoped = query.replace("project=p1&", "")
        envelope(await client.get(f"/v1/assets/img_1{unscoped}"), 401, "missing_api_key")
        past = int(time.time()) - 5
        envelope(await client.get(f"/v1/assets/img_1?project=p1&expires={past}&sig=00"), 403,
                 "url_expired")


def test_production_profile_requires_auth():
    from graphs.app import AppArgs, Settings, auth_config_for

    with pytest.raises(ValueError, match="production profile requires API-key auth"):
        auth_config_for(AppArgs(auth_enabled=False), Settings(), "production")
    assert auth_config_for(AppArgs(auth_enabled=False), Settings(), "local").enabled is False
    assert auth_config_for(AppArgs(), Settings(), "tiny").enabled is True  # on by default


@sync
async def test_redis_limits_are_shared_between_replicas(redis_url):
    """Two `Quotas` (as two ingress replicas hold) count one key's requests together."""
    config = QuotaConfig(storage_url=redis_url, requests_per_minute=4)
    replicas = [Quotas(config), Quotas(config)]
    key = f"key_{uuid.uuid4().hex}"
    for i in range(4):
        usage = await replicas[i % 2].check_request(key, per_minute=None)
        assert usage.remaining == 3 - i
    with pytest.raises(ApiError) as caught:
        await replicas[0].check_request(key, per_minute=None)
    assert caught.value.status == 429 and "Retry-After" in caught.value.headers


@sync
async def test_limiter_down_fails_open_or_closed():
    down = "redis://127.0.0.1:1/0"  # nothing listens there
    assert await Quotas(QuotaConfig(storage_url=down)).check_request("k", per_minute=None) \
        is None
    with pytest.raises(ApiError) as caught:
        await Quotas(QuotaConfig(storage_url=down, fail_open=False)).check_request(
            "k", per_minute=None)
    assert caught.value.status == 503 and caught.value.headers["Retry-After"]


def test_contextvar_isolates_concurrent_requests(records):
    """Two requests of two projects at once each see their own project."""
    records.create_project(project_id="other")
    _, a = records.create_api_key(project="default", name="a")
    _, b = records.create_api_key(project="other", name="b")

    async def both():
        async with make_app(records) as client:
            return await asyncio.gather(*(
                client.post("/v1/images/upscale", headers=bearer(t)) for t in (a, b) * 5))

    projects = [r.json()["project"] for r in asyncio.run(both())]
    assert projects == ["default", "other"] * 5


class CountingStore:
    """The record store, counting how often a key is read from it."""

    def __init__(self, records):
        self.records, self.reads = records, 0

    def __getattr__(self, name):
        return getattr(self.records, name)

    def authenticate_api_key(self, *, token):
        self.reads += 1
        return self.records.authenticate_api_key(token=token)


@sync
async def test_key_cache_reads_the_store_once_per_ttl_then_sees_the_revocation(records):
    """Without Redis (memory:// limits, one local replica) a key is read once per TTL; a
    revocation made meanwhile is refused once the entry expires."""
    _, token = records.create_api_key(project="default", name="c")
    store = CountingStore(records)
    now = [1000.0]
    async with make_app(store, key_cache_ttl_s=2.0) as client:
        client.gate.keys.clock = lambda: now[0]
        for _ in range(5):
            assert (await client.post("/v1/images/upscale", headers=bearer(token))
                    ).status_code == 200
        assert store.reads == 1
        from storage.key_events import revoke_api_key

        key_id = records.authenticate_api_key(token=token).id
        assert revoke_api_key(records, key_id=key_id, events_url=None)
        now[0] += 2.5  # past the TTL
        envelope(await client.post("/v1/images/upscale", headers=bearer(token)), 401,
                 "invalid_api_key")
        assert store.reads == 2
        # unknown tokens are never cached: each is read again
        for _ in range(2):
            envelope(await client.post("/v1/images/upscale", headers=bearer("psk_x")), 401,
                     "invalid_api_key")
        assert store.reads == 4


@sync
async def test_revocation_announced_on_redis_reaches_every_replica(records, redis_url):
    """Two gates (two ingress replicas) cache a key; `revoke_api_key` (what `photostudio keys
    revoke` runs) drops it from both through Redis pub/sub, long before the TTL."""
    from storage.key_events import revoke_api_key
    from tests.conftest import async_wait_until

    _, token = records.create_api_key(project="default", name="r")
    key_id = records.authenticate_api_key(token=token).id
    stores = [CountingStore(records), CountingStore(records)]
    apps = [make_app(s, key_cache_ttl_s=60, quotas=QuotaConfig(storage_url=redis_url))
            for s in stores]
    try:
        for app in apps:
            await app.post("/v1/images/upscale", headers=bearer(token))  # starts the listener
            await async_wait_until(lambda app=app: app.gate.keys.caching, timeout=10,
                                   what="the revocation subscription")
            for _ in range(3):
                assert (await app.post("/v1/images/upscale", headers=bearer(token))
                        ).status_code == 200
        reads = [s.reads for s in stores]
        assert revoke_api_key(records, key_id=key_id, events_url=redis_url)
        for app in apps:
            await async_wait_until(lambda app=app: app.gate.keys.generation > 1, timeout=10,
                                   what="the revocation to arrive")
            error = envelope(await app.post("/v1/images/upscale", headers=bearer(token)), 401,
                             "invalid_api_key")
            assert "revoked" in error["message"]
        assert [s.reads for s in stores] == [r + 1 for r in reads]
    finally:
        for app in apps:
            app.gate.keys.stop()
            await app.aclose()


@sync
async def test_key_cache_is_off_while_the_revocation_channel_is_down(records):
    """Redis configured but unreachable: no revocation could reach this replica, so every
    request reads the store (and the rate limiter fails open as before)."""
    _, token = records.create_api_key(project="default", name="d")
    store = CountingStore(records)
    down = "redis://127.0.0.1:1/0"
    async with make_app(store, key_cache_ttl_s=60, quotas=QuotaConfig(storage_url=down)
                        ) as client:
        for _ in range(3):
            assert (await client.post("/v1/images/upscale", headers=bearer(token))
                    ).status_code == 200
        assert store.reads == 3 and not client.gate.keys.caching
        client.gate.keys.stop()


def test_lora_registration_needs_the_models_scope_which_admin_implies():
    from graphs.auth import Principal, required_scope

    assert required_scope("POST", "/v1/models/loras") == "models"
    assert required_scope("DELETE", "/v1/models/loras/my-style") == "models"
    assert required_scope("GET", "/v1/models/loras") is None  # reading: any valid key
    assert required_scope("GET", "/v1/models") is None
    as_key = lambda *s: Principal(key_id="key_1", project="p", scopes=frozenset(s))  # noqa: E731
    assert as_key("models").allows("models") and as_key("admin").allows("models")
    assert not as_key("generate", "tools", "chat").allows("models")
    assert not as_key("models").allows("admin")


class EditedStore(CountingStore):
    """The record store, with edits to the key made behind the gate's back."""

    def __init__(self, records, **edits):
        super().__init__(records)
        self.edits = edits

    def authenticate_api_key(self, *, token):
        self.reads += 1
        return dataclasses.replace(self.records.authenticate_api_key(token=token), **self.edits)


@sync
async def test_a_keys_caller_is_made_once_per_cached_record_and_follows_its_edits(records):
    """While the key cache holds a key's record, every request gets the same caller (no
    Principal built per request); once the entry expires the record is read again and an
    edit made meanwhile (limits, scopes) is the caller's."""
    _, token = records.create_api_key(project="default", name="m", requests_per_minute=50)
    store = EditedStore(records)
    gate = auth.Gate(records=store, config=AuthConfig(key_cache_ttl_s=2.0))
    now = [1000.0]
    gate.keys.clock = lambda: now[0]
    headers = [(b"authorization", f"Bearer {token}".encode())]
    first, usage = await gate.admit("GET", "/v1/styles", headers)
    again, _ = await gate.admit("GET", "/v1/styles", headers)
    assert again is first and store.reads == 1
    assert first.requests_per_minute == 50 == usage.limit
    assert usage.remaining == 49

    store.edits = {"requests_per_minute": 7, "images_per_day": 3, "scopes": ["read"]}
    now[0] += 2.5  # past the TTL: read again
    edited, usage = await gate.admit("GET", "/v1/styles", headers)
    assert store.reads == 2 and edited is not first
    assert (edited.requests_per_minute, edited.images_per_day, edited.scopes) == (
        7, 3, frozenset({"read"}))
    assert usage.limit == 7


def test_required_scope_remembers_answers_within_a_bound(monkeypatch):
    """The per-(method, path) memo gives the table's answers and never grows past its bound
    (paths carry ids: a memo without a bound would grow with every asset fetched)."""
    from graphs import auth as auth_module

    monkeypatch.setattr(auth_module, "_scope_memo", {})
    monkeypatch.setattr(auth_module, "_SCOPE_MEMO_SIZE", 50)
    for i in range(120):
        assert auth_module.required_scope("DELETE", f"/v1/models/loras/style-{i}") == "models"
        assert auth_module.required_scope("GET", f"/v1/models/loras/style-{i}") is None
        assert len(auth_module._scope_memo) <= 50
    assert auth_module.required_scope("POST", "/v1/images/generations") == "generate"


class SlowStore:
    """A record store whose key and project reads wait for `go` (in their thread), counted."""

    def __init__(self, records):
        self.records = records
        self.go = __import__("threading").Event()
        self.key_reads = self.project_reads = 0

    def __getattr__(self, name):
        return getattr(self.records, name)

    def authenticate_api_key(self, *, token):
        self.key_reads += 1
        self.go.wait(10)
        return self.records.authenticate_api_key(token=token)

    def get_project(self, *, project_id):
        self.project_reads += 1
        self.go.wait(10)
        return self.records.get_project(project_id=project_id)


@sync
async def test_requests_missing_the_key_cache_together_share_one_read(records):
    """When a key is not cached (a cold replica, an entry just expired under load) the
    requests in flight share one record-store read of it and of its project's limits
    instead of one thread each; a request that arrives after a revocation does not join a
    read begun before it, and a waiter that is cancelled leaves the read to the others."""
    _, token = records.create_api_key(project="default", name="s")
    store = SlowStore(records)
    gate = auth.Gate(records=store, config=AuthConfig(key_cache_ttl_s=2.0))
    headers = [(b"authorization", f"Bearer {token}".encode())]
    waiters = [asyncio.ensure_future(gate.admit("GET", "/v1/styles", headers))
               for _ in range(20)]
    await asyncio.sleep(0.2)
    assert store.key_reads == 1
    waiters[0].cancel()
    gate.keys.forget()  # a revocation arrives: the next request reads for itself
    late = asyncio.ensure_future(gate.admit("GET", "/v1/styles", headers))
    await asyncio.sleep(0.2)
    assert store.key_reads == 2
    store.go.set()
    done = await asyncio.gather(*waiters[1:], late)
    assert {principal.key_id for principal, _ in done} == {
        records.authenticate_api_key(token=token).id}
    assert store.key_reads == 2 and store.project_reads == 1
    assert gate._loading == {}
    assert waiters[0].cancelled()
