"""The production profile refuses node-local storage on a multi-node cluster (unit level;
tests/cluster/test_placement.py shows the refusal from a real 3-node cluster)."""

from __future__ import annotations

import pytest

from graphs.app import check_shared_storage
from storage.config import StorageSettings

S3 = {"asset_store": "s3", "asset_bucket": "b"}
PG = "postgresql+psycopg://u@db:5432/studio"


def settings(**fields) -> StorageSettings:
    return StorageSettings(**{"data_dir": "/data", **fields})


def test_local_assets_and_sqlite_refused_on_three_nodes():
    with pytest.raises(ValueError) as err:
        check_shared_storage("production", settings(), nodes=3)
    message = str(err.value)
    assert "multi-node Ray cluster (3 nodes alive)" in message
    assert "node-local folder /data/assets" in message and "asset_store: s3" in message
    assert "records in SQLite" in message and "PHOTOSTUDIO_DATABASE_URL" in message


@pytest.mark.parametrize("fields, names", [
    ({**S3}, "SQLite"),
    ({"database_url": PG}, "node-local folder"),
])
def test_either_local_half_is_refused(fields, names):
    with pytest.raises(ValueError, match=names):
        check_shared_storage("production", settings(**fields), nodes=2)


def test_shared_storage_passes_and_one_node_or_other_profiles_are_not_checked():
    check_shared_storage("production", settings(database_url=PG, **S3), nodes=3)
    check_shared_storage("production", settings(), nodes=1)  # one GPU machine
    check_shared_storage("local", settings(), nodes=3)
    check_shared_storage("tiny", settings(), nodes=3)
