"""The request path's small holes (issue #13 items 9, 11-15), fixed in the middleware
(`middleware.RequestPath`) and checked here on a plain FastAPI app with `middleware.install`
(in-process, no Ray):

- JSON nested 10,000 deep is a 400 (`common.safe_json`, `middleware.JsonTooDeepError`);
- a client that disconnects cancels a synchronous request and its deployment calls;
- the Host / X-Forwarded-* of a client never choose the host of returned URLs or redirects
  (`middleware.PublicOrigin`);
- unsafe X-Request-IDs are dropped before Serve's HTTP server echoes them
  (`graphs.serve_proxy`);
- nosniff and no-store on every response;
- HEAD on GET routes and If-None-Match → 304.

The same behaviour through Serve and the production graph: test_request_path_http.py.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel

from common import safe_json
from graphs import errors, middleware, serve_proxy
from graphs.middleware import CancellableHandle, HardeningConfig
from models.editing import parse_edit_request

DEEP = "[" * 10_000 + "]" * 10_000


def deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


class Body(BaseModel):
    prompt: str
    extra: dict | None = None


class FakeResponse:
    """A DeploymentResponse that never finishes; `cancel()` is recorded."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        return asyncio.Event().wait().__await__()


class FakeHandle:
    def __init__(self) -> None:
        self.responses: list[FakeResponse] = []

    def remote(self, *_args, **_kwargs) -> FakeResponse:
        self.responses.append(FakeResponse())
        return self.responses[-1]


def make_app(tmp_path=None, **config) -> tuple[FastAPI, dict]:
    state: dict = {"handle": FakeHandle(), "started": None, "cancelled": []}
    app = FastAPI()
    errors.install(app)
    middleware.install(app, HardeningConfig(**config))
    handle = CancellableHandle(state["handle"])

    @app.post("/model")
    async def body_model(body: Body) -> dict:
        return {"prompt": body.prompt}

    @app.post("/raw")
    async def raw_json(request: Request) -> dict:
        return {"type": type(await request.json()).__name__}

    async def hang(name: str) -> dict:
        state["started"].set()
        try:
            await handle.remote(name)  # a model call that only a cancel ends
        except asyncio.CancelledError:
            state["cancelled"].append(name)
            raise
        return {}

    @app.post("/slow")
    async def slow_post(request: Request) -> dict:
        await request.body()
        return await hang("post")

    @app.get("/slow")
    async def slow_get() -> dict:
        return await hang("get")

    @app.get("/base")
    async def base(request: Request) -> dict:
        return {"base_url": str(request.base_url)}

    @app.get("/items")
    async def items() -> dict:
        return {"data": []}

    @app.get("/tagged")
    async def tagged() -> Response:
        return Response(b"tagged bytes", media_type="image/png",
                        headers={"ETag": '"v1"', "Cache-Control": "private, max-age=60"})

    if tmp_path is not None:
        path = tmp_path / "a.png"
        path.write_bytes(b"\x89PNG" + b"x" * 1000)

        @app.get("/file")
        async def file() -> FileResponse:
            return FileResponse(path, media_type="image/png")

    return app, state


def call(app: FastAPI, method: str, path: str, *, client=("127.0.0.1", 50000),
         **kwargs) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(run())


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    return error


# --- 9: JSON depth --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [DEEP, "[" * 65 + "]" * 65, deep_object(65), "[" * 10_000,
                                  b"[" * 65 + b"]" * 65])
def test_safe_loads_rejects_deep_json_with_a_value_error(text):
    """json.loads raises RecursionError here (not a ValueError: it became a 500)."""
    with pytest.raises(safe_json.JsonTooDeep, match="nested deeper than 64"):
        safe_json.loads(text)


def test_safe_loads_accepts_the_limit_and_ignores_brackets_in_strings():
    assert safe_json.loads("[" * 64 + "]" * 64) is not None
    assert safe_json.loads(deep_object(64))
    text = json.dumps({"s": "[" * 500, "t": "\\\"{{{{" * 100, "list": [[1]] * 300})
    assert safe_json.loads(text)["s"] == "[" * 500


@pytest.mark.parametrize("path", ["/model", "/raw"])
@pytest.mark.parametrize("content_type", ["application/json", "application/merge-patch+json",
                                          None])
