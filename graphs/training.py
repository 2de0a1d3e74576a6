"""LoRA training jobs (`/v1/trainings`): checks, submission to the cluster's training queue
(graphs/training_worker.py), views, the loss curve, SSE progress and cancel.

A training is a job (kind ``training``): GET /v1/jobs/{id} shows it too, the stale-job sweeper
watches its heartbeat, DELETE sets its cancel flag (the worker stops at its next step and
keeps nothing half-written). Hyper-parameters are checked before anything is recorded: a bad
one is a 400 naming its field; another project's dataset is a 404.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

from common.errors import InputError
from graphs import auth
from graphs.datasets import DatasetService
from graphs.errors import ApiError
from graphs.jobs import JobRunner
from graphs.training_schemas import (
    Training,
    TrainingCreate,
    TrainingLinks,
    TrainingList,
    TrainingMetrics,
    TrainingSample,
)
from graphs.training_worker import TrainingJob, training_queue
from models.lora import check_lora_name
from models.lora_training import TrainingConfig, check_config
from models.registry import MODELS, get_spec
from storage.datasets import DatasetRecords, TrainingRecord

DEFAULT_STEPS = 500
TERMINAL = ("succeeded", "failed", "cancelled")


class TrainingSettings(BaseModel):
    """The Ingress's training settings (AppArgs `training_*`)."""

    num_gpus: float = Field(0.0, ge=0, description="GPUs per training task (production: 1)")
    num_cpus: float = Field(1.0, ge=0)
    max_concurrent: int = Field(1, ge=1, description="trainings running at once in the "
                                "cluster; more wait queued")
    max_steps: int = Field(5000, ge=1)
    max_resolution: int = Field(1024, ge=32)
    torch_threads: int | None = Field(None, ge=1)
    heartbeat_s: float = Field(5.0, gt=0)
    zoo_dir: str | None = None
    generator_model: str | None = None  # the served base (default base_model)
    generator_source: str | None = None  # its weights (used when training on it)
    app_name: str | None = None  # default: this replica's Serve application


def _app_name() -> str:
    """The Serve application of this replica (its Generator checks trained adapters)."""
    from ray import serve

    return serve.get_replica_context().app_name


def ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, current = [], None
    for v in values:
        current = v if current is None else alpha * v + (1 - alpha) * current
        out.append(round(current, 6))
    return out


def rate_and_eta(record: TrainingRecord, status: str) -> tuple[float | None, float | None]:
    """Steps per second of the current attempt and the seconds left (running only)."""
    worker = record.worker or {}
    if status != "running" or not worker.get("started_at") or not record.resumed_from:
        return None, None
    elapsed = (datetime.now(timezone.utc)
               - datetime.fromisoformat(worker["started_at"])).total_seconds()
    done = record.step - record.resumed_from[-1]
    if done <= 0 or elapsed <= 0:
        return None, None
    rate = done / elapsed
    return round(rate, 4), round((record.total_steps - record.step) / rate, 1)


