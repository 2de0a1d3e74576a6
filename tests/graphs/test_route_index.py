"""The ingress's path index (graphs/route_index.py) finds what FastAPI's full walk finds."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import _IncludedRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel
from ray.serve._private.thirdparty.get_asgi_route_name import get_asgi_route_name
from starlette.responses import PlainTextResponse
from starlette.routing import Match, Mount

from graphs import route_index

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def _scope(path: str, method: str = "GET") -> dict:
    return {"type": "http", "path": path, "method": method, "root_path": "", "headers": [],
            "query_string": b""}


def _nodes(app: FastAPI) -> list:
    return [r for r in app.router.routes if isinstance(r, _IncludedRouter)]


def _overlapping_app() -> FastAPI:
    """Routes whose order decides: a parametrised route before a static one it matches, the
    same path under two methods, a mount."""
    app = FastAPI()
    router = APIRouter()

    @router.get("/items/{item_id}")
    def item(item_id: str) -> dict:
        return {"route": "item", "item_id": item_id}

    @router.get("/items/special")
    def special() -> dict:  # shadowed by /items/{item_id}, as FastAPI orders them
        return {"route": "special"}

    @router.post("/things")
    def make_thing() -> dict:
        return {"route": "make"}

    @router.delete("/things")
    def drop_thing() -> dict:
        return {"route": "drop"}

    @router.get("/plain")
    def plain() -> dict:
        return {"route": "plain"}

    router.routes.append(Mount("/plain-mount", app=PlainTextResponse("mounted")))
    app.include_router(router)
    return app


def _responses(client: TestClient) -> list[tuple[int, str, str | None]]:
    seen = []
    for method, path in [("GET", "/items/special"), ("GET", "/items/7"), ("POST", "/things"),
                         ("DELETE", "/things"), ("GET", "/things"), ("GET", "/plain"),
                         ("PUT", "/plain"), ("GET", "/plain-mount/x"), ("GET", "/nowhere"),
                         ("GET", "/plain/")]:
        r = client.request(method, path, follow_redirects=False)
        seen.append((r.status_code, r.text, r.headers.get("allow")))
    return seen


def test_indexed_app_answers_as_the_full_walk() -> None:
    before = _responses(TestClient(_overlapping_app()))
    app = _overlapping_app()
    assert len(route_index.index_routes(app)) == 1
    after = _responses(TestClient(app))
    assert after == before
    # the order still decides: the parametrised route shadows the static one
    assert '"route":"item"' in after[0][1]
    assert after[4][0] == 405 and after[4][2] and "POST" in after[4][2]


def test_paths_walk_only_the_candidates_that_can_match() -> None:
    app = _overlapping_app()
    (index,) = route_index.index_routes(app)
    assert index.static_paths() == {"/items/special", "/things", "/plain"}

    def paths(path: str) -> list[str]:
        return [getattr(c, "path", None) or c.starlette_route.path
                for c in index.narrowed(path).effective_candidates()]

    assert paths("/plain") == ["/plain", "/plain-mount"]  # a mount is always kept
    # `/items/{item_id}` may match any path under /items/: kept, in its place
    assert paths("/items/special") == ["/items/{item_id}", "/items/special", "/plain-mount"]
    assert paths("/items/7") == ["/items/{item_id}", "/plain-mount"]
    assert paths("/things") == ["/things", "/things", "/plain-mount"]

    # once a walk found the route answering a static path and method, only it (after the
    # mount that comes before it) is walked for them
    client = TestClient(app)
    assert client.delete("/things").json() == {"route": "drop"}
    assert client.get("/items/special").json() == {"route": "item", "item_id": "special"}

    def learnt(path: str, method: str) -> list[str]:
        return [getattr(c, "path", None) or c.starlette_route.path
                for c in index.narrowed(path, method).effective_candidates()]

    assert learnt("/things", "DELETE") == ["/things"]
    assert learnt("/items/special", "GET") == ["/items/{item_id}"]  # the shadowing route
    assert learnt("/things", "POST") == ["/things", "/things", "/plain-mount"]  # not yet
    assert client.delete("/things").json() == {"route": "drop"}
    assert client.post("/things").json() == {"route": "make"}
    assert client.get("/things").status_code == 405  # no route answers: nothing learnt
    assert learnt("/things", "GET") == ["/things", "/things", "/plain-mount"]


def test_index_routes_is_idempotent() -> None:
    app = _overlapping_app()
    first = route_index.index_routes(app)
    assert route_index.index_routes(app) == first


def test_the_ingress_routes_match_as_before_for_every_path_and_method() -> None:
    from graphs.ingress import app

    (node,) = _nodes(app)
    full = type(node)._match
    (index,) = route_index.index_routes(app)
    paths = sorted(index.static_paths())
    assert {"/v1/styles", "/v1/chat", "/healthz"} <= set(paths)
    # every parametrised route, its parameters filled in; paths of no route; trailing slashes
    patterns = {c.path for c in node.effective_candidates() if "{" in (c.path or "")}
    assert "/v1/jobs/{job_id}" in patterns
    filled = sorted({re.sub(r"\{[^}]*\}", "x1", p) for p in patterns})
    every = paths + filled + ["/v1/nowhere", "/v1/styles/", "/", "/v1", "/v1/jobs/"]
    # twice: the second pass walks what the first one learnt for each static path and method
    for _ in range(2):
        for path in every:
            for method in METHODS:
                scope = _scope(path, method)
                expected = full(node, dict(scope))
                one = dict(scope)
                got = node._match(one)
                assert got[0] == expected[0], (path, method)
                assert got[1] == expected[1], (path, method)
                assert got[2] is expected[2] and got[3] is expected[3], (path, method)
                assert node._match(one) is got  # FastAPI's second question: the same answer
    learnt = {path for path, _ in index._exact}
    assert "/v1/chat" in learnt and learnt <= set(paths)
    assert [c.path for c in index.narrowed("/v1/styles", "GET").effective_candidates()] == [
        "/v1/styles"]


def test_serve_route_names_are_remembered_for_static_paths_only() -> None:
    from graphs.ingress import app

    calls = []

    def lookup(app_, scope):
        calls.append(scope["path"])
        return get_asgi_route_name(app_, scope)

    (index,) = route_index.index_routes(app)
    cached = route_index.remember_route_names(lookup, index.static_paths)
    for _ in range(3):
        assert cached(app, _scope("/v1/styles")) == "/v1/styles"
        assert cached(app, _scope("/v1/jobs/abc")) == "/v1/jobs/{job_id}"
    assert cached(app, _scope("/v1/styles", "POST")) == get_asgi_route_name(
        app, _scope("/v1/styles", "POST"))
    assert calls.count("/v1/styles") == 2  # GET once, POST once
    assert calls.count("/v1/jobs/abc") == 3  # not a static path: looked up every time


def test_install_hooks_serves_route_names_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve._private import replica

    from graphs.ingress import app

    original = replica.get_asgi_route_name
    monkeypatch.setattr(replica, "get_asgi_route_name", original)
    assert route_index.install(app)
    hooked = replica.get_asgi_route_name
    assert hooked is not original and hooked.photostudio_original is original
    assert route_index.install(app)  # a second install keeps the one hook
    assert replica.get_asgi_route_name is hooked
    for path in ("/v1/styles", "/v1/chat", "/v1/jobs/x", "/healthz", "/nowhere"):
        assert hooked(app, _scope(path)) == original(app, _scope(path))


class _Item(BaseModel):
    name: str


def _class_based_view_app():
    """An app whose routes are a class's methods, made into routes as `@serve.ingress` does
    (Serve's class-based view: a ``self`` dependency solved per request)."""
    from ray.serve._private.http_util import make_fastapi_class_based_view

    app = FastAPI()

    class View:
        def __init__(self, name: str):
            self.name = name

        @app.get("/whoami")
        async def whoami(self) -> dict:
            return {"instance": self.name}

        @app.get("/items/{item_id}")
        async def item(self, item_id: int, detail: bool = False) -> dict:
            return {"instance": self.name, "item_id": item_id, "detail": detail}

        @app.post("/items")
        def create(self, item: _Item) -> dict:  # a sync endpoint (threadpool)
            return {"instance": self.name, "created": item.name}

    make_fastapi_class_based_view(app, View)
    return app, View


def _answers(client: TestClient) -> list:
    return [client.get("/whoami").json(),
            client.get("/items/7", params={"detail": "true"}).json(),
            client.post("/items", json={"name": "n"}).json(),
            client.get("/items/x").status_code]


def test_class_based_view_routes_call_the_bound_instance(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import ray.serve

    app, View = _class_based_view_app()
    asked = []

    def replica_context():
        asked.append(1)
        return SimpleNamespace(servable_object=View("from-serve"))

    monkeypatch.setattr(ray.serve, "get_replica_context", replica_context)
    client = TestClient(app)
    assert _answers(client)[0] == {"instance": "from-serve"}
    assert asked  # unbound: Serve's dependency asks for the instance per request
    asked.clear()

    assert route_index.bind_instance(app, View("a")) == 3
    assert _answers(client) == [
        {"instance": "a"}, {"instance": "a", "item_id": 7, "detail": True},
        {"instance": "a", "created": "n"}, 422]
    assert not asked  # no dependency left to solve
    # a new instance of the class (a replica's __init__ again) takes the routes over
    assert route_index.bind_instance(app, View("b")) == 3
    assert _answers(client)[0] == {"instance": "b"} and not asked
    # instances of another class are never bound
    assert route_index.bind_instance(app, SimpleNamespace()) == 0
    assert _answers(client)[0] == {"instance": "b"}


def test_routes_added_after_indexing_are_found() -> None:
    app = _overlapping_app()
    (node,) = _nodes(app)
    (index,) = route_index.index_routes(app)
    assert node._match(_scope("/late"))[0] == Match.NONE

    @node.original_router.get("/late")
    def late() -> dict:
        return {"route": "late"}

    assert node._match(_scope("/late"))[0] == Match.FULL
    assert "/late" in index.static_paths()
    assert TestClient(app).get("/late").json() == {"route": "late"}


def _resolved(app: FastAPI, path: str, method: str) -> tuple:
    """What the app's top-level router picks for a request (Starlette's rule: the first
    full match, else the first partial one), and the route's path inside a node."""
    partial = None
    for route in app.router.routes:
        scope = _scope(path, method)
        match, child = route.matches(scope)
        if isinstance(route, _IncludedRouter) and match != Match.NONE:
            inner = route._match(_scope(path, method))
            found = (match, getattr(inner[2], "path", None))
        else:
            found = (match, getattr(route, "path", None))
        if match == Match.FULL:
            return found
        if match == Match.PARTIAL and partial is None:
            partial = found
    return partial or (Match.NONE, None)


def test_the_ingress_node_goes_first_and_every_request_finds_the_same_route() -> None:
    """`index_routes` puts the ingress's included-router node before the docs and studio
    routes (no path can match both sides): every path and method resolves as before."""
    from graphs import ingress

    app = FastAPI()  # the ingress's routes, in their order, on a fresh app
    app.router.routes.extend(ingress.app.router.routes)
    (node,) = _nodes(app)
    order = list(app.router.routes)
    paths = ["/", "/studio", "/studio/js/app.js", "/docs", "/docs/oauth2-redirect", "/redoc",
             "/openapi.json", "/v1/styles", "/v1/chat", "/healthz", "/v1/jobs/x1",
             "/v1/nowhere", "/docs/", "/studio/", "/nowhere"]
    before = {(p, m): _resolved(app, p, m) for p in paths for m in METHODS}
    route_index.index_routes(app)
    assert app.router.routes[0] is node and sorted(map(id, app.router.routes)) == sorted(
        map(id, order))
    after = {(p, m): _resolved(app, p, m) for p in paths for m in METHODS}
    assert after == before
    assert before[("/v1/styles", "GET")] == (Match.FULL, "/v1/styles")
    assert before[("/studio/js/app.js", "GET")] == (Match.FULL, "/studio/{path:path}")


def test_the_node_stays_in_place_where_the_order_could_decide() -> None:
    """A route before the node whose first segment the node's routes share, or a parameter
    first segment on either side: the node is not moved."""
    def app_with(before_path: str, node_path: str) -> FastAPI:
        app = FastAPI()

        @app.get(before_path)
        def first() -> dict:
            return {}

        router = APIRouter()

        @router.get(node_path)
        def inner() -> dict:
            return {}

        app.include_router(router)
        route_index.index_routes(app)
        return app

    for before_path, node_path in [("/v1/x", "/v1/y"), ("/{page}", "/v1/y"),
                                   ("/docs2", "/{anything}")]:
        app = app_with(before_path, node_path)
        assert isinstance(app.router.routes[-1], _IncludedRouter), (before_path, node_path)
    moved = app_with("/docs2", "/v1/y")
    assert isinstance(moved.router.routes[0], _IncludedRouter)