def test_deep_json_bodies_are_400_before_any_parser(path, content_type):
    """A pydantic body route (FastAPI parses it) and a route calling request.json():
    without the middleware, 400 "There was an error parsing the body" and a 500."""
    app, _ = make_app()
    headers = {"content-type": content_type} if content_type else {}
    r = call(app, "POST", path, content=DEEP.encode(), headers=headers)
    error = assert_envelope(r, 400, "json_too_deep")
    assert "nested deeper than 64" in error["message"]
    ok = call(app, "POST", path, json={"prompt": "fine", "extra": {"a": [[1]]}})
    assert ok.status_code == 200, ok.text


def test_deep_json_in_a_chunked_body_is_caught_too():
    app, _ = make_app()
    async def chunks():
        for i in range(0, len(DEEP), 1000):
            yield DEEP[i:i + 1000].encode()

    r = call(app, "POST", "/raw", content=chunks(), headers={"content-type": "application/json"})
    assert_envelope(r, 400, "json_too_deep")


def test_edit_ops_json_is_depth_limited():
    with pytest.raises(ValueError, match="ops must be a JSON list of edit ops .*nested deeper"):
        parse_edit_request(DEEP)


# --- 11: disconnects cancel synchronous requests ------------------------------------------


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1", "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8000"), *headers],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


def _disconnect_while_running(method: str, body: bytes | None) -> tuple[dict, list[dict]]:
    """Send a request; once the handler waits on its model call, the client disconnects."""
    app, state = make_app()
    sent: list[dict] = []

    async def run() -> None:
        state["started"] = asyncio.Event()
        messages = [] if body is None else [
            {"type": "http.request", "body": body[:3], "more_body": True},
            {"type": "http.request", "body": body[3:], "more_body": False}]
        if body is None:
            messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await state["started"].wait()  # the handler is in its model call
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [] if body is None else [(b"content-length", str(len(body)).encode())]
        with pytest.raises(asyncio.CancelledError):
            # the guard: without the middleware the handler would wait forever
            await asyncio.wait_for(app(_scope(method, "/slow", headers), receive, send),
                                   timeout=20)

    asyncio.run(run())
    return state, sent


@pytest.mark.parametrize("method,body", [("POST", b'{"prompt": "x"}'), ("GET", None)])
def test_a_client_disconnect_cancels_the_handler_and_its_model_calls(method, body):
    state, sent = _disconnect_while_running(method, body)
    assert state["cancelled"] == [method.lower()]  # the handler saw CancelledError
    assert [r.cancelled for r in state["handle"].responses] == [True]  # and the model call
    assert sent == []  # nothing is answered to a client that is gone


def test_a_disconnect_after_the_response_changes_nothing():
    """httpx's ASGITransport sends http.disconnect once the response is complete; the body
    is read through the middleware as usual."""
    app, state = make_app()
    r = call(app, "POST", "/model", json={"prompt": "kept"})
    assert r.status_code == 200 and r.json() == {"prompt": "kept"}
    r = call(app, "GET", "/items")
    assert r.status_code == 200 and state["cancelled"] == []


def test_the_watchlist_calls_each_long_request_once_in_order_from_one_timer():
    """`RequestPath`'s watchlist: a request's callback runs once it is due (not before),
    never once it was discarded (the request ended), in the order the requests came; a
    callback that raises does not stop the others; one timer at a time, none when empty."""
    async def run() -> None:
        loop = asyncio.get_running_loop()
        watchlist = middleware._Watchlist(loop, 0.08)
        fired: list[tuple[str, float]] = []
        t0 = loop.time()

        def note(name: str):
            return lambda: fired.append((name, loop.time() - t0))

        def boom() -> None:
            raise RuntimeError("a broken callback")

        watchlist.add(t0 + 0.08, note("a"))
        await asyncio.sleep(0.03)
        now = loop.time()
        watchlist.add(now + 0.08, boom)
        watchlist.add(now + 0.08, note("b"))
        ended = watchlist.add(now + 0.08, note("ended"))
        watchlist.discard(ended)
        timer = watchlist._timer
        assert timer is not None and len(watchlist.entries) == 3
        await asyncio.sleep(0.05)
        assert [name for name, _ in fired] == ["a"]
        assert fired[0][1] >= 0.08 - 1e-3
        await asyncio.sleep(0.1)
        assert [name for name, _ in fired] == ["a", "b"]
        assert fired[1][1] >= 0.11 - 1e-3
        assert watchlist.entries == {} and watchlist._timer is None
        watchlist.add(loop.time() + 0.01, note("c"))  # emptied: the next entry sets a timer
        await asyncio.sleep(0.05)
        assert fired[-1][0] == "c"

    asyncio.run(run())


