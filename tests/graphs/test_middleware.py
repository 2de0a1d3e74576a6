"""Hardening middlewares (graphs/middleware.py): body size, timeout, request id, CORS.

Unit tests run a tiny FastAPI app in-process (httpx ASGITransport); one test deploys an
ingress with the middlewares on the session Ray cluster and goes through Serve's proxy.

No `from __future__ import annotations`: Serve's class-based FastAPI views (the deployed
ingress below) need real annotations on the route methods.
"""

import asyncio
import re
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import StreamingResponse

from graphs import errors, middleware
from graphs.middleware import CancellableHandle, HardeningConfig
from telemetry.logs import current_request_id, request_id_var
from tests.conftest import async_wait_until, wait_until

LIMIT = 1024
TIMEOUT_S = 0.3


class FakeResponse:
    """Stands in for a DeploymentResponse: awaiting it never finishes; `cancel()` is seen."""

    def __init__(self) -> None:
        self.cancelled = False
        self._never = asyncio.Event()

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        return self._never.wait().__await__()


class FakeHandle:
    def __init__(self) -> None:
        self.responses: list[FakeResponse] = []

    def options(self, **_kwargs):
        return self

    @property
    def work(self):
        return self

    def remote(self, *_args, **_kwargs) -> FakeResponse:
        self.responses.append(FakeResponse())
        return self.responses[-1]


def make_app(config: HardeningConfig | None = None) -> tuple[FastAPI, dict]:
    state: dict = {"calls": 0, "cancelled": False, "handle": FakeHandle()}
    app = FastAPI()
    errors.install(app)
    middleware.install(app, config or HardeningConfig(max_request_bytes=LIMIT,
                                                      request_timeout_s=TIMEOUT_S,
                                                      timeout_exempt_paths=["/exempt/*"]))
    handle = CancellableHandle(state["handle"])

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        state["calls"] += 1
        body = await request.body()
        return {"bytes": len(body), "request_id": current_request_id()}

    @app.post("/upload")
    async def upload(file: UploadFile = File(...)) -> dict:
        state["calls"] += 1
        return {"bytes": len(await file.read())}

    @app.get("/id")
    async def request_id() -> dict:
        return {"request_id": current_request_id()}

    @app.get("/hang")
    async def hang() -> dict:
        state["calls"] += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        return {}

    @app.get("/model")
    async def model() -> dict:
        await handle.work.remote("x")  # never finishes: only the timeout ends it
        return {}

    @app.get("/exempt/slow")
    async def exempt_slow() -> dict:
        await asyncio.sleep(TIMEOUT_S * 2)  # the work: longer than the deadline
        return {"done": True}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks():
            yield b"first;"
            await asyncio.sleep(TIMEOUT_S * 2)  # past the deadline, after the start
            yield b"second"

        return StreamingResponse(chunks(), media_type="text/plain")

    return app, state


def call(app: FastAPI, method: str, path: str, **kwargs) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


def layer(app, **config) -> middleware.RequestPath:
    """The layer `middleware.install` puts on the app, around a raw ASGI `app`."""
    return middleware.RequestPath(app, HardeningConfig(**config))


async def no_more_messages() -> dict:
    """A client that sent no body and stays connected: ``receive()`` waits, as a server's
    does until the client leaves."""
    await asyncio.Event().wait()


# --- body size ----------------------------------------------------------------------------


def test_content_length_over_the_limit_is_413_and_the_handler_never_runs():
    app, state = make_app()
    r = call(app, "POST", "/echo", content=b"x" * (LIMIT + 1))
    error = assert_envelope(r, 413, "request_too_large")
    assert "1 KiB (1024 bytes)" in error["message"] and "1025" in error["message"]
    assert error["type"] == "request_too_large"
    assert state["calls"] == 0
    assert r.headers["x-request-id"]  # RequestId is outside: even rejections carry it


