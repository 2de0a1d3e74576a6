"""The local profile falls back to tiny weights loudly: capabilities and response metadata."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
def fallback_app(gateway, zoo_dir, tmp_path_factory):
    from ray import serve

    from graphs.app import AppArgs, build_app

    args = AppArgs(profile="local", generator_model="sd15",
                   generator_source="nobody/weights-not-here", zoo_dir=str(zoo_dir),
                   data_dir=str(tmp_path_factory.mktemp("fallback-data")),
                   auth_enabled=False)  # explicit: allowed for the local profile
    serve.run(build_app(args), name="local-fallback", route_prefix="/local")
    yield f"{gateway.base_url}/local"
    serve.delete("local-fallback")


def test_capabilities_say_fallback(fallback_app):
    caps = httpx.get(f"{fallback_app}/v1/capabilities", timeout=30).json()
    gen = caps["deployments"]["generator"]
    assert caps["profile"] == "local"
    assert gen["fallback"] is True and gen["tiny"] is True and gen["name"] == "tiny-sd"
    assert "weights-not-here" in gen["fallback_reason"]
    assert any("fell back" in w for w in caps["warnings"])


def test_responses_say_fallback(fallback_app):
    r = httpx.post(f"{fallback_app}/v1/images/generations",
                   json={"prompt": "a cat", "size": "64x64"}, timeout=120)
    assert r.status_code == 200, r.text
    meta = r.json()["metadata"]
    assert meta["fallback"] is True and meta["model"] == "tiny-sd"
    assert "weights-not-here" in meta["fallback_reason"]
