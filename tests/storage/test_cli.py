"""`photostudio db upgrade|check` and `photostudio storage cleanup` (retention)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from storage.assets import LocalAssetStore
from storage.cli import cleanup, db_check, db_upgrade, parse_duration
from storage.migrate import head_revision
from storage.records import RecordStore
from storage.tables import Asset, ChatSession, Job
from tests.storage.conftest import make_s3_store
from tests.storage.test_records import set_columns

DAY = timedelta(days=1)


@pytest.mark.parametrize("text,expected", [
    ("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)),
    ("45s", timedelta(seconds=45)), ("2w", timedelta(weeks=2)), (" 1.5h ", timedelta(hours=1.5)),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["30", "d", "30y", "-3d", "0d", "", "3 days"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="older_than must be a positive duration like 30d"):
        parse_duration(text)


def seed(records: RecordStore, store, *, now: datetime) -> dict[str, str]:
    """Old and recent assets, jobs and sessions; returns their ids by role."""
    ids: dict[str, str] = {}

    def asset(name: str, job_id: str | None, age: timedelta) -> None:
        key = f"default/generation/2026/01/{name}.png"
        store.put(key=key, data=name.encode(), content_type="image/png")
        records.add_asset(asset_id=name, job_id=job_id, kind="generation", store=store.name,
                          key=key, content_type="image/png", size_bytes=3, width=1, height=1)
        set_columns(records, Asset, name, created_at=now - age)

    old_job = records.create_job(kind="generation", prompt="old", params={}, model=None)
    records.finish_job(job_id=old_job, asset_ids=["img_old"], timings={})
    set_columns(records, Job, old_job, created_at=now - 40 * DAY)
    asset("img_old", old_job, 40 * DAY)
    asset("img_new", None, 2 * DAY)
    stuck = records.create_job(kind="generation", prompt="still running", params={},
                               model=None)
    records.start_job(job_id=stuck)
    set_columns(records, Job, stuck, created_at=now - 40 * DAY)
    old_session = records.create_session(title="old")
    set_columns(records, ChatSession, old_session.id, updated_at=now - 31 * DAY)
    new_session = records.create_session(title="new")
    ids.update(old_job=old_job, stuck=stuck, old_session=old_session.id,
               new_session=new_session.id)
    return ids


def test_cleanup_dry_run_then_for_real(records, tmp_path):
    store = LocalAssetStore(tmp_path / "assets")
    now = datetime.now(timezone.utc)
    ids = seed(records, store, now=now)

    dry = cleanup(timedelta(days=30), True, records=records, assets=store, now=now)
    assert [a.id for a in dry.assets] == ["img_old"]
    assert dry.jobs == [ids["old_job"]] and dry.sessions == [ids["old_session"]]
    assert store.get(key=dry.assets[0].key) == b"img_old"  # nothing deleted
    assert records.get_asset(asset_id="img_old", project="default")
    assert records.get_job(job_id=ids["old_job"], project="default")

    done = cleanup(timedelta(days=30), False, records=records, assets=store, now=now)
    assert [a.id for a in done.assets] == ["img_old"] and not done.failed
    assert done.jobs == [ids["old_job"]] and done.sessions == [ids["old_session"]]
    assert not store.path(done.assets[0].key).exists()
    assert records.get_asset(asset_id="img_old", project="default") is None
    assert records.get_job(job_id=ids["old_job"], project="default") is None
    assert records.get_session(session_id=ids["old_session"], project="default") is None
    # recent things and a running job stay, whatever their age
    assert store.get(key="default/generation/2026/01/img_new.png") == b"img_new"
    assert records.get_job(job_id=ids["stuck"], project="default").status == "running"
    assert records.get_session(session_id=ids["new_session"], project="default") is not None
    again = cleanup(timedelta(days=30), False, records=records, assets=store, now=now)
    assert (again.assets, again.jobs, again.sessions) == ([], [], [])


def test_cleanup_keeps_records_whose_object_could_not_be_deleted(records, tmp_path):
    class Flaky(LocalAssetStore):
        def delete(self, *, key):
            raise OSError("permission denied")

    store = Flaky(tmp_path / "assets")
    now = datetime.now(timezone.utc)
    ids = seed(records, store, now=now)
    report = cleanup(timedelta(days=30), False, records=records, assets=store, now=now)
    assert report.assets == [] and report.failed == [("img_old", "OSError: permission denied")]
    # retried by a later run
    assert records.get_asset(asset_id="img_old", project="default") is not None
    assert report.jobs == []
    assert records.get_job(job_id=ids["old_job"], project="default") is not None
    records.add_asset(asset_id="img_elsewhere", job_id=None, kind="generation", store="s3",
                      key="k.png", content_type="image/png", size_bytes=1, width=1, height=1)
    set_columns(records, Asset, "img_elsewhere", created_at=now - 90 * DAY)
    report = cleanup(timedelta(days=30), False, records=records,
                     assets=LocalAssetStore(tmp_path / "assets"), now=now)
    assert [a.id for a in report.assets] == ["img_old"]
    assert report.skipped == [("img_elsewhere", "stored in 's3', not in the configured "
                                                "'local' store")]


def test_cleanup_on_s3(records, s3_endpoint):
    store = make_s3_store(s3_endpoint)
    now = datetime.now(timezone.utc)
    seed(records, store, now=now)
    report = cleanup(timedelta(days=30), False, records=records, assets=store, now=now)
    assert [a.id for a in report.assets] == ["img_old"]
    listing = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [o["Key"] for o in listing] == ["default/generation/2026/01/img_new.png"]


def test_db_upgrade_and_check_functions(db_url):
    assert db_upgrade(db_url) == head_revision()
    assert db_check(db_url) == []


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphs.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


def test_photostudio_db_and_storage_commands(tmp_path):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"PHOTOSTUDIO_DATABASE_URL": db, "PHOTOSTUDIO_ASSET_STORE": "local",
           "PHOTOSTUDIO_ASSET_ROOT": str(tmp_path / "assets")}
    out = run_cli("db", "upgrade", env=env)
    assert out.returncode == 0, out.stderr
    assert f"schema at revision {head_revision()}" in out.stdout
    out = run_cli("db", "check", env=env)
    assert out.returncode == 0 and "agree" in out.stdout, out.stdout + out.stderr

    records = RecordStore(db)
    store = LocalAssetStore(tmp_path / "assets")
    seed(records, store, now=datetime.now(timezone.utc))
    out = run_cli("storage", "cleanup", "--older-than", "30d", "--dry-run", env=env)
    assert out.returncode == 0, out.stderr
    assert "would delete asset img_old" in out.stdout and "img_new" not in out.stdout
    assert records.get_asset(asset_id="img_old", project="default") is not None
    out = run_cli("storage", "cleanup", "--older-than", "30d", env=env)
    assert out.returncode == 0, out.stderr
    assert "deleted: 1 asset(s), 1 job(s), 1 session(s)" in out.stdout
    assert records.get_asset(asset_id="img_old", project="default") is None
    records.close()
    bad = run_cli("storage", "cleanup", "--older-than", "30x", env=env)
    assert bad.returncode == 2 and "30d, 12h or 90m" in bad.stderr
