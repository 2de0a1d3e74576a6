"""The record store, on SQLite and on a real Postgres server (every test runs on both)."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from common.errors import InputError
from storage.assets import LocalAssetStore
from storage.records import NewAsset, RecordStore
from storage.tables import ChatSession, Job, Message

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def set_columns(records: RecordStore, model, row_id, **values) -> None:
    """Backdate rows (timestamps are otherwise always 'now')."""
    pk = model.__mapper__.primary_key[0]
    with records.engine.begin() as conn:
        assert conn.execute(update(model).where(pk == row_id).values(**values)).rowcount == 1


def new_job(records: RecordStore, **kw) -> str:
    kw = {"kind": "generation", "prompt": "a cat", "params": {"n": 1}, "model": "tiny-sd", **kw}
    return records.create_job(**kw)


# -- job lifecycle ------------------------------------------------------------------------------
def test_job_lifecycle_success(records):
    job_id = records.create_job(kind="generation", prompt="a cat", params={"n": 2},
                                model="tiny-sd")
    job = records.get_job(job_id=job_id, project="default")
    assert job.status == "queued" and job.params == {"n": 2} and job.started_at is None
    assert job.progress == 0.0 and job.cancel_requested is False and job.result is None
    assert records.start_job(job_id=job_id) is True
    assert records.get_job(job_id=job_id, project="default").status == "running"
    assert records.finish_job(job_id=job_id, asset_ids=["img_1", "img_2"],
                              timings={"total_s": 1.5}, result={"images": 2}) is True
    job = records.get_job(job_id=job_id, project="default")
    assert job.status == "succeeded" and job.asset_ids == ["img_1", "img_2"]
    assert job.timings == {"total_s": 1.5} and job.finished_at >= job.started_at
    assert job.progress == 1.0 and job.result == {"images": 2}


def test_job_failure_keeps_the_reason(records):
    job_id = new_job(records, prompt="x", params={}, model=None)
    records.fail_job(job_id=job_id, error="ValueError: width must be ...")
    job = records.get_job(job_id=job_id, project="default")
    assert job.status == "failed" and "width" in job.error
    assert [j.id for j in records.list_jobs(project="default", status="failed").items] == \
        [job_id]


def test_unknown_job_update_raises(records):
    for call in (records.start_job, records.heartbeat, records.is_cancel_requested,
                 records.cancel_job):
        with pytest.raises(KeyError):
            call(job_id="job_missing")
    with pytest.raises(KeyError):
        records.request_cancel(job_id="job_missing", project="default")
    with pytest.raises(KeyError):
        records.update_progress(job_id="job_missing", progress=0.5)


def test_timestamps_are_timezone_aware_utc(records):
    job = records.get_job(job_id=new_job(records), project="default")
    assert job.created_at.tzinfo is not None and job.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - job.created_at) < timedelta(minutes=5)


def test_progress_step_and_heartbeat(records):
    job_id = new_job(records)
    records.start_job(job_id=job_id)
    started = records.get_job(job_id=job_id, project="default")
    assert records.update_progress(job_id=job_id, progress=0.25, step="denoising 1/4") is False
    job = records.get_job(job_id=job_id, project="default")
    assert (job.progress, job.step) == (0.25, "denoising 1/4")
    assert job.heartbeat_at >= started.heartbeat_at and job.updated_at >= started.updated_at
    assert records.update_progress(job_id=job_id, progress=1) is False  # step kept
    assert records.get_job(job_id=job_id, project="default").step == "denoising 1/4"
    for bad in (-0.1, 1.01, float("nan"), "half"):
        with pytest.raises(ValueError, match="progress must be a number from 0 to 1"):
            records.update_progress(job_id=job_id, progress=bad)


def test_first_terminal_state_wins(records):
    job_id = new_job(records)
    records.start_job(job_id=job_id)
    assert records.finish_job(job_id=job_id, asset_ids=["a"], timings={}) is True
    assert records.fail_job(job_id=job_id, error="late failure") is False
    assert records.cancel_job(job_id=job_id) is False
    assert records.start_job(job_id=job_id) is False
    job = records.get_job(job_id=job_id, project="default")
    assert job.status == "succeeded" and job.error is None
    assert records.update_progress(job_id=job_id, progress=0.1) is True  # worker: stop


def test_a_job_can_be_created_running(records):
    job_id = new_job(records, start=True)
    job = records.get_job(job_id=job_id, project="default")
    assert job.status == "running" and job.started_at is not None
    assert job.heartbeat_at == job.started_at and job.started_at >= job.created_at
    assert job.finished_at is None and job.progress == 0.0 and job.cancel_requested is False
    assert [j.id for j in records.list_jobs(project="default", status="running").items] == \
        [job_id]
    assert records.start_job(job_id=job_id) is False  # not queued: nothing to start
    assert records.get_job(job_id=job_id, project="default").started_at == job.started_at
    assert records.fail_stale_jobs(older_than_s=300) == []  # it beat at creation
    set_columns(records, Job, job_id,
                heartbeat_at=datetime.now(timezone.utc) - timedelta(minutes=10))
    assert records.fail_stale_jobs(older_than_s=300) == [job_id]  # a running job like others
    queued = records.get_job(job_id=new_job(records, start=False), project="default")
    assert queued.status == "queued" and queued.started_at is queued.heartbeat_at is None


# -- a job's outputs, recorded with its success -------------------------------------------------
def output(asset_id: str, job_id: str | None, *, project="default", width=64, height=48,
           content_type="image/png") -> NewAsset:
    return NewAsset(id=asset_id, job_id=job_id, kind="generation", store="local",
                    key=f"{project}/generation/2026/01/{asset_id}.png",
                    content_type=content_type, size_bytes=123, width=width, height=height,
                    project=project)


def test_finish_job_records_its_assets(records):
    job_id = new_job(records, start=True, project="p1")
    outputs = [output("img_a", job_id, project="p1"),
               output("img_b", job_id, project="p1", width=32, height=16,
                      content_type="image/webp")]
    assert records.finish_job(job_id=job_id, timings={"total_s": 0.5}, model="m2",
                              assets=outputs) is True
    job = records.get_job(job_id=job_id, project="p1")
    assert job.status == "succeeded" and job.asset_ids == ["img_a", "img_b"]  # from assets
    assert job.model == "m2" and job.timings == {"total_s": 0.5} and job.progress == 1.0
    b = records.get_asset(asset_id="img_b", project="p1")
    assert (b.job_id, b.project, b.width, b.height, b.content_type, b.size_bytes) == \
        (job_id, "p1", 32, 16, "image/webp", 123)
    assert b.created_at.tzinfo is not None and b.created_at == job.finished_at
    listed = records.list_assets(project="p1").items
    assert {a.id for a in listed} == {"img_a", "img_b"}
    assert all(a.prompt == "a cat" and a.job_kind == "generation" for a in listed)


def test_finish_job_writes_its_assets_and_its_success_or_neither(records):
    add_asset(records, "img_taken")
    job_id = new_job(records, start=True)
    with pytest.raises(IntegrityError):  # the second asset's id exists: the insert fails
        records.finish_job(job_id=job_id, timings={},
                           assets=[output("img_new", job_id), output("img_taken", job_id)])
    job = records.get_job(job_id=job_id, project="default")
    assert job.status == "running" and job.asset_ids == [] and job.finished_at is None
    assert records.get_asset(asset_id="img_new", project="default") is None
    # the old row, untouched
    assert records.get_asset(asset_id="img_taken", project="default").job_id is None
    # and the job can still end normally afterwards
    assert records.finish_job(job_id=job_id, timings={}, assets=[output("img_new", job_id)])
    assert records.get_job(job_id=job_id, project="default").asset_ids == ["img_new"]


def test_finish_job_on_an_ended_job_still_records_the_assets(records):
    job_id = new_job(records, start=True)
    assert records.fail_job(job_id=job_id, error="replica died") is True
    assert records.finish_job(job_id=job_id, timings={"total_s": 9},
                              assets=[output("img_late", job_id)]) is False
    job = records.get_job(job_id=job_id, project="default")
    assert job.status == "failed" and job.error == "replica died"  # first terminal state wins
    assert job.asset_ids == [] and job.timings == {}
    # the object is findable
    assert records.get_asset(asset_id="img_late", project="default").job_id == job_id
    with pytest.raises(KeyError):  # an unknown job: raises, and records nothing
        records.finish_job(job_id="job_missing", timings={},
                           assets=[output("img_orphan", "job_missing")])
    assert records.get_asset(asset_id="img_orphan", project="default") is None


def test_add_assets_is_all_or_nothing(records):
    add_asset(records, "img_taken")
    with pytest.raises(IntegrityError):
        records.add_assets(assets=[output("img_1", None), output("img_taken", None)])
    assert records.get_asset(asset_id="img_1", project="default") is None
    records.add_assets(assets=[output("img_1", None), output("img_2", "job_x")])
    assert records.get_asset(asset_id="img_2", project="default").job_id == "job_x"
    records.add_assets(assets=[])  # nothing to do


# -- cancellation -----------------------------------------------------------------------------
def test_cancelling_a_queued_job_is_immediate(records):
    job_id = new_job(records)
    job = records.request_cancel(job_id=job_id, project="default")
    assert job.status == "cancelled" and job.cancel_requested and job.finished_at is not None
    assert records.start_job(job_id=job_id) is False  # a worker picking it up must not run it
    assert records.get_job(job_id=job_id, project="default").status == "cancelled"


def test_cancelling_a_running_job_asks_its_worker(records):
    job_id = new_job(records)
    records.start_job(job_id=job_id)
    assert records.is_cancel_requested(job_id=job_id) is False
    job = records.request_cancel(job_id=job_id, project="default")
    assert job.status == "running" and job.cancel_requested
    assert records.is_cancel_requested(job_id=job_id) is True
    assert records.heartbeat(job_id=job_id) is True  # the worker sees it on its next beat
    assert records.update_progress(job_id=job_id, progress=0.5) is True
    assert records.cancel_job(job_id=job_id, reason="cancelled by the user") is True
    assert records.finish_job(job_id=job_id, asset_ids=[], timings={}) is False
    job = records.get_job(job_id=job_id, project="default")
    assert job.status == "cancelled" and job.error == "cancelled by the user"
    # ended: unchanged
    assert records.request_cancel(job_id=job_id, project="default").status == "cancelled"


# -- stale jobs -------------------------------------------------------------------------------
def test_fail_stale_jobs_marks_only_silent_running_jobs(records):
    now = datetime.now(timezone.utc)
    silent, alive, queued, done = (new_job(records) for _ in range(4))
    for job_id in (silent, alive, done):
        records.start_job(job_id=job_id)
    set_columns(records, Job, silent, heartbeat_at=now - timedelta(minutes=10))
    set_columns(records, Job, queued, created_at=now - timedelta(hours=1))
    records.finish_job(job_id=done, asset_ids=[], timings={})
    set_columns(records, Job, done, heartbeat_at=now - timedelta(hours=1))
    fresh = new_job(records)  # queued a moment ago: about to start
    assert sorted(records.fail_stale_jobs(older_than_s=300)) == sorted([silent, queued])
    job = records.get_job(job_id=silent, project="default")
    assert job.status == "failed" and "replica died" in job.error and job.finished_at
    assert records.get_job(job_id=alive, project="default").status == "running"
    # its replica died between create and start
    never = records.get_job(job_id=queued, project="default")
    assert never.status == "failed" and "never started" in never.error
    assert records.get_job(job_id=fresh, project="default").status == "queued"
    assert records.get_job(job_id=done, project="default").status == "succeeded"
    assert records.fail_stale_jobs(older_than_s=300) == []  # idempotent
    assert records.heartbeat(job_id=silent) is True  # its worker, if alive after all: stop
    with pytest.raises(ValueError, match="older_than_s"):
        records.fail_stale_jobs(older_than_s=0)


def test_a_running_job_without_heartbeats_goes_stale_from_its_start(records):
    job_id = new_job(records)
    records.start_job(job_id=job_id)
    old = datetime.now(timezone.utc) - timedelta(hours=2)
    set_columns(records, Job, job_id, heartbeat_at=None, started_at=old)
    assert records.fail_stale_jobs(older_than_s=3600) == [job_id]


# -- listing jobs -----------------------------------------------------------------------------
def all_pages(fetch, limit):
    items, cursor, pages = [], None, 0
    while True:
        page = fetch(limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        items += page.items
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return items, pages


def test_list_jobs_is_newest_first_and_stable_under_equal_timestamps(records):
    ids = [new_job(records) for _ in range(7)]
    # four jobs share one timestamp: only the id can order them
    for i, job_id in enumerate(ids):
        created = T0 if i in (1, 2, 4, 5) else T0 + timedelta(seconds=i - 3)
        set_columns(records, Job, job_id, created_at=created)
    items, pages = all_pages(lambda **kw: records.list_jobs(project="default", **kw), limit=3)
    expected = sorted(ids, key=lambda j: (records.get_job(job_id=j, project="default").created_at,
                                          j), reverse=True)
    assert [j.id for j in items] == expected and pages == 3
    # a job created between two page fetches does not shift later pages
    first = records.list_jobs(project="default", limit=3)
    new_job(records)
    rest, _ = all_pages(lambda limit, cursor: records.list_jobs(
        project="default", limit=limit, cursor=cursor or first.next_cursor), limit=3)
    assert [j.id for j in first.items + rest] == expected


def test_list_jobs_filters(records):
    a = new_job(records, project="p1", kind="generation")
    b = new_job(records, project="p2", kind="upscale")
    c = new_job(records, project="p1", kind="upscale")
    set_columns(records, Job, a, created_at=T0)
    set_columns(records, Job, b, created_at=T0 + timedelta(hours=1))
    set_columns(records, Job, c, created_at=T0 + timedelta(hours=2))
    records.start_job(job_id=c)

    def ids(project="p1", **kw):  # a listing is always one project's
        return [j.id for j in records.list_jobs(project=project, **kw).items]

    assert ids() == [c, a] and ids(project="p2") == [b] and ids(project="default") == []
    assert ids(status="running") == [c] and ids(status="queued") == [a]
    assert ids(project="p2", status="queued") == [b] and ids(project="p2", status="running") == []
    assert ids(kind="upscale") == [c] and ids(kind="generation") == [a]
    assert ids(project="p2", kind="upscale") == [b] and ids(project="p2", kind="generation") == []
    assert ids(created_after=T0 + timedelta(hours=1)) == [c]
    assert ids(project="p2", created_after=T0 + timedelta(hours=1)) == [b]  # inclusive
    assert ids(created_before=T0 + timedelta(hours=1)) == [a]
    assert ids(project="p2", created_before=T0 + timedelta(hours=1)) == []  # exclusive
    naive = (T0 + timedelta(minutes=30)).replace(tzinfo=None)  # naive means UTC
    assert ids(created_after=naive, created_before=T0 + timedelta(hours=3)) == [c]
    assert ids(project="p2", created_after=naive, created_before=T0 + timedelta(hours=3)) == [b]


def test_list_jobs_rejects_bad_arguments(records):
    with pytest.raises(InputError, match="status must be one of queued, running") as info:
        records.list_jobs(project="default", status="done")
    assert info.value.param == "status"
    for limit in (0, 1001, "5"):
        with pytest.raises(InputError, match="limit must be an integer from 1 to 1000") as info:
            records.list_jobs(project="default", limit=limit)
        assert info.value.param == "limit"
    with pytest.raises(InputError, match="cursor is not a valid jobs cursor") as info:
        records.list_jobs(project="default", cursor="not-a-cursor")
    assert info.value.param == "cursor"
    records.create_project(project_id="p9")
    records.create_project(project_id="p8")
    other = records.list_projects(limit=1).next_cursor
    with pytest.raises(ValueError, match="cursor is not a valid jobs cursor"):
        records.list_jobs(project="default", cursor=other)  # a cursor of another listing


def crafted_cursor(kind: str, **data) -> str:
    raw = json.dumps({"k": kind, "t": T0.isoformat(), "i": "x_1", **data})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("kind", ["jobs", "assets", "sessions"])
def test_crafted_cursors_are_rejected(records, kind):
    listing = {"jobs": records.list_jobs, "assets": records.list_assets,
               "sessions": records.list_sessions}[kind]
    # the helper makes well-formed cursors: one with a string id and timestamp is accepted
    assert listing(project="default", cursor=crafted_cursor(kind)).items == []
    for bad in ({"i": ["x_1", "x_2"]}, {"i": {"$gt": ""}}, {"i": 7}, {"i": None},
                {"i": "x" * 129}, {"t": 1767268800}, {"t": ["2026-01-01"]}, {"t": None},
                {"t": {"iso": T0.isoformat()}}):
        with pytest.raises(ValueError, match=f"cursor is not a valid {kind} cursor: pass "
                                             f"back the next_cursor"):
            listing(project="default", cursor=crafted_cursor(kind, **bad))


# -- assets -----------------------------------------------------------------------------------
def add_asset(records, asset_id, *, job_id=None, project="default", kind="generation",
              key=None, store="local"):
    records.add_asset(asset_id=asset_id, job_id=job_id, kind=kind, store=store,
                      key=key or f"{project}/{kind}/2026/01/{asset_id}.png",
                      content_type="image/png", size_bytes=3, width=64, height=48,
                      project=project)


def test_assets_are_recorded(records):
    add_asset(records, "img_1", job_id="job_1")
    asset = records.get_asset(asset_id="img_1", project="default")
    assert (asset.width, asset.height, asset.content_type) == (64, 48, "image/png")
    assert asset.key == "default/generation/2026/01/img_1.png"
    assert records.get_asset(asset_id="nope", project="default") is None


def test_project_assets_newest_first_with_their_prompt(records):
    job_id = new_job(records, prompt="a red fox", params={"steps": 4, "seed": 7}, project="p1")
    for i in range(5):
        add_asset(records, f"img_{i}", job_id=job_id if i % 2 == 0 else None, project="p1",
                  kind="upscale" if i == 4 else "generation")
        from storage.tables import Asset

        set_columns(records, Asset, f"img_{i}", created_at=T0 + timedelta(seconds=i // 2))
    add_asset(records, "img_other", project="p2")
    items, pages = all_pages(lambda **kw: records.list_assets(project="p1", **kw), limit=2)
    assert [a.id for a in items] == ["img_4", "img_3", "img_2", "img_1", "img_0"]
    assert pages == 3
    by_id = {a.id: a for a in items}
    assert by_id["img_0"].prompt == "a red fox" and by_id["img_0"].params == {"steps": 4,
                                                                              "seed": 7}
    assert by_id["img_0"].job_kind == "generation" and by_id["img_0"].model == "tiny-sd"
    assert by_id["img_1"].prompt is None and by_id["img_1"].params is None
    assert [a.id for a in records.list_assets(project="p1", kind="upscale").items] == ["img_4"]
    assert [a.id for a in records.list_assets(project="p2").items] == ["img_other"]


def test_gallery_search_by_tags_and_free_text(records):
    fox = new_job(records, prompt="a red fox in the snow", project="p1")
    add_asset(records, "img_fox", job_id=fox, project="p1")
    add_asset(records, "img_sea", project="p1")
    add_asset(records, "img_plain", project="p1")  # never analysed
    add_asset(records, "img_other", project="p2")
    assert records.set_asset_analysis(
        asset_id="img_fox", project="p1", caption="a fox on white ground",
        description="A fox on white ground. A 64x48 landscape PNG image mostly white.",
        tags=["Fox", "white", "landscape", "fox "]) is True
    assert records.set_asset_analysis(
        asset_id="img_sea", project="p1", caption="waves under a blue sky",
        description="Waves under a blue sky.", tags=["waves", "blue", "sky", "landscape"])
    # another project's asset is not touched (as if it were missing)
    assert records.set_asset_analysis(asset_id="img_other", project="p1", caption="x",
                                      description=None, tags=["fox"]) is False
    assert records.set_asset_analysis(asset_id="img_other", project="p2", caption="x",
                                      description=None, tags=["fox"])

    def ids(**kw) -> list[str]:
        return sorted(a.id for a in records.list_assets(project="p1", **kw).items)

    assert ids(tags=["landscape"]) == ["img_fox", "img_sea"]
    assert ids(tags=["LANDSCAPE", "fox"]) == ["img_fox"]  # every tag, any case
    assert ids(tags=["fo"]) == []  # tags match whole
    assert ids(q="SNOW") == ["img_fox"]  # the job's prompt
    assert ids(q="sky") == ["img_sea"]  # caption / tags
    assert ids(q="wav blue") == ["img_sea"]  # every word; a tag's start
    assert ids(q="fox blue") == []
    assert ids(q="100%") == [] and ids(q="_") == []  # LIKE wildcards are plain characters
    assert ids() == ["img_fox", "img_plain", "img_sea"]
    [fox_view] = records.list_assets(project="p1", tags=["fox"]).items
    assert fox_view.tags == ["fox", "white", "landscape"]  # normalised, in the given order
    assert fox_view.caption == "a fox on white ground" and fox_view.analyzed_at is not None
    # a new analysis replaces the tags
    records.set_asset_analysis(asset_id="img_fox", project="p1", caption="a dog",
                               description=None, tags=["dog"])
    assert ids(tags=["fox"]) == [] and ids(tags=["dog"]) == ["img_fox"]
    assert records.get_asset_tags(asset_id="img_fox", project="p1") == ["dog"]
    assert records.get_asset_tags(asset_id="img_fox", project="p2") is None
    with pytest.raises(InputError) as err:
        records.list_assets(project="p1", tags=["x" * 65])
    assert err.value.param == "tag"
    with pytest.raises(InputError) as err:
        records.list_assets(project="p1", q=" ".join(f"w{i}" for i in range(9)))
    assert err.value.param == "q"
    # deleting the asset deletes its tags
    assert records.delete_asset_record(asset_id="img_fox") is True
    from storage.tables import AssetTag

    with records.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(AssetTag).where(
            AssetTag.asset_id == "img_fox")) == 0


def test_delete_asset_removes_object_then_record(records, tmp_path):
    store = LocalAssetStore(tmp_path / "assets")
    add_asset(records, "img_1")
    key = records.get_asset(asset_id="img_1", project="default").key
    store.put(key=key, data=b"png", content_type="image/png")
    assert records.delete_asset(asset_id="img_1", project="default", assets=store) is True
    assert not store.path(key).exists()
    assert records.get_asset(asset_id="img_1", project="default") is None
    assert records.delete_asset(asset_id="img_1", project="default", assets=store) is False
    add_asset(records, "img_2", store="s3")
    with pytest.raises(ValueError, match="lives in the 's3' store"):
        records.delete_asset(asset_id="img_2", project="default", assets=store)
    assert records.get_asset(asset_id="img_2", project="default") is not None


def test_failed_object_delete_keeps_the_record(records, tmp_path):
    class Broken(LocalAssetStore):
        def delete(self, *, key):
            raise OSError("store unreachable")

    add_asset(records, "img_1")
    with pytest.raises(OSError, match="unreachable"):
        records.delete_asset(asset_id="img_1", project="default", assets=Broken(tmp_path))
    assert records.get_asset(asset_id="img_1", project="default") is not None


def test_reads_and_writes_by_id_are_scoped_to_the_project(records, tmp_path):
    """Another project's job, asset or session is None to its getter, like a missing one, and
    deleting or cancelling it through another project leaves it as it was."""
    store = LocalAssetStore(tmp_path / "assets")
    queued = new_job(records, project="p1")
    running = new_job(records, project="p1", start=True)
    add_asset(records, "img_p1", job_id=queued, project="p1")
    key = records.get_asset(asset_id="img_p1", project="p1").key
    store.put(key=key, data=b"png", content_type="image/png")
    session = records.add_turn(session_id=None, project="p1", messages=turn("hi", "hello"))

    for project in ("p2", "default"):
        assert records.get_job(job_id=queued, project=project) is None
        assert records.get_job(job_id=running, project=project) is None
        assert records.get_asset(asset_id="img_p1", project=project) is None
        assert records.get_session(session_id=session, project=project) is None
        assert records.get_session(session_id=session, project=project,
                                   message_limit=1) is None
        assert records.list_jobs(project=project).items == []
        assert records.list_assets(project=project).items == []
        assert records.list_sessions(project=project).items == []
        assert records.delete_asset(asset_id="img_p1", project=project, assets=store) is False
        assert records.delete_session(session_id=session, project=project) is False
        for job_id in (queued, running):
            with pytest.raises(KeyError, match=f"no job '{job_id}'"):
                records.request_cancel(job_id=job_id, project=project)

    # untouched: the owner still sees all of it, as it was
    assert records.get_job(job_id=queued, project="p1").status == "queued"
    job = records.get_job(job_id=running, project="p1")
    assert job.status == "running" and job.cancel_requested is False
    assert records.is_cancel_requested(job_id=running) is False
    assert records.get_asset(asset_id="img_p1", project="p1").job_id == queued
    assert store.get(key=key) == b"png"
    assert [m.content for m in records.get_session(session_id=session,
                                                   project="p1").messages] == ["hi", "hello"]
    # and the owner's own calls work on them
    assert records.request_cancel(job_id=queued, project="p1").status == "cancelled"
    assert records.request_cancel(job_id=running, project="p1").cancel_requested is True
    assert records.delete_asset(asset_id="img_p1", project="p1", assets=store) is True
    assert not store.path(key).exists()
    assert records.delete_session(session_id=session, project="p1") is True
    assert records.get_session(session_id=session, project="p1") is None


# -- projects ---------------------------------------------------------------------------------
def test_projects(records):
    assert records.get_project(project_id="default").name == "Default"  # seeded
    p = records.create_project(project_id="shoot-2026", name="Spring shoot",
                               settings={"style": "film"})
    assert records.get_project(project_id="shoot-2026") == p
    assert p.settings == {"style": "film"} and p.created_at.tzinfo is not None
    with pytest.raises(InputError, match="already exists") as info:
        records.create_project(project_id="shoot-2026")
    assert (info.value.param, info.value.status, info.value.code) == ("id", 409, "exists")
    for bad in ("", "Upper", "-dash", "a/b", "x" * 65):
        with pytest.raises(InputError, match="project_id must be") as info:
            records.create_project(project_id=bad)
        assert info.value.param == "id"  # POST /v1/projects's field
    for i in range(3):
        records.create_project(project_id=f"p{i}")
    items, _ = all_pages(records.list_projects, limit=2)
    assert [p.id for p in items][:3] == ["p2", "p1", "p0"]
    assert {p.id for p in items} == {"default", "shoot-2026", "p0", "p1", "p2"}
    assert records.get_project(project_id="nope") is None


# -- chat sessions ----------------------------------------------------------------------------
def count_messages(records, session_id) -> int:
    with records.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Message)
                           .where(Message.session_id == session_id))


def test_session_with_messages(records):
    s = records.create_session(project="p1", title="Portrait edits", data={"lang": "en"})
    m1 = records.add_message(session_id=s.id, role="user", content="remove the background",
                             image_ids=["img_1"])
    m2 = records.add_message(session_id=s.id, role="assistant", content="done",
                             data={"plan": [{"tool": "matting"}]}, image_ids=["img_2"])
    records.add_message(session_id=s.id, role="user", content="now upscale it")
    got = records.get_session(session_id=s.id, project="p1")
    assert (got.title, got.project, got.data) == ("Portrait edits", "p1", {"lang": "en"})
    assert [m.content for m in got.messages] == ["remove the background", "done",
                                                 "now upscale it"]
    assert got.messages[0] == m1 and got.messages[1].data == {"plan": [{"tool": "matting"}]}
    assert m2.image_ids == ["img_2"] and got.updated_at >= got.created_at
    last = records.get_session(session_id=s.id, project="p1", message_limit=2)
    assert [m.content for m in last.messages] == ["done", "now upscale it"]
    with pytest.raises(ValueError, match="role must be one of user, assistant, system, tool"):
        records.add_message(session_id=s.id, role="bot", content="x")
    with pytest.raises(KeyError):
        records.add_message(session_id="sess_missing", role="user", content="x")
    assert records.get_session(session_id="sess_missing", project="p1") is None


def test_sessions_list_by_last_activity(records):
    a, b, c = (records.create_session(project="p1", title=t) for t in "abc")
    records.create_session(project="p2")
    for i, s in enumerate((a, b, c)):
        set_columns(records, ChatSession, s.id, updated_at=T0 + timedelta(minutes=i))
    items, pages = all_pages(lambda **kw: records.list_sessions(project="p1", **kw), limit=2)
    assert [s.title for s in items] == ["c", "b", "a"] and pages == 2
    records.add_message(session_id=a.id, role="user", content="back again")
    assert [s.title for s in records.list_sessions(project="p1").items] == ["a", "c", "b"]
    assert all(s.messages == [] for s in items)


def test_delete_and_expire_sessions(records):
    keep = records.create_session()
    old = records.create_session()
    gone = records.create_session()
    for s in (keep, old, gone):
        records.add_message(session_id=s.id, role="user", content="hi")
    assert records.delete_session(session_id=gone.id, project="default") is True
    assert records.delete_session(session_id=gone.id, project="default") is False
    assert count_messages(records, gone.id) == 0
    set_columns(records, ChatSession, old.id,
                updated_at=datetime.now(timezone.utc) - timedelta(days=40))
    assert records.expire_sessions(older_than=timedelta(days=30), dry_run=True) == [old.id]
    # dry run: nothing deleted
    assert records.get_session(session_id=old.id, project="default") is not None
    assert records.expire_sessions(older_than=timedelta(days=30)) == [old.id]
    assert records.get_session(session_id=old.id, project="default") is None
    assert count_messages(records, old.id) == 0
    assert len(records.get_session(session_id=keep.id, project="default").messages) == 1


def turn(*contents: str, images: list[str] | None = None) -> list[dict]:
    """A user message and the assistant's answer(s), as the chat endpoint records them."""
    roles = ["user"] + ["assistant"] * (len(contents) - 1)
    return [{"role": role, "content": c, "image_ids": images if i == 0 and images else [],
             "data": {"context": {"last_image_id": images[-1]}} if i == 0 and images else
             {"type": "text", "plan": {"steps": []}} if role == "assistant" else {}}
            for i, (role, c) in enumerate(zip(roles, contents, strict=True))]