def test_a_quick_request_runs_in_its_own_task_without_helper_tasks():
    """`middleware.install`'s one layer runs the handler in the request's task, and starts
    the disconnect watcher only for a request still running after WATCH_DISCONNECT_AFTER_S:
    a quick no-model request creates no task (it used to create three), and nothing is left
    behind after it."""
    app = FastAPI()
    errors.install(app)
    middleware.install(app, HardeningConfig())
    seen: dict = {}

    @app.get("/quick")
    async def quick() -> dict:
        seen["task"] = asyncio.current_task()
        seen["tasks"] = len(asyncio.all_tasks())
        return {"ok": True}

    async def run() -> None:
        sent: list[dict] = []
        received = False

        async def receive() -> dict:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # as a server does until the client leaves

        async def send(message: dict) -> None:
            sent.append(message)

        before = len(asyncio.all_tasks())
        await app(_scope("GET", "/quick", []), receive, send)
        assert seen["task"] is asyncio.current_task() and seen["tasks"] == before
        assert len(asyncio.all_tasks()) == before
        assert sent[0]["status"] == 200

    asyncio.run(run())


# --- 12: the host of returned URLs and redirects ------------------------------------------


@pytest.mark.parametrize("headers", [
    {"host": "evil.example"},
    {"host": "evil.example:8000"},
    {"x-forwarded-host": "evil.example", "x-forwarded-proto": "https"},
    {"host": "evil.example", "x-forwarded-host": "evil.example"},
    {"host": "evil.example", "x-forwarded-proto": "https"},
])
def test_client_host_headers_do_not_choose_urls(headers):
    app, _ = make_app(fallback_host="gw.internal:8000")
    base = call(app, "GET", "/base", headers=headers).json()["base_url"]
    assert "evil" not in base
    assert base.startswith("http://")  # an untrusted X-Forwarded-Proto is not honoured
    redirect = call(app, "GET", "/items/", headers=headers)  # Starlette's slash redirect
    assert redirect.status_code == 307
    assert "evil" not in redirect.headers["location"]
    assert redirect.headers["location"].startswith(("http://gw.internal:8000/",
                                                    "http://127.0.0.1:8000/"))


def test_local_hosts_and_allowed_hosts_are_used_as_sent():
    app, _ = make_app(allowed_hosts=["studio.example.com", "*.example.org"])
    for host in ("localhost:9999", "127.0.0.1:8123", "[::1]:8000", "studio.example.com",
                 "a.b.example.org:8443"):
        base = call(app, "GET", "/base", headers={"host": host}).json()["base_url"]
        assert base == f"http://{host}/", host


