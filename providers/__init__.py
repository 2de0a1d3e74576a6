"""Remote and local image backends behind one async interface, and the router that picks,
falls back and keeps circuit breakers (issue #16). No Ray, no FastAPI, nothing from graphs/.

    from providers import ProviderRequest, ProviderRouter, build_provider, breaker_store

    router = ProviderRouter(
        [build_provider("local", "local", {}, generate=generate, info=info),
         build_provider("runware", "runware", {"api_key": key, "priority": 10})],
        breakers=breaker_store("redis://127.0.0.1:6379/0"))
    result = await router.generate(ProviderRequest(prompt="a red fox", n=2))
    result.images, result.metadata()  # provider, model, attempts (provider, outcome, seconds)
"""

from providers.base import (
    OUTCOMES,
    Capabilities,
    Provider,
    ProviderError,
    ProviderImage,
    ProviderRequest,
)
from providers.breaker import (
    BreakerConfig,
    MemoryBreakerStore,
    RedisBreakerStore,
    breaker_store,
)
from providers.config import (
    KINDS,
    PROVIDER_KINDS,
    ProviderSettings,
    build_provider,
    parse_model_name,
    parse_settings,
)
from providers.router import (
    AllProvidersFailed,
    Attempt,
    NoCapableProvider,
    ProviderRouter,
    RequestRejected,
    RouteResult,
    RoutingError,
    Skip,
    UnknownProvider,
)

__all__ = [
    "KINDS", "OUTCOMES", "PROVIDER_KINDS", "AllProvidersFailed", "Attempt", "BreakerConfig",
    "Capabilities", "MemoryBreakerStore", "NoCapableProvider", "Provider", "ProviderError",
    "ProviderImage", "ProviderRequest", "ProviderRouter", "ProviderSettings", "RedisBreakerStore",
    "RequestRejected", "RouteResult", "RoutingError", "Skip", "UnknownProvider",
    "breaker_store", "build_provider", "parse_model_name", "parse_settings",
]
