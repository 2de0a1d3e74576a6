"""A simulated multi-node Ray cluster (bench/_cluster.py) running the production graph:
a head with no GPU, two workers with one logical GPU each (``worker_a`` / ``worker_b``
resources), Postgres for records, moto's S3 server for assets, the machine's Redis for
limits. Started once for this package (it costs ~1 min and a few GB of memory); every test
here is slow-marked."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import pytest

from bench._cluster import APP, SimCluster, cluster_config
from tests.storage.conftest import (  # noqa: F401 (fixtures)
    S3_ACCESS_KEY_ID,
    S3_REGION,
    S3_SECRET,
    make_s3_store,
    pg_admin,
    pg_database,
    s3_endpoint,
)


@dataclass
class ClusterGateway:
    cluster: SimCluster
    config: dict
    database_url: str
    bucket: str
    api_key: str = ""

    @property
    def base_url(self) -> str:
        return self.cluster.base_url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


# Memory is shared (a few engineers on one 24 GiB machine): at most 2 Generator replicas,
# one of everything else.
SMALL = {name: {"autoscaling_config": {"max_replicas": 1}}
         for name in ("Ingress", "Matting", "FaceSwap", "Upscaler", "Router", "LLM")}
SMALL["Generator"] = {"autoscaling_config": {"max_replicas": 2, "upscale_delay_s": 2,
                                             "downscale_delay_s": 10}}


@pytest.fixture(scope="package")
def sim_cluster():
    cluster = SimCluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="package")
def cluster_gateway(sim_cluster, zoo_dir, redis_url, pg_database, s3_endpoint,  # noqa: F811
                    tmp_path_factory) -> ClusterGateway:
    from storage.records import RecordStore

    database_url = pg_database()
    bucket = make_s3_store(s3_endpoint).bucket  # creates the bucket
    storage = {"asset_store": "s3", "asset_bucket": bucket, "asset_endpoint_url": s3_endpoint,
               "asset_region": S3_REGION, "asset_access_key_id": S3_ACCESS_KEY_ID,
               "asset_secret_access_key": S3_SECRET,
               "asset_prefix": f"cl{secrets.token_hex(3)}"}
    config = cluster_config(http_port=sim_cluster.http_port,
                            data_dir=tmp_path_factory.mktemp("cluster-data"),
                            zoo_dir=zoo_dir, database_url=database_url, storage=storage,
                            rate_limit_storage=redis_url, deployments=SMALL,
                            app_args={"router_embeddings": False})
    sim_cluster.deploy(config)
    sim_cluster.wait_running(APP, timeout=600)
    sim_cluster.wait_routed()
    gw = ClusterGateway(cluster=sim_cluster, config=config, database_url=database_url,
                        bucket=bucket)
    records = RecordStore(database_url)
    try:
        gw.api_key = records.create_api_key(
            project="default", name="cluster", scopes=["generate", "tools", "chat", "admin"],
            requests_per_minute=1_000_000, images_per_day=1_000_000)[1]
    finally:
        records.close()
    return gw
