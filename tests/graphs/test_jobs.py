"""JobRunner on a real SQLite record store and local asset store, without Ray: what it writes,
in how many transactions, and in which order."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sqlalchemy import event

from graphs.errors import ApiError
from graphs.jobs import JobRunner, Output
from storage.assets import LocalAssetStore
from storage.records import RecordStore

MODEL_INFO = {"name": "tiny", "tiny": True, "fallback": False, "fallback_reason": None}


@pytest.fixture
def runner(tmp_path):
    records = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    yield JobRunner(assets=LocalAssetStore(tmp_path / "assets"), records=records,
                    project="p1")
    records.close()


def commits(records: RecordStore) -> list[int]:
    """A list that grows by one at each committed transaction."""
    seen: list[int] = []
    event.listen(records.engine, "commit", lambda conn: seen.append(1))
    return seen


def images(n: int, h: int = 12, w: int = 20, channels: int = 3) -> list[np.ndarray]:
    return [np.full((h, w, channels), 40 * i, dtype=np.uint8) for i in range(n)]


def run(runner: JobRunner, out: Output, **kw):
    async def work(progress) -> Output:
        return out

    return asyncio.run(runner.run(kind="tools", prompt="cut it out", params={"a": 1},
                                  model_info=MODEL_INFO, work=work, base_url="http://gw",
                                  **kw))


def test_a_sync_job_is_two_transactions_whatever_its_image_count(runner):
    seen = commits(runner.records)
    response = run(runner, Output(images=images(3), model="matting-tiny"))
    assert len(seen) == 2  # create (running) + finish with the 3 asset rows
    job = runner.records.get_job(job_id=response.metadata.job_id, project="p1")
    assert job.status == "succeeded" and job.model == "matting-tiny"
    assert job.started_at == job.created_at  # never queued
    assert job.asset_ids == [d.id for d in response.data] and len(job.asset_ids) == 3
    for asset_id in job.asset_ids:
        asset = runner.records.get_asset(asset_id=asset_id, project="p1")
        assert (asset.job_id, asset.project, asset.width, asset.height) == (job.id, "p1", 20,
                                                                            12)
        assert runner.assets.path(asset.key).stat().st_size == asset.size_bytes > 0


def test_on_success_gets_the_rows_before_their_records_are_written(runner):
    seen_in_callback = []

    async def on_success(response, assets):
        for asset in assets:
            seen_in_callback.append((asset.id, asset.width, asset.height, asset.content_type,
                                     runner.records.get_asset(asset_id=asset.id, project="p1")))

    response = run(runner, Output(images=images(1, channels=4), model="m"),
                   output_format="jpeg", on_success=on_success)
    # RGBA saved as PNG (JPEG has no alpha): the row says so
    assert seen_in_callback == [(response.data[0].id, 20, 12, "image/png", None)]
    stored = runner.records.get_asset(asset_id=response.data[0].id, project="p1")
    assert stored.content_type == "image/png"


def test_a_failing_on_success_fails_the_job_and_keeps_its_images_findable(runner):
    async def on_success(response, assets):
        raise RuntimeError("session store down")

    with pytest.raises(RuntimeError, match="session store down"):
        run(runner, Output(images=images(2), model="m"), on_success=on_success)
    (job,) = runner.records.list_jobs(project="p1").items
    assert job.status == "failed" and job.error.startswith("RuntimeError")
    assets = runner.records.list_assets(project="p1").items
    assert len(assets) == 2 and {a.job_id for a in assets} == {job.id}
    assert all(runner.assets.path(a.key).is_file() for a in assets)


def test_an_async_job_cancelled_before_it_starts_never_runs(runner):
    called = []

    async def work(progress) -> Output:
        called.append(1)
        return Output(images=images(1), model="m")

    async def scenario():
        job_id = await runner.run(kind="tools", prompt=None, params={}, model_info=MODEL_INFO,
                                  work=work, base_url="http://gw", async_job=True)
        assert runner.records.get_job(job_id=job_id, project="p1").status == "queued"
        # DELETE between the 202 and the start
        runner.records.request_cancel(job_id=job_id, project="p1")
        # the detached job task itself (the runner keeps it until it ends)
        (task,) = runner._tasks
        done, _ = await asyncio.wait({task}, timeout=30)
        assert done == {task} and not runner._tasks
        return job_id

    job = runner.records.get_job(job_id=asyncio.run(scenario()), project="p1")
    assert job.status == "cancelled" and job.error == "cancelled before it started"
    assert called == [] and runner.records.list_assets(project="p1").items == []


def test_store_image_records_at_once(runner):
    asset_id = asyncio.run(runner.store_image(images(1)[0], kind="uploads"))
    asset = runner.records.get_asset(asset_id=asset_id, project="p1")
    assert asset.kind == "uploads" and asset.job_id is None and asset.project == "p1"


def test_load_image_reads_only_the_projects_own_assets(runner):
    asset_id = asyncio.run(runner.store_image(images(2)[1], kind="uploads"))
    loaded = asyncio.run(runner.load_image(asset_id))
    assert loaded.shape[:2] == (12, 20) and int(loaded[..., :3].max()) == 40
    other = JobRunner(assets=runner.assets, records=runner.records, project="p2")
    for reader, target in ((other, asset_id), (runner, "img_missing")):
        # another project's asset is a 404 exactly like a missing one
        with pytest.raises(ApiError) as err:
            asyncio.run(reader.load_image(target, param="image_id"))
        assert (err.value.status, err.value.code, err.value.param) == \
            (404, "not_found", "image_id")
        assert err.value.message == f"no asset {target!r}"


def test_a_model_call_cancelled_by_serve_ends_the_job_cancelled_not_failed(runner):
    """When a request's client leaves, its model calls may be cancelled (Serve's
    RequestCancelledError) before its own task is: the job ends `cancelled`."""
    from ray.serve.exceptions import RequestCancelledError

    async def work(progress):
        raise RequestCancelledError("req-1")

    with pytest.raises(RequestCancelledError):
        asyncio.run(runner.run(kind="generations", prompt="a fox", params={},
                               model_info=MODEL_INFO, work=work, base_url="http://gw"))
    (job,) = runner.records.list_jobs(project="p1").items
    assert job.status == "cancelled" and "RequestCancelledError" in job.error
