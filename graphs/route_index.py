"""A path index for the ingress's routes: FastAPI's and Serve's route lookups, in few steps.

`@serve.ingress(app)` moves the Ingress class's routes (87 of them) into one ``APIRouter`` and
includes it in the app; on FastAPI >= 0.137 that is one ``_IncludedRouter`` node whose
candidates are tried in order, each a scope update, a regex match and a restore. A request
walks them three times before its handler runs: FastAPI's router asks the node whether it
matches (``_match``), the node finds the route again to handle it (``_match``), and Serve's
replica looks the route up for its metrics' ``route`` tag (``get_asgi_route_name``, over the
same list). `GET /v1/styles` is the 34th route: ~110 us of the Ingress replica's CPU per
request on the 2-core dev VM (BENCHMARKS.md "Gateway overhead"), where a bare app with three
routes spends ~30.

`install(app)` (in the Ingress replica's ``__init__``) keeps FastAPI's own matching and only
narrows what it walks:

- each ``_IncludedRouter`` node gets its candidates grouped by the first two segments of the
  request path (`/v1/jobs/abc` -> `/v1/jobs`): a group holds, in their order, the routes whose
  pattern can match a path of the group (`/v1/jobs/{job_id}` only under `/v1/jobs`;
  `/v1/{name}` under every `/v1/...`), and every candidate this index cannot judge (a mount,
  a host, a websocket, a nested router). FastAPI's ``_match`` runs unchanged over the group,
  so the first full match, the 405 of a partial match and the parameters are those of the
  full walk: a group drops only routes whose regex cannot match.
- the node goes before the app's other routes (docs, the studio's pages) when no request
  path can match routes of both (`_node_first`), so an API request does not try those first;
- Serve's route tag (`remember_route_names`) is remembered per (path, method, root path) for
  the paths of routes without parameters; other paths are looked up as before.

Both hook into private names (``_IncludedRouter._match``, Serve's
``replica.get_asgi_route_name``); where a FastAPI or Ray upgrade renames them, `install`
logs that it left the routes as they are and the gateway works as before, only slower.
``tests/graphs/test_route_index.py`` checks the index against the full walk for every route
and method.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

from starlette.routing import Match, Route, get_route_path
from starlette.types import Scope

logger = logging.getLogger("ray.serve")

try:  # FastAPI >= 0.137
    from fastapi.routing import APIRoute, _EffectiveRouteContext, _IncludedRouter
except ImportError:  # pragma: no cover - older FastAPI flattens included routes
    _IncludedRouter = _EffectiveRouteContext = None  # type: ignore[assignment,misc]
    from fastapi.routing import APIRoute

# (path, method, root path) -> Serve's route tag; at most this many remembered
_MAX_ROUTE_NAMES = 4096


def _path(candidate: Any) -> str | None:
    """The path (pattern) of a candidate that only a path regex and the method decide: an
    ``APIRoute`` or a plain Starlette ``Route``; None for mounts, hosts, websockets and nested
    routers, which every narrowed list keeps."""
    if _EffectiveRouteContext is None or not isinstance(candidate, _EffectiveRouteContext):
        return None
    if isinstance(candidate.original_route, APIRoute):
        return candidate.path or None
    route = candidate.starlette_route
    if type(route) is Route:  # a plain Starlette route (not Mount, Host or a websocket)
        return route.path or None
    return None


def _key(path: str) -> str:
    """A request path's first two segments (`/v1/jobs/abc` -> `/v1/jobs`), or all of it."""
    second = path.find("/", 1)
    if second < 0:
        return path
    third = path.find("/", second + 1)
    return path if third < 0 else path[:third]


def _candidate_key(path: str) -> tuple[str | None, str]:
    """Which request paths a route pattern can match: (their `_key`, None) when every one
    has the same, else (None, the pattern's literal prefix), which they all start with
    (`/v1/{name}`: `/v1/`). Starlette escapes a pattern's literal parts: its regex matches
    the literal prefix literally."""
    literal = path.split("{", 1)[0]
    if literal == path:  # no parameters: only the path itself
        return _key(path), path
    second = literal.find("/", 1)
    third = literal.find("/", second + 1) if second > 0 else -1
    return (literal[:third], literal) if third > 0 else (None, literal)


