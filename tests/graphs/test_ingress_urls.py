"""`Ingress._base_url`: the base of the URLs in responses, memoized per (scheme, server,
root path, Host) — each combination still gets its own URL."""

from __future__ import annotations

from types import SimpleNamespace

from starlette.requests import Request

from graphs.ingress import Ingress


def _request(host: str, scheme: str = "http", root_path: str = "") -> Request:
    return Request({"type": "http", "scheme": scheme, "server": ("10.0.0.5", 8000),
                    "path": "/v1/chat", "root_path": root_path, "query_string": b"",
                    "headers": [(b"host", host.encode())]})


def _ingress(public_base_url: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(public_base_url=public_base_url),
                           _base_urls={})


def test_each_host_scheme_and_root_path_gets_its_own_base_url():
    ingress = _ingress()
    base_url = Ingress.func_or_class._base_url
    assert base_url(ingress, _request("localhost:8000")) == "http://localhost:8000/"
    assert base_url(ingress, _request("studio.example.com")) == "http://studio.example.com/"
    assert base_url(ingress, _request("studio.example.com", scheme="https")) == \
        "https://studio.example.com/"
    assert base_url(ingress, _request("studio.example.com", root_path="/gw")) == \
        "http://studio.example.com/gw/"
    # asked again: the same answers, from the memo
    assert base_url(ingress, _request("localhost:8000")) == "http://localhost:8000/"
    assert len(ingress._base_urls) == 4


def test_a_configured_public_base_url_wins():
    ingress = _ingress("https://photos.example.com/api")
    assert Ingress.func_or_class._base_url(ingress, _request("localhost:8000")) == \
        "https://photos.example.com/api"
    assert ingress._base_urls == {}