def test_the_app_sees_one_host_header_whatever_the_client_sent():
    """A request with its Host repeated (the first one allowed) reaches the app with one
    Host, the allowed one; a single allowed Host is passed through as it came."""
    seen: list[list] = []

    async def inner(scope, receive, send):
        seen.append([v for k, v in scope["headers"] if k == b"host"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    path = middleware.RequestPath(inner, HardeningConfig())

    async def run(headers):
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        scope = _scope("GET", "/x", [])
        scope["headers"] = headers
        await path(scope, receive, send)

    asyncio.run(run([(b"host", b"localhost:8000"), (b"host", b"evil.example")]))
    asyncio.run(run([(b"host", b"localhost:8000"), (b"accept", b"*/*")]))
    assert seen == [[b"localhost:8000"], [b"localhost:8000"]]


def test_forwarded_headers_are_used_from_trusted_proxies_only():
    app, _ = make_app(trusted_proxies=["10.0.0.0/8"])
    headers = {"host": "ingress:8000", "x-forwarded-proto": "https",
               "x-forwarded-host": "spoofed.example, studio.example.com"}
    trusted = call(app, "GET", "/base", headers=headers, client=("10.1.2.3", 4000))
    assert trusted.json()["base_url"] == "https://studio.example.com/"  # the proxy's entry
    other = call(app, "GET", "/base", headers=headers, client=("192.0.2.7", 4000))
    assert other.json()["base_url"] == "http://localhost:8000/"


def test_public_base_url_wins_and_can_be_set_by_the_replica():
    app, _ = make_app(public_base_url="https://studio.example.com",
                      trusted_proxies=["*"])
    headers = {"host": "localhost", "x-forwarded-host": "evil.example"}
    assert call(app, "GET", "/base", headers=headers).json()["base_url"] == \
        "https://studio.example.com/"
    assert call(app, "GET", "/items/", headers=headers).headers["location"] == \
        "https://studio.example.com/items"
    plain, _ = make_app()
    middleware.set_public_base_url("https://cdn.example.net:8443")
    try:
        assert call(plain, "GET", "/base", headers={"host": "evil.example"}
                    ).json()["base_url"] == "https://cdn.example.net:8443/"
    finally:
        middleware.set_public_base_url(None)
    with pytest.raises(ValueError, match="public_base_url"):
        HardeningConfig(public_base_url="ftp://x")


def test_the_origin_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("PHOTOSTUDIO_PUBLIC_BASE_URL", "https://studio.example.com/api")
    monkeypatch.setenv("PHOTOSTUDIO_TRUSTED_PROXIES", '["10.0.0.0/8"]')
    monkeypatch.setenv("PHOTOSTUDIO_ALLOWED_HOSTS", '["studio.example.com"]')
    monkeypatch.setenv("PHOTOSTUDIO_HOST", "0.0.0.0")
    monkeypatch.setenv("PHOTOSTUDIO_PORT", "9000")
    config = HardeningConfig.from_settings()
    assert config.public_base_url == "https://studio.example.com/api"
    assert config.trusted_proxies == ["10.0.0.0/8"]
    assert config.allowed_hosts == ["studio.example.com"]
    assert config.fallback_host == "localhost:9000"  # not the wildcard listen address


# --- 13: X-Request-ID before Serve echoes it ---------------------------------------------


def _serve_http_server_app(with_sanitizer: bool):
    """The app as Serve's HTTP server (proxy or direct ingress) wraps it: Serve's own
    RequestIdMiddleware, plus the callback's middlewares when configured."""
    from ray.serve._private.http_util import _apply_middlewares

    seen: dict = {}

    async def app(scope, receive, send):
        seen["headers"] = dict(scope["headers"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    extra = serve_proxy.middlewares() if with_sanitizer else []
    return _apply_middlewares(app, extra), seen


@pytest.mark.parametrize("bad", ["x" * 10_000, "<script>alert(1)</script>", "a b", "id\tx"])
def test_unsafe_request_ids_are_replaced_before_serve_echoes_them(bad):
    app, seen = _serve_http_server_app(with_sanitizer=True)
    r = call(app, "GET", "/", headers={"X-Request-ID": bad})
    echoed = r.headers.get_list("x-request-id")
    assert len(echoed) == 1 and echoed[0] != bad
    assert serve_proxy.valid_request_id(echoed[0])
    assert seen["headers"][b"x-request-id"].decode() == echoed[0]  # the app logs the same
    # what Serve does without the callback (why it must be configured)
    unsanitized, _ = _serve_http_server_app(with_sanitizer=False)
    assert call(unsanitized, "GET", "/", headers={"X-Request-ID": bad}
                ).headers["x-request-id"] == bad


def test_valid_request_ids_are_kept_and_serve_hints_dropped():
    app, seen = _serve_http_server_app(with_sanitizer=True)
    r = call(app, "GET", "/", headers={"X-Request-ID": "client-42.abc",
                                       "X-Request-Timeout-Seconds": "0",
                                       "X-Request-Disconnect-Disabled": "?1"})
    assert r.headers.get_list("x-request-id") == ["client-42.abc"]
    assert b"x-request-timeout-seconds" not in seen["headers"]
    assert b"x-request-disconnect-disabled" not in seen["headers"]


# --- Serve's own answers in the envelope (graphs.serve_proxy.EnvelopeServeErrors) -----------


def _behind_serve_http_server(inner):
    """`inner` (standing in for Serve's proxy app) wrapped as Serve's HTTP server wraps it
    with the callback's middlewares."""
    from ray.serve._private.http_util import _apply_middlewares

    return _apply_middlewares(inner, serve_proxy.middlewares())


async def _no_answer(scope, receive, send):
    """Serve's proxy when the replica handling the request died: it ends without an answer
    (its HTTP server then sends a bare 500)."""


def _plain(status: int, text: bytes, headers=()):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), *headers]})
        await send({"type": "http.response.body", "body": text})
    return app


