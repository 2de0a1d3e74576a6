"""Record store: jobs (one per generation or tool call) and assets, on SQLAlchemy.

SQLite is the default (one file under the data dir); any SQLAlchemy URL works. All methods
are synchronous and keyword-only; async callers run them in a thread.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    project: Mapped[str] = mapped_column(String(64), default="default", index=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    asset_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Asset(Base):
    __tablename__ = "assets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    project: Mapped[str] = mapped_column(String(64), default="default", index=True)
    kind: Mapped[str] = mapped_column(String(32))
    store: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    status: str
    project: str
    prompt: str | None
    params: dict[str, Any]
    model: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, Any]
    asset_ids: list[str]
    error: str | None


@dataclass(frozen=True)
class AssetRecord:
    id: str
    job_id: str | None
    project: str
    kind: str
    store: str
    key: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    created_at: datetime


def _job(row: Job) -> JobRecord:
    return JobRecord(**{c.name: getattr(row, c.name) for c in Job.__table__.columns})


def _asset(row: Asset) -> AssetRecord:
    return AssetRecord(**{c.name: getattr(row, c.name) for c in Asset.__table__.columns})


class RecordStore:
    def __init__(self, url: str):
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            connect_args = {"timeout": 30, "check_same_thread": False}
        self.engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):  # concurrent readers + one writer
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                # WAL + NORMAL: no corruption on a crash, one fsync per checkpoint, not per
                # commit (a power cut may lose the last few records, never half of one).
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    # -- jobs -----------------------------------------------------------------------------
    def create_job(self, *, kind: str, prompt: str | None, params: dict[str, Any],
                   model: str | None, project: str = "default") -> str:
        job_id = new_id("job")
        with self._session.begin() as s:
            s.add(Job(id=job_id, kind=kind, status="queued", project=project, prompt=prompt,
                      params=params, model=model, timings={}, asset_ids=[]))
        return job_id

    def start_job(self, *, job_id: str) -> None:
        self._update(job_id, status="running", started_at=_now())

    def finish_job(self, *, job_id: str, asset_ids: list[str], timings: dict[str, Any],
                   model: str | None = None) -> None:
        values: dict[str, Any] = dict(status="succeeded", finished_at=_now(),
                                      asset_ids=asset_ids, timings=timings)
        if model:
            values["model"] = model
        self._update(job_id, **values)

    def fail_job(self, *, job_id: str, error: str) -> None:
        self._update(job_id, status="failed", finished_at=_now(), error=error)

    def get_job(self, *, job_id: str) -> JobRecord | None:
        with self._session() as s:
            row = s.get(Job, job_id)
            return _job(row) if row else None

    def list_jobs(self, *, status: str | None = None, limit: int = 50) -> list[JobRecord]:
        with self._session() as s:
            q = select(Job).order_by(Job.created_at.desc()).limit(limit)
            if status:
                q = q.where(Job.status == status)
            return [_job(r) for r in s.scalars(q)]

    def _update(self, job_id: str, **values: Any) -> None:
        with self._session.begin() as s:
            row = s.get(Job, job_id)
            if row is None:
                raise KeyError(f"no job {job_id!r}")
            for name, value in values.items():
                setattr(row, name, value)

    # -- assets ---------------------------------------------------------------------------
    def add_asset(self, *, asset_id: str, job_id: str | None, kind: str, store: str, key: str,
                  content_type: str, size_bytes: int, width: int, height: int,
                  project: str = "default") -> None:
        with self._session.begin() as s:
            s.add(Asset(id=asset_id, job_id=job_id, project=project, kind=kind, store=store,
                        key=key, content_type=content_type, size_bytes=size_bytes,
                        width=width, height=height))

    def get_asset(self, *, asset_id: str) -> AssetRecord | None:
        with self._session() as s:
            row = s.get(Asset, asset_id)
            return _asset(row) if row else None
