"""Datasets and LoRA trainings in the record store (tables in `storage/tables.py`, migration
0007). A `DatasetRecords` works on a `RecordStore`'s engine: one connection pool, one schema.

Every read by id takes the caller's project: another project's dataset or training is None,
exactly like a missing one. A training is a job (`jobs.kind = training`: status, progress,
heartbeat, cancel flag, the stale-job sweeper) plus its `trainings` row (loss curve,
checkpoint, samples, adapter), both written in one transaction at creation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from storage.assets import AssetNotFound, AssetStore
from storage.records import (
    NewAsset,
    Page,
    RecordStore,
    _check_limit,
    _record,
    new_id,
)
from storage.tables import (
    CAPTION_SOURCES,
    Asset,
    Dataset,
    DatasetImage,
    Job,
    Training,
    utcnow,
)

TRAINING_KIND = "training"  # jobs.kind of a training


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    project: str
    name: str
    description: str | None
    kind: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DatasetImageRecord:
    id: str
    dataset_id: str
    asset_id: str
    filename: str | None
    caption: str | None
    caption_source: str | None
    size_bytes: int
    width: int
    height: int
    created_at: datetime


@dataclass(frozen=True)
class NewDatasetImage:
    asset_id: str
    size_bytes: int
    width: int
    height: int
    filename: str | None = None
    caption: str | None = None
    caption_source: str | None = None
    id: str = field(default_factory=lambda: new_id("dsi"))


@dataclass(frozen=True)
class DatasetStats:
    images: int
    captioned: int
    bytes: int
    min_width: int | None
    max_width: int | None
    min_height: int | None
    max_height: int | None
    caption_sources: dict[str, int]

    @property
    def caption_coverage(self) -> float:
        return self.captioned / self.images if self.images else 0.0


@dataclass(frozen=True)
class TrainingRecord:
    id: str
    project: str
    dataset_id: str
    name: str
    base_model: str
    params: dict[str, Any]
    total_steps: int
    step: int
    losses: list[float]
    checkpoint: dict[str, Any] | None
    samples: list[dict[str, Any]]
    attempts: int
    resumed_from: list[int]
    worker: dict[str, Any] | None
    adapter: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


class DatasetRecords:
    def __init__(self, records: RecordStore):
        self.records = records
        self.engine = records.engine

    # -- datasets ---------------------------------------------------------------------------
    def create_dataset(self, *, project: str, name: str, description: str | None = None,
                       kind: str = "image", tags: Sequence[str] = ()) -> DatasetRecord:
        now = utcnow()
        values = dict(id=new_id("ds"), project=project, name=name, description=description,
                      kind=kind, tags=list(tags), created_at=now, updated_at=now)
        with self.engine.begin() as conn:
            conn.execute(insert(Dataset.__table__).values(**values))
        return DatasetRecord(**values)

    def get_dataset(self, *, dataset_id: str, project: str) -> DatasetRecord | None:
        with self.records._session() as s:
            row = s.get(Dataset, dataset_id)
            return _record(DatasetRecord, row) if row and row.project == project else None

    def list_datasets(self, *, project: str, limit: int = 50, cursor: str | None = None
                      ) -> Page[DatasetRecord]:
        _check_limit(limit)
        q = select(Dataset).where(Dataset.project == project)
        return self.records._page(q, Dataset.created_at, Dataset.id, "datasets", limit, cursor,
                                  lambda row: _record(DatasetRecord, row))

    def add_images(self, *, dataset_id: str, images: Sequence[NewDatasetImage],
                   assets: Sequence[NewAsset] = ()) -> None:
        """Record images (and the assets just stored for them) in one transaction."""
        for image in images:
            if image.caption_source is not None and image.caption_source not in CAPTION_SOURCES:
                raise ValueError(f"caption_source must be one of {CAPTION_SOURCES}")
        now = utcnow()
        with self.engine.begin() as conn:
            if assets:
                conn.execute(insert(Asset.__table__),
                             [{**asdict(a), "created_at": now} for a in assets])
            if images:
                conn.execute(insert(DatasetImage.__table__),
                             [{**asdict(i), "dataset_id": dataset_id, "created_at": now}
                              for i in images])
            conn.execute(update(Dataset.__table__).where(Dataset.id == dataset_id)
                         .values(updated_at=now))

    def list_images(self, *, dataset_id: str) -> list[DatasetImageRecord]:
        with self.records._session() as s:
            rows = s.scalars(select(DatasetImage).where(DatasetImage.dataset_id == dataset_id)
                             .order_by(DatasetImage.created_at, DatasetImage.id))
            return [_record(DatasetImageRecord, r) for r in rows]

    def get_image(self, *, dataset_id: str, image_id: str) -> DatasetImageRecord | None:
        with self.records._session() as s:
            row = s.scalars(select(DatasetImage).where(DatasetImage.id == image_id,
                                                       DatasetImage.dataset_id == dataset_id)
                            ).first()
            return _record(DatasetImageRecord, row) if row is not None else None

    def delete_image(self, *, dataset_id: str, image_id: str, project: str,
                     assets: AssetStore) -> bool:
        """Delete one image of the dataset: its bytes, its asset record and its row (bytes
        first, as `delete_dataset`). False when the dataset has no such image."""
        image = self.get_image(dataset_id=dataset_id, image_id=image_id)
        if image is None:
            return False
        self._delete_asset_bytes([image.asset_id], project=project, assets=assets)
        with self.engine.begin() as conn:
            gone = conn.execute(delete(DatasetImage.__table__).where(
                DatasetImage.id == image_id, DatasetImage.dataset_id == dataset_id)).rowcount
            self._delete_asset_rows(conn, [image.asset_id], project=project)
            conn.execute(update(Dataset.__table__).where(Dataset.id == dataset_id)
                         .values(updated_at=utcnow()))
        return gone == 1

    def _delete_asset_bytes(self, asset_ids: list[str], *, project: str,
                            assets: AssetStore) -> None:
        """The stored bytes of these assets of `project` (already gone: fine). The first step
        of removing images: bytes before rows, so a failure leaves records that point at
        nothing (a second DELETE retries), never bytes nobody can find."""
        if not asset_ids:
            return
        with self.records._session() as s:
            keys = list(s.scalars(select(Asset.key).where(Asset.id.in_(asset_ids),
                                                          Asset.project == project)))
        for key in keys:
            try:
                assets.delete(key=key)
            except AssetNotFound:
                pass

    @staticmethod
    def _delete_asset_rows(conn: Any, asset_ids: list[str], *, project: str) -> None:
        """The asset records of removed images (after `_delete_asset_bytes`), in `conn`'s
        transaction."""
        if asset_ids:
            conn.execute(delete(Asset.__table__).where(Asset.id.in_(asset_ids),
                                                       Asset.project == project))

    def set_captions(self, *, dataset_id: str,
                     captions: dict[str, tuple[str | None, str | None]]) -> None:
        """image id -> (caption, source), in one transaction ((None, None): no caption)."""
        with self.engine.begin() as conn:
            for image_id, (caption, source) in captions.items():
                conn.execute(update(DatasetImage.__table__).where(
                    DatasetImage.id == image_id, DatasetImage.dataset_id == dataset_id)
                    .values(caption=caption, caption_source=source))
            conn.execute(update(Dataset.__table__).where(Dataset.id == dataset_id)
                         .values(updated_at=utcnow()))

    def stats(self, *, dataset_id: str) -> DatasetStats:
        with self.records._session() as s:
            row = s.execute(select(
                func.count(DatasetImage.id), func.count(DatasetImage.caption),
                func.coalesce(func.sum(DatasetImage.size_bytes), 0),
                func.min(DatasetImage.width), func.max(DatasetImage.width),
                func.min(DatasetImage.height), func.max(DatasetImage.height))
                .where(DatasetImage.dataset_id == dataset_id)).one()
            sources = dict(s.execute(
                select(DatasetImage.caption_source, func.count(DatasetImage.id))
                .where(DatasetImage.dataset_id == dataset_id,
                       DatasetImage.caption_source.is_not(None))
                .group_by(DatasetImage.caption_source)).all())
        return DatasetStats(images=row[0], captioned=row[1], bytes=int(row[2]),
                            min_width=row[3], max_width=row[4], min_height=row[5],
                            max_height=row[6], caption_sources=sources)

    def delete_dataset(self, *, dataset_id: str, project: str, assets: AssetStore) -> bool:
        """Delete the dataset, its images' bytes and their asset records. False when
        `project` has no such dataset. Bytes go first (`_delete_asset_bytes`)."""
        if self.get_dataset(dataset_id=dataset_id, project=project) is None:
            return False
        asset_ids = [i.asset_id for i in self.list_images(dataset_id=dataset_id)]
        self._delete_asset_bytes(asset_ids, project=project, assets=assets)
        with self.engine.begin() as conn:
            conn.execute(delete(DatasetImage.__table__)
                         .where(DatasetImage.dataset_id == dataset_id))
            self._delete_asset_rows(conn, asset_ids, project=project)
            return conn.execute(delete(Dataset.__table__).where(
                Dataset.id == dataset_id, Dataset.project == project)).rowcount == 1

    # -- trainings --------------------------------------------------------------------------
    def create_training(self, *, project: str, dataset_id: str, name: str, base_model: str,
                        params: dict[str, Any], total_steps: int, prompt: str | None = None
                        ) -> str:
        """A `training` job, queued, and its trainings row (one transaction); its id."""
        job_id = new_id("job")
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(insert(Job.__table__).values(
                id=job_id, kind=TRAINING_KIND, status="queued", project=project,
                prompt=prompt, params=params, model=base_model, timings={}, asset_ids=[],
                progress=0.0, cancel_requested=False, created_at=now, updated_at=now))
            conn.execute(insert(Training.__table__).values(
                id=job_id, project=project, dataset_id=dataset_id, name=name,
                base_model=base_model, params=params, total_steps=total_steps, step=0,
                losses=[], checkpoint=None, samples=[], attempts=0, resumed_from=[],
                worker=None, adapter=None, created_at=now, updated_at=now))
        return job_id

    def get_training(self, *, training_id: str, project: str) -> TrainingRecord | None:
        with self.records._session() as s:
            row = s.get(Training, training_id)
            return _record(TrainingRecord, row) if row and row.project == project else None

    def get_trainings(self, *, training_ids: list[str], project: str
                      ) -> dict[str, TrainingRecord]:
        """`get_training` for several ids in one query: id -> training of `project`."""
        if not training_ids:
            return {}
        with self.records._session() as s:
            rows = s.scalars(select(Training).where(Training.id.in_(training_ids),
                                                    Training.project == project))
            return {row.id: _record(TrainingRecord, row) for row in rows}

    def list_trainings(self, *, project: str, limit: int = 50, cursor: str | None = None
                       ) -> Page[TrainingRecord]:
        _check_limit(limit)
        q = select(Training).where(Training.project == project)
        return self.records._page(q, Training.created_at, Training.id, "trainings", limit,
                                  cursor, lambda row: _record(TrainingRecord, row))

    def begin_attempt(self, *, training_id: str, worker: dict[str, Any]) -> TrainingRecord:
        """A worker (re)starts the training: one more attempt, where it resumes from (the
        checkpoint's step; 0 without one), which worker it is. Returns the row as it now is.
        The loss curve is cut back to the checkpoint (steps after it are run again)."""
        with self.records._session.begin() as s:
            row = s.get(Training, training_id)
            if row is None:
                raise KeyError(f"no training {training_id!r}")
            start = int((row.checkpoint or {}).get("step", 0))
            row.attempts = row.attempts + 1
            row.resumed_from = [*row.resumed_from, start]
            row.losses = list(row.losses[:start])
            row.step = start
            row.worker = worker
            row.updated_at = utcnow()
            s.flush()
            return _record(TrainingRecord, row)

    def record_steps(self, *, training_id: str, step: int, losses: Sequence[float]) -> bool:
        """The loss of the steps since the last call (appended), the current step, and the
        job's progress (a heartbeat). True when the worker should stop (cancel requested, or
        the job ended)."""
        for value in losses:
            if not math.isfinite(value):
                raise ValueError(f"loss is not finite: {value!r}")
        with self.records._session.begin() as s:
            row = s.get(Training, training_id)
            if row is None:
                raise KeyError(f"no training {training_id!r}")
            row.losses = [*row.losses, *map(float, losses)]
            row.step = step
            row.updated_at = utcnow()
            total = row.total_steps
        return self.records.update_progress(
            job_id=training_id, progress=min(step / total, 1.0) if total else 0.0,
            step=f"step {step}/{total}")

    def set_checkpoint(self, *, training_id: str, checkpoint: dict[str, Any],
                       sample: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The new last checkpoint (and its sample image); returns the previous checkpoint
        (the caller deletes its bytes)."""
        with self.records._session.begin() as s:
            row = s.get(Training, training_id)
            if row is None:
                raise KeyError(f"no training {training_id!r}")
            previous = row.checkpoint
            row.checkpoint = checkpoint
            if sample is not None:
                row.samples = [*row.samples, sample]
            row.updated_at = utcnow()
        return previous

    def set_adapter(self, *, training_id: str, adapter: dict[str, Any] | None,
                    checkpoint: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Training.__table__).where(Training.id == training_id)
                         .values(adapter=adapter, checkpoint=checkpoint, updated_at=utcnow()))

    def count_active_trainings(self) -> int:
        with self.records._session() as s:
            return s.scalar(select(func.count(Job.id)).where(
                Job.kind == TRAINING_KIND, Job.status == "running")) or 0
