"""LoRA trainings on the Ray cluster: a Ray task per training (never inside a serving replica)
and one named queue actor per cluster that keeps the concurrency limit.

- `run_training(job)` (the task's body): reads the dataset from the record + asset stores,
  trains with `models.lora_training.LoraTrainer`, writes the loss curve and heartbeats to the
  job record, a checkpoint (+ a sample image) to the asset store every `checkpoint_every`
  steps, and on success stores the adapter and registers it (`register_result`). It resumes
  from the last checkpoint when Ray runs it again after its worker died (`max_retries`).
  Cancel (DELETE) is seen at the next step: the checkpoint is deleted, nothing is kept.
- `TrainingQueue` (named actor ``photostudio-trainings``, get-or-create): at most `limit`
  trainings run at once in the cluster; the others wait (queued, heartbeating so the stale-
  job sweeper leaves them be). A task that fails for good (its retries spent, or an error)
  ends its job `failed` with the reason: a job is never left `running`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import ray

logger = logging.getLogger("ray")

QUEUE_NAME = "photostudio-trainings"
SAMPLE_KIND = "training-sample"
CHECKPOINT_KIND = "training-checkpoint"


@dataclass
class TrainingJob:
    """Everything a training task needs (picklable; no handles, no secrets beyond the
    storage settings the Ingress itself was built with)."""

    training_id: str
    project: str
    storage: dict[str, Any]  # StorageSettings overrides (the environment fills the rest)
    base_model: str
    adapter_name: str
    trigger_word: str
    config: dict[str, Any]  # models.lora_training.TrainingConfig fields
    dataset_id: str
    zoo_dir: str | None = None
    base_source: str | None = None
    checkpoint_every: int = 100
    heartbeat_s: float = 5.0
    torch_threads: int | None = None
    generator_app: str = "photostudio"  # the Serve app whose Generator checks the adapter
    resources: dict[str, Any] = field(default_factory=dict)


def _stores(storage: dict[str, Any]):
    from storage.config import StorageSettings

    settings = StorageSettings(**storage)
    return settings.build_record_store(), settings.build_asset_store()


def caption_for(caption: str | None, trigger: str) -> str:
    """The text an image is trained with: its caption with the trigger word in front (once),
    or the trigger word alone."""
    if not caption:
        return trigger
    return caption if trigger.lower() in caption.lower() else f"{trigger}, {caption}"


class _Beat:
    """A heartbeat thread: the job stays alive in the record store through long steps (model
    loading, a sample); it raises the stop flag when a cancel is requested."""

    def __init__(self, records, job_id: str, every_s: float):
        self.stop = threading.Event()  # the training should stop (cancel requested / ended)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(records, job_id, every_s),
                                        daemon=True)
        self._thread.start()

    def _run(self, records, job_id: str, every_s: float) -> None:
        while not self._done.wait(every_s):
            try:
                if records.heartbeat(job_id=job_id):
                    self.stop.set()
            except Exception:  # noqa: BLE001 - a missed beat; the next one may pass
                logger.exception("training %s: heartbeat failed", job_id)

    def close(self) -> None:
        self._done.set()


def _store(assets, records, *, project: str, job_id: str, kind: str, data: bytes, ext: str,
           content_type: str, width: int = 0, height: int = 0, record: bool = True):
    from storage.assets import asset_key
    from storage.records import NewAsset, new_id

    asset_id = new_id("img" if kind == SAMPLE_KIND else kind.replace("-", "")[:8])
    key = asset_key(project=project, kind=kind, asset_id=asset_id, ext=ext)
    assets.put(key=key, data=data, content_type=content_type)
    asset = NewAsset(id=asset_id, job_id=job_id, kind=kind, store=assets.name, key=key,
                     content_type=content_type, size_bytes=len(data), width=width,
                     height=height, project=project)
    if record:
        records.add_assets(assets=[asset])
    return asset


def _delete_quietly(assets, records, checkpoint: dict[str, Any] | None) -> None:
    if not checkpoint:
        return
    from storage.assets import AssetNotFound

    try:
        assets.delete(key=checkpoint["key"])
    except AssetNotFound:
        pass
    if checkpoint.get("asset_id"):
        records.delete_asset_record(asset_id=checkpoint["asset_id"])


def run_training(job: TrainingJob) -> dict[str, Any]:
    """The body of a training task (see the module doc). Returns how it ended."""
    import numpy as np

    from graphs.errors import ApiError
    from graphs.images import encode
    from graphs.training_register import register_result
    from models.lora_training import Example, LoraTrainer, TrainingConfig
    from models.registry import get_spec, resolve
    from storage.datasets import DatasetRecords

    records, assets = _stores(job.storage)
    data = DatasetRecords(records)
    jid = job.training_id
    current = records.get_job(job_id=jid, project=job.project)
    if current is None or current.status not in ("queued", "running"):
        return {"status": current.status if current else "deleted"}
    if current.status == "queued" and not records.start_job(job_id=jid):
        return {"status": "cancelled"}
    if job.torch_threads:
        import torch

        torch.set_num_threads(job.torch_threads)
    ctx = ray.get_runtime_context()
    row = data.begin_attempt(training_id=jid, worker={
        "pid": os.getpid(), "node_id": ctx.get_node_id(),
        "started_at": datetime.now(timezone.utc).isoformat()})
    beat = _Beat(records, jid, job.heartbeat_s)
    checkpoint = row.checkpoint
    try:
        records.update_progress(job_id=jid, progress=row.step / row.total_steps,
                                step="loading the base model and the dataset")
        spec = get_spec(job.base_model, kind="base", source=job.base_source)
        location = resolve(spec, zoo_dir=job.zoo_dir, allow_fallback=False,
                           load_check=lambda location: None).location
        examples = []
        from graphs.images import decode

        for image in data.list_images(dataset_id=job.dataset_id):
            record = records.get_asset(asset_id=image.asset_id, project=job.project)
            if record is None:
                continue  # deleted from the gallery meanwhile
            array = decode(assets.get(key=record.key), field="dataset image",
                           max_pixels=8192 * 8192, max_bytes=200 * 1024 * 1024,
                           keep_alpha=False)
            examples.append(Example(array, caption_for(image.caption, job.trigger_word)))
        config = TrainingConfig(**job.config)
        trainer = LoraTrainer(location, config, examples)
        if checkpoint:
            trainer.restore(assets.get(key=checkpoint["key"]))
        pending: list[float] = []
        last_flush = time.monotonic()
        while trainer.step_count < config.steps:
            pending.append(trainer.step())
            step = trainer.step_count
            at_checkpoint = step % job.checkpoint_every == 0 and step < config.steps
            if at_checkpoint or step == config.steps or beat.stop.is_set() \
                    or time.monotonic() - last_flush > 0.5:
                stop = data.record_steps(training_id=jid, step=step, losses=pending)
                pending, last_flush = [], time.monotonic()
                if stop or beat.stop.is_set():
                    break
            if at_checkpoint:
                blob = trainer.checkpoint()
                ckpt = _store(assets, records, project=job.project, job_id=jid,
                              kind=CHECKPOINT_KIND, data=blob, ext="pt",
                              content_type="application/octet-stream", record=False)
                image = trainer.sample(job.trigger_word)
                sample = _store(assets, records, project=job.project, job_id=jid,
                                kind=SAMPLE_KIND, data=encode(image, "png"), ext="png",
                                content_type="image/png", width=image.shape[1],
                                height=image.shape[0])
                new = {"step": step, "key": ckpt.key}
                previous = data.set_checkpoint(training_id=jid, checkpoint=new,
                                               sample={"step": step, "asset_id": sample.id})
                if previous and previous["key"] != new["key"]:
                    _delete_quietly(assets, records, previous)
                checkpoint = new
        if trainer.step_count < config.steps or records.is_cancel_requested(job_id=jid):
            # cancelled at the next step: nothing half-written is kept
            _delete_quietly(assets, records, checkpoint)
            data.set_adapter(training_id=jid, adapter=None, checkpoint=None)
            records.cancel_job(job_id=jid, reason=f"cancelled at step {trainer.step_count}")
            return {"status": "cancelled", "step": trainer.step_count}
        losses = [float(x) for x in data.get_training(training_id=jid,
                                                      project=job.project).losses]
        if not losses or not all(np.isfinite(losses)):
            raise RuntimeError("the loss is not finite: lower learning_rate")
        records.update_progress(job_id=jid, progress=0.99, step="storing the adapter")
        image = trainer.sample(job.trigger_word)
        sample = _store(assets, records, project=job.project, job_id=jid, kind=SAMPLE_KIND,
                        data=encode(image, "png"), ext="png", content_type="image/png",
                        width=image.shape[1], height=image.shape[0])
        data.set_checkpoint(training_id=jid, checkpoint=checkpoint or {},
                            sample={"step": config.steps, "asset_id": sample.id})
        blob = trainer.adapter_bytes()
        try:
            registered = register_result(
                records=records, assets=assets, name=job.adapter_name, project=job.project,
                data=blob, base=job.base_model, trigger_word=job.trigger_word,
                dataset_id=job.dataset_id, training_id=jid, generator_app=job.generator_app,
                params={**job.config, "checkpoint_every": job.checkpoint_every},
                preview_asset=sample.id)
        except ApiError as exc:
            raise RuntimeError(f"the adapter could not be registered: {exc.message}") from None
        adapter = {"name": job.adapter_name, "base": job.base_model, "bytes": len(blob),
                   "trigger_words": [job.trigger_word], **registered}
        _delete_quietly(assets, records, checkpoint)
        data.set_adapter(training_id=jid, adapter=adapter, checkpoint=None)
        records.finish_job(job_id=jid, timings={"steps": config.steps},
                           model=job.adapter_name,
                           result={"adapter": adapter, "loss": losses[-1],
                                   "samples": [sample.id]},
                           asset_ids=[sample.id])
        return {"status": "succeeded", "adapter": adapter}
    finally:
        beat.close()
        records.close()


# Ray runs the task again when its worker dies (it resumes from the last checkpoint), at most
# twice; an exception raised by the training itself is not retried (it would fail again).
_task = ray.remote(max_retries=2, retry_exceptions=False)(run_training)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class TrainingQueue:
    """The cluster's training queue (named, one per namespace): `submit` → runs when fewer than
    `limit` trainings run; `status` lists them."""

    def __init__(self, limit: int = 1):
        self.limit = limit
        self.queue: collections.deque[TrainingJob] = collections.deque()
        self.running: dict[str, Any] = {}
        self._stores: dict[str, Any] = {}
        self._beats: asyncio.Task | None = None

    def _records(self, job: TrainingJob):
        key = repr(sorted(job.storage.items()))
        if key not in self._stores:
            self._stores[key] = _stores(job.storage)[0]
        return self._stores[key]

    async def set_limit(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._pump()

    async def submit(self, job: TrainingJob) -> None:
        self.queue.append(job)
        if self._beats is None:
            self._beats = asyncio.get_running_loop().create_task(self._beat_queued())
        self._pump()

    async def status(self) -> dict[str, Any]:
        return {"limit": self.limit, "running": list(self.running),
                "queued": [j.training_id for j in self.queue]}

    def _pump(self) -> None:
        while self.queue and len(self.running) < self.limit:
            job = self.queue.popleft()
            ref = _task.options(**job.resources).remote(job)
            self.running[job.training_id] = ref
            asyncio.get_running_loop().create_task(self._watch(job, ref))

    async def _watch(self, job: TrainingJob, ref) -> None:
        try:
            await ref
        except Exception as exc:  # noqa: BLE001 - whatever ended it is the job's reason
            reason = _reason(exc)
            logger.warning("training %s failed: %s", job.training_id, reason)
            try:
                await asyncio.to_thread(self._records(job).fail_job, job_id=job.training_id,
                                        error=reason)
            except Exception:  # noqa: BLE001
                logger.exception("training %s: could not record its failure", job.training_id)
        finally:
            self.running.pop(job.training_id, None)
            self._pump()

    async def _beat_queued(self) -> None:
        """Queued trainings beat (the stale-job sweeper fails queued jobs that do not); one
        cancelled while queued leaves the queue."""
        while True:
            await asyncio.sleep(5.0)
            for job in list(self.queue):
                try:
                    stop = await asyncio.to_thread(self._records(job).heartbeat,
                                                   job_id=job.training_id)
                except KeyError:
                    stop = True
                except Exception:  # noqa: BLE001
                    logger.exception("training %s: heartbeat failed", job.training_id)
                    continue
                if stop:
                    try:
                        self.queue.remove(job)
                    except ValueError:
                        pass


def _reason(exc: BaseException) -> str:
    from ray.exceptions import RayTaskError, WorkerCrashedError

    cause = exc
    while isinstance(cause, RayTaskError) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    if isinstance(exc, WorkerCrashedError) or isinstance(cause, WorkerCrashedError):
        return "the training worker crashed (its retries from the last checkpoint are spent)"
    message = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {message[-1] if message else ''}"[:500]


def training_queue(limit: int):
    """The cluster's queue actor (created by the first caller; later callers get it)."""
    return TrainingQueue.options(name=QUEUE_NAME, get_if_exists=True,
                                 lifetime="detached").remote(limit)


def job_dict(job: TrainingJob) -> dict[str, Any]:
    return asdict(job)
