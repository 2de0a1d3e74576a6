"""`photostudio providers add|list|remove|test`: the image providers in the record store
(what GET/POST/PATCH/DELETE /v1/providers change), like `photostudio keys`.

    photostudio providers add rw --kind runware --api-key-env RUNWARE_API_KEY --set priority=10
    photostudio providers list
    photostudio providers test rw
    photostudio providers remove rw

Keys are never taken as arguments (shell history, `ps`): `--api-key-env VAR` or
`--api-key-stdin`. Nothing here prints a key. Running gateways pick changes up within their
`providers_reload_s` (10 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

# The gateway's and the providers' modules (~0.4 s: httpx, fastapi, pydantic models) are
# imported by the commands that use them, not here: every `photostudio` command builds this
# parser, and `photostudio serve` must not pay for them before it starts Ray.


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    pr = subparsers.add_parser("providers", help="image providers (local, OpenAI-compatible, "
                               "ComfyUI, Runware, Leonardo, Gemini, Imagen)")
    psub = pr.add_subparsers(dest="providers_command", required=True)
    pa = psub.add_parser("add", help="add a provider (its key is stored, never shown)")
    pa.add_argument("name")
    pa.add_argument("--kind", required=True,
                    help="local, openai, comfyui, runware, leonardo, gemini or imagen")
    pa.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a setting (VALUE as JSON when it parses, else a string); repeat")
    pa.add_argument("--settings-json", default=None, help="all settings as a JSON object")
    pa.add_argument("--api-key-env", default=None, metavar="VAR",
                    help="read the api_key from this environment variable")
    pa.add_argument("--api-key-stdin", action="store_true", help="read the api_key from stdin")
    pa.add_argument("--database-url", default=None)
    pa.set_defaults(func=_add)
    pl = psub.add_parser("list", help="list providers (never their keys)")
    pl.add_argument("--database-url", default=None)
    pl.set_defaults(func=_list)
    pd = psub.add_parser("remove", help="remove a provider")
    pd.add_argument("name")
    pd.add_argument("--database-url", default=None)
    pd.set_defaults(func=_remove)
    pt = psub.add_parser("test", help="one small generation on a provider; prints the outcome")
    pt.add_argument("name")
    pt.add_argument("--prompt", default="a red apple on a white table")
    pt.add_argument("--database-url", default=None)
    pt.set_defaults(func=_test)


def _records(ns: argparse.Namespace):
    from storage.config import StorageSettings
    from storage.records import RecordStore

    return RecordStore(ns.database_url or StorageSettings().resolved_database_url())


def _settings(ns: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if ns.settings_json:
        settings = json.loads(ns.settings_json)
        if not isinstance(settings, dict):
            raise ValueError("--settings-json must be a JSON object")
    for item in ns.set:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--set takes FIELD=VALUE, got {item.split('=')[0]!r}")
        try:
            settings[field] = json.loads(value)
        except ValueError:
            settings[field] = value
    if ns.api_key_env:
        if not os.environ.get(ns.api_key_env):
            raise ValueError(f"environment variable {ns.api_key_env} is not set")
        settings["api_key"] = os.environ[ns.api_key_env]
    elif ns.api_key_stdin:
        settings["api_key"] = sys.stdin.readline().strip()
    return settings


def _add(ns: argparse.Namespace) -> int:
    from graphs.errors import ApiError
    from graphs.providers import add_config
    from providers import PROVIDER_KINDS

    if ns.kind not in PROVIDER_KINDS:
        print(f"error: --kind must be one of {', '.join(PROVIDER_KINDS)}; got {ns.kind!r}",
              file=sys.stderr)
        return 2
    try:
        settings = _settings(ns)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    records = _records(ns)
    try:
        add_config(records, name=ns.name, kind=ns.kind, settings=settings)
    except (ApiError, ValueError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    finally:
        records.close()
    print(f"added {ns.kind} provider {ns.name!r}")
    return 0


def _list(ns: argparse.Namespace) -> int:
    from graphs.providers import LOCAL, provider_configs
    from providers import parse_settings

    records = _records(ns)
    try:
        configs = provider_configs(records)
    finally:
        records.close()
    if not any(c.name == LOCAL for c in configs):
        print(f"{LOCAL}  kind=local  priority=0  (built in: the Generator deployment)")
    for config in configs:
        try:
            view = parse_settings(config.kind, config.settings).redacted()
        except ValueError:
            print(f"{config.name}  kind={config.kind}  INVALID settings (fix or remove)")
            continue
        shown = {k: v for k, v in view.items() if k in ("base_url", "models", "timeout_s")}
        print(f"{config.name}  kind={config.kind}  priority={view['priority']}  "
              f"weight={view['weight']}  {json.dumps(shown)}  "
              f"updated {config.updated_at.isoformat()}")
    print(f"{len(configs)} configured provider(s)", file=sys.stderr)
    return 0


def _remove(ns: argparse.Namespace) -> int:
    from graphs.providers import remove_config

    records = _records(ns)
    try:
        removed = remove_config(records, name=ns.name)
    finally:
        records.close()
    if not removed:
        print(f"error: no provider {ns.name!r}", file=sys.stderr)
        return 1
    print(f"removed provider {ns.name!r}")
    return 0


def _test(ns: argparse.Namespace) -> int:
    from graphs.providers import provider_configs

    records = _records(ns)
    try:
        config = next((c for c in provider_configs(records) if c.name == ns.name), None)
    finally:
        records.close()
    if config is None:
        print(f"error: no provider {ns.name!r}", file=sys.stderr)
        return 1
    if config.kind == "local":
        print("error: the local provider runs inside the gateway: test it with a request "
              "(POST /v1/images/generations with provider=local)", file=sys.stderr)
        return 2
    return asyncio.run(_probe(config, ns.prompt))


async def _probe(config: Any, prompt: str) -> int:
    from providers import ProviderError, ProviderRequest, build_provider

    try:
        provider = build_provider(config.kind, config.name, config.settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        images = await asyncio.wait_for(provider.run(ProviderRequest(prompt=prompt)),
                                        provider.settings.timeout_s)
    except ProviderError as exc:
        print(f"{config.name}: {exc.outcome} after {time.perf_counter() - started:.2f} s: "
              f"{exc.message}")
        return 1
    except asyncio.TimeoutError:
        print(f"{config.name}: timeout after {provider.settings.timeout_s:g} s")
        return 1
    finally:
        await provider.close()
    first = images[0] if images else None
    size = f"{first.width}x{first.height}" if first is not None else "-"
    print(f"{config.name}: ok in {time.perf_counter() - started:.2f} s, {len(images)} "
          f"image(s), {size}")
    return 0 if images else 1
