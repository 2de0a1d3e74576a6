"""`GenerationService` routing (issue #16) without Ray or a gateway: a fake Generator handle,
a `ProviderRouter` of `local` (through `GenerationService.local_generate`, as the ingress wires
it) plus scripted remote providers. No remote configured → the Generator is called directly;
`model='peer/x'` and `provider=[...]` pin and order; an unknown provider is a 400 naming
`provider`; a failing local falls back to a remote with the attempts saying so; a
`RoutingError` becomes a 503 with Retry-After."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from graphs.errors import ApiError, to_api_error
from graphs.generation import GenerationService, Options, Route
from graphs.providers import ProviderRegistry
from providers import AllProvidersFailed, ProviderRouter, build_provider
from tests.providers.conftest import GENERATOR_INFO, ScriptedProvider, fail, fake_generator


class _Method:
    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def remote(self, *args):
        self.calls += 1
        return self.fn(*args)


class FakeGenerator:
    """The Generator deployment handle as the service uses it: `info.remote()`,
    `generate.remote(req)` (awaitables). `error`: raised by generate instead of answering."""

    def __init__(self, error: BaseException | None = None):
        self.requests: list[Any] = []
        self.error = error
        make = fake_generator(self.requests)

        async def generate(req):
            if self.error is not None:
                raise self.error
            return await make(req)

        async def info():
            return GENERATOR_INFO

        self.generate = _Method(generate)
        self.info = _Method(info)


class StaticRegistry:
    """A `ProviderRegistry` stand-in holding one router."""

    def __init__(self, router: ProviderRouter):
        self.current = router

    async def get(self, info):
        return self.current


class NoRecords:
    def list_provider_configs(self):
        return []


def service_with(*remotes: ScriptedProvider, error: BaseException | None = None
                 ) -> tuple[GenerationService, FakeGenerator]:
    generator = FakeGenerator(error)
    service = GenerationService(generator=generator, runner=None)
    local = build_provider("local", "local", {}, generate=service.local_generate,
                           info=GENERATOR_INFO)
    service.providers = StaticRegistry(ProviderRouter([local, *remotes]))
    return service, generator


def peer(name: str = "peer", **kwargs: Any) -> ScriptedProvider:
    return ScriptedProvider(name, models=["x"], priority=kwargs.pop("priority", 10), **kwargs)


async def _generate(service: GenerationService, opts: Options):
    info = await service.model_info()
    route = service.route(opts, info)
    req = service.build_request("a red fox", opts, info, route=route)
    return route, await service.run_request(req, route)


def generate(service: GenerationService, **opts: Any):
    return asyncio.run(_generate(service, Options(**opts)))


def test_no_remote_configured_calls_the_generator_directly():
    generator = FakeGenerator()
    service = GenerationService(generator=generator, runner=None,
                                providers=ProviderRegistry(records=NoRecords(),
                                                           generate=lambda req: None))
    route, out = generate(service, size="64x64")
    assert service.router.names == ["local"] and route.direct(service.router)
    # the registry's local provider (generate=lambda: None) was never used: a direct call
    assert generator.generate.calls == 1 and len(generator.requests) == 1
    assert out.provider == "local" and out.model == "tiny-sd"
    assert [a["provider"] for a in out.attempts] == ["local"]
    assert out.attempts[0]["outcome"] == "ok"
    # without any registry at all, the same
    bare = GenerationService(generator=FakeGenerator(), runner=None)
    _, out = generate(bare, size="64x64")
    assert out.provider == "local" and bare.generator.generate.calls == 1


def test_local_only_chain_is_direct_even_with_remotes():
    service, generator = service_with(peer())
    route, out = generate(service, provider=["local"], size="64x64")
    assert route == Route(chain=("local",), local=True, sized=True)
    assert route.direct(service.router) and out.provider == "local"
    assert service.router.get("peer").calls == 0 and generator.generate.calls == 1


def test_model_names_its_provider():
    service, generator = service_with(peer(), peer("other"))
    route, out = generate(service, model="peer/x")
    assert route == Route(chain=("peer",), model="x", local=False)
    assert out.provider == "peer" and [a["provider"] for a in out.attempts] == ["peer"]
    assert out.extra == {"provider_kind": "scripted"}
    assert generator.generate.calls == 0 and service.router.get("other").calls == 0
    # a model served by nobody is a 400 naming `model`
    with pytest.raises(ApiError) as err:
        generate(service, model="no-such-model")
    assert err.value.status == 400 and err.value.param == "model"
    assert err.value.code == "model_not_found" and "peer/x" in err.value.message


def test_provider_list_orders_the_chain():
    service, generator = service_with(peer("a", script=[fail("server_error")]), peer("b"))
    route, out = generate(service, provider=["a", "b", "a"], size="64x64")
    assert route.chain == ("a", "b") and route.local is False
    assert out.provider == "b"
    assert [(a["provider"], a["outcome"]) for a in out.attempts] == [
        ("a", "server_error"), ("b", "ok")]
    assert generator.generate.calls == 0
    # the chain wins over priorities: local (priority 0) is tried after b
    service, generator = service_with(peer("b", script=[fail("timeout")]))
    route, out = generate(service, provider=["b", "local"], size="64x64")
    assert route.local is True and out.provider == "local"
    assert [a["provider"] for a in out.attempts] == ["b", "local"]
    assert generator.generate.calls == 1  # local ran the request build_request made
    assert (generator.requests[0].width, generator.requests[0].height) == (64, 64)


@pytest.mark.parametrize("opts,param,code", [
    ({"provider": ["nope"]}, "provider", "provider_not_found"),
    ({"provider": ["peer", "nope"]}, "provider", "provider_not_found"),
    ({"model": "peer/x", "provider": ["local"]}, "model", "provider_mismatch"),
])
def test_bad_provider_is_a_400_naming_the_field(opts, param, code):
    service, generator = service_with(peer())
    with pytest.raises(ApiError) as err:
        generate(service, **opts)
    assert (err.value.status, err.value.param, err.value.code) == (400, param, code)
    assert generator.generate.calls == 0 and service.router.get("peer").calls == 0


def test_failing_local_falls_back_to_a_remote_in_the_default_order():
    # default order: local (priority 0) first, then peer (priority 10)
    service, generator = service_with(peer(), error=ConnectionError("replica gone"))
    route, out = generate(service, size="64x64")
    assert route.chain is None and not route.direct(service.router)
    assert generator.generate.calls == 1  # local was tried
    assert out.provider == "peer" and out.model == "peer-m"
    first, second = out.attempts
    assert first["provider"] == "local" and first["outcome"] == "server_error"
    assert "ConnectionError" in first["detail"]
    assert second["provider"] == "peer" and second["outcome"] == "ok"
    assert [img.shape for img in out.images] == [(64, 64, 3)]


def test_local_answers_first_when_healthy():
    service, generator = service_with(peer())
    _, out = generate(service, size="64x64", seed=7)
    assert out.provider == "local" and out.seeds == [7] and out.extra == {}
    assert service.router.get("peer").calls == 0 and generator.generate.calls == 1


def test_every_provider_failing_is_a_503_with_retry_after():
    service, generator = service_with(peer(default=fail("rate_limited", retry_after=7.2)),
                                      error=ConnectionError("replica gone"))
    with pytest.raises(AllProvidersFailed) as err:
        generate(service, size="64x64")
    assert [a.provider for a in err.value.attempts] == ["local", "peer"]
    api = to_api_error(err.value)
    assert api.status == 503 and api.code == "providers_unavailable"
    assert api.headers == {"Retry-After": "8"}
    assert "local" in api.message and "peer" in api.message
    body = api.response()
    assert body.status_code == 503 and body.headers["retry-after"] == "8"