def session_count(records) -> int:
    with records.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(ChatSession))


def test_add_turn_creates_a_session_with_its_messages(records):
    session_id = records.add_turn(session_id=None, project="p1",
                                  messages=turn("hi, remove the background", "attach a photo",
                                                images=["img_up"]))
    got = records.get_session(session_id=session_id, project="p1")
    assert session_id.startswith("sess_") and got.project == "p1"
    assert (got.title, got.data) == (None, {})  # as create_session makes it
    assert got.created_at == got.updated_at
    assert [(m.role, m.content) for m in got.messages] == [
        ("user", "hi, remove the background"), ("assistant", "attach a photo")]
    user, answer = got.messages
    assert user.image_ids == ["img_up"] and user.data == {"context": {"last_image_id": "img_up"}}
    assert answer.image_ids == [] and answer.data == {"type": "text", "plan": {"steps": []}}
    assert user.id < answer.id and user.created_at == answer.created_at == got.updated_at
    assert [s.id for s in records.list_sessions(project="p1").items] == [session_id]
    assert records.list_sessions(project="p2").items == []  # projects stay apart
    # a message given with only role and content gets the same defaults as add_message's
    bare = records.add_turn(session_id=None, project="p1",
                            messages=[{"role": "system", "content": "be brief"}])
    (m,) = records.get_session(session_id=bare, project="p1").messages
    assert (m.data, m.image_ids) == ({}, [])