class _Narrowed:
    """What `_IncludedRouter._match` reads of its node (`effective_candidates()`), narrowed
    to the candidates that can match one group of paths."""

    __slots__ = ("_candidates",)

    def __init__(self, candidates: list[Any]):
        self._candidates = candidates

    def effective_candidates(self) -> list[Any]:
        return self._candidates


# groups of paths remembered per index (a client can send any number of different paths)
_MAX_GROUPS = 1024


class PathIndex:
    """One ``_IncludedRouter`` node's candidates narrowed per group of request paths (their
    first two segments, `_key`): those whose pattern can match a path of the group, in their
    order; mounts, hosts, websockets and nested routers in every group. Rebuilt when the
    node's candidate list changes (FastAPI rebuilds it when routes are added).

    A path of a route without parameters (`/v1/styles`) is narrowed further once a full walk
    of its group has found the route that answers it for a method (`learn`): to that route,
    after the candidates this index cannot judge that come before it. Which route answers a
    fixed path and method does not change while the routes stay (no parameter, no header
    decides it; a host route, which may, stays in the list)."""

    def __init__(self, node: Any):
        self.node = node
        self._source: list[Any] | None = None
        # per candidate: (key or None, literal prefix or None: always kept)
        self._keys: list[tuple[Any, str | None, str | None]] = []
        self._groups: dict[str, _Narrowed] = {}
        self._exact: dict[tuple[str, Any], _Narrowed] = {}  # (static path, method) -> route
        self._static: frozenset[str] = frozenset()
        self._flat: tuple[int, int] | None = None

    def narrowed(self, path: str, method: Any = None) -> _Narrowed:
        """The candidates that can match `path` (a route path: without the root path) for
        `method` (None: any method)."""
        self._sync()
        if method is not None:
            exact = self._exact.get((path, method))
            if exact is not None:
                return exact
        keys, groups = self._keys, self._groups  # one build's (Serve's thread reads too)
        key = _key(path)
        group = groups.get(key)
        if group is None:
            group = _Narrowed([c for c, k, literal in keys
                               if literal is None or k == key
                               or (k is None and key.startswith(literal))])
            if len(groups) < _MAX_GROUPS:
                groups[key] = group
        return group

    def learn(self, path: str, method: Any, winner: Any) -> None:
        """A full walk of `path`'s group found `winner` (a candidate) answering `method`:
        later requests for that static path and method walk only it (after the candidates
        this index cannot judge that precede it)."""
        if path not in self._static or len(self._exact) >= _MAX_GROUPS:
            return
        group = self.narrowed(path).effective_candidates()
        kept = []
        for candidate in group:
            if candidate is winner:
                kept.append(candidate)
                self._exact[(path, method)] = _Narrowed(kept)
                return
            if _path(candidate) is None:  # a mount, host, websocket or nested router
                kept.append(candidate)

    def static_paths(self) -> frozenset[str]:
        """The paths of the node's routes without path parameters."""
        self._sync()
        return self._static

    def _flat_version(self) -> tuple[int, int] | None:
        """(routes version, number of routes) of the node's router when it includes no
        other router: FastAPI's summed routes version is then its own; else None."""
        router = getattr(self.node, "original_router", None)
        version = getattr(router, "_routes_version", None)
        if not isinstance(version, int):
            return None
        return (version, len(router.routes))

    def _sync(self) -> None:
        """Rebuild when the node's candidate list is not the one indexed. FastAPI's check
        (``effective_candidates()``: a routes version summed over the node's routes, ~7 us
        for 87) is skipped while the router's own version and route count stay those of the
        last build and it includes no other router."""
        flat = self._flat_version()
        if flat is not None and flat == self._flat:
            return
        source = self.node.effective_candidates()
        if source is not self._source:
            paths = [(candidate, _path(candidate)) for candidate in source]
            self._keys = [(c, *_candidate_key(p)) if p else (c, None, None)
                          for c, p in paths]
            self._groups = {}
            self._exact = {}
            self._static = frozenset(p for _, p in paths if p and "{" not in p)
            self._source = source
        routes = getattr(getattr(self.node, "original_router", None), "routes", ())
        nested = any(isinstance(route, _IncludedRouter) for route in routes)
        self._flat = None if nested else flat  # last: the build above is complete


