"""graphs/training.py without Ray: how a training's job and row are read together."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

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