def test_add_turn_appends_to_a_session(records):
    first = records.add_turn(session_id=None, project="p1", messages=turn("make a cat"))
    records.add_message(session_id=first, role="assistant", content="here it is",
                        image_ids=["img_1"])
    set_columns(records, ChatSession, first, updated_at=T0)
    other = records.add_turn(session_id=None, project="p1", messages=turn("hello"))
    set_columns(records, ChatSession, other, updated_at=T0 + timedelta(minutes=1))
    assert records.add_turn(session_id=first, project="p1",
                            messages=turn("make it bigger", "sure")) == first
    got = records.get_session(session_id=first, project="p1")
    assert [m.content for m in got.messages] == ["make a cat", "here it is", "make it bigger",
                                                 "sure"]
    assert got.updated_at > T0 + timedelta(minutes=1)  # bumped: now the most recent
    assert [s.id for s in records.list_sessions(project="p1").items] == [first, other]
    assert [m.content for m in records.get_session(session_id=other, project="p1").messages] == \
        ["hello"]


def test_add_turn_errors_write_nothing(records):
    session_id = records.add_turn(session_id=None, project="p1", messages=turn("hi"))
    sessions = session_count(records)
    # the same errors as add_message's, for the same mistakes
    with pytest.raises(KeyError, match="no session 'sess_missing'"):
        records.add_turn(session_id="sess_missing", project="p1", messages=turn("x"))
    with pytest.raises(KeyError, match=f"no session '{session_id}'"):  # another project's
        records.add_turn(session_id=session_id, project="p2", messages=turn("x"))
    bad_role = [{"role": "user", "content": "ok"}, {"role": "bot", "content": "x"}]
    for target in (None, session_id):
        with pytest.raises(ValueError,
                           match="role must be one of user, assistant, system, tool"):
            records.add_turn(session_id=target, project="p1", messages=bad_role)
    with pytest.raises(TypeError):
        records.add_turn(session_id=None, project="p1",
                         messages=[{"role": "user", "content": "x", "colour": "red"}])
    assert session_count(records) == sessions  # no session was created
    assert count_messages(records, session_id) == 1  # and nothing was appended


