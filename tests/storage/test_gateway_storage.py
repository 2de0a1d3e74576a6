"""The gateway on cluster storage: S3 (moto's server over HTTP) + Postgres, deployed on the
session Ray cluster; a generation's response_format=url downloads from the presigned URL."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from tests.storage.conftest import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET, make_s3_store

pytestmark = pytest.mark.slow  # a second graph of its own (S3 + PostgreSQL)


@pytest.fixture(scope="module")
def cluster_app(gateway, zoo_dir, s3_endpoint, pg_url, tmp_path_factory):
    from ray import serve

    from graphs.app import AppArgs, build_app

    bucket = make_s3_store(s3_endpoint).bucket  # creates the bucket
    args = AppArgs(
        profile="tiny", zoo_dir=str(zoo_dir), router_embeddings=False,
        data_dir=str(tmp_path_factory.mktemp("cluster-data")), database_url=pg_url,
        storage={"asset_store": "s3", "asset_bucket": bucket, "asset_endpoint_url": s3_endpoint,
                 "asset_region": S3_REGION, "asset_access_key_id": S3_ACCESS_KEY_ID,
                 "asset_secret_access_key": S3_SECRET, "asset_prefix": "gw"},
        # explicit (tiny profile): this file tests storage; no video or vision deployment (this
        # app runs beside the suite's gateway, and each replica holds a logical CPU)
        auth_enabled=False, video_model="off", vision_model="off")
    serve.run(build_app(args), name="cluster-storage", route_prefix="/cluster")
    yield f"{gateway.base_url}/cluster", bucket, pg_url
    serve.delete("cluster-storage")


def test_generation_url_downloads_from_s3_and_records_in_postgres(cluster_app, s3_endpoint):
    from storage.records import RecordStore

    base, bucket, pg_url = cluster_app
    r = httpx.post(f"{base}/v1/images/generations",
                   json={"prompt": "a cat", "size": "64x64", "response_format": "url"},
                   timeout=120)
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    assert item["url"].startswith(s3_endpoint) and "Signature" in item["url"]
    image = httpx.get(item["url"], timeout=30)
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)
    records = RecordStore(pg_url)
    asset = records.get_asset(asset_id=item["id"], project="default")
    assert asset.store == "s3" and asset.key.startswith("default/generations/")
    job = records.get_job(job_id=r.json()["metadata"]["job_id"], project="default")
    assert job.status == "succeeded" and job.asset_ids == [item["id"]]
    # GET /v1/assets/{id} redirects to the store
    redirect = httpx.get(f"{base}/v1/assets/{item['id']}", timeout=30)
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(s3_endpoint)
    records.close()


@pytest.fixture(scope="module")
def azure_app(gateway, zoo_dir, azurite, tmp_path_factory):
    from ray import serve

    from graphs.app import AppArgs, build_app
    from tests.storage.conftest import make_azure_store

    made = make_azure_store(azurite)  # creates the containers
    data_dir = tmp_path_factory.mktemp("azure-data")
    args = AppArgs(
        profile="tiny", zoo_dir=str(zoo_dir), router_embeddings=False, data_dir=str(data_dir),
        database_url=f"sqlite:///{data_dir / 'records.db'}",
        storage={"asset_store": "azure", "asset_bucket": made.image_container,
                 "asset_video_bucket": made.video_container, "asset_prefix": "gw",
                 "azure_connection_string": azurite.connection_string},
        auth_enabled=False, video_model="off", vision_model="off")
    serve.run(build_app(args), name="azure-storage", route_prefix="/azure")
    yield f"{gateway.base_url}/azure", made
    serve.delete("azure-storage")


def test_gateway_on_azurite_stores_serves_and_deletes(azure_app, azurite):
    base, store = azure_app
    r = httpx.post(f"{base}/v1/images/generations",
                   json={"prompt": "a cat", "size": "64x64", "response_format": "url"},
                   timeout=120)
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    assert item["url"].startswith(azurite.blob_url) and "sig=" in item["url"]
    image = httpx.get(item["url"], timeout=30)  # Azurite answers the read SAS, no key
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)
    names = [b.name for b in store.client.get_container_client(
        store.image_container).list_blobs()]
    assert len(names) == 1 and names[0].startswith("gw/default/generations/")
    redirect = httpx.get(f"{base}/v1/assets/{item['id']}", timeout=30)
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(
        azurite.blob_url)
    assert httpx.delete(f"{base}/v1/assets/{item['id']}", timeout=30).status_code in (200, 204)
    assert list(store.client.get_container_client(store.image_container).list_blobs()) == []
