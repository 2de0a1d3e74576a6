"""The local profile falls back to tiny weights loudly: capabilities and response metadata.
On the package's `local_gateway` (tests/graphs/conftest.py: a graph of its own, so slow)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def fallback_app(local_gateway) -> str:
    return local_gateway.base_url


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