def test_a_request_whose_replica_died_is_the_envelopes_503_with_retry_after():
    r = call(_behind_serve_http_server(_no_answer), "POST", "/v1/images/generations")
    error = assert_envelope(r, 503, "replica_unavailable")
    assert "stopped before answering" in error["message"] and "retry" in error["message"]
    assert error["type"] == "service_unavailable" and r.headers["retry-after"] == "5"
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]  # Serve's request id still comes back


def test_serves_plain_text_errors_become_the_envelope_keeping_retry_after():
    app = _behind_serve_http_server(_plain(503, b"Deployment 'Ingress' is unavailable.",
                                           [(b"retry-after", b"2")]))
    r = call(app, "GET", "/v1/styles")
    error = assert_envelope(r, 503, "serve_service_unavailable")
    assert error["message"] == "Deployment 'Ingress' is unavailable."
    assert r.headers["retry-after"] == "2"
    r = call(_behind_serve_http_server(_plain(500, b"Internal Server Error")), "GET", "/x")
    assert assert_envelope(r, 500, "serve_server_error")["message"] == "Internal Server Error"


@pytest.mark.parametrize("inner,path,status", [
    (_plain(200, b"ok"), "/v1/styles", 200),  # not an error
    (_plain(503, b"unhealthy"), "/-/healthz", 503),  # Serve's own routes: as they are
    (_plain(404, b"Path '/x' not found."), "/x", 404),  # not a status it rewrites
])
def test_other_answers_pass_through_unchanged(inner, path, status):
    r = call(_behind_serve_http_server(inner), "GET", path)
    assert r.status_code == status and r.headers["content-type"].startswith("text/plain")


def test_the_gateways_own_envelope_errors_pass_through_unchanged():
    app, _ = make_app()

    async def too_busy(scope, receive, send):
        await errors.ApiError(503, "busy", code="overloaded",
                              headers={"Retry-After": "1"}).response()(scope, receive, send)

    r = call(_behind_serve_http_server(too_busy), "GET", "/v1/styles")
    assert assert_envelope(r, 503, "overloaded")["message"] == "busy"


# --- 14: headers on every response ---------------------------------------------------------


@pytest.mark.parametrize("method,path,kwargs,status", [
    ("GET", "/items", {}, 200),
    ("GET", "/nowhere", {}, 404),
    ("POST", "/model", {"content": b"x" * 2048}, 413),
    ("POST", "/model", {"json": {"nope": 1}}, 400),
])
def test_every_response_is_nosniff_and_no_store(method, path, kwargs, status):
    app, _ = make_app(max_request_bytes=1024)
    r = call(app, method, path, **kwargs)
    assert r.status_code == status
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"


def test_a_route_s_own_cache_control_is_kept():
    app, _ = make_app()
    r = call(app, "GET", "/tagged")
    assert r.headers["cache-control"] == "private, max-age=60"
    assert r.headers["x-content-type-options"] == "nosniff"


# --- 15: HEAD and conditional GET ---------------------------------------------------------


def test_head_on_get_routes_answers_the_headers_without_a_body(tmp_path):
    app, _ = make_app(tmp_path)
    for path in ("/tagged", "/file", "/items"):
        get = call(app, "GET", path)
        head = call(app, "HEAD", path)
        assert head.status_code == 200 and head.content == b"", path
        for name in ("content-type", "content-length", "etag"):
            assert head.headers.get(name) == get.headers.get(name), (path, name)
    assert call(app, "HEAD", "/model").status_code == 405  # a POST-only route stays so


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_none_match_gets_304_with_the_etag(tmp_path, method):
    app, _ = make_app(tmp_path)
    for path in ("/tagged", "/file"):
        etag = call(app, "GET", path).headers["etag"]
        for condition in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            r = call(app, method, path, headers={"If-None-Match": condition})
            assert r.status_code == 304, (path, condition)
            assert r.content == b"" and r.headers["etag"] == etag
            assert "content-length" not in r.headers and "content-type" not in r.headers
            assert r.headers["x-content-type-options"] == "nosniff"
        stale = call(app, method, path, headers={"If-None-Match": '"stale"'})
        assert stale.status_code == 200


def test_etag_matching_rules():
    assert middleware.etag_matches('"a", W/"b"', '"b"')
    assert middleware.etag_matches("*", '"x"')
    assert not middleware.etag_matches('"a"', '"b"')
    assert not middleware.etag_matches(None, '"b"') and not middleware.etag_matches('"a"', None)