def test_413_by_content_length_reads_nothing():
    """Pure ASGI: the body is never received when Content-Length is already too big."""
    sent: list[dict] = []

    async def app(scope, receive, send):
        raise AssertionError("the app must not run")

    async def receive():
        raise AssertionError("the body must not be read")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [
        (b"content-length", str(10 * LIMIT).encode())]}
    asyncio.run(layer(app, max_request_bytes=LIMIT)(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert b'"request_too_large"' in sent[1]["body"]


def test_invalid_content_length_is_400():
    sent: list[dict] = []

    async def app(scope, receive, send):
        raise AssertionError("the app must not run")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x",
             "headers": [(b"content-length", b"12abc")]}
    asyncio.run(layer(app, max_request_bytes=LIMIT)(scope, None, send))
    assert sent[0]["status"] == 400 and b"invalid_content_length" in sent[1]["body"]


async def _chunks(n: int, size: int = 256):
    for _ in range(n):
        yield b"y" * size


def test_chunked_body_growing_past_the_limit_is_413():
    app, state = make_app()
    r = call(app, "POST", "/echo", content=_chunks(8))  # 2 KiB, no Content-Length
    error = assert_envelope(r, 413, "request_too_large")
    assert "1024 bytes" in error["message"]
    assert state["calls"] == 1  # it started reading, and was cut off


def test_chunked_multipart_upload_past_the_limit_is_413_not_a_parse_error():
    """FastAPI turns errors while parsing a form into 400; ours must stay a 413."""
    app, _ = make_app()

    async def multipart():
        yield (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
               b"Content-Type: image/png\r\n\r\n")
        async for chunk in _chunks(8):
            yield chunk
        yield b"\r\n--b--\r\n"

    r = call(app, "POST", "/upload", content=multipart(),
             headers={"content-type": "multipart/form-data; boundary=b"})
    assert_envelope(r, 413, "request_too_large")


def test_bodies_within_the_limit_pass():
    app, _ = make_app()
    assert call(app, "POST", "/echo", content=b"z" * LIMIT).json()["bytes"] == LIMIT
    assert call(app, "POST", "/echo", content=_chunks(4)).json()["bytes"] == LIMIT
    r = call(app, "POST", "/upload", files={"file": ("a.png", b"p" * 100, "image/png")})
    assert r.status_code == 200 and r.json() == {"bytes": 100}


def test_body_limit_must_be_positive():
    with pytest.raises(ValueError, match="max_request_bytes"):
        HardeningConfig(max_request_bytes=0)


# --- timeout --------------------------------------------------------------------------------


def test_slow_handler_gets_504_and_is_cancelled():
    app, state = make_app()
    r = call(app, "GET", "/hang")
    error = assert_envelope(r, 504, "timeout")
    assert "0.3 s" in error["message"] and error["type"] == "timeout_error"
    assert state["calls"] == 1 and state["cancelled"] is True


def test_timeout_cancels_the_deployment_calls_of_the_request():
    app, state = make_app()
    r = call(app, "GET", "/model")
    assert_envelope(r, 504, "timeout")
    [response] = state["handle"].responses
    assert response.cancelled is True


def test_exempt_paths_are_not_timed():
    app, _ = make_app()
    assert call(app, "GET", "/exempt/slow").json() == {"done": True}


def test_event_stream_accept_header_exempts():
    seen: list[str] = []

    async def app(scope, receive, send):
        await asyncio.sleep(TIMEOUT_S * 2)  # the work: longer than the deadline
        seen.append("finished")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x",
             "headers": [(b"accept", b"text/event-stream")]}
    asyncio.run(layer(app, request_timeout_s=TIMEOUT_S)(scope, no_more_messages, send))
    assert seen == ["finished"] and sent[0]["status"] == 200


def test_a_started_response_is_not_cut_at_the_deadline():
    app, _ = make_app()
    r = call(app, "GET", "/stream")
    assert r.status_code == 200 and r.text == "first;second"


def test_a_handler_exception_passes_through_unchanged():
    """The timed part of the layer re-raises a handler's exception as it is; the envelope
    guard outside it answers it (500), and re-raises nothing."""
    from starlette.datastructures import Headers

    async def app(scope, receive, send):
        raise KeyError("boom")

    def scope() -> dict:
        return {"type": "http", "method": "GET", "path": "/", "headers": []}

    timed = layer(app, request_timeout_s=5)
    with pytest.raises(KeyError, match="boom"):
        request = scope()
        asyncio.run(timed._run(request, None, None, Headers(scope=request)))
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(timed(scope(), no_more_messages, send))
    assert sent[0]["status"] == 500 and b'"internal_error"' in sent[1]["body"]


