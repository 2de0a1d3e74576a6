from __future__ import annotations

import pytest

from storage.records import RecordStore


@pytest.fixture
def records(tmp_path):
    return RecordStore(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_job_lifecycle_success(records):
    job_id = records.create_job(kind="generation", prompt="a cat", params={"n": 2},
                                model="tiny-sd")
    job = records.get_job(job_id=job_id)
    assert job.status == "queued" and job.params == {"n": 2} and job.started_at is None
    records.start_job(job_id=job_id)
    assert records.get_job(job_id=job_id).status == "running"
    records.finish_job(job_id=job_id, asset_ids=["img_1", "img_2"], timings={"total_s": 1.5})
    job = records.get_job(job_id=job_id)
    assert job.status == "succeeded" and job.asset_ids == ["img_1", "img_2"]
    assert job.timings == {"total_s": 1.5} and job.finished_at >= job.started_at


def test_job_failure_keeps_the_reason(records):
    job_id = records.create_job(kind="generation", prompt="x", params={}, model=None)
    records.fail_job(job_id=job_id, error="ValueError: width must be ...")
    job = records.get_job(job_id=job_id)
    assert job.status == "failed" and "width" in job.error
    assert [j.id for j in records.list_jobs(status="failed")] == [job_id]


def test_assets_are_recorded(records):
    records.add_asset(asset_id="img_1", job_id="job_1", kind="generation", store="local",
                      key="default/generations/2026/11/img_1.png", content_type="image/png",
                      size_bytes=123, width=64, height=48)
    asset = records.get_asset(asset_id="img_1")
    assert (asset.width, asset.height, asset.content_type) == (64, 48, "image/png")
    assert records.get_asset(asset_id="nope") is None


def test_unknown_job_update_raises(records):
    with pytest.raises(KeyError):
        records.start_job(job_id="job_missing")
