"""The studio: the web app's static files (``graphs/studio/static``), served by the ingress
at ``/studio/`` (``/`` redirects there). Plain ES modules, no build step and nothing fetched
from another origin at run time; every call the app makes goes through the public API with
the key the user typed (kept in ``sessionStorage``).

Its pages get a strict Content-Security-Policy (scripts, styles and connections from this
origin only, no inline script, images also from ``data:``/``blob:`` for previews). The
policy is set here, on the studio's answers only: the API docs page (/docs, Swagger UI from
its CDN) keeps working.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from graphs.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/studio"
CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob:",
    "connect-src 'self'",
    "font-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # revalidate every time (ETag from FileResponse): a new release is never half-cached
    "Cache-Control": "no-cache",
}
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
         ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".json": "application/json", ".txt": "text/plain; charset=utf-8"}


def is_public(path: str) -> bool:
    """The studio's files and the root redirect need no key (the app asks for one)."""
    return path == "/" or path == PREFIX or path.startswith(PREFIX + "/")


def resolve(path: str) -> Path | None:
    """The static file for a path under /studio/, or None (never a file outside the folder;
    unknown paths are a 404, not the app: the app's pages are #fragments)."""
    relative = path.strip("/") or "index.html"
    target = (STATIC_DIR / relative).resolve()
    if STATIC_DIR not in target.parents or not target.is_file():
        return None
    return target


def install(app: FastAPI) -> None:
    """Add the studio's routes (not in the OpenAPI document: they are not the API)."""

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse(PREFIX + "/", status_code=307)

    @app.get(PREFIX, include_in_schema=False)
    async def studio_bare() -> Response:
        return RedirectResponse(PREFIX + "/", status_code=307)

    @app.get(PREFIX + "/{path:path}", include_in_schema=False)
    async def studio(path: str, request: Request) -> Response:
        target = resolve(path)
        if target is None:
            raise ApiError(404, f"no studio file {path!r}", param="path", code="not_found")
        media = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] \
            or "application/octet-stream"
        return FileResponse(target, media_type=media, headers=HEADERS)
