from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from storage.assets import AssetNotFound, LocalAssetStore, asset_key


def test_key_layout():
    when = datetime(2026, 3, 9, tzinfo=timezone.utc)
    assert asset_key(project="p1", kind="generations", asset_id="img_1", ext="png",
                     when=when) == "p1/generations/2026/03/img_1.png"


def test_put_get_delete(tmp_path):
    store = LocalAssetStore(tmp_path)
    store.put(key="p/k/2026/01/a.png", data=b"abc", content_type="image/png")
    assert store.get(key="p/k/2026/01/a.png") == b"abc"
    assert store.url(key="p/k/2026/01/a.png", expires_in=60) is None  # served by the gateway
    store.delete(key="p/k/2026/01/a.png")
    with pytest.raises(AssetNotFound):
        store.get(key="p/k/2026/01/a.png")


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    store = LocalAssetStore(tmp_path)
    store.put(key="a/b.png", data=b"old", content_type="image/png")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(key="a/b.png", data=b"new", content_type="image/png")
    with pytest.raises(OSError):
        store.put(key="a/c.png", data=b"new", content_type="image/png")
    monkeypatch.undo()
    assert store.get(key="a/b.png") == b"old"  # the old asset is intact, never half-new
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.png"]  # no temp files


def test_keys_cannot_escape_the_root(tmp_path):
    store = LocalAssetStore(tmp_path / "root")
    with pytest.raises(ValueError, match="escapes"):
        store.put(key="../evil.png", data=b"x", content_type="image/png")