# -- provider configs -------------------------------------------------------------------------
def test_provider_configs_crud_and_secrets_stay_out_of_reprs(records):
    secret = "sk-live-0123456789abcdef"
    cfg = records.create_provider_config(
        name="router-llm", kind="openai",
        settings={"base_url": "http://llm:8000/v1", "api_key": secret, "model": "qwen"})
    assert records.get_provider_config(name="router-llm").settings["api_key"] == secret
    assert secret not in repr(cfg) and "http://llm:8000/v1" in repr(cfg)
    with pytest.raises(ValueError, match="already exists"):
        records.create_provider_config(name="router-llm", kind="openai", settings={})
    records.create_provider_config(name="embedder", kind="embedding", settings={})
    assert [c.name for c in records.list_provider_configs()] == ["embedder", "router-llm"]
    assert [c.name for c in records.list_provider_configs(kind="openai")] == ["router-llm"]
    updated = records.update_provider_config(name="router-llm", settings={"model": "llama"})
    assert updated.settings == {"model": "llama"} and updated.kind == "openai"
    assert updated.updated_at >= cfg.updated_at
    with pytest.raises(KeyError):
        records.update_provider_config(name="nope", kind="x")
    assert records.delete_provider_config(name="router-llm") is True
    assert records.delete_provider_config(name="router-llm") is False
    assert records.get_provider_config(name="router-llm") is None