def test_cancellable_handle_tracks_only_inside_a_timed_request():
    fake = FakeHandle()
    handle = CancellableHandle(fake)
    response = handle.work.options(stream=False).remote(1)  # outside a request: no tracking
    assert response is fake.responses[0]
    assert middleware.cancel_downstream([response]) == 1 and response.cancelled
    assert CancellableHandle(handle).unwrap() is fake


def test_background_work_in_a_detached_context_outlives_the_timeout():
    """An async job started by a request keeps its model calls when the request times out."""
    fake = FakeHandle()
    handle = CancellableHandle(fake)
    jobs: list[asyncio.Task] = []

    async def app(scope, receive, send):
        async def job():
            handle.remote("job")
        jobs.append(asyncio.create_task(job(), context=middleware.detached_context()))
        handle.remote("request")
        await asyncio.Event().wait()  # the request itself never answers

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(layer(app, request_timeout_s=0.1)(
        {"type": "http", "method": "GET", "path": "/", "headers": []}, no_more_messages, send))
    assert sent[0]["status"] == 504
    job_call, request_call = sorted(fake.responses, key=lambda r: r.cancelled)
    assert request_call.cancelled is True and job_call.cancelled is False


# --- request id -----------------------------------------------------------------------------


def test_request_id_is_generated_when_missing():
    app, _ = make_app()
    r = call(app, "GET", "/id")
    request_id = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert r.json()["request_id"] == request_id  # the handler saw the same id


def test_request_id_is_echoed():
    app, _ = make_app()
    r = call(app, "GET", "/id", headers={"X-Request-ID": "client-42.abc"})
    assert r.headers["x-request-id"] == "client-42.abc"
    assert r.json()["request_id"] == "client-42.abc"
    assert r.headers.get_list("x-request-id") == ["client-42.abc"]


@pytest.mark.parametrize("bad", ["x" * 200, "a b", "id;drop", "é"])
def test_unsafe_request_ids_are_replaced(bad):
    app, _ = make_app()
    r = call(app, "GET", "/id", headers={"X-Request-ID": bad.encode("utf-8")})
    assert r.headers["x-request-id"] != bad
    assert re.fullmatch(r"[0-9a-f]{32}", r.json()["request_id"])


def test_request_id_is_reset_after_the_request():
    seen: list = []

    async def app(scope, receive, send):
        seen.append(request_id_var.get())
        await send({"type": "http.response.start", "status": 204, "headers": []})

    async def run():
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/",
                 "headers": [(b"x-request-id", b"abc")]}
        await layer(app)(scope, no_more_messages, send)  # same task, inline
        return request_id_var.get(), dict(sent[0]["headers"])

    after, headers = asyncio.run(run())
    assert seen == ["abc"] and after is None
    assert headers[b"x-request-id"] == b"abc"


# --- CORS -----------------------------------------------------------------------------------

ORIGIN = "https://studio.example.com"


