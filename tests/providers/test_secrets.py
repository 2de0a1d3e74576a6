"""Secrets: with every provider kind configured with a key and every backend echoing that key
back in its errors, no log line (all loggers at DEBUG, httpx/openai included), no error
message, no attempt detail, no stats or redacted view contains it."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from providers import (
    AllProvidersFailed,
    MemoryBreakerStore,
    ProviderRequest,
    ProviderRouter,
    build_provider,
)
from tests.providers.fake_comfyui import FakeComfyUI
from tests.providers.fake_openai import FakeOpenAI
from tests.providers.servers import LiveServer

KEYS = {kind: f"{kind}-SECRET-{i}-7f3a9c2e1b" for i, kind in
        enumerate(["openai", "comfyui", "runware", "leonardo", "gemini", "imagen"])}


def echoing(request: httpx.Request) -> httpx.Response:
    """A hosted API that repeats whatever credentials it was sent in its error message."""
    sent = " ".join(request.headers.get(h, "") for h in ("authorization", "x-goog-api-key"))
    url = str(request.url)
    if "runware" in url:
        return httpx.Response(500, json={"data": [], "errors": [
            {"code": "unexpectedError", "message": f"failed for {sent}"}]})
    if "leonardo" in url:
        return httpx.Response(500, json={"error": f"failed for {sent}", "path": "$",
                                         "code": "unexpected"})
    return httpx.Response(500, json={"error": {"code": 500, "message": f"failed for {sent}",
                                               "status": "INTERNAL"}})


@pytest.fixture
def servers():
    openai_fake = FakeOpenAI(api_key="the-server-wants-another-key")
    comfy_fake = FakeComfyUI(api_key="the-server-wants-another-key")
    with LiveServer(openai_fake.app) as oa, LiveServer(comfy_fake.app) as comfy:
        yield oa.url, comfy.url


def test_no_key_in_logs_errors_attempts_or_stats(servers, caplog):
    openai_url, comfy_url = servers
    transport = httpx.MockTransport(echoing)
    providers = [
        build_provider("openai", "openai", {"base_url": f"{openai_url}/v1",
                                            "api_key": KEYS["openai"], "priority": 0}),
        build_provider("comfyui", "comfyui", {"base_url": comfy_url,
                                              "api_key": KEYS["comfyui"], "priority": 1}),
        build_provider("runware", "runware", {"api_key": KEYS["runware"], "priority": 2,
                                              "retries": 0}, transport=transport),
        build_provider("leonardo", "leonardo", {"api_key": KEYS["leonardo"], "priority": 3},
                       transport=transport),
        build_provider("gemini", "gemini", {"api_key": KEYS["gemini"], "priority": 4},
                       transport=transport),
        build_provider("imagen", "imagen", {"api_key": KEYS["imagen"], "priority": 5},
                       transport=transport),
    ]

    async def go():
        router = ProviderRouter(providers, breakers=MemoryBreakerStore())
        with pytest.raises(AllProvidersFailed) as info:
            await router.generate(ProviderRequest(prompt="x", width=1024, height=1024))
        stats = await router.stats()
        await router.close()
        return info.value, stats

    with caplog.at_level(logging.DEBUG):
        error, stats = run(go())

    assert [a.provider for a in error.attempts] == list(KEYS)  # each was really called
    texts = {
        "logs": caplog.text + "\n".join(str(r.args) for r in caplog.records),
        "error": str(error) + json.dumps(error.metadata()),
        "stats": json.dumps(stats),
        "redacted": json.dumps([p.settings.redacted() for p in providers]),
        "reprs": " ".join(repr(p) + repr(p.settings) + str(p.settings) for p in providers),
    }
    for where, text in texts.items():
        for kind, key in KEYS.items():
            assert key not in text, f"{kind}'s key appears in {where}"
    # the backends did echo it: the scrubbing is what kept it out
    assert "failed for Bearer ***" in texts["error"]
    assert all(s["settings"].get("api_key") == "***" for s in stats)


def run(coro):
    return asyncio.run(coro)
