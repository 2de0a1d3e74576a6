"""graphs/training.py without Ray: how a training's job and row are read together."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from graphs import training as training_module
from graphs.training import TrainingService


class FinishingWorker:
    """The record store as the training worker changes it: between the first and the second
    read it finishes — the training row (adapter) first, then the job (succeeded), the order
    `graphs/training_worker.py` writes them in."""

    def __init__(self):
        self.adapter = None
        self.status = "running"
        self.reads = 0

    def _read(self):
        self.reads += 1
        if self.reads == 2:  # the worker ends between the two reads
            self.adapter = {"name": "style"}
            self.status = "succeeded"

    def get_training(self, *, training_id, project):
        row = SimpleNamespace(id=training_id, adapter=self.adapter)
        self._read()
        return row

    def get_job(self, *, job_id, project):
        job = SimpleNamespace(id=job_id, status=self.status)
        self._read()
        return job


def test_a_job_seen_ended_comes_with_the_training_row_as_it_ended():
    """Whenever the worker ends between the two reads, a `succeeded` job is never paired
    with a row whose adapter is unset (the SSE's last event and GET showed `adapter: null`
    for a succeeded training when the row was read first)."""
    world = FinishingWorker()
    service = TrainingService.__new__(TrainingService)
    service.data, service.records = world, world
    service._project = lambda: "default"
    training, job = asyncio.run(service._records("trn_1"))  # what GET and the SSE read
    assert world.reads == 2
    assert not (job.status == "succeeded" and training.adapter is None), (job, training)


class FinishingPage:
    """The record store for a listing: two trainings, both running when the page's rows are
    read; the worker ends the first (row first, then job) before the jobs are read, and the
    second's row is deleted after its job ended."""

    def __init__(self):
        self.ended = False
        self.queries = 0

    def list_trainings(self, *, project, limit, cursor):
        self.queries += 1
        rows = [SimpleNamespace(id=i, project=project, adapter=None) for i in ("t1", "t2")]
        self.ended = True  # now both end: t1's adapter is written, both jobs succeed
        return SimpleNamespace(items=rows, next_cursor=None)

    def get_jobs(self, *, job_ids, project):
        self.queries += 1
        return {i: SimpleNamespace(id=i, status="succeeded" if self.ended else "running")
                for i in job_ids}

    def get_trainings(self, *, training_ids, project):
        self.queries += 1
        return {i: SimpleNamespace(id=i, project=project, adapter={"name": "style"})
                for i in training_ids if i != "t2"}  # t2 was deleted meanwhile


def test_a_listing_reads_each_ended_training_row_after_its_job_in_three_queries(monkeypatch):
    monkeypatch.setattr(training_module, "TrainingList", SimpleNamespace)  # fakes, not models
    world = FinishingPage()
    service = TrainingService.__new__(TrainingService)
    service.data, service.records = world, world
    service._project = lambda: "default"
    seen = []
    service.view = lambda training, job, base_url: seen.append((training, job)) or training
    listing = asyncio.run(service.list(limit=10, cursor=None, base_url="http://x"))
    assert [t.id for t in listing.data] == ["t1"]  # t2: deleted after it ended, left out
    training, job = seen[0]
    assert job.status == "succeeded" and training.adapter == {"name": "style"}
    assert world.queries == 3  # page, its jobs, the ended rows: not one query per item