def test_cors_is_closed_by_default():
    app, _ = make_app()
    r = call(app, "GET", "/id", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = call(app, "OPTIONS", "/echo", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_open_for_an_allowed_origin_only():
    app, _ = make_app(HardeningConfig(cors_allow_origins=[ORIGIN]))
    r = call(app, "GET", "/id", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    preflight = call(app, "OPTIONS", "/echo", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization"})
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    other = call(app, "GET", "/id", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in other.headers


def test_cors_headers_on_middleware_errors():
    """CORS is outside the body limit: a browser can read the 413 envelope."""
    app, _ = make_app(HardeningConfig(cors_allow_origins=[ORIGIN], max_request_bytes=LIMIT))
    r = call(app, "POST", "/echo", content=b"x" * (LIMIT + 1), headers={"Origin": ORIGIN})
    assert r.status_code == 413 and r.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize("origins,credentials,match", [
    (["https://a.example.com/"], False, "scheme://host"),
    (["a.example.com"], False, "scheme://host"),
    (["*"], True, "credentials"),
])
def test_cors_config_is_checked(origins, credentials, match):
    with pytest.raises(ValueError, match=match):
        middleware.cors_middleware(origins, allow_credentials=credentials)


def test_config_from_settings_reads_names_it_knows():
    class FakeSettings:
        max_request_bytes = 2048
        cors_allow_origins = f"{ORIGIN}, https://b.example.com"
        request_timeout_s = None  # unset → default

    config = HardeningConfig.from_settings(FakeSettings())
    assert config.max_request_bytes == 2048 and config.request_timeout_s == 120
    assert config.cors_allow_origins == [ORIGIN, "https://b.example.com"]


# --- admission control ----------------------------------------------------------------------


def admission_app(limit: int | None) -> tuple[FastAPI, asyncio.Event, dict]:
    """/work holds its slot until `release` is set; `state["waiting"]` counts the requests
    whose handler runs (admitted) and waits."""
    release = asyncio.Event()
    state = {"waiting": 0}
    app = FastAPI()
    errors.install(app)
    middleware.install(app, HardeningConfig(max_in_flight=limit, request_timeout_s=30))

    @app.get("/work")
    async def work() -> dict:
        state["waiting"] += 1
        try:
            await release.wait()
        finally:
            state["waiting"] -= 1
        return {"ok": True}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app, release, state


def test_requests_over_the_in_flight_limit_get_503_with_retry_after():
    app, release, state = admission_app(2)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.ensure_future(client.get("/work")) for _ in range(2)]
            await async_wait_until(lambda: state["waiting"] == 2, timeout=30,
                                   what="both requests admitted and waiting")
            over = await client.get("/work")
            probe = await client.get("/healthz")  # exempt: answers at capacity
            release.set()
            done = await asyncio.gather(*held)
            after = await client.get("/work")  # slots free again
            return over, probe, done, after

    over, probe, done, after = asyncio.run(run())
    error = assert_envelope(over, 503, "overloaded")
    assert over.headers["retry-after"] == "1" and error["type"] == "service_unavailable"
    assert "2 requests in progress" in error["message"]
    assert probe.status_code == 200
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200


def test_admission_limit_defaults_to_half_of_serve_max_ongoing(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(middleware, "time", SimpleNamespace(monotonic=lambda: now[0]))
    control = layer(None).admission
    assert control.limit is None  # outside Serve and not set: no limit
    monkeypatch.setattr(middleware, "_serve_max_ongoing_requests", lambda: 200)
    now[0] += control.LIMIT_READ_S
    assert control.limit == 100
    # a redeploy's new max_ongoing_requests applies within LIMIT_READ_S (read once a second,
    # not per request)
    monkeypatch.setattr(middleware, "_serve_max_ongoing_requests", lambda: 1)
    assert control.limit == 100
    now[0] += control.LIMIT_READ_S
    assert control.limit == 1
    assert layer(None, max_in_flight=0).admission.limit is None  # off
    with pytest.raises(ValueError, match="max_in_flight"):
        HardeningConfig(max_in_flight=-1)
    with pytest.raises(ValueError, match="max_in_flight"):
        middleware.AdmissionControl(max_in_flight=-1)


class ShiftedClock:
    """The `time` module as graphs/middleware.py sees it, with `monotonic` moved forward by
    `ahead` seconds: a test ends a hold by moving the clock, not by sleeping through it."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_a_full_model_queue_holds_its_route_before_the_body_is_read(monkeypatch):
    """After a BackPressureError on /v1/images/x, the next requests there are shed by
    admission (the handler never runs, the body is never read) until the hold ends; other
    routes, GETs and chat are not held."""
    from ray.serve.exceptions import BackPressureError

    clock = ShiftedClock()
    monkeypatch.setattr(middleware, "time", clock)
    app = FastAPI()
    errors.install(app)
    middleware.install(app, HardeningConfig(request_timeout_s=30, admission_hold_s=60))
    ran: list[str] = []
    full = {"queue": True}

    @app.post("/v1/images/x")
    async def images_x(request: Request) -> dict:
        ran.append("x")
        await request.body()
        if full["queue"]:
            raise BackPressureError(num_queued_requests=4, max_queued_requests=4)
        return {"ok": True}

    @app.post("/v1/images/y")
    async def images_y() -> dict:
        ran.append("y")
        return {"ok": True}

    @app.post("/v1/chat")
    async def chat() -> dict:
        ran.append("chat")
        raise BackPressureError(num_queued_requests=4, max_queued_requests=4)

    async def scenario() -> list:
        transport = httpx.ASGITransport(app=app)
        out = []
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            out.append(await client.post("/v1/images/x", content=b"1"))  # the queue is full
            out.append(await client.post("/v1/images/x", content=b"2"))  # held: shed at once
            out.append(await client.post("/v1/images/y"))  # another route: not held
            out.append(await client.post("/v1/chat"))
            out.append(await client.post("/v1/chat"))  # chat is not held: runs again
            full["queue"] = False
            clock.ahead = 30  # half-way through the hold: still held
            out.append(await client.post("/v1/images/x", content=b"3"))
            clock.ahead = 61  # the hold has ended
            out.append(await client.post("/v1/images/x", content=b"4"))
        return out

    first, held, other, chat1, chat2, still_held, after = asyncio.run(scenario())
    assert_envelope(first, 503, "overloaded")
    assert_envelope(still_held, 503, "overloaded")
    error = assert_envelope(held, 503, "overloaded")
    assert "/v1/images/x" in error["message"] and held.headers["retry-after"] == "1"
    assert other.status_code == 200 and after.status_code == 200
    assert_envelope(chat1, 503, "overloaded")
    assert_envelope(chat2, 503, "overloaded")
    assert ran == ["x", "y", "chat", "chat", "x"]  # the held request never reached a handler


def test_serve_errors_and_escaping_exceptions_become_the_envelope():
    from ray.serve.exceptions import BackPressureError

    app = FastAPI()
    errors.install(app)
    middleware.install(app, HardeningConfig(request_timeout_s=30))

    @app.get("/full")
    async def full() -> dict:
        raise BackPressureError(num_queued_requests=4, max_queued_requests=4)

    @app.get("/bug")
    async def bug() -> dict:
        raise RuntimeError("a bug")

    # what Serve's replica does when it starts: its plain-text handler, registered last
    from starlette.responses import PlainTextResponse

    app.add_exception_handler(BackPressureError,
                              lambda _r, exc: PlainTextResponse(exc.message, status_code=503))

    # raise_app_exceptions (the default) would raise here if anything were re-raised
    r = call(app, "GET", "/full")
    assert_envelope(r, 503, "overloaded")
    assert r.headers["retry-after"] == "1"
    assert_envelope(call(app, "GET", "/bug"), 500, "internal_error")


# --- through Serve's proxy ------------------------------------------------------------------

SERVE_TIMEOUT_S = 1.0


def hardened_serve_app():
    """An ingress built like graphs/ingress.py (middlewares installed before
    ``@serve.ingress``) in front of a model deployment whose calls never finish."""
    from ray import serve

    api = FastAPI()
    errors.install(api)
    middleware.install(api, HardeningConfig(max_request_bytes=LIMIT,
                                            request_timeout_s=SERVE_TIMEOUT_S))

    @serve.deployment(name="Sleeper", ray_actor_options={"num_cpus": 0.1})
    class Sleeper:
        def __init__(self):
            self.cancelled = []

        async def work(self, key):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(key)
                raise

        def cancelled_keys(self):
            return list(self.cancelled)

    @serve.deployment(name="HardenedIngress", ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(api)
    class HardenedIngress:
        def __init__(self, sleeper):
            self.sleeper = CancellableHandle(sleeper)

        @api.get("/id")
        async def request_id(self) -> dict:
            return {"request_id": current_request_id()}

        @api.post("/echo")
        async def echo(self, request: Request) -> dict:
            return {"bytes": len(await request.body())}

        @api.get("/slow")
        async def slow(self, key: str) -> dict:
            await self.sleeper.work.remote(key)
            return {}

    return HardenedIngress.bind(Sleeper.bind())


@pytest.mark.slow  # a Serve app of its own
def test_middlewares_behind_the_serve_proxy(ray_cluster):
    """Deployed ingress: one X-Request-ID (Serve's own is not duplicated), 413 by
    Content-Length and by a chunked body, and a 504 that cancels the model call in the
    downstream replica."""
    from ray import serve

    name = f"mw-{uuid.uuid4().hex[:6]}"
    prefix = f"/{name}"
    serve.run(hardened_serve_app(), name=name, route_prefix=prefix)
    base = f"http://127.0.0.1:{ray_cluster.http_port}{prefix}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            r = client.get("/id", headers={"X-Request-ID": "proxy-test-1"})
            assert r.status_code == 200, r.text
            assert r.headers.get_list("x-request-id") == ["proxy-test-1"]
            assert r.json()["request_id"] == "proxy-test-1"
            generated = client.get("/id")
            assert generated.headers.get_list("x-request-id") == [
                generated.json()["request_id"]]

            big = client.post("/echo", content=b"x" * (LIMIT + 1))
            assert_envelope(big, 413, "request_too_large")
            chunked = client.post("/echo", content=iter([b"y" * 512] * 8))
            assert_envelope(chunked, 413, "request_too_large")
            assert client.post("/echo", content=b"ok").json()["bytes"] == 2

            slow = client.get("/slow", params={"key": "k1"})
            assert_envelope(slow, 504, "timeout")
        sleeper = serve.get_deployment_handle("Sleeper", app_name=name)
        wait_until(lambda: "k1" in sleeper.cancelled_keys.remote().result(timeout_s=10),
                   timeout=30, what="the downstream model call to be cancelled")
    finally:
        serve.delete(name)



def shedding_serve_app(name: str):
    """An ingress whose /work requests hold their slot until the test opens the gate "work";
    Serve's limits (8 ongoing + 30 queued) hold a burst of 30, of which admission control
    lets 4 in at once. /model calls a deployment that takes 1 request + 1 queued (more:
    BackPressureError) and answers when the gate "model" opens."""
    from ray import serve

    api = FastAPI()
    errors.install(api)
    middleware.install(api, HardeningConfig())

    @serve.deployment(name=f"{name}-gate", ray_actor_options={"num_cpus": 0.1},
                      max_ongoing_requests=100)
    class Gate:
        """Holds callers of `wait(key)` until `open(key)`; in its own replica, so the test
        can open it while the held deployments are full."""

        def __init__(self):
            self.events: dict[str, asyncio.Event] = {}

        async def wait(self, key: str) -> None:
            await self.events.setdefault(key, asyncio.Event()).wait()

        async def open(self, key: str) -> None:
            self.events.setdefault(key, asyncio.Event()).set()

    @serve.deployment(name=f"{name}-model", ray_actor_options={"num_cpus": 0.1},
                      max_ongoing_requests=1, max_queued_requests=1)
    class Model:
        def __init__(self, gate):
            self.gate = gate

        async def work(self) -> str:
            await self.gate.wait.remote("model")
            return "done"

    @serve.deployment(name=name, ray_actor_options={"num_cpus": 0.1},
                      max_ongoing_requests=8, max_queued_requests=30)
    @serve.ingress(api)
    class Shedding:
        def __init__(self, model, gate):
            self.model = model
            self.gate = gate

        @api.get("/work")
        async def work(self) -> dict:
            await self.gate.wait.remote("work")
            return {"ok": True}

        @api.get("/model")
        async def model(self) -> dict:
            return {"result": await self.model.work.remote()}

    gate = Gate.bind()
    return Shedding.bind(Model.bind(gate), gate)


def dying_serve_app():
    """An ingress whose replica dies in the middle of a request to /die (the process exits,
    as when a node is lost or the replica is killed)."""
    import os

    from ray import serve

    app = FastAPI()

    @serve.deployment(max_ongoing_requests=4, health_check_period_s=1)
    @serve.ingress(app)
    class Dying:
        @app.get("/alive")
        async def alive(self) -> dict:
            return {"pid": os.getpid()}

        @app.post("/die")
        async def die(self) -> dict:
            await asyncio.sleep(0.2)  # mid-request
            os._exit(1)

    return Dying.bind()


@pytest.mark.slow  # a Serve app of its own
def test_a_replica_dying_mid_request_is_the_envelopes_503_through_the_serve_proxy(ray_cluster):
    """Serve's proxy ends a request whose replica died without an answer (its server then
    sent a bare plain-text 500): the proxy callback (graphs.serve_proxy) answers the
    envelope's 503 with Retry-After instead, and the app serves again once Serve replaced
    the replica."""
    from ray import serve

    name = f"die-{uuid.uuid4().hex[:6]}"
    serve.run(dying_serve_app(), name=name, route_prefix=f"/{name}")
    base = f"http://127.0.0.1:{ray_cluster.http_port}/{name}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            first = client.get("/alive").json()["pid"]
            r = client.post("/die")
            error = assert_envelope(r, 503, "replica_unavailable")
            assert "retry" in error["message"] and r.headers["retry-after"] == "5"
            assert r.headers["x-request-id"]
            again = wait_until(lambda: (lambda a: a.json() if a.status_code == 200 else None)(
                client.get("/alive")), timeout=120, what="a new replica")
            assert again["pid"] != first
    finally:
        serve.delete(name)


@pytest.mark.slow  # a Serve app of its own
def test_overload_behind_the_serve_proxy_gets_the_envelope_at_once(ray_cluster):
    """30 requests at once against an ingress that admits 4 (half its max_ongoing_requests)
    and holds them: the other 26 are answered with the envelope's 503 + Retry-After by our
    middleware while the 4 are held, not queued in Serve's proxy and not Serve's plain-text
    503. And a full downstream queue (BackPressureError raised in the ingress) is the
    envelope's 503 too, not Serve's text."""
    from ray import serve

    name = f"shed-{uuid.uuid4().hex[:6]}"
    serve.run(shedding_serve_app(name), name=name, route_prefix=f"/{name}")
    base = f"http://127.0.0.1:{ray_cluster.http_port}/{name}"
    gate = serve.get_deployment_handle(f"{name}-gate", app_name=name)
    admitted = middleware.admission_limit(8)
    try:
        # the gate opens once every request but the admitted ones has its answer
        responses = asyncio.run(_gated_burst(base, 30, "/work", gate, "work",
                                             answered_before_open=30 - admitted))
        # a downstream deployment's full queue (BackPressureError in the ingress) too: the
        # model holds one call and queues one, so at least one of 4 is refused at once
        downstream = asyncio.run(_gated_burst(base, 4, "/model", gate, "model",
                                              answered_before_open=1))
    finally:
        serve.delete(name)
    statuses = sorted(r.status_code for r in downstream)
    assert set(statuses) == {200, 503}, statuses
    for r in downstream:
        if r.status_code == 503:
            assert_envelope(r, 503, "overloaded")
            assert r.headers["retry-after"].isdigit()
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == admitted and statuses.count(503) == 30 - admitted, statuses
    for r in responses:
        if r.status_code == 503:
            error = assert_envelope(r, 503, "overloaded")
            assert r.headers["retry-after"] == "1" and "4 requests in progress" in \
                error["message"]


async def _gated_burst(base: str, n: int, path: str, gate, key: str, *,
                       answered_before_open: int) -> list[httpx.Response]:
    """`n` requests at once; the gate `key` opens when `answered_before_open` of them have
    their answer (or after a minute: then the assertions on the answers say what went
    wrong), and the rest are awaited."""
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        pending = [asyncio.ensure_future(client.get(path)) for _ in range(n)]
        try:
            await async_wait_until(
                lambda: sum(t.done() for t in pending) >= answered_before_open, timeout=60,
                what=f"{answered_before_open} of {n} requests to {path} answered")
        except TimeoutError:
            pass
        await gate.open.remote(key)
        return await asyncio.gather(*pending)


def test_request_headers_answer_as_starlettes():
    """`RequestPath`'s one-pass header index answers every lookup as Starlette's Headers:
    case-insensitive names, the first of a repeated header, missing ones."""
    from starlette.datastructures import Headers

    raw = [(b"host", b"a.example"), (b"x-forwarded-proto", b"https"), (b"host", b"b.example"),
           (b"content-type", b"application/json"), (b"x-empty", b""), (b"accept", b"*/*")]
    scope = {"type": "http", "headers": raw}
    ours, theirs = middleware.RequestHeaders(scope), Headers(scope=scope)
    for name in ("host", "Host", "X-Forwarded-Proto", "content-type", "x-empty", "accept",
                 "origin", "content-length"):
        assert ours.get(name) == theirs.get(name), name
        assert ours.get(name, "d") == theirs.get(name, "d"), name
        assert (name in ours) == (name in theirs), name
        if name in theirs:
            assert ours[name] == theirs[name]
        else:
            with pytest.raises(KeyError):
                ours[name]
    assert ours.getlist("host") == ["a.example", "b.example"] and ours.raw == raw
    assert ours.repeated  # Host comes twice
    once = {"type": "http", "headers": ((b"host", b"a.example"), (b"accept", b"*/*"))}
    single = middleware.RequestHeaders(once)  # any iterable, as Starlette takes it
    assert not single.repeated and single.get("Host") == "a.example"
    assert once["headers"] == [(b"host", b"a.example"), (b"accept", b"*/*")]