# -- retention helpers ------------------------------------------------------------------------
def test_purge_jobs_keeps_active_jobs_and_jobs_with_assets(records):
    old = datetime.now(timezone.utc) - timedelta(days=40)
    done, running, with_asset, recent = (new_job(records) for _ in range(4))
    records.finish_job(job_id=done, asset_ids=[], timings={})
    records.start_job(job_id=running)
    records.finish_job(job_id=with_asset, asset_ids=["img_1"], timings={})
    records.finish_job(job_id=recent, asset_ids=[], timings={})
    add_asset(records, "img_1", job_id=with_asset)
    for job_id in (done, running, with_asset):
        set_columns(records, Job, job_id, created_at=old)
    cutoff = datetime.now(timezone.utc) - timedelta(days=30)
    assert records.purge_jobs(created_before=cutoff, dry_run=True) == [done]
    assert records.get_job(job_id=done, project="default") is not None
    assert records.purge_jobs(created_before=cutoff) == [done]
    assert records.get_job(job_id=done, project="default") is None
    assert all(records.get_job(job_id=j, project="default")
               for j in (running, with_asset, recent))


def test_repr_hides_the_database_password(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'r.db'}")
    assert "r.db" in repr(store)
    from storage.migrate import redact_url

    assert redact_url("postgresql://app:hunter2@db.example.supabase.co:5432/postgres") == \
        "postgresql://app:***@db.example.supabase.co:5432/postgres"


