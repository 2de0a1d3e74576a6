"""API keys: who is calling, which project they act in, what they may do.

`Authorization: Bearer psk_…` on every request but the public ones (health, docs). The key
is looked up by its SHA-256 in the record store, and kept by the replica for `key_cache_ttl_s`
(2 s; `KeyCache`) so the request path does not read the store on every request. A revocation
(`storage.key_events.revoke_api_key`, what `photostudio keys revoke` runs) is published on
Redis and every replica drops the key before its next request; without Redis (memory://
limits, one local replica) a revoked key is refused once its entry expires. The key's
project scopes everything the request touches (jobs, assets, sessions, projects):
`current_project()` is what the services read.

Scopes (a key has a subset; none given at creation = generate, tools and chat):
- generate: /v1/images/generations, /edits, /variations; videos (POST /v1/videos, remix,
  upscale); running a workflow (POST /v1/workflows/execute), a remix (POST
  /v1/assets/{id}/remix)
- tools: background removal, face swap, upscale, edit-ops, style transfer, image analysis
- chat: /v1/chat, /v1/chat/plan, /v1/sessions, /v1/prompts
- models: register and delete LoRA adapters (POST /v1/models/loras, DELETE
  /v1/models/loras/{name}); registering from a server-side path needs admin
- admin: create projects and list every project; add, change and remove image providers;
  everything `models` may do
Reading a key's own jobs, assets, models and capabilities needs only a valid key.

Asset URLs in responses (`response_format=url`, job and gallery listings) are signed and
expire (`asset_url_ttl_s`), so an <img> tag or a plain download can fetch them without the key;
unsigned, GET /v1/assets/{id} needs a key of the asset's project.

Auth is on unless `enabled: false` is set explicitly, which the app builder allows only for
the tiny and local profiles. With auth off every request acts in the configured project.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from graphs import studio
from graphs.errors import GATE_SEEN, ApiError, exchange_of, recorder_of
from graphs.quotas import QuotaConfig, Quotas, Usage
from storage.key_events import CHANNEL, is_redis_url
from storage.records import hash_api_key

logger = logging.getLogger("ray.serve")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json"})


def is_public(path: str) -> bool:
    """Health, the API docs, and the studio's static files (graphs/studio: the app itself
    asks for a key and sends it on every API call)."""
    return path in PUBLIC_PATHS or studio.is_public(path)


# (method or "*", path pattern, scope); first match wins; unmatched: any valid key
ROUTE_SCOPES: tuple[tuple[str, re.Pattern, str], ...] = tuple(
    (method, re.compile(pattern), scope) for method, pattern, scope in (
        ("POST", r"^/v1/images/(generations|generations/batch|edits|variations)$",
         "generate"),
        ("POST", r"^/v1/images/(remove-background|face-swap|upscale|edit-ops|style-transfer|"
         r"analyze)$", "tools"),
        ("POST", r"^/v1/videos(/[^/]+/(remix|upscale))?$", "generate"),
        ("POST", r"^/v1/workflows/execute$", "generate"),
        ("POST", r"^/v1/assets/[^/]+/remix$", "generate"),
        ("*", r"^/v1/(chat|sessions|prompts)(/|$)", "chat"),
        ("POST", r"^/v1/models/loras$", "models"),
        ("DELETE", r"^/v1/models/loras/[^/]+$", "models"),
        ("POST", r"^/v1/trainings$", "models"),  # a training registers a LoRA
        ("DELETE", r"^/v1/trainings/[^/]+$", "models"),
        ("POST", r"^/v1/projects$", "admin"),
        ("POST", r"^/v1/providers$", "admin"),
        ("PATCH", r"^/v1/providers/[^/]+$", "admin"),
        ("DELETE", r"^/v1/providers/[^/]+$", "admin"),
    ))


PROJECT_LIMITS_TTL_S = 10.0  # a project's quota settings are re-read this often per replica
PRINCIPALS_MEMO = 10_000  # callers remembered per replica (`Gate._principal`)


class AuthConfig(BaseModel):
    enabled: bool = True
    project: str = Field("default", description="the project of every request when auth is "
                         "off")
    quotas: QuotaConfig = QuotaConfig()
    asset_url_ttl_s: int = Field(24 * 3600, ge=60, description="signed asset URLs expire")
    key_cache_ttl_s: float = Field(2.0, ge=0, le=60, description="how long a replica keeps an "
                                   "authenticated key before reading the record store again "
                                   "(0: every request). Revocations announced on Redis "
                                   "(quotas.storage_url) drop it at once")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as."""

    key_id: str | None  # None: auth disabled
    project: str
    scopes: frozenset[str]
    requests_per_minute: int | None = None
    images_per_day: int | None = None
    signed_asset: str | None = None  # a signed asset URL: only that asset, nothing else
    model_seconds_per_day: int | None = None  # the key's (None: unlimited)
    project_images_per_day: int | None = None  # the project's, all its keys together
    project_model_seconds_per_day: int | None = None

    def model_seconds_windows(self) -> tuple[tuple[str, int, str], ...]:
        """(owner, per day, quota name) of each model-seconds quota on this caller."""
        return self._model_seconds_windows

    @functools.cached_property
    def _model_seconds_windows(self) -> tuple[tuple[str, int, str], ...]:
        # once per caller: the gate reuses a key's Principal for every request
        windows = []
        if self.key_id and self.model_seconds_per_day:
            windows.append((self.key_id, self.model_seconds_per_day,
                            "key.model_seconds_per_day"))
        if self.key_id and self.project_model_seconds_per_day:
            windows.append((f"project:{self.project}", self.project_model_seconds_per_day,
                            "project.model_seconds_per_day"))
        return tuple(windows)

    def allows(self, scope: str) -> bool:
        """Auth off: everything. Admin keys may do what `models` keys may."""
        if self.key_id is None and self.signed_asset is None:
            return True
        return scope in self.scopes or (scope == "models" and "admin" in self.scopes)

    @property
    def admin(self) -> bool:
        return self.allows("admin")


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "photostudio_principal", default=None)


