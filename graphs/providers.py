"""The gateway's image providers (issue #16): the `ProviderRouter` an ingress replica routes
generator work through, built from the record store's provider configs plus `local` (the
Generator deployment, through the ingress's handle), and the config operations the
`/v1/providers` routes and `photostudio providers` share.

- `local` is always there (priority 0 by default: tried first). A config named `local` of kind
  `local` only changes its settings (priority, timeout, ...).
- Breakers are shared through the rate-limit store (`auth.quotas.storage_url`: Redis when
  redis://, this replica's memory when memory://), so every replica skips a failing backend.
- Reload: a change through this replica's routes rebuilds its router at once. Other replicas
  (and changes made with the CLI) notice within `reload_s` seconds: on the first request after
  that interval, a replica reads the configs' (name, kind, updated_at) and rebuilds when they
  differ from what it built from.
- Secrets are write-only: records keep them (`ProviderSettings.stored()`); every view here is
  `redacted()`, and validation messages never echo input values.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from graphs.errors import ApiError
from providers import KINDS, PROVIDER_KINDS, ProviderRouter, breaker_store, build_provider
from providers.config import check_name, parse_settings, safe_validation_message

logger = logging.getLogger("ray.serve")

LOCAL = "local"
DEFAULT_RELOAD_S = 10.0


def provider_configs(records: Any) -> list[Any]:
    """The record store's provider configs (other config kinds, e.g. the signing secret,
    share the table and are left out)."""
    return [c for c in records.list_provider_configs() if c.kind in KINDS]


def validate_config(name: str, kind: str, settings: dict[str, Any] | None) -> dict[str, Any]:
    """Check a provider config; its settings as the record store keeps them (secrets in).
    ApiError 400 naming the field (never echoing a value: it may be a key)."""
    try:
        check_name(name)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="name", code="invalid_name") from None
    if kind not in KINDS:
        raise ApiError(400, f"unknown provider kind {kind!r}; known kinds: "
                       f"{', '.join(PROVIDER_KINDS)}", param="kind", code="unknown_kind")
    if (kind == "local") != (name == LOCAL):
        raise ApiError(400, f"the name {LOCAL!r} is the built-in Generator (kind 'local') and "
                       "only it: give the provider another name or kind", param="name",
                       code="invalid_name")
    if not isinstance(settings, dict):
        raise ApiError(400, "settings must be a JSON object", param="settings",
                       code="invalid_settings")
    try:
        return parse_settings(kind, settings).stored()
    except ValidationError as exc:
        raise ApiError(400, f"invalid settings for a {kind} provider: "
                       f"{safe_validation_message(exc)}", param="settings",
                       code="invalid_settings") from None


def add_config(records: Any, *, name: str, kind: str, settings: dict[str, Any]) -> Any:
    stored = validate_config(name, kind, settings)
    return records.create_provider_config(name=name, kind=kind, settings=stored)


def update_config(records: Any, *, name: str, settings: dict[str, Any]) -> Any:
    """Merge `settings` into the stored ones (a secret left out keeps its value; null
    clears a field back to its default)."""
    current = records.get_provider_config(name=name)
    if current is None or current.kind not in KINDS:
        raise ApiError(404, f"no provider {name!r}", param="name", code="not_found")
    merged = {**current.settings, **settings}
    merged = {k: v for k, v in merged.items() if v is not None}
    stored = validate_config(name, current.kind, merged)
    try:
        return records.update_provider_config(name=name, settings=stored)
    except KeyError:
        raise ApiError(404, f"no provider {name!r}", param="name", code="not_found") from None


def remove_config(records: Any, *, name: str) -> bool:
    current = records.get_provider_config(name=name)
    if current is None or current.kind not in KINDS:
        return False
    return records.delete_provider_config(name=name)


def public_view(stats: dict[str, Any], *, admin: bool) -> dict[str, Any]:
    """A provider as GET /v1/providers shows it: no secrets ever; settings (redacted) only to
    admin keys (a base URL may be an internal address)."""
    keys = ("name", "kind", "priority", "weight", "models", "capabilities", "breaker",
            "window_s", "requests", "success_rate", "p50_latency_s", "ewma_latency_s")
    view = {k: stats.get(k) for k in keys}
    if admin:
        view["settings"] = stats.get("settings")
    return view


class ProviderRegistry:
    """One replica's router, rebuilt when the configs change (see the module doc)."""

    def __init__(self, *, records: Any, generate: Callable[[Any], Any],
                 breakers_url: str | None = None, reload_s: float = DEFAULT_RELOAD_S):
        self.records = records
        self._generate = generate
        self.breakers = breaker_store(breakers_url)  # shared by every rebuilt router
        self.reload_s = reload_s
        self._router: ProviderRouter | None = None
        self._fingerprint: tuple | None = None
        self._checked = float("-inf")
        self._info: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._retired: set[asyncio.Task] = set()

    @property
    def current(self) -> ProviderRouter | None:
        """The router last built (None before the first `get`)."""
        return self._router

    @property
    def local_only(self) -> bool:
        return self._router is None or self._router.names == [LOCAL]

    async def get(self, info: dict[str, Any]) -> ProviderRouter:
        """The router, rebuilt first when `reload_s` has passed and the configs changed."""
        self._info = info
        if self._router is None or time.monotonic() >= self._checked + self.reload_s:
            async with self._lock:
                if self._router is None or time.monotonic() >= self._checked + self.reload_s:
                    await self._refresh()
        return self._router

    async def reload(self) -> None:
        """Rebuild now (this replica changed a config)."""
        async with self._lock:
            self._fingerprint = None
            if self._info is not None:
                await self._refresh()

    async def _refresh(self) -> None:
        configs = await asyncio.to_thread(provider_configs, self.records)
        fingerprint = tuple(sorted((c.name, c.kind, c.updated_at.isoformat())
                                   for c in configs))
        if self._router is None or fingerprint != self._fingerprint:
            self._build(configs)
            self._fingerprint = fingerprint
        self._checked = time.monotonic()

    def _build(self, configs: list[Any]) -> None:
        local = next((c.settings for c in configs if c.name == LOCAL), {})
        providers = [build_provider("local", LOCAL, local, generate=self._generate,
                                    info=self._info)]
        for config in configs:
            if config.name == LOCAL:
                continue
            try:
                providers.append(build_provider(config.kind, config.name, config.settings))
            except ValueError as exc:  # names fields, never values
                logger.error("provider %r left out: %s", config.name, exc)
        old, self._router = self._router, ProviderRouter(providers, breakers=self.breakers)
        logger.info("providers: %s", ", ".join(self._router.names))
        if old is not None:  # close its clients once its in-flight calls had their time
            grace = max((old.get(n).settings.timeout_s for n in old.names), default=0)
            task = asyncio.get_running_loop().create_task(_close_later(old, grace))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)


async def _close_later(router: ProviderRouter, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    for name in router.names:
        await router.get(name).close()