def test_add_turns_writes_a_batch_and_isolates_each_turns_error(records):
    existing = records.add_turn(session_id=None, project="p1", messages=turn("make a cat"))
    sessions = session_count(records)
    results = records.add_turns([
        {"session_id": None, "project": "p1", "messages": turn("hello", "hi there")},
        {"session_id": existing, "project": "p1", "messages": turn("make it bigger")},
        {"session_id": "sess_missing", "project": "p1", "messages": turn("x")},
        {"session_id": existing, "project": "p2", "messages": turn("x")},  # another project's
        {"session_id": None, "project": "p1",
         "messages": [{"role": "bot", "content": "x"}]},
        {"session_id": None, "project": "p2", "messages": turn("bonjour")},
    ])
    new_p1, appended, missing, foreign, bad_role, new_p2 = results
    assert appended == existing
    assert isinstance(missing, KeyError) and "sess_missing" in str(missing)
    assert isinstance(foreign, KeyError)
    assert isinstance(bad_role, ValueError) and "role must be one of" in str(bad_role)
    assert session_count(records) == sessions + 2  # the failed turns created nothing
    assert [m.content for m in records.get_session(session_id=new_p1, project="p1").messages] \
        == ["hello", "hi there"]
    assert [m.content for m in records.get_session(session_id=existing, project="p1").messages] \
        == ["make a cat", "make it bigger"]
    assert records.get_session(session_id=new_p2, project="p2").project == "p2"
    assert records.add_turns([]) == []