class TrainingService:
    def __init__(self, *, data: DatasetRecords, datasets: DatasetService, runner: JobRunner,
                 settings: TrainingSettings, storage: dict[str, Any]):
        self.data = data
        self.records = data.records
        self.datasets = datasets
        self.runner = runner
        self.settings = settings
        self.storage = storage  # what the Ingress built its stores from (the task does too)
        self._queue = None

    @staticmethod
    def _project() -> str:
        return auth.current_project()

    @property
    def queue(self):
        if self._queue is None:
            self._queue = training_queue(self.settings.max_concurrent)
            # the actor outlives redeploys: it takes this config's limit (fire and forget)
            self._queue.set_limit.remote(self.settings.max_concurrent)
        return self._queue

    # -- create -----------------------------------------------------------------------------
    async def create(self, body: TrainingCreate, *, base_url: str) -> Training:
        base = body.base_model or self.settings.generator_model or "tiny-sd"
        try:
            spec = get_spec(base, kind="base")
        except ValueError as exc:
            raise ApiError(400, str(exc), param="base_model", code="model_not_found") from None
        try:
            check_lora_name(body.name)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="name", code="invalid_name") from None
        served = self.settings.generator_model
        if served is not None and spec.name != served:
            raise ApiError(400, f"base_model {spec.name!r} is not served here (the generator "
                           f"serves {served!r}): a trained LoRA is registered by loading it "
                           "onto its served base model", param="base_model",
                           code="base_not_served")
        if body.name in MODELS or await asyncio.to_thread(self.records.get_lora,
                                                          name=body.name):
            raise ApiError(409, f"a model named {body.name!r} exists: choose another name",
                           param="name", code="name_taken")
        if await asyncio.to_thread(self._training_named, body.name):
            raise ApiError(409, f"a training of an adapter named {body.name!r} is queued or "
                           "running: choose another name", param="name", code="name_taken")
        if body.steps is not None and body.epochs is not None:
            raise ApiError(400, "give steps or epochs, not both", param="epochs")
        dataset = await self.datasets.record(body.dataset_id)
        stats = await asyncio.to_thread(self.data.stats, dataset_id=dataset.id)
        if stats.images == 0:
            raise ApiError(400, f"dataset {dataset.id!r} has no images: add some first "
                           f"(POST /v1/datasets/{dataset.id}/images)", param="dataset_id",
                           code="empty_dataset")
        steps = body.steps
        if steps is None:
            steps = body.epochs * math.ceil(stats.images / body.batch_size) \
                if body.epochs is not None else DEFAULT_STEPS
            if steps > self.settings.max_steps:
                raise ApiError(400, f"{body.epochs} epochs of {stats.images} images make "
                               f"{steps} steps; at most {self.settings.max_steps}",
                               param="epochs")
        resolution = body.resolution or (spec.limits.default_width if spec.limits else 512)
        config = TrainingConfig(
            steps=steps, rank=body.rank, alpha=body.alpha, learning_rate=body.learning_rate,
            batch_size=body.batch_size, resolution=resolution, seed=body.seed,
            sample_steps=20 if not spec.tiny else 4)
        try:
            check_config(config, max_steps=self.settings.max_steps,
                         max_resolution=self.settings.max_resolution)
        except InputError as exc:
            raise ApiError(400, str(exc), param=exc.param, code="invalid_value") from None
        every = body.checkpoint_every or max(1, steps // 5)
        trigger = (body.trigger_word or body.name).strip()
        params = {**{k: v for k, v in vars(config).items() if k != "mixed_precision"},
                  "checkpoint_every": every, "trigger_word": trigger, "kind": body.kind}
        project = self._project()
        training_id = await asyncio.to_thread(
            self.data.create_training, project=project, dataset_id=dataset.id,
            name=body.name, base_model=spec.name, params=params, total_steps=steps,
            prompt=trigger)
        resources = {"num_gpus": self.settings.num_gpus, "num_cpus": self.settings.num_cpus}
        job = TrainingJob(
            training_id=training_id, project=project, storage=self.storage,
            base_model=spec.name, adapter_name=body.name, trigger_word=trigger,
            config=vars(config), dataset_id=dataset.id, zoo_dir=self.settings.zoo_dir,
            base_source=self.settings.generator_source
            if spec.name == self.settings.generator_model else None,
            checkpoint_every=every, heartbeat_s=self.settings.heartbeat_s,
            torch_threads=self.settings.torch_threads, resources=resources,
            generator_app=self.settings.app_name or _app_name())
        try:
            await self.queue.submit.remote(job)
        except Exception as exc:  # the job must not stay queued with nobody to run it
            await asyncio.to_thread(self.records.fail_job, job_id=training_id,
                                    error=f"could not queue the training: {exc}")
            raise
        return await self.get(training_id, base_url=base_url)

    def _training_named(self, name: str) -> bool:
        """(In a thread.) A queued or running training makes an adapter named `name`."""
        from sqlalchemy import select

        from storage.tables import Job
        from storage.tables import Training as TrainingRow

        with self.records._session() as s:
            return s.scalar(select(TrainingRow.id).join(Job, Job.id == TrainingRow.id).where(
                TrainingRow.name == name, Job.status.in_(("queued", "running")))) is not None

    # -- views ------------------------------------------------------------------------------
    async def _read(self, training_id: str, project: str):
        """(training row, job) of one training, the job read FIRST: the worker writes the
        training row (adapter, checkpoint) before it ends the job, so a job seen ended comes
        with the training row as it ended — never `succeeded` with the adapter still unset
        (two reads at once, or the row first, could see that)."""
        job = await asyncio.to_thread(self.records.get_job, job_id=training_id,
                                      project=project)
        training = await asyncio.to_thread(self.data.get_training, training_id=training_id,
                                           project=project)
        return training, job

    async def _records(self, training_id: str):
        training, job = await self._read(training_id, self._project())
        if training is None or job is None:
            raise ApiError(404, f"no training {training_id!r}", param="training_id",
                           code="not_found")
        return training, job

    def _samples(self, record: TrainingRecord, base_url: str) -> list[TrainingSample]:
        return [TrainingSample(step=s["step"], asset_id=s["asset_id"],
                               url=self.runner.asset_url(s["asset_id"], base_url,
                                                         record.project))
                for s in record.samples]

    def view(self, record: TrainingRecord, job: Any, base_url: str) -> Training:
        rate, eta = rate_and_eta(record, job.status)
        adapter = record.adapter
        registered = bool(adapter and adapter.get("registered"))
        tid = record.id
        return Training(
            id=tid, status=job.status, name=record.name, dataset_id=record.dataset_id,
            base_model=record.base_model, params=record.params, step=record.step,
            total_steps=record.total_steps, progress=job.progress,
            loss=record.losses[-1] if record.losses else None, losses=record.losses,
            steps_per_s=rate, eta_s=eta, attempts=record.attempts,
            resumed_from=record.resumed_from,
            checkpoint_step=(record.checkpoint or {}).get("step"),
            samples=self._samples(record, base_url), adapter=adapter,
            model=record.name if registered else None, error=job.error,
            created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at,
            links=TrainingLinks(self=f"/v1/trainings/{tid}",
                                events=f"/v1/trainings/{tid}/events",
                                metrics=f"/v1/trainings/{tid}/metrics",
                                job=f"/v1/jobs/{tid}"))

    async def get(self, training_id: str, *, base_url: str) -> Training:
        training, job = await self._records(training_id)
        return self.view(training, job, base_url)

    async def list(self, *, limit: int, cursor: str | None, base_url: str) -> TrainingList:
        project = self._project()
        page = await asyncio.to_thread(self.data.list_trainings, project=project,
                                       limit=limit, cursor=cursor)
        ids = [record.id for record in page.items]
        # the page's jobs (one query), read after its rows; the rows of the trainings whose
        # job is seen ended are read again (one query), as `_read` does for one: so a job
        # seen ended comes with its row as it ended (adapter set), never an earlier row
        jobs = await asyncio.to_thread(self.records.get_jobs, job_ids=ids, project=project)
        ended = {i for i, job in jobs.items() if job.status in TERMINAL}
        final = await asyncio.to_thread(self.data.get_trainings, training_ids=sorted(ended),
                                        project=project) if ended else {}
        out = []
        for record in page.items:
            job = jobs.get(record.id)
            # an ended training deleted since: not in `final`, left out
            training = final.get(record.id) if record.id in ended else record
            if training is not None and job is not None:
                out.append(self.view(training, job, base_url))
        return TrainingList(data=out, next_cursor=page.next_cursor)

    async def metrics(self, training_id: str, *, base_url: str) -> TrainingMetrics:
        training, job = await self._records(training_id)
        rate, eta = rate_and_eta(training, job.status)
        losses = training.losses
        return TrainingMetrics(
            id=training.id, status=job.status, steps=list(range(1, len(losses) + 1)),
            loss=losses, loss_ema=ema(losses), last_loss=losses[-1] if losses else None,
            min_loss=min(losses) if losses else None, steps_per_s=rate, eta_s=eta,
            samples=self._samples(training, base_url))

    async def cancel(self, training_id: str, *, base_url: str) -> Training:
        await self._records(training_id)
        try:
            await asyncio.to_thread(self.records.request_cancel, job_id=training_id,
                                    project=self._project())
        except KeyError:
            raise ApiError(404, f"no training {training_id!r}", param="training_id",
                           code="not_found") from None
        return await self.get(training_id, base_url=base_url)

    async def events(self, training_id: str, *, base_url: str,
                     interval_s: float = 0.2) -> AsyncIterator[dict[str, Any]]:
        """SSE: `progress` (status, step, total_steps, loss, eta_s) whenever the step or status
        changes, then one of succeeded / failed / cancelled with the training, and the end."""
        await self._records(training_id)  # 404 before the stream starts
        project = self._project()

        async def stream():
            last = None
            while True:
                training, job = await self._read(training_id, project)
                if training is None or job is None:
                    yield {"event": "error", "data": json.dumps({"error": {
                        "message": f"training {training_id!r} was deleted",
                        "type": "not_found_error", "param": "training_id",
                        "code": "not_found"}})}
                    return
                state = (job.status, training.step, len(training.samples))
                if state != last:
                    last = state
                    if job.status in TERMINAL:
                        yield {"event": job.status,
                               "data": self.view(training, job, base_url).model_dump_json()}
                        return
                    rate, eta = rate_and_eta(training, job.status)
                    yield {"event": "progress", "data": json.dumps({
                        "id": training_id, "status": job.status, "step": training.step,
                        "total_steps": training.total_steps,
                        "loss": training.losses[-1] if training.losses else None,
                        "steps_per_s": rate, "eta_s": eta,
                        "checkpoint_step": (training.checkpoint or {}).get("step")})}
                await asyncio.sleep(interval_s)

        return stream()

    async def chat_training(self, wanted: Any, *, base_url: str
                            ) -> tuple[str, Training | None]:
        """A chat turn's training (router/training_intent.py): the dataset by id or name
        (the caller's project), defaults for the rest. (reply text, the training or None)."""
        page = await asyncio.to_thread(self.data.list_datasets, project=self._project(),
                                       limit=200)
        wanted_key = wanted.dataset.casefold()
        match = next((d for d in page.items if d.id == wanted.dataset), None) or next(
            (d for d in page.items if d.name.casefold() == wanted_key), None)
        fr = wanted.french
        if not auth.current().allows("models"):  # as POST /v1/trainings requires
            return (("Votre clé n'a pas le droit `models` qu'il faut pour entraîner un LoRA."
                     if fr else "Your key lacks the `models` scope a training needs."), None)
        if match is None:
            names = ", ".join(f"{d.name} ({d.id})" for d in page.items[:10])
            if fr:
                return (f"Je ne trouve pas de dataset « {wanted.dataset} »"
                        + (f" ; vos datasets : {names}." if names else
                           " : créez-en un avec POST /v1/datasets."), None)
            return (f"I found no dataset named {wanted.dataset!r}"
                    + (f"; your datasets: {names}." if names else
                       ": create one with POST /v1/datasets."), None)
        trainings = await asyncio.to_thread(self.data.list_trainings,
                                            project=self._project(), limit=200)
        taken = set(MODELS) | {t.name for t in trainings.items}
        name = wanted.name if wanted.name and wanted.name not in taken else \
            adapter_name_for(match.name, taken)
        try:
            training = await self.create(TrainingCreate(dataset_id=match.id, name=name),
                                         base_url=base_url)
        except ApiError as exc:
            return ((f"Impossible de lancer l'entraînement : {exc.message}" if fr else
                     f"I could not start the training: {exc.message}"), None)
        link = training.links.self
        if fr:
            return (f"Entraînement du style « {name} » lancé sur « {match.name} » "
                    f"({training.total_steps} étapes) : suivez {link}.", training)
        return (f"Training style {name!r} on dataset {match.name!r} "
                f"({training.total_steps} steps): follow {link}.", training)

    async def queue_status(self) -> dict[str, Any]:
        return await self.queue.status.remote()


def adapter_name_for(dataset_name: str, taken) -> str:
    """A free adapter name from a dataset's name: ``<slug>-style``, then ``-2``, ``-3``…"""
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", dataset_name.lower()).strip("-")[:100] or "dataset"
    name, n = f"{slug}-style", 1
    while name in taken:
        n += 1
        name = f"{slug}-style-{n}"
    return name
