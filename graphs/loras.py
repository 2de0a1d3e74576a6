"""Registered LoRA adapters: POST /v1/models/loras, DELETE /v1/models/loras/{name}, and the
catalogue entries they add (GET /v1/models?kind=lora, `loras` on generations).

A registration (`LoraService.register_lora`, which the route and server-side callers such
as a training job use alike):

1. the name is checked (catalogue-safe, not a built-in's, not taken);
2. the bytes are read as safetensors (pickle refused before a byte is unpickled: it runs code;
   `models.lora.parse_lora_bytes`) and checked where the base model lives: the Generator
   loads it onto its pipeline under a scratch name and removes it again
   (`Generator.check_lora`): every LoRA layer must land on the base (wrong base, other keys
   or shapes → 400 naming why);
3. the file goes to the asset store (any backend) at
   ``{project}/loras/{yyyy}/{mm}/{name}-{sha256[:12]}.safetensors``, then one row in the
   record store (`loras` table) — the file first, so a row never points at nothing; a failed
   row write removes the file again.

Generator replicas fetch a registered file from the asset store into a local cache on first
use (keyed by its SHA-256; deployments/generator.py). Every ingress replica reads the record
store (cached `CACHE_TTL_S`), so a registration or deletion is seen everywhere within that,
and at once on the replica that made it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from graphs.errors import ApiError
from models.lora import check_lora_filename, check_lora_name, parse_lora_bytes
from models.registry import MODELS, ModelSpec, catalogue, close_matches
from storage.assets import AssetNotFound, asset_key
from storage.records import LoraRecord

logger = logging.getLogger("ray.serve")

CACHE_TTL_S = 2.0  # registered LoRAs are re-read from the record store this often per replica
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
CONTENT_TYPE = "application/octet-stream"

# (bytes, base model name) -> what the base's generator found: {"layers", "rank", ...};
# raises ValueError saying why the file does not load onto the base.
Validate = Callable[[bytes, str], Awaitable[dict[str, Any]]]


def lora_spec(record: LoraRecord) -> ModelSpec:
    """The catalogue entry of a registered LoRA (like the built-in ones)."""
    return ModelSpec(name=record.name, kind="lora", source=f"asset:{record.key}",
                     description=record.description or "", base=record.base,
                     size=_size(record.size_bytes), tags=tuple(record.tags),
                     trigger_words=tuple(record.trigger_words),
                     default_weight=record.default_weight, preview_asset=record.preview_asset)


def _size(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 100 * 1024 else f"{size / 1024:.0f} KB"


class LoraService:
    """Registered LoRAs of one gateway. `validate`: loads a file onto a base model where it
    lives (the Generator's `check_lora`); `served_base`: () -> awaitable name of the base
    model the Generator serves; `import_dirs`: folders `path` registrations may read from."""

    def __init__(self, *, records: Any, assets: Any, validate: Validate,
                 served_base: Callable[[], Awaitable[str]],
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 import_dirs: Sequence[str | Path] = ()):
        self.records = records
        self.assets = assets
        self.validate = validate
        self.served_base = served_base
        self.max_bytes = max_bytes
        self.import_dirs = [Path(d).expanduser().resolve() for d in import_dirs]
        self._cache: dict[str, LoraRecord] = {}
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()

    # -- reading -----------------------------------------------------------------------------
    async def refresh(self, *, force: bool = False) -> dict[str, LoraRecord]:
        """The registered LoRAs by name, re-read when older than `CACHE_TTL_S`."""
        if force or time.monotonic() - self._loaded_at > CACHE_TTL_S:
            async with self._lock:
                if force or time.monotonic() - self._loaded_at > CACHE_TTL_S:
                    rows = await asyncio.to_thread(self.records.list_loras)
                    self._cache = {r.name: r for r in rows}
                    self._loaded_at = time.monotonic()
        return self._cache

    def cached(self) -> dict[str, LoraRecord]:
        """The registered LoRAs as last read (`refresh` keeps it current)."""
        return self._cache

    def specs(self, base: str) -> dict[str, ModelSpec]:
        """Registered LoRAs fitting `base`, as catalogue entries (from the cache)."""
        return {r.name: lora_spec(r) for r in self._cache.values() if r.base == base}

    # -- registering -------------------------------------------------------------------------
    async def register_lora(self, *, name: str, data: bytes, project: str,
                            base: str | None = None, filename: str = "lora.safetensors",
                            meta: dict[str, Any] | None = None,
                            trigger_words: Sequence[str] = (), tags: Sequence[str] = (),
                            default_weight: float = 1.0, description: str = "",
                            preview_asset: str | None = None,
                            created_by: str | None = None) -> LoraRecord:
        """Check, store and record one LoRA; the server-side way to register (a training job
        calls this with its result). `ApiError` (400/409/413) saying what is wrong."""
        base = await self.check_new(name, base)
        if len(data) > self.max_bytes:
            raise ApiError(413, f"the LoRA file is {len(data)} bytes; the limit is "
                           f"{self.max_bytes} bytes", param="file", code="file_too_large")
        try:
            check_lora_filename(filename)
            await asyncio.to_thread(parse_lora_bytes, data, filename)  # cheap checks first
        except ValueError as exc:
            raise ApiError(400, str(exc), param="file", code="invalid_lora") from None
        try:
            found = await self.validate(data, base)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="file", code="lora_does_not_fit") from None
        sha = hashlib.sha256(data).hexdigest()
        key = asset_key(project=project, kind="loras", asset_id=f"{name}-{sha[:12]}",
                        ext="safetensors")
        await asyncio.to_thread(self.assets.put, key=key, data=data, content_type=CONTENT_TYPE)
        try:
            record = await asyncio.to_thread(
                self.records.create_lora, name=name, base=base, store=self.assets.name,
                key=key, sha256=sha, size_bytes=len(data), rank=int(found.get("rank") or 0),
                project=project, description=description or None,
                trigger_words=list(trigger_words), tags=list(tags),
                default_weight=float(default_weight), preview_asset=preview_asset,
                meta=dict(meta or {}), created_by=created_by)
        except BaseException:
            await asyncio.to_thread(self.assets.delete, key=key)  # no file without a row
            raise
        await self.refresh(force=True)
        logger.info("registered LoRA %r for %r (%d bytes, rank %s, %s)", name, base, len(data),
                    record.rank, key)
        return record

    async def check_new(self, name: str, base: str | None) -> str:
        """400/409 unless `name` can be registered; the base model it will fit (default:
        the served one, which is the only one a registration can be checked against)."""
        try:
            check_lora_name(name)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="name", code="invalid_name") from None
        if name in MODELS:
            raise ApiError(409, f"{name!r} is a built-in {MODELS[name].kind} model's name: "
                           "pick another name", param="name", code="exists")
        served = await self.served_base()
        base = base or served
        if base not in MODELS or MODELS[base].kind != "base":
            bases = [s.name for s in catalogue("base")]
            near = close_matches(base, bases)
            raise ApiError(400, f"unknown base model {base!r}" + (
                f"; did you mean {', '.join(near)}?" if near else "")
                + f"; base models: {', '.join(bases)}", param="base", code="invalid_base")
        if base != served:
            raise ApiError(400, f"base {base!r} is not served here (the generator serves "
                           f"{served!r}): a LoRA is checked by loading it onto its base "
                           f"model, so register it where {base!r} is deployed, or for "
                           f"{served!r}", param="base", code="base_not_served")
        if name in await self.refresh(force=True):
            raise ApiError(409, f"a LoRA named {name!r} is already registered: pick another "
                           "name, or delete it first (DELETE /v1/models/loras/{name})",
                           param="name", code="exists")
        return base

    async def read_asset(self, asset_id: str, *, project: str) -> tuple[bytes, str]:
        """(bytes, file name) of an asset of `project` holding a LoRA."""
        record = await asyncio.to_thread(self.records.get_asset, asset_id=asset_id,
                                         project=project)
        if record is None:
            raise ApiError(404, f"no asset {asset_id!r} in this project", param="asset_id",
                           code="asset_not_found")
        filename = Path(record.key).name
        try:
            check_lora_filename(filename)
        except ValueError as exc:
            raise ApiError(400, f"asset {asset_id!r}: {exc}", param="asset_id",
                           code="invalid_lora") from None
        if record.size_bytes > self.max_bytes:
            raise ApiError(413, f"asset {asset_id!r} is {record.size_bytes} bytes; the LoRA "
                           f"limit is {self.max_bytes} bytes", param="asset_id",
                           code="file_too_large")
        if record.store != self.assets.name:
            raise ApiError(400, f"asset {asset_id!r} lives in the {record.store!r} store, "
                           f"not in this gateway's {self.assets.name!r}", param="asset_id")
        try:
            data = await asyncio.to_thread(self.assets.get, key=record.key)
        except AssetNotFound:
            raise ApiError(404, f"asset {asset_id!r} has no stored file", param="asset_id",
                           code="asset_not_found") from None
        return data, filename

    async def read_path(self, path: str) -> tuple[bytes, str]:
        """(bytes, file name) of a .safetensors file under one of `import_dirs` (the caller
        must be admin: checked by the route)."""
        if not self.import_dirs:
            raise ApiError(400, "registering from a server path is off: no import folders "
                           "are configured (lora_import_dirs)", param="path",
                           code="path_not_allowed")
        try:  # symlinks and '..' resolved first
            resolved = Path(path).expanduser().resolve()
        except (ValueError, RuntimeError, OSError) as exc:  # NUL byte, ~nobody, a loop...
            raise ApiError(400, f"path {path[:200]!r} is not a usable file path: {exc}",
                           param="path", code="path_not_allowed") from None
        if not any(resolved.is_relative_to(d) for d in self.import_dirs):
            raise ApiError(400, f"path {path!r} is outside the LoRA import folders "
                           f"({', '.join(map(str, self.import_dirs))})", param="path",
                           code="path_not_allowed")
        try:
            check_lora_filename(resolved.name)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="path", code="invalid_lora") from None
        try:
            if not resolved.is_file():
                raise ApiError(400, f"no file at {path!r}", param="path",
                               code="file_not_found")
            size = resolved.stat().st_size
            if size > self.max_bytes:
                raise ApiError(413, f"{resolved.name} is {size} bytes; the LoRA limit is "
                               f"{self.max_bytes} bytes", param="path", code="file_too_large")
            return await asyncio.to_thread(resolved.read_bytes), resolved.name
        except OSError as exc:  # a name too long, no permission...
            raise ApiError(400, f"cannot read {path!r}: {exc.strerror or exc}", param="path",
                           code="file_not_found") from None

    # -- deleting ----------------------------------------------------------------------------
    async def delete_lora(self, name: str, *, project: str, admin: bool) -> None:
        """Remove a registered LoRA: its row, then its file. Built-ins: 400. A LoRA of another
        project: only admin keys (404 otherwise, as for anything of another project)."""
        if name in MODELS:
            raise ApiError(400, f"{name!r} is a built-in {MODELS[name].kind} model: only "
                           "registered LoRAs can be deleted", param="name",
                           code="builtin_model")
        record = await asyncio.to_thread(self.records.get_lora, name=name)
        if record is None or (record.project != project and not admin):
            near = close_matches(name, (await self.refresh(force=True)).keys())
            raise ApiError(404, f"no registered LoRA {name!r}" + (
                f"; did you mean {', '.join(near)}?" if near else "")
                + " (GET /v1/models?kind=lora)", param="name", code="model_not_found")
        await asyncio.to_thread(self.records.delete_lora, name=name)
        try:
            if record.store == self.assets.name:
                await asyncio.to_thread(self.assets.delete, key=record.key)
            else:
                logger.warning("LoRA %r: its file lives in the %r store, not %r: left there",
                               name, record.store, self.assets.name)
        finally:
            await self.refresh(force=True)
        logger.info("deleted LoRA %r (%s)", name, record.key)


def card_fields(record: LoraRecord) -> dict[str, Any]:
    """The registered-LoRA fields of a model card (GET /v1/models)."""
    return {"registered": True, "rank": record.rank, "size_bytes": record.size_bytes,
            "sha256": record.sha256, "meta": record.meta, "owned_by": record.project,
            "created": int(record.created_at.timestamp())}