# the scope's memo of the node's last answer (`_indexed_match`)
_MATCH_MEMO = "photostudio.route_match"


def _indexed_match(node: Any, index: PathIndex) -> Callable[[Scope], Any]:
    """The node's ``_match`` over `index`'s narrowed candidates. FastAPI asks twice per
    request (does the node match? which route handles it?) with the same scope: the second
    answer is the first, kept in the scope for that node, path and method."""
    full_match = type(node)._match

    def _match(scope: Scope) -> Any:
        if scope.get("type") != "http":
            return full_match(node, scope)
        path = get_route_path(scope)
        method = scope.get("method")
        memo = scope.get(_MATCH_MEMO)
        if memo is not None and memo[0] is node and memo[1] == path and memo[2] == method:
            return memo[3]
        narrowed = index.narrowed(path, method)
        result = full_match(narrowed, scope)
        if result[0] == Match.FULL and len(narrowed.effective_candidates()) > 1:
            index.learn(path, method, result[3] if result[3] is not None else result[2])
        scope[_MATCH_MEMO] = (node, path, method, result)
        return result

    return _match


def _first_segment(path: str) -> str | None:
    """A route pattern's first path segment when it is literal (`/v1/x` -> `v1`, `/` -> ``);
    None when a parameter may stand there (`/{name}`)."""
    first = path[1:].split("/", 1)[0] if path.startswith("/") else None
    return None if first is None or "{" in first else first


def _node_first(app: Any, node: Any) -> bool:
    """Put the included-router node `node` before the app's other routes when that changes
    no answer: every route before it is a plain path route (docs, the studio's pages) whose
    first path segment is literal, and none of those segments is the first segment of any
    of the node's candidates (all literal too). A request path then matches routes of one
    side only, so the order between the sides decides nothing; a `/v1/...` request no longer
    tries the 7 routes before the node first (~4 us of the ingress's CPU per request in
    process). True when moved (or already first)."""
    routes = app.router.routes
    at = next((i for i, route in enumerate(routes) if route is node), None)
    if at is None:
        return False
    before: set[str] = set()
    for route in routes[:at]:
        path = getattr(route, "path", None)
        first = _first_segment(path) if type(route) in (Route, APIRoute) and path else None
        if first is None:
            return False
        before.add(first)
    for candidate in node.effective_candidates():
        path = _path(candidate)
        first = _first_segment(path) if path else None
        if first is None or first in before:
            return False
    if at:
        routes.insert(0, routes.pop(at))
        mark = getattr(app.router, "_mark_routes_changed", None)
        if callable(mark):
            mark()
    return True


def index_routes(app: Any) -> list[PathIndex]:
    """Give each ``_IncludedRouter`` node among `app`'s routes its path index (idempotent).
    Returns the indexes (none on a FastAPI without such nodes, or one whose node lacks the
    ``_match`` this narrows)."""
    if _IncludedRouter is None:
        return []
    indexes = []
    for route in app.router.routes:
        if not isinstance(route, _IncludedRouter):
            continue
        if not callable(getattr(type(route), "_match", None)) or not callable(
                getattr(route, "effective_candidates", None)):
            logger.warning("FastAPI's _IncludedRouter has no _match/effective_candidates: "
                           "the ingress's routes are walked in full (graphs/route_index.py)")
            return []
        index = route.__dict__.get("_photostudio_index")
        if index is None:
            index = PathIndex(route)
            route._photostudio_index = index
            route._match = _indexed_match(route, index)
        indexes.append(index)
    if len(indexes) == 1:
        _node_first(app, indexes[0].node)
    return indexes


def remember_route_names(lookup: Callable[[Any, Scope], str | None],
                         paths: Callable[[], set[str]]) -> Callable[[Any, Scope], str | None]:
    """`lookup` (Serve's ``get_asgi_route_name(app, scope)``), remembering its answer for the
    static paths `paths()` gives (per path, method and root path); any other path is looked
    up every time. Routes do not change once a replica serves (Serve froze the app)."""
    names: dict[tuple[Any, ...], str | None] = {}

    def serve_route_name(app: Any, scope: Scope) -> str | None:
        path = scope.get("path")
        key = (id(app), scope.get("type"), path, scope.get("method"), scope.get("root_path"))
        try:
            return names[key]
        except KeyError:
            pass
        name = lookup(app, scope)
        if path in paths() and len(names) < _MAX_ROUTE_NAMES:
            names[key] = name
        return name

    serve_route_name.photostudio_original = lookup  # type: ignore[attr-defined]
    return serve_route_name