def test_utc_datetime_sqlite_text_is_the_text_sqlalchemy_writes():
    """`UTCDateTime` on SQLite writes its text in one call (`sqlite_text`): the same text
    SQLAlchemy's DATETIME made from the UTC value (rows written before it compare and parse
    as before), microseconds always present, offsets converted to UTC."""
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.dialects.sqlite import DATETIME

    from storage.tables import UTCDateTime, as_utc, sqlite_text

    old = DATETIME().bind_processor(sqlite.dialect())
    values = [datetime(2026, 12, 7, 15, 0, 0), datetime(2026, 12, 7, 15, 0, 0, 1),
              datetime(1999, 1, 2, 3, 4, 5, 999999, tzinfo=timezone.utc),
              datetime(2026, 12, 7, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
              datetime(2026, 1, 1, 0, 15, 7, 120, tzinfo=timezone(timedelta(hours=9)))]
    for value in values:
        assert sqlite_text(value) == old(as_utc(value).replace(tzinfo=None)), value
    assert sqlite_text(values[0]) == "2026-12-07 15:00:00.000000"
    assert sqlite_text(values[3]) == "2026-12-08 04:30:00.000000"
    assert sqlite_text(None) is None
    assert UTCDateTime().bind_processor(sqlite.dialect()) is sqlite_text
    assert UTCDateTime().bind_processor(postgresql.dialect()) is not sqlite_text


def test_new_ids_are_prefixed_random_hex():
    from storage.records import new_id

    ids = {new_id("sess") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"sess_[0-9a-f]{32}", i) for i in ids)