def current(default_project: str = "default") -> Principal:
    """The caller of the request being handled (`AuthMiddleware` sets it, the configured
    project's anonymous caller when auth is off); outside a request, `default_project`'s."""
    principal = _principal.get()
    if principal is not None:
        return principal
    return Principal(key_id=None, project=default_project, scopes=frozenset())


def current_project(default: str = "default") -> str:
    return current(default).project


def acting_as(principal: Principal) -> contextvars.Token:
    """Set the caller (tests, background work); returns the token to reset it."""
    return _principal.set(principal)


_SCOPE_MEMO_SIZE = 4096  # (method, path) -> scope answers remembered (cleared when full)
_scope_memo: dict[tuple[str, str], str | None] = {}


def required_scope(method: str, path: str) -> str | None:
    """The scope `ROUTE_SCOPES` asks of `method path` (None: any key may call it); the
    answer is remembered per (method, path), the patterns walked once per path."""
    key = (method, path)
    try:
        return _scope_memo[key]
    except KeyError:
        pass
    scope = None
    for m, pattern, needed in ROUTE_SCOPES:
        if (m == "*" or m == method) and pattern.match(path):
            scope = needed
            break
    if len(_scope_memo) >= _SCOPE_MEMO_SIZE:
        _scope_memo.clear()
    _scope_memo[key] = scope
    return scope


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "the Authorization header must be 'Bearer <API key>'",
                               code="invalid_authorization",
                               headers={"WWW-Authenticate": "Bearer"})
            return token.strip()
    return None


