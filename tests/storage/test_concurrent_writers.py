"""Two writers in two processes (as two ingress replicas are) on one database: every job
and asset lands whole, none is lost or mixed up."""

from __future__ import annotations

import multiprocessing as mp

from storage.records import RecordStore

JOBS = 40


def _writer(url: str, tag: str) -> None:
    store = RecordStore(url)
    for i in range(JOBS):
        job_id = store.create_job(kind="generations", prompt=f"{tag}-{i}", params={"i": i},
                                  model="m")
        store.start_job(job_id=job_id)
        store.update_progress(job_id=job_id, progress=0.5, step="half")
        asset_id = f"img_{tag}_{i}"
        store.add_asset(asset_id=asset_id, job_id=job_id, kind="generations", store="local",
                        key=f"default/generations/{asset_id}.png", content_type="image/png",
                        size_bytes=i, width=8, height=8)
        store.finish_job(job_id=job_id, asset_ids=[asset_id], timings={"i": i})
    store.close()


def test_two_processes_write_concurrently(db_url):
    RecordStore(db_url).close()  # migrate once up front
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db_url, tag)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    store = RecordStore(db_url)
    jobs, cursor = [], None
    while True:
        page = store.list_jobs(project="default", kind="generations", limit=200,
                                cursor=cursor)
        jobs += page.items
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    mine = [j for j in jobs if j.prompt and j.prompt[:2] in ("a-", "b-")]
    assert len(mine) == 2 * JOBS
    for job in mine:
        tag, i = job.prompt.split("-")
        assert job.status == "succeeded" and job.params == {"i": int(i)}
        assert job.asset_ids == [f"img_{tag}_{i}"]
        assert store.get_asset(asset_id=f"img_{tag}_{i}", project="default").job_id == job.id
    store.close()