# Serve's class-based view (``@serve.ingress``) gives each method route a ``self`` dependency,
# ``Depends(get_current_servable_instance)``, solved per request
SERVABLE_DEPENDENCY = "get_current_servable_instance"


def bind_instance(app: Any, instance: Any) -> int:
    """Make the class-based view's method routes call `instance`'s bound methods directly.

    FastAPI solves the view's ``self`` dependency on every request (a sub-dependency: its own
    cache key, an awaited call of ``serve.get_replica_context()``; ~15 us per request on the
    dev VM) though a replica serves one instance, known once its ``__init__`` runs. Each
    route's dependant loses that dependency and calls ``function.__get__(instance)`` instead
    (what ``self`` resolved to). Call it in the replica's ``__init__`` with ``self``; a second
    call (a new instance of the same class) rebinds. Routes FastAPI rebuilds later (routes
    added) keep Serve's dependency and work as before. Returns how many routes were bound."""
    if _IncludedRouter is None:
        return 0
    bound = 0
    for node in app.router.routes:
        if not isinstance(node, _IncludedRouter):
            continue
        for context in node.effective_route_contexts():
            dependant = getattr(context, "dependant", None)
            call = getattr(dependant, "call", None)
            if call is None:
                continue
            if isinstance(call, types.MethodType):  # bound before: to this class's instance?
                if not isinstance(call.__self__, type(instance)):
                    continue
                function = call.__func__
            else:
                dependencies = dependant.dependencies
                found = [d for d in dependencies if d.name == "self" and getattr(
                    d.call, "__name__", None) == SERVABLE_DEPENDENCY]
                if not found:
                    continue
                dependant.dependencies = [d for d in dependencies if d is not found[0]]
                function = call
            dependant.call = types.MethodType(function, instance)
            bound += 1
    return bound


def install(app: Any, instance: Any = None) -> bool:
    """Index `app`'s included routes and remember Serve's route tags for their static paths
    (in this process: call it in the ingress replica), and bind the class-based view's routes
    to `instance` (`bind_instance`) when given. True when the route hooks are in place."""
    if instance is not None:
        bind_instance(app, instance)
    indexes = index_routes(app)
    if not indexes:
        return False
    try:
        from ray.serve._private import replica
    except ImportError:  # pragma: no cover - Serve reorganised
        logger.warning("ray.serve._private.replica moved: Serve's route tags are looked up "
                       "in full (graphs/route_index.py)")
        return False
    current = getattr(replica, "get_asgi_route_name", None)
    if current is None:
        logger.warning("Serve's replica has no get_asgi_route_name: its route tags are "
                       "looked up as Serve does (graphs/route_index.py)")
        return False
    if not hasattr(current, "photostudio_original"):
        static: set[str] = set()

        def paths() -> set[str]:
            if not static:
                for index in indexes:
                    static.update(index.static_paths())
            return static

        replica.get_asgi_route_name = remember_route_names(current, paths)
    return True


def match_routes(routes: Any, scope: Scope) -> tuple[Any, Any]:
    """(the route matching `scope` fully, else None; the first matching its path only: a
    405), looking inside FastAPI's included-router nodes (Serve's class-based ingress puts its
    routes in one) as the router would."""
    partial = None
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            full, part = match_routes(inner, scope)
            if full is not None:
                return full, None
            partial = partial or part
            continue
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route, None
        if match == Match.PARTIAL and partial is None:
            partial = route
    return None, partial


def route_path(scope: Scope) -> str | None:
    """The path template (``/v1/jobs/{job_id}``) of the app's route that handles `scope`: the
    one the router picked (``scope["route"]``), else the one it would pick, for requests
    answered before routing (the API-key gate's 401/429, 413, 503); None when no route's path
    matches. Metrics and usage name requests by it: never the raw path."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", None) or ()
    full, partial = match_routes(routes, scope)
    path = getattr(full or partial, "path", None)
    return path if isinstance(path, str) else None


__all__ = ["PathIndex", "bind_instance", "index_routes", "install", "match_routes",
           "remember_route_names", "route_path"]