class KeyCache:
    """The API keys this replica authenticated recently: token hash -> record, for `ttl_s`.

    With `events_url` (Redis), a subscription to `storage.key_events.CHANNEL` drops a revoked
    key at once; while that subscription is not up (starting, Redis down) nothing is cached,
    so a revocation is never missed for longer than the record store's own answer. Without
    one, entries simply expire. Only valid keys are kept (an unknown token is read again).
    A lookup that started before a revocation arrived is not cached (`generation`)."""

    def __init__(self, ttl_s: float, events_url: str | None = None, *, clock=time.monotonic):
        self.ttl_s = ttl_s
        self.clock = clock
        self.events_url = events_url if is_redis_url(events_url) else None
        self._entries: dict[str, tuple[Any, float]] = {}
        self._subscribed = False
        self._listener: asyncio.Task | None = None
        self.generation = 0  # bumped by every forget()

    @property
    def caching(self) -> bool:
        return self.ttl_s > 0 and (self.events_url is None or self._subscribed)

    def get(self, token_hash: str) -> Any | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry[1] <= self.clock() or not self.caching:
            self._entries.pop(token_hash, None)
            return None
        return entry[0]

    def put(self, token_hash: str, record: Any, generation: int) -> None:
        if self.caching and generation == self.generation and record.active:
            if len(self._entries) >= 10_000:  # bound it: drop the expired, else everything
                now = self.clock()
                self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
                if len(self._entries) >= 10_000:
                    self._entries.clear()
            self._entries[token_hash] = (record, self.clock() + self.ttl_s)

    def forget(self, key_id: str | None = None) -> None:
        """Drop `key_id`'s entries (None: all of them)."""
        self.generation += 1
        if key_id is None:
            self._entries.clear()
        else:
            self._entries = {k: v for k, v in self._entries.items() if v[0].id != key_id}

    def start(self) -> None:
        """Start the revocation listener on the running loop (once; no-op without Redis)."""
        if self.events_url and self.ttl_s > 0 and self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        warned = False
        while True:
            client = aioredis.Redis.from_url(self.events_url, socket_connect_timeout=2.0)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(CHANNEL)
                self.forget()  # anything revoked while we were not listening
                self._subscribed, warned = True, False
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        self.forget(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: no caching until it is back
                if not warned:
                    warned = True
                    logger.warning("API-key revocation channel unavailable (%s: %s); keys are "
                                   "read from the record store on every request until it is "
                                   "back", type(exc).__name__, exc)
            finally:
                self._subscribed = False
                self.forget()
                try:
                    await client.aclose()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
            await asyncio.sleep(1.0)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None


class Gate:
    """Authentication, scope checks and quotas of one ingress replica."""

    def __init__(self, *, records: Any, config: AuthConfig):
        self.records = records
        self.config = config
        self.quotas = Quotas(config.quotas)
        self.keys = KeyCache(config.key_cache_ttl_s, config.quotas.storage_url)
        self.anonymous = Principal(key_id=None, project=config.project,
                                   scopes=frozenset())
        self._secret = (records.shared_secret(name="asset-url-signing").encode()
                        if config.enabled else b"")
        self._project_limits: dict[str, tuple[float, dict[str, int | None]]] = {}
        # token hash -> (key record, project limits, the Principal made of them)
        self._principals: dict[str, tuple[Any, dict[str, int | None], Principal]] = {}
        # record-store reads under way (`_shared_load`): what -> its task
        self._loading: dict[tuple, asyncio.Future] = {}

    async def _shared_load(self, what: tuple, load: Callable[[], Awaitable[Any]]) -> Any:
        """`load()`'s result, read once for every request that needs `what` meanwhile: the
        requests that miss the cache together (when a cached key expires under load, every
        request in flight) share one record-store read instead of a thread each. A waiter
        that is cancelled (its client left) leaves the read to the others."""
        pending = self._loading.get(what)
        if pending is None:
            pending = asyncio.ensure_future(load())
            self._loading[what] = pending

            def done(task: asyncio.Future) -> None:
                if self._loading.get(what) is task:
                    del self._loading[what]
                if not task.cancelled():
                    task.exception()  # retrieved: every waiter may have gone

            pending.add_done_callback(done)
        return await asyncio.shield(pending)

    def _cached_project_limits(self, project: str) -> dict[str, int | None] | None:
        cached = self._project_limits.get(project)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return None

    async def _load_project_limits(self, project: str) -> dict[str, int | None]:
        """A project's quotas (its settings' ``images_per_day`` / ``model_seconds_per_day``)
        from the record store, cached for `PROJECT_LIMITS_TTL_S` (`admit` reads the cache
        first): no record read per request, one at a time per project."""
        return await self._shared_load(("project", project),
                                       lambda: self._read_project_limits(project))

    async def _read_project_limits(self, project: str) -> dict[str, int | None]:
        record = await asyncio.to_thread(self.records.get_project, project_id=project)
        settings = (record.settings or {}) if record is not None else {}
        limits = {name: settings.get(name) if isinstance(settings.get(name), int) else None
                  for name in ("images_per_day", "model_seconds_per_day")}
        self._project_limits[project] = (time.monotonic() + PROJECT_LIMITS_TTL_S, limits)
        return limits

    # -- signed asset URLs ----------------------------------------------------------------
    def _signature(self, project: str, asset_id: str, expires: int) -> str:
        return hmac.new(self._secret, f"{project}/{asset_id}:{expires}".encode(),
                        hashlib.sha256).hexdigest()[:32]

    def sign(self, asset_id: str, project: str) -> str:
        """The query string that lets anyone holding the URL fetch this one asset of `project`
        until it expires ("" with auth off). The project is signed too: the request it allows
        reads the asset through its project, like every other read by id."""
        if not self.config.enabled:
            return ""
        expires = int(time.time()) + self.config.asset_url_ttl_s
        return (f"?project={project}&expires={expires}"
                f"&sig={self._signature(project, asset_id, expires)}")

    def _signed_asset(self, method: str, path: str, query: bytes
                      ) -> tuple[str, str] | None:
        """(project, asset id) of a validly signed asset URL; None when it is not one."""
        if method not in ("GET", "HEAD") or not path.startswith("/v1/assets/") or not query:
            return None
        params = parse_qs(query.decode("latin-1"))
        asset_id = path.removeprefix("/v1/assets/")
        try:
            project = params["project"][0]
            expires = int(params["expires"][0])
            sig = params["sig"][0]
        except (KeyError, ValueError):
            return None
        if expires < time.time():
            raise ApiError(403, "this asset URL has expired; list the job or the gallery "
                           "again for a fresh one", code="url_expired")
        if not hmac.compare_digest(sig, self._signature(project, asset_id, expires)):
            raise ApiError(403, "this asset URL's signature is not valid",
                           code="invalid_signature")
        return project, asset_id

    async def admit(self, method: str, path: str, headers: list[tuple[bytes, bytes]],
                    query: bytes = b"") -> tuple[Principal, Usage | None]:
        """The request's principal and its requests/minute usage; ApiError 401/403/429."""
        if not self.config.enabled or is_public(path) or method == "OPTIONS":
            return self.anonymous, None
        token = _bearer(headers)
        if token is None and (signed := self._signed_asset(method, path, query)):
            return Principal(key_id=None, project=signed[0], scopes=frozenset(),
                             signed_asset=signed[1]), None
        if token is None:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>' (create "
                           "one with `photostudio keys create --project <id>`)",
                           code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        token_hash = hash_api_key(token)
        record = self.keys.get(token_hash)  # (nothing awaited while cached)
        if record is None:
            record = await self._authenticate(token, token_hash)
        if record is None or not record.active:
            what = "has been revoked" if record is not None else "is not valid"
            raise ApiError(401, f"this API key {what}", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        project_limits = self._cached_project_limits(record.project)
        if project_limits is None:  # (nothing awaited while cached)
            project_limits = await self._load_project_limits(record.project)
        principal = self._principal(token_hash, record, project_limits)
        try:
            scope = required_scope(method, path)
            if scope is not None and not principal.allows(scope):
                has = ", ".join(sorted(record.scopes)) or "none"
                raise ApiError(403, f"this API key lacks the {scope!r} scope needed for "
                               f"{method} {path} (it has: {has})", code="insufficient_scope")
            quotas = self.quotas
            if quotas.in_replica:  # memory://: counted here, nothing awaited
                usage = quotas.check_request_now(principal.key_id,
                                                 per_minute=principal.requests_per_minute)
            else:
                usage = await quotas.check_request(principal.key_id,
                                                   per_minute=principal.requests_per_minute)
            for owner, per_day, quota in principal.model_seconds_windows():
                await self.quotas.check_model_seconds(owner, per_day=per_day, quota=quota)
        except ApiError as exc:  # the refusal is counted under this key (graphs/usage.py)
            exc.principal = principal
            raise
        return principal, usage

    def _principal(self, token_hash: str, record: Any,
                   project_limits: dict[str, int | None]) -> Principal:
        """The caller of a key `record`: the one made for the same record and project
        limits (the cached objects; each is read again after its TTL) or a new one."""
        memo = self._principals.get(token_hash)
        if memo is not None and memo[0] is record and memo[1] is project_limits:
            return memo[2]
        principal = Principal(key_id=record.id, project=record.project,
                              scopes=frozenset(record.scopes),
                              requests_per_minute=record.requests_per_minute,
                              images_per_day=record.images_per_day,
                              model_seconds_per_day=record.model_seconds_per_day,
                              project_images_per_day=project_limits["images_per_day"],
                              project_model_seconds_per_day=project_limits[
                                  "model_seconds_per_day"])
        if len(self._principals) >= PRINCIPALS_MEMO:
            self._principals.clear()
        self._principals[token_hash] = (record, project_limits, principal)
        return principal

    async def _authenticate(self, token: str, token_hash: str) -> Any | None:
        """The key record of `token` (None: no such key; `token_hash`: its hash, the cache's
        key) from the record store (a thread: the store's calls block), cached for the next
        requests (`admit` reads the cache first). One read at a time per key; a request that
        comes after a revocation (`KeyCache.forget`) does not share a read begun before it."""
        self.keys.start()
        generation = self.keys.generation

        async def read() -> Any | None:
            record = await asyncio.to_thread(self.records.authenticate_api_key, token=token)
            if record is not None:
                self.keys.put(token_hash, record, generation)
            return record

        return await self._shared_load(("key", token_hash, generation), read)

    async def add_model_seconds(self, principal: Principal, seconds: float) -> None:
        """Count what a request's models worked against its model-seconds quotas."""
        for owner, per_day, _ in principal.model_seconds_windows():
            await self.quotas.add_model_seconds(owner, seconds, per_day=per_day)

    async def charge_images(self, n: int) -> ImageCharge:
        """THE image accounting of every route, chat plan, workflow, batch or video: charge
        `n` images to the caller's daily quota before the work runs (ApiError 429 when over
        it); the returned charge refunds what failed work did not produce."""
        principal = current()
        if principal.key_id is None or n <= 0:
            return ImageCharge(None, 0)
        await self.quotas.charge_images(principal.key_id, n, per_day=principal.images_per_day)
        project_window = None
        if principal.project_images_per_day:
            project_window = (f"project:{principal.project}", principal.project_images_per_day)
            try:
                await self.quotas.charge_window(project_window[0], n,
                                                per_day=project_window[1],
                                                quota="project.images_per_day")
            except BaseException:  # the key's charge stands only with the project's
                await self.quotas.refund_images(principal.key_id, n,
                                                per_day=principal.images_per_day)
                raise
        return ImageCharge(self.quotas, n, key_id=principal.key_id,
                           per_day=principal.images_per_day, project_window=project_window)


def configure(app: Any, *, records: Any, config: AuthConfig) -> Gate:
    """The replica's gate, made once its record store is ready, and installed on `app` (the
    state `AuthMiddleware` reads). The services that sign URLs or charge images get it
    passed in (`graphs.jobs.JobRunner(gate=...)`): no module-global gate."""
    gate = Gate(records=records, config=config)
    app.state.auth_gate = gate
    if not config.enabled:
        logger.warning("API-key auth is DISABLED (explicit local setting): every request acts "
                       "in project %r with every scope", config.project)
    return gate


class ImageCharge:
    """Images charged to one key's day (`charge_images`). Work marks what it made
    (`produced`); when it fails, `refund_unproduced` gives back the rest. It remembers the key,
    so a refund from a background job (async work outlives its request) reaches the right
    window."""

    def __init__(self, quotas: Quotas | None, images: int, *, key_id: str | None = None,
                 per_day: int | None = None, project_window: tuple[str, int] | None = None):
        self._quotas = quotas
        self.project_window = project_window  # (owner, per day) of the project's images
        self.key_id = key_id
        self.per_day = per_day
        self.images = images  # charged and not refunded
        self._produced = 0

    def produced(self, n: int) -> None:
        """`n` of the charged images were made (a plan step ran): they stay charged."""
        self._produced = min(self.images, self._produced + n)

    async def refund_unproduced(self) -> int:
        """Give back what was charged and not produced; returns how many."""
        n = self.images - self._produced
        if n <= 0:
            return 0
        self.images -= n
        if self._quotas is not None and self.key_id is not None:
            await self._quotas.refund_images(self.key_id, n, per_day=self.per_day)
        if self._quotas is not None and self.project_window is not None:
            await self._quotas.refund_images(self.project_window[0], n,
                                             per_day=self.project_window[1])
        return n


class AuthMiddleware:
    """ASGI: admits each HTTP request through the replica's `Gate` (set by `configure`),
    sets the caller for the request, adds X-RateLimit-* headers to its response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gate = getattr(scope["app"].state, "auth_gate", None) if "app" in scope else None
        if gate is None:  # the replica's constructor hasn't run yet
            await ApiError(503, "the gateway is starting", code="starting",
                           headers={"Retry-After": "2"}).response()(scope, receive, send)
            return
        scope.setdefault("state", {})[GATE_SEEN] = True  # refusals from here on count here
        try:
            principal, usage = await gate.admit(scope["method"], scope["path"],
                                                scope.get("headers", []),
                                                scope.get("query_string", b""))
        except ApiError as exc:
            recorder = recorder_of(scope)
            if recorder is not None:  # refused requests count too (graphs/usage.py)
                recorder.refused(scope, exc.status, getattr(exc, "principal", None))
            await exc.response()(scope, receive, send)
            return
        token = _principal.set(principal)
        try:
            if usage is None:
                await self.app(scope, receive, send)
                return
            extra = usage.raw_headers()
            exchange = exchange_of(scope)
            if exchange is not None:  # the request path adds them (no send wrapper here)
                exchange.headers.extend(extra)
                await self.app(scope, receive, send)
                return

            async def send_with_headers(message):  # an app without the request path
                if message["type"] == "http.response.start":
                    headers = message.get("headers", [])
                    # a 429 of the images quota already says which window it is about
                    if not any(name == b"x-ratelimit-limit" for name, _ in headers):
                        message = {**message, "headers": [*headers, *extra]}
                await send(message)

            await self.app(scope, receive, send_with_headers)
        finally:
            _principal.reset(token)


def document(app: Any) -> None:
    """Declare the bearer scheme in the OpenAPI spec: every operation needs it but the public
    ones (/docs' "Authorize" button then sends the key)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = build()
        spec.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http", "scheme": "bearer",
            "description": "an API key, `psk_…` (`photostudio keys create`)"}
        spec["security"] = [{"apiKey": []}]
        for path, item in spec.get("paths", {}).items():
            if path in PUBLIC_PATHS:
                for operation in item.values():
                    if isinstance(operation, dict):
                        operation["security"] = []
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
