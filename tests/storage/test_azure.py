"""Azure Blob asset store against Azurite over real HTTP: what is Azure's own (staged blocks
+ commit, containers per kind, SAS URLs, retries, credentials). The shared contract is in
test_asset_contract.py."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ServiceResponseError
from azure.storage.blob import BlobClient

from storage.assets import AssetWriteError
from storage.azure import AzureBlobAssetStore
from storage.config import StorageSettings, build_asset_store
from tests.conftest import wait_until
from tests.storage.conftest import AZURITE_KEY, make_azure_store

KEY = "default/generations/2026/12/img_1.png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64  # 16 KiB


def blobs(store: AzureBlobAssetStore, container: str) -> list[str]:
    return sorted(b.name for b in store.client.get_container_client(container).list_blobs())


def failing(monkeypatch, method: str, failures: int, *, make_error, call_through=False):
    """The first `failures` calls of BlobClient.<method> fail (after really calling the
    service when `call_through`: the request landed, its answer was lost)."""
    real = getattr(BlobClient, method)
    calls = {"n": 0}

    def wrapper(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= failures:
            if call_through:
                real(self, *args, **kwargs)
            raise make_error()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BlobClient, method, wrapper)
    return calls


def busy() -> HttpResponseError:
    error = HttpResponseError(message="ServerBusy: the server is busy")
    error.status_code = 503
    return error


def test_images_and_videos_go_to_their_own_containers(azurite):
    store = make_azure_store(azurite, prefix="/gw/")
    store.put(key=KEY, data=PNG, content_type="image/png")
    store.put(key="default/videos/2026/12/vid_1.mp4", data=b"mp4", content_type="video/mp4")
    assert blobs(store, store.image_container) == [f"gw/{KEY}"]
    assert blobs(store, store.video_container) == ["gw/default/videos/2026/12/vid_1.mp4"]
    props = store._blob(KEY).get_blob_properties()
    assert props.content_settings.content_type == "image/png" and props.size == len(PNG)


def test_a_large_asset_is_staged_in_blocks_then_committed(azurite):
    store = make_azure_store(azurite, block_bytes=4096)
    store.put(key=KEY, data=PNG, content_type="image/png")
    committed, staged = store._blob(KEY).get_block_list("all")
    assert len(committed) == 5 and staged == []  # 16,392 bytes in 4 KiB blocks
    assert store.get(key=KEY) == PNG


def test_nothing_is_visible_until_the_block_list_is_committed(azurite, monkeypatch):
    """Staging succeeded, the commit fails for good: no blob at the key (only uncommitted
    blocks, which the service drops), and the caller is told after the bounded retries."""
    store = make_azure_store(azurite, block_bytes=4096)
    calls = failing(monkeypatch, "commit_block_list", 99, make_error=busy)
    with pytest.raises(AssetWriteError, match="after 4 attempt") as err:
        store.put(key=KEY, data=PNG, content_type="image/png")
    assert calls["n"] == 4 and err.value.attempts == 4 and err.value.key == KEY
    assert blobs(store, store.image_container) == []
    assert not store.exists(key=KEY)


def test_a_commit_that_landed_but_whose_answer_was_lost_is_removed(azurite, monkeypatch):
    store = make_azure_store(azurite)

    def lost():
        return ServiceResponseError("connection reset while reading the response")

    calls = failing(monkeypatch, "commit_block_list", 99, make_error=lost, call_through=True)
    with pytest.raises(AssetWriteError, match="ServiceResponseError"):
        store.put(key=KEY, data=PNG, content_type="image/png")
    assert calls["n"] == 4
    assert blobs(store, store.image_container) == []  # nothing half-there, nothing orphaned


def test_transient_failures_are_retried_then_succeed(azurite, monkeypatch, caplog):
    store = make_azure_store(azurite, block_bytes=4096)
    calls = failing(monkeypatch, "stage_block", 2, make_error=busy)
    with caplog.at_level(logging.WARNING, logger="storage.azure"):
        store.put(key=KEY, data=PNG, content_type="image/png")
    assert calls["n"] == 5 + 2 and store.get(key=KEY) == PNG
    assert caplog.text.count("ServerBusy") == 2 and "attempt 1 of 4" in caplog.text


def test_permanent_errors_fail_at_once(azurite):
    store = make_azure_store(azurite)
    store.client.delete_container(store.image_container)
    with pytest.raises(AssetWriteError, match="after 1 attempt"):
        store.put(key=KEY, data=PNG, content_type="image/png")


def test_unreachable_account_is_retried_then_reported():
    from graphs.cli import free_port

    dead = AzureBlobAssetStore(account_url=f"http://127.0.0.1:{free_port()}/devstoreaccount1",
                               account_key=AZURITE_KEY, max_attempts=3, retry_initial_s=0.01,
                               retry_max_s=0.02, connect_timeout_s=1)
    with pytest.raises(AssetWriteError, match="after 3 attempt.*ServiceRequestError"):
        dead.put(key=KEY, data=PNG, content_type="image/png")


def test_url_is_a_short_lived_read_only_sas(azurite):
    store = make_azure_store(azurite)
    store.put(key=KEY, data=PNG, content_type="image/png")
    url = store.url(key=KEY, expires_in=2)
    query = parse_qs(urlsplit(url).query)
    assert query["sp"] == ["r"] and query["sr"] == ["b"]  # read, this blob only
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.content == PNG
    assert httpx.put(url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"},
                     timeout=10).status_code == 403  # cannot write with it
    # expired: refused once its 2 s are up (polled with a deadline, not a fixed sleep)
    wait_until(lambda: httpx.get(url, timeout=10).status_code == 403, timeout=30,
               interval=0.5, what="the SAS URL to expire")


def test_sas_credential_serves_through_the_gateway(azurite):
    store = make_azure_store(azurite, auth="sas")
    assert store.url(key=KEY) is None and not store.can_sign


def test_builder_settings_and_secrets(azurite, tmp_path, caplog):
    settings = StorageSettings(asset_store="azure", asset_bucket="imgs-built",
                               asset_video_bucket="vids-built",
                               azure_connection_string=azurite.connection_string,
                               asset_presign_expiry_s=900, data_dir=tmp_path)
    with caplog.at_level(logging.DEBUG):
        store = settings.build_asset_store()
        store.ensure_containers()
        store.put(key=KEY, data=PNG, content_type="image/png")
        assert "se=" in store.url(key=KEY)
        logging.getLogger("test").info("store %r settings %r", store, settings)
    assert (store.image_container, store.video_container) == ("imgs-built", "vids-built")
    for text in (caplog.text, repr(store), repr(settings), str(vars(store))):
        assert AZURITE_KEY not in text
    with pytest.raises(ValueError, match="exactly one of connection_string"):
        build_asset_store("azure", account_url=azurite.blob_url)
    with pytest.raises(ValueError, match="exactly one of"):
        build_asset_store("azure", account_url=azurite.blob_url, account_key="k",
                          sas_token="s")
    with pytest.raises(ValueError, match="account_url .* is required"):
        build_asset_store("azure", account_key="k")
    with pytest.raises(ValueError, match="image_container must be an Azure container name"):
        build_asset_store("azure", connection_string=azurite.connection_string,
                          image_container="Bad_Name")
