"""The asset-store contract: what the gateway relies on from every store, run against each
one for real — local disk, S3 (moto's server over HTTP), and Azure Blob (Azurite over HTTP)
with each of its three credential kinds (account key, connection string, SAS)."""

from __future__ import annotations

import concurrent.futures
from datetime import timedelta

import httpx
import pytest

from storage.assets import AssetNotFound, LocalAssetStore, asset_key
from tests.storage.conftest import make_azure_store, make_s3_store

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
KEY = "proj/generations/2026/12/img_contract.png"


@pytest.fixture(params=["local", "s3", "azure-key", "azure-connection-string", "azure-sas"])
def store(request, tmp_path):
    kind = request.param
    if kind == "local":
        return LocalAssetStore(tmp_path / "assets")
    if kind == "s3":
        return make_s3_store(request.getfixturevalue("s3_endpoint"))
    azurite = request.getfixturevalue("azurite")
    # small blocks: every multi-kilobyte asset is several staged blocks on Azure
    return make_azure_store(azurite, auth=kind.removeprefix("azure-").replace("-", "_"),
                            block_bytes=4096)


def test_put_get_overwrite_delete(store):
    store.put(key=KEY, data=PNG, content_type="image/png")
    assert store.get(key=KEY) == PNG
    store.put(key=KEY, data=b"new bytes", content_type="image/png")  # replaced as a whole
    assert store.get(key=KEY) == b"new bytes"
    store.delete(key=KEY)
    store.delete(key=KEY)  # idempotent
    with pytest.raises(AssetNotFound):
        store.get(key=KEY)


def test_missing_key_is_asset_not_found(store):
    with pytest.raises(AssetNotFound):
        store.get(key="proj/generations/2026/12/never.png")


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 4096 + 17])
def test_sizes_round_trip_exactly(store, size):
    data = bytes((i * 7) % 251 for i in range(size))
    key = f"proj/uploads/2026/12/sized_{size}.bin"
    store.put(key=key, data=data, content_type="application/octet-stream")
    assert store.get(key=key) == data


def test_keys_that_escape_or_are_malformed_are_refused(store):
    for bad in ("../evil.png", "a/../../evil.png"):
        with pytest.raises(ValueError):
            store.put(key=bad, data=b"x", content_type="image/png")


def test_url_is_none_or_a_credential_free_link_to_the_bytes(store):
    store.put(key=KEY, data=PNG, content_type="image/png")
    url = store.url(key=KEY, expires_in=300)
    if url is None:  # the gateway serves the bytes itself (local disk, Azure with a SAS)
        assert store.name in ("local", "azure")
        return
    r = httpx.get(url, timeout=10)  # no credentials: the URL carries them
    assert r.status_code == 200 and r.content == PNG
    assert r.headers["content-type"] == "image/png"
    with pytest.raises(ValueError, match="expires_in must be an integer"):
        store.url(key=KEY, expires_in=0)


def test_video_and_image_keys_both_round_trip(store):
    video = "proj/videos/2026/12/vid_1.mp4"
    store.put(key=video, data=b"\x00\x00\x00\x18ftypmp42", content_type="video/mp4")
    store.put(key=KEY, data=PNG, content_type="image/png")
    assert store.get(key=video).startswith(b"\x00\x00\x00\x18ftyp")
    assert store.get(key=KEY) == PNG


def test_concurrent_writers_of_different_keys(store):
    keys = [asset_key(project="proj", kind="generations", asset_id=f"img_{i}", ext="png")
            for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: store.put(key=k, data=k.encode() * 50,
                                          content_type="image/png"), keys))
    assert all(store.get(key=k) == k.encode() * 50 for k in keys)


def test_cleanup_deletes_old_assets_and_their_records(store, tmp_path):
    """`photostudio storage cleanup` against this store: the object, then its record."""
    from storage.cli import cleanup
    from storage.records import RecordStore
    from storage.tables import utcnow

    records = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    job_id = records.create_job(project="default", kind="generation", prompt=None, params={},
                                model=None)
    store.put(key=KEY, data=PNG, content_type="image/png")
    records.add_asset(asset_id="img_contract", job_id=job_id, project="default",
                      kind="generations", store=store.name, key=KEY,
                      content_type="image/png", width=1, height=1, size_bytes=len(PNG))
    report = cleanup(timedelta(days=1), False, records=records, assets=store,
                     now=utcnow() + timedelta(days=2))
    assert [a.id for a in report.assets] == ["img_contract"] and not report.failed
    with pytest.raises(AssetNotFound):
        store.get(key=KEY)
    records.close()
