"""Asset stores: where image bytes live. Writes are all-or-nothing.

Keys are laid out ``{project}/{kind}/{yyyy}/{mm}/{id}.{ext}`` (see `asset_key`).
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol


def asset_key(*, project: str, kind: str, asset_id: str, ext: str,
              when: datetime | None = None) -> str:
    when = when or datetime.now(timezone.utc)
    return f"{project}/{kind}/{when:%Y}/{when:%m}/{asset_id}.{ext}"


class AssetNotFound(KeyError):
    pass


class AssetStore(Protocol):
    """Bytes by key. `url` returns a direct (e.g. presigned) URL, or None when the gateway
    must serve the bytes itself through ``GET /v1/assets/{id}``."""

    name: str

    def put(self, *, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, *, key: str) -> bytes: ...

    def delete(self, *, key: str) -> None: ...

    def url(self, *, key: str, expires_in: int) -> str | None: ...


class LocalAssetStore:
    """Files under a root folder; atomic writes (temp file in the same folder + rename)."""

    name = "local"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

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

    def url(self, *, key: str, expires_in: int) -> str | None:
        return None
