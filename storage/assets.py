"""Asset stores: where image bytes live. Writes are all-or-nothing.

Keys are laid out ``{project}/{kind}/{yyyy}/{mm}/{id}.{ext}`` (see `asset_key`); images a
remote provider made: ``{project}/{provider}/{kind}/{yyyy}/{mm}/{id}.{ext}``.

- `LocalAssetStore` (default): files under a folder; the gateway serves them itself through
  ``GET /v1/assets/{id}`` (`url` returns None).
- `storage.s3.S3AssetStore`: S3 through boto3 (AWS, MinIO, Cloudflare R2 — any endpoint URL),
  presigned GET URLs; `storage.s3.SupabaseAssetStore`: Supabase Storage through its
  S3-compatible endpoint (same code path).

`storage.config.build_asset_store(kind, **settings)` builds one from configuration (it
imports both modules; `storage.s3` imports this one, never the reverse).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def asset_key(*, project: str, kind: str, asset_id: str, ext: str,
              when: datetime | None = None, provider: str | None = None) -> str:
    """`provider`: the remote provider that made the image (a key segment of its own)."""
    when = when or datetime.now(timezone.utc)
    prefix = f"{project}/{provider}" if provider else project
    return f"{prefix}/{kind}/{when:%Y}/{when:%m}/{asset_id}.{ext}"


class AssetNotFound(KeyError):
    pass


class AssetStoreError(Exception):
    """The store could not complete an operation (after its retries)."""


class AssetWriteError(AssetStoreError):
    """An upload failed after bounded retries; nothing was left at the key."""

    def __init__(self, message: str, *, key: str, attempts: int):
        super().__init__(message)
        self.key = key
        self.attempts = attempts


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class GaveUp(Exception):
    """Every attempt of `with_retries` failed (or the first failed with a permanent error)."""

    def __init__(self, cause: BaseException, attempts: int):
        super().__init__(str(cause))
        self.cause = cause
        self.attempts = attempts


def with_retries(call: Callable[[], T], *, what: str, key: str,
                 is_retryable: Callable[[BaseException], bool], max_attempts: int,
                 initial_s: float, max_s: float, log: logging.Logger = logger) -> T:
    """`call()` with bounded retries of transient errors (exponential back-off, capped, plus
    jitter so that replicas don't retry in lockstep); any failure → `GaveUp`. The one retry
    policy of the remote stores (S3/Supabase, Azure): their SDKs' own retries are off, so the
    policy is this one, visible and testable."""
    from tenacity import (
        RetryError,
        Retrying,
        retry_if_exception,
        stop_after_attempt,
        wait_exponential,
        wait_random,
    )

    def log_retry(state) -> None:
        log.warning("%s of asset %r failed (attempt %d of %d), retrying: %s", what, key,
                    state.attempt_number, max_attempts,
                    describe_error(state.outcome.exception()))

    retrying = Retrying(
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential(multiplier=initial_s, max=max_s) + wait_random(0, initial_s),
        retry=retry_if_exception(is_retryable),
        before_sleep=log_retry,
    )
    try:
        return retrying(call)
    except RetryError as err:  # every attempt failed with a transient error
        raise GaveUp(err.last_attempt.exception(), err.last_attempt.attempt_number) from None
    except Exception as exc:  # not transient: no point in retrying
        raise GaveUp(exc, retrying.statistics.get("attempt_number", 1)) from None


class AssetStore(Protocol):
    """Bytes by key. `url` returns a direct (e.g. presigned) URL, or None when the gateway
    must serve the bytes itself through ``GET /v1/assets/{id}``."""

    name: str

    def put(self, *, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, *, key: str) -> bytes: ...

    def delete(self, *, key: str) -> None: ...

    def url(self, *, key: str, expires_in: int | None = None) -> str | None: ...


class LocalAssetStore:
    """Files under a root folder; atomic writes (temp file in the same folder + rename)."""

    name = "local"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalAssetStore(root={str(self.root)!r})"

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"asset key {key!r} escapes the store root")
        return path

    def put(self, *, key: str, data: bytes, content_type: str) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, *, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise AssetNotFound(key) from None

    def delete(self, *, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def url(self, *, key: str, expires_in: int | None = None) -> str | None:
        return None

