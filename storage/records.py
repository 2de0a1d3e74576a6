"""Record store: jobs, assets, projects, chat sessions and messages, provider configs.

SQLAlchemy on SQLite (default: one file under the data dir) or Postgres (e.g. Supabase's
database through its connection string; ``postgres://`` URLs use psycopg 3). Constructing a
`RecordStore` upgrades the schema to the newest Alembic migration under a database-wide lock
(see `storage.migrate`), so several replicas may start at once.

All methods are synchronous and keyword-only; async callers run them in a thread. Every state
change is one conditional statement (``UPDATE … WHERE status IN …``), so concurrent replicas
cannot, say, resurrect a cancelled job: the first terminal state wins and later attempts
return False. Listings are newest first with opaque cursors (keyset pagination on
``(timestamp, id)``: stable when timestamps are equal, no skipped or repeated rows).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from common.errors import InputError
from storage import migrate
from storage.assets import AssetStore
from storage.tables import (
    ACTIVE_JOB_STATUSES,
    API_KEY_SCOPES,
    DEFAULT_API_KEY_SCOPES,
    JOB_STATUSES,
    LIBRARY_KINDS,
    MAX_TAG_CHARS,
    MESSAGE_ROLES,
    TERMINAL_JOB_STATUSES,
    USAGE_COUNTERS,
    USAGE_DIMENSIONS,
    ApiKey,
    Asset,
    AssetTag,
    Base,
    ChatSession,
    Job,
    LibraryItem,
    LoraAdapter,
    Message,
    Project,
    ProviderConfig,
    UsageRow,
    UTCDateTime,
    as_utc,
    utcnow,
)

__all__ = [
    "JOB_STATUSES", "ApiKeyRecord", "AssetRecord", "AssetView", "Base", "JobRecord",
    "LibraryRecord", "LoraRecord", "MessageRecord", "NewAsset", "Page", "ProjectRecord",
    "ProviderConfigRecord", "RecordStore", "SessionRecord", "hash_api_key", "new_id",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PAGE = 1000
PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SECRET_NAME = re.compile(r"key|secret|token|password|passwd|credential|auth", re.IGNORECASE)
_IN_CHUNK = 500  # bound the size of IN (...) lists


def _now() -> datetime:  # kept for callers of the previous module
    return utcnow()


def new_id(prefix: str) -> str:
    """`prefix`_ + 32 random hex digits (128 bits; uuid4's text without its object: ~1 us
    instead of ~3.5 per id on the request path)."""
    return f"{prefix}_{secrets.token_hex(16)}"


# -- records (what callers get back: plain frozen dataclasses, detached from the DB) -----------
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
    progress: float
    step: str | None
    result: Any
    cancel_requested: bool
    heartbeat_at: datetime | None
    updated_at: datetime | None


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
    # how to make it again (prompt, model, seed, ...): GET /v1/assets/{id}/recipe
    recipe: dict[str, Any] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class NewAsset:
    """An asset row to record (`add_assets`, or `finish_job` with the job's outputs): its
    object is already in the asset store under `key`."""

    id: str
    job_id: str | None
    kind: str
    store: str
    key: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    project: str = "default"
    recipe: dict[str, Any] | None = None


@dataclass(frozen=True)
class AssetView(AssetRecord):
    """An asset with the prompt and parameters of the job that made it (None without one)."""

    prompt: str | None
    params: dict[str, Any] | None
    model: str | None
    job_kind: str | None
    # its image analysis (`set_asset_analysis`), None/empty until it was analysed
    caption: str | None = field(default=None, kw_only=True)
    description: str | None = field(default=None, kw_only=True)
    tags: list[str] = field(default_factory=list, kw_only=True)
    analyzed_at: datetime | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class LibraryRecord:
    """A saved workflow or preset of a project."""

    id: str
    project: str
    kind: str
    name: str
    description: str | None
    body: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class LoraRecord:
    """A registered LoRA adapter: its file at `key` in asset store `store`."""

    name: str
    base: str
    store: str
    key: str
    sha256: str
    size_bytes: int
    rank: int
    description: str | None
    trigger_words: list[str]
    tags: list[str]
    default_weight: float
    preview_asset: str | None
    meta: dict[str, Any]
    project: str
    created_by: str | None
    created_at: datetime


@dataclass(frozen=True)
class ProjectRecord:
    id: str
    name: str
    description: str | None
    settings: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class MessageRecord:
    id: int
    session_id: str
    role: str
    content: str
    data: dict[str, Any]
    image_ids: list[str]
    created_at: datetime


@dataclass(frozen=True)
class SessionRecord:
    id: str
    project: str
    title: str | None
    data: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    messages: list[MessageRecord] = field(default_factory=list)


def redact_settings(value: Any) -> Any:
    """`value` with the values of secret-looking keys (api_key, token, password…) masked."""
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and _SECRET_NAME.search(k) and v
                else redact_settings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_settings(v) for v in value]
    return value


@dataclass(frozen=True)
class ProviderConfigRecord:
    name: str
    kind: str
    settings: dict[str, Any] = field(repr=False)
    created_at: datetime
    updated_at: datetime

    def __repr__(self) -> str:  # settings often hold API keys: never print them
        return (f"ProviderConfigRecord(name={self.name!r}, kind={self.kind!r}, "
                f"settings={redact_settings(self.settings)!r}, created_at={self.created_at!r}, "
                f"updated_at={self.updated_at!r})")


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as stored: never the token itself (that is shown once, at creation)."""

    id: str
    project: str
    name: str
    prefix: str
    scopes: list[str]
    requests_per_minute: int | None
    images_per_day: int | None
    created_at: datetime
    revoked_at: datetime | None
    model_seconds_per_day: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_api_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; pass `next_cursor` back for the next one (None: last page)."""

    items: list[T]
    next_cursor: str | None


def _record(cls: type[T], row: Any, **extra: Any) -> T:
    names = [f.name for f in fields(cls) if f.name not in extra and f.init]
    return cls(**{n: getattr(row, n) for n in names if hasattr(row, n)}, **extra)


# -- cursors ---------------------------------------------------------------------------------
def _encode_cursor(kind: str, when: datetime, ident: str | int) -> str:
    raw = json.dumps({"k": kind, "t": as_utc(when).isoformat(), "i": ident},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def job_cursor(job: JobRecord) -> str:
    """The cursor of a jobs listing that continues after `job` (an `after=<id>` parameter)."""
    return _encode_cursor("jobs", job.created_at, job.id)


def _decode_cursor(kind: str, cursor: str) -> tuple[datetime, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        # a crafted cursor must not reach the query: a kind, a timestamp and one id only
        ident = data["i"]
        if data["k"] != kind or not isinstance(data["t"], str) or not isinstance(ident, str) \
                or len(ident) > 128:
            raise ValueError(kind)
        return as_utc(datetime.fromisoformat(data["t"])), ident
    except Exception:
        raise InputError(f"cursor is not a valid {kind} cursor: pass back the next_cursor of "
                         f"a previous {kind} listing, unchanged", param="cursor") from None


MAX_TAGS = 32  # per asset, and per filter
MAX_SEARCH_WORDS = 8


def normalize_tags(tags: Sequence[str], *, param: str) -> list[str]:
    """Tags as stored and matched: stripped, lower case, each once, in order; InputError for
    an empty or too long one, or too many."""
    if isinstance(tags, str):
        tags = [tags]
    out = list(dict.fromkeys(t.strip().lower() for t in tags))
    if len(out) > MAX_TAGS:
        raise InputError(f"at most {MAX_TAGS} tags, got {len(out)}", param=param)
    for tag in out:
        if not tag or len(tag) > MAX_TAG_CHARS:
            raise InputError(f"a tag is 1-{MAX_TAG_CHARS} characters, got {tag!r}",
                             param=param)
    return out


def _search_words(q: str | None) -> list[str]:
    words = list(dict.fromkeys((q or "").lower().split()))
    if len(words) > MAX_SEARCH_WORDS:
        raise InputError(f"q has {len(words)} words; search with at most "
                         f"{MAX_SEARCH_WORDS}", param="q")
    return words


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InputError(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}",
                         param="limit")


def _check_one_of(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}",
                         param=name)


def _ts(value: datetime) -> ColumnElement:
    return literal(as_utc(value), UTCDateTime())


def _message_row(*, now: datetime, role: str, content: str,
                 data: dict[str, Any] | None = None,
                 image_ids: list[str] | None = None) -> dict[str, Any]:
    """A message's column values (`add_turn`), checked as `add_message` checks them."""
    _check_one_of("role", role, MESSAGE_ROLES)
    return {"role": role, "content": content, "data": data or {},
            "image_ids": list(image_ids or []), "created_at": now}


class RecordStore:
    def __init__(self, url: str, *, migrate_schema: bool = True, echo: bool = False):
        url = migrate.normalize_url(url)
        self._redacted_url = migrate.redact_url(url)
        is_sqlite = url.startswith("sqlite")
        # A pre-ping is one more round trip per checkout: worth it for a server whose
        # connections can drop (Postgres, poolers), not for a local SQLite file or memory.
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": not is_sqlite}
        connect_args: dict[str, Any] = {}
        if is_sqlite:
            connect_args = {"timeout": 30, "check_same_thread": False}
            if migrate.is_memory_sqlite(url):
                kwargs["poolclass"] = StaticPool  # one shared in-memory database
            elif make_url(url).database:
                # a first `photostudio keys create` before the server ever ran: make the
                # data dir (SQLite makes the file, not its folder) and migrate below
                Path(make_url(url).database).expanduser().parent.mkdir(parents=True,
                                                                       exist_ok=True)
        elif _behind_transaction_pooler(url):
            # pgbouncer-style transaction pooling (Supabase's port 6543) breaks server-side
            # prepared statements, which psycopg 3 uses after 5 executions of a query.
            connect_args["prepare_threshold"] = None
        self.engine = create_engine(url, connect_args=connect_args, **kwargs)
        if is_sqlite:
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):  # concurrent readers + one writer
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=30000")
                # retried on SQLITE_BUSY: replicas starting at once on a fresh file all switch
                # it to WAL, and SQLite does not wait on its busy timeout for that
                migrate.enable_wal(dbapi_conn, timeout_s=30)
                # WAL + NORMAL: no corruption on a crash, one fsync per checkpoint, not per
                # commit (a power cut may lose the last few records, never half of one).
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        if migrate_schema:
            migrate.upgrade(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"RecordStore(url={self._redacted_url!r})"

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raises if the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(select(literal(1)))

    # -- jobs -----------------------------------------------------------------------------
    def create_job(self, *, kind: str, prompt: str | None, params: dict[str, Any],
                   model: str | None, project: str = "default", start: bool = False) -> str:
        """A new job, `queued`; with `start`, already `running` (started and last seen now):
        for a caller that runs it at once, before anyone else knows its id (a queued job can
        be cancelled before it starts: see `start_job`)."""
        job_id = new_id("job")
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(insert(Job.__table__).values(
                id=job_id, kind=kind, status="running" if start else "queued", project=project,
                prompt=prompt, params=params, model=model, timings={}, asset_ids=[],
                progress=0.0, cancel_requested=False, created_at=now, updated_at=now,
                started_at=now if start else None, heartbeat_at=now if start else None))
        return job_id

    def start_job(self, *, job_id: str) -> bool:
        """queued → running. False when the job is no longer queued (e.g. cancelled)."""
        now = utcnow()
        return self._transition(job_id, ("queued",), status="running", started_at=now,
                                heartbeat_at=now)

    def heartbeat(self, *, job_id: str) -> bool:
        """Record that the worker is alive. Returns True when it should stop (cancel requested,
        or the job already ended, e.g. failed as stale)."""
        return self._touch(job_id)

    def update_progress(self, *, job_id: str, progress: float, step: str | None = None) -> bool:
        """Progress (0–1) and the current step's name; counts as a heartbeat. Returns True when
        the worker should stop (cancel requested, or the job already ended)."""
        if not isinstance(progress, (int, float)) or not math.isfinite(progress) \
                or not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be a number from 0 to 1, got {progress!r}")
        values: dict[str, Any] = {"progress": float(progress)}
        if step is not None:
            values["step"] = step
        return self._touch(job_id, **values)

    def finish_job(self, *, job_id: str, asset_ids: list[str] | None = None,
                   timings: dict[str, Any], model: str | None = None, result: Any = None,
                   assets: Sequence[NewAsset] = ()) -> bool:
        """→ succeeded, recording the job's output `assets` in the same transaction (the job's
        `asset_ids` default to theirs). False when the job had already ended (cancelled,
        failed as stale…): its status stays as it is, but the assets are recorded all the
        same, since their objects exist (retention finds and deletes them like any other).
        Nothing at all is written when the transaction fails (e.g. a duplicate asset id)."""
        if asset_ids is None:
            asset_ids = [a.id for a in assets]
        now = utcnow()
        values: dict[str, Any] = dict(status="succeeded", finished_at=now, updated_at=now,
                                      progress=1.0, asset_ids=asset_ids, timings=timings)
        if model:
            values["model"] = model
        if result is not None:
            values["result"] = result
        with self.engine.begin() as conn:
            # the INSERT first: on SQLite it takes the write lock before anything is read
            self._insert_assets(conn, assets, now)
            return self._transition_on(conn, job_id, ACTIVE_JOB_STATUSES, **values)

    def fail_job(self, *, job_id: str, error: str) -> bool:
        """→ failed with a reason. False (nothing changed) when the job had already ended."""
        return self._transition(job_id, ACTIVE_JOB_STATUSES, status="failed",
                                finished_at=utcnow(), error=error)

    def cancel_job(self, *, job_id: str, reason: str = "cancelled") -> bool:
        """→ cancelled (the worker acknowledges a cancel request, or an operator stops it).
        False when the job had already ended."""
        return self._transition(job_id, ACTIVE_JOB_STATUSES, status="cancelled",
                                finished_at=utcnow(), error=reason, cancel_requested=True)

    def request_cancel(self, *, job_id: str, project: str) -> JobRecord:
        """Ask for a job of `project` to stop (KeyError when there is none). A queued job is
        cancelled at once (no worker has it); a running one gets `cancel_requested` set, which
        its worker sees on its next heartbeat or progress update; an ended job is left as it
        is. Returns the job as it now stands."""
        if self.get_job(job_id=job_id, project=project) is None:
            raise KeyError(f"no job {job_id!r}")
        if not self._transition(job_id, ("queued",), status="cancelled", finished_at=utcnow(),
                                error="cancelled before it started", cancel_requested=True):
            self._transition(job_id, ("running",), cancel_requested=True)
        job = self.get_job(job_id=job_id, project=project)
        if job is None:  # deleted meanwhile
            raise KeyError(f"no job {job_id!r}")
        return job

    def is_cancel_requested(self, *, job_id: str) -> bool:
        with self._session() as s:
            flag = s.scalar(select(Job.cancel_requested).where(Job.id == job_id))
        if flag is None:
            raise KeyError(f"no job {job_id!r}")
        return bool(flag)

    def get_job(self, *, job_id: str, project: str) -> JobRecord | None:
        """The job, if it belongs to `project` (another project's job is None, like a missing
        one: every read by id is scoped to the caller's project)."""
        with self._session() as s:
            row = s.get(Job, job_id)
            return _record(JobRecord, row) if row and row.project == project else None

    def get_jobs(self, *, job_ids: list[str], project: str) -> dict[str, JobRecord]:
        """`get_job` for several ids in one query: id -> job, for the ids that are jobs of
        `project` (others are left out, as `get_job` gives None for them)."""
        if not job_ids:
            return {}
        with self._session() as s:
            rows = s.scalars(select(Job).where(Job.id.in_(job_ids), Job.project == project))
            return {row.id: _record(JobRecord, row) for row in rows}

    def list_jobs(self, *, project: str, status: str | None = None,
                  kind: str | None = None, created_after: datetime | None = None,
                  created_before: datetime | None = None, limit: int = 50,
                  cursor: str | None = None) -> Page[JobRecord]:
        """Newest first. ``created_after <= created_at < created_before`` (naive datetimes are
        taken as UTC)."""
        _check_limit(limit)
        q = select(Job)
        if status is not None:
            _check_one_of("status", status, JOB_STATUSES)
            q = q.where(Job.status == status)
        q = q.where(Job.project == project)
        if kind is not None:
            q = q.where(Job.kind == kind)
        if created_after is not None:
            q = q.where(Job.created_at >= _ts(created_after))
        if created_before is not None:
            q = q.where(Job.created_at < _ts(created_before))
        return self._page(q, Job.created_at, Job.id, "jobs", limit, cursor,
                          lambda row: _record(JobRecord, row))

    def fail_stale_jobs(self, *, older_than_s: float) -> list[str]:
        """Mark running jobs whose last heartbeat (or start) is older than `older_than_s`, and
        queued jobs created that long ago, as failed: their replica died or hung. Returns their
        ids. Run it periodically from any replica; conditional UPDATEs, safe to run from
        several at once."""
        if not older_than_s > 0:
            raise ValueError(f"older_than_s must be > 0, got {older_than_s!r}")
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than_s)
        last_seen = func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)
        with self._session.begin() as s:
            ids = list(s.scalars(
                update(Job)
                .where(Job.status == "running", last_seen < _ts(cutoff))
                .values(status="failed", finished_at=now, updated_at=now,
                        error=f"replica died or stopped responding: no heartbeat for more "
                              f"than {older_than_s:g}s; the job was marked failed")
                .returning(Job.id)
                .execution_options(synchronize_session=False)))
            # A job is started right after it is created (graphs.jobs.JobRunner): one still
            # queued this long lost its replica in between. (A job that waits in a queue on
            # purpose, a training, beats while it waits.)
            ids += s.scalars(
                update(Job)
                .where(Job.status == "queued",
                       func.coalesce(Job.heartbeat_at, Job.created_at) < _ts(cutoff))
                .values(status="failed", finished_at=now, updated_at=now,
                        error=f"never started: the replica that accepted it stopped within "
                              f"{older_than_s:g}s; the job was marked failed")
                .returning(Job.id)
                .execution_options(synchronize_session=False))
        if ids:
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            logger.warning("marked %d stale running job(s) failed: %s", len(ids), shown)
        return ids

    def delete_job(self, *, job_id: str, project: str) -> bool:
        """Delete one job record of `project` (its assets are the caller's to delete first).
        False when `project` has no such job."""
        with self._session.begin() as s:
            return s.execute(delete(Job).where(Job.id == job_id, Job.project == project)
                             ).rowcount == 1

    def purge_jobs(self, *, created_before: datetime, dry_run: bool = False) -> list[str]:
        """Delete ended jobs created before `created_before` that have no asset records left
        (retention deletes the old assets first). Returns their ids. A dry run assumes the
        assets older than the cutoff are gone and lists the jobs that would then go."""
        cutoff = _ts(created_before)
        still_has_assets = exists().where(Asset.job_id == Job.id)
        if dry_run:
            still_has_assets = still_has_assets.where(Asset.created_at >= cutoff)
        where = (Job.status.in_(TERMINAL_JOB_STATUSES), Job.created_at < cutoff,
                 ~still_has_assets)
        with self._session.begin() as s:
            if dry_run:
                return list(s.scalars(select(Job.id).where(*where).order_by(Job.created_at)))
            return list(s.scalars(delete(Job).where(*where).returning(Job.id)
                                  .execution_options(synchronize_session=False)))

    def _transition(self, job_id: str, from_statuses: Sequence[str], **values: Any) -> bool:
        with self.engine.begin() as conn:
            return self._transition_on(conn, job_id, from_statuses, **values)

    @staticmethod
    def _transition_on(conn: Connection, job_id: str, from_statuses: Sequence[str],
                       **values: Any) -> bool:
        values.setdefault("updated_at", utcnow())
        res = conn.execute(update(Job.__table__)
                           .where(Job.id == job_id, Job.status.in_(from_statuses))
                           .values(**values))
        if res.rowcount == 1:
            return True
        if conn.scalar(select(Job.id).where(Job.id == job_id)) is None:
            raise KeyError(f"no job {job_id!r}")
        return False

    def _touch(self, job_id: str, **values: Any) -> bool:
        now = utcnow()
        with self._session.begin() as s:
            flags = list(s.scalars(
                update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE_JOB_STATUSES))
                .values(heartbeat_at=now, updated_at=now, **values)
                .returning(Job.cancel_requested)
                .execution_options(synchronize_session=False)))
            if flags:
                return bool(flags[0])
            if s.scalar(select(Job.id).where(Job.id == job_id)) is None:
                raise KeyError(f"no job {job_id!r}")
            return True  # ended (cancelled, failed as stale…): the worker should stop

    # -- assets ---------------------------------------------------------------------------
    def add_asset(self, *, asset_id: str, job_id: str | None, kind: str, store: str, key: str,
                  content_type: str, size_bytes: int, width: int, height: int,
                  project: str = "default") -> None:
        self.add_assets(assets=[NewAsset(
            id=asset_id, job_id=job_id, kind=kind, store=store, key=key,
            content_type=content_type, size_bytes=size_bytes, width=width, height=height,
            project=project)])

    def add_assets(self, *, assets: Sequence[NewAsset]) -> None:
        """Record assets whose objects are stored, all or none (one transaction)."""
        with self.engine.begin() as conn:
            self._insert_assets(conn, assets, utcnow())

    @staticmethod
    def _insert_assets(conn: Connection, assets: Sequence[NewAsset], now: datetime) -> None:
        if assets:
            conn.execute(insert(Asset.__table__),
                         [{**asdict(a), "created_at": now} for a in assets])

    def get_asset(self, *, asset_id: str, project: str) -> AssetRecord | None:
        """The asset's record, if it belongs to `project` (else None, like a missing one)."""
        with self._session() as s:
            row = s.get(Asset, asset_id)
            return _record(AssetRecord, row) if row and row.project == project else None

    def list_assets(self, *, project: str, kind: str | None = None,
                    tags: Sequence[str] = (), q: str | None = None,
                    limit: int = 50, cursor: str | None = None) -> Page[AssetView]:
        """A project's assets, newest first, each with its job's prompt and parameters and
        its analysis (caption, description, tags). `tags`: only assets with every one of
        them (exact, case-insensitive). `q`: only assets where every word of it is in the
        caption, the description or the prompt (substring, case-insensitive) or starts one
        of their tags. A filtered page may hold fewer than `limit` rows only at the end."""
        _check_limit(limit)
        query = (select(Asset, Job.prompt, Job.params, Job.model, Job.kind.label("job_kind"))
                 .outerjoin(Job, Job.id == Asset.job_id).where(Asset.project == project))
        if kind is not None:
            query = query.where(Asset.kind == kind)
        for tag in normalize_tags(tags, param="tag"):
            query = query.where(exists().where(AssetTag.project == project,
                                               AssetTag.tag == tag,
                                               AssetTag.asset_id == Asset.id))
        for word in _search_words(q):
            pattern = "%" + _like_escape(word) + "%"
            query = query.where(or_(
                func.lower(Asset.caption).like(pattern, escape="\\"),
                func.lower(Asset.description).like(pattern, escape="\\"),
                func.lower(Job.prompt).like(pattern, escape="\\"),
                exists().where(AssetTag.project == project, AssetTag.asset_id == Asset.id,
                               AssetTag.tag.like(_like_escape(word) + "%", escape="\\"))))

        def view(row) -> AssetView:
            return _record(AssetView, row.Asset, prompt=row.prompt, params=row.params,
                           model=row.model, job_kind=row.job_kind)

        page = self._page(query, Asset.created_at, Asset.id, "assets", limit, cursor, view,
                          key=lambda row: (row.Asset.created_at, row.Asset.id))
        tags_of = self._tags_of([a.id for a in page.items if a.analyzed_at is not None])
        return Page(items=[replace(a, tags=tags_of.get(a.id, [])) for a in page.items],
                    next_cursor=page.next_cursor)

    def _tags_of(self, asset_ids: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        with self._session() as s:
            for i in range(0, len(asset_ids), _IN_CHUNK):
                rows = s.execute(select(AssetTag.asset_id, AssetTag.tag)
                                 .where(AssetTag.asset_id.in_(asset_ids[i:i + _IN_CHUNK]))
                                 .order_by(AssetTag.asset_id, AssetTag.position))
                for asset_id, tag in rows:
                    found.setdefault(asset_id, []).append(tag)
        return found

    def set_asset_analysis(self, *, asset_id: str, project: str, caption: str | None,
                           description: str | None, tags: Sequence[str]) -> bool:
        """Keep an asset's analysis (caption, description, tags: they replace the previous
        ones) for the gallery's search, in one transaction. False when `project` has no
        such asset."""
        tags = normalize_tags(tags, param="tags")
        now = utcnow()
        with self.engine.begin() as conn:
            touched = conn.execute(update(Asset.__table__).where(
                Asset.id == asset_id, Asset.project == project).values(
                    caption=caption, description=description, analyzed_at=now))
            if touched.rowcount != 1:
                return False
            conn.execute(delete(AssetTag.__table__).where(AssetTag.asset_id == asset_id))
            if tags:
                conn.execute(insert(AssetTag.__table__), [
                    {"asset_id": asset_id, "tag": tag, "project": project, "position": i}
                    for i, tag in enumerate(tags)])
        return True

    def get_asset_tags(self, *, asset_id: str, project: str) -> list[str] | None:
        """The asset's tags, in the analysis's order (None: `project` has no such asset)."""
        if self.get_asset(asset_id=asset_id, project=project) is None:
            return None
        return self._tags_of([asset_id]).get(asset_id, [])

    def iter_assets_created_before(self, *, created_before: datetime,
                                   batch_size: int = 500) -> Iterator[AssetRecord]:
        """Assets older than a cutoff, oldest first, fetched in batches (for retention; rows
        may be deleted while iterating)."""
        after: tuple[datetime, str] | None = None
        while True:
            q = select(Asset).where(Asset.created_at < _ts(created_before))
            if after is not None:
                q = q.where(tuple_(Asset.created_at, Asset.id) > tuple_(_ts(after[0]),
                                                                         literal(after[1])))
            q = q.order_by(Asset.created_at, Asset.id).limit(batch_size)
            with self._session() as s:
                rows = [_record(AssetRecord, r) for r in s.scalars(q)]
            yield from rows
            if len(rows) < batch_size:
                return
            after = (rows[-1].created_at, rows[-1].id)

    def delete_asset(self, *, asset_id: str, project: str, assets: AssetStore) -> bool:
        """Delete the object (through `assets`, which must be the store it lives in), then the
        record. False when `project` has no such asset. If the object cannot be deleted, the error
        propagates and the record stays (a later attempt retries)."""
        record = self.get_asset(asset_id=asset_id, project=project)
        if record is None:
            return False
        if record.store != assets.name:
            raise ValueError(f"asset {asset_id!r} lives in the {record.store!r} store, not in "
                             f"{assets.name!r}: pass that store")
        assets.delete(key=record.key)
        return self.delete_asset_record(asset_id=asset_id)

    def delete_asset_record(self, *, asset_id: str) -> bool:
        with self._session.begin() as s:
            # ON DELETE CASCADE does this where foreign keys are enforced; be explicit anyway
            s.execute(delete(AssetTag).where(AssetTag.asset_id == asset_id))
            return s.execute(delete(Asset).where(Asset.id == asset_id)).rowcount == 1

    # -- projects -------------------------------------------------------------------------
    def create_project(self, *, project_id: str, name: str | None = None,
                       description: str | None = None,
                       settings: dict[str, Any] | None = None) -> ProjectRecord:
        if not isinstance(project_id, str) or not PROJECT_ID.match(project_id):
            # param: the field of POST /v1/projects that carries it
            raise InputError("project_id must be 1–64 characters of a-z, 0-9, '-' or '_', "
                             f"starting with a letter or digit; got {project_id!r}", param="id")
        row = Project(id=project_id, name=name or project_id, description=description,
                      settings=settings or {}, created_at=utcnow())
        try:
            with self._session.begin() as s:
                s.add(row)
        except IntegrityError:
            raise InputError(f"project_id {project_id!r} already exists", param="id",
                             code="exists", status=409) from None
        return _record(ProjectRecord, row)

    def get_project(self, *, project_id: str) -> ProjectRecord | None:
        with self._session() as s:
            row = s.get(Project, project_id)
            return _record(ProjectRecord, row) if row else None

    def list_projects(self, *, limit: int = 50, cursor: str | None = None
                      ) -> Page[ProjectRecord]:
        _check_limit(limit)
        return self._page(select(Project), Project.created_at, Project.id, "projects", limit,
                          cursor, lambda row: _record(ProjectRecord, row))

    # -- API keys ---------------------------------------------------------------------------
    def create_api_key(self, *, project: str, name: str, scopes: Sequence[str] | None = None,
                       requests_per_minute: int | None = None,
                       images_per_day: int | None = None,
                       model_seconds_per_day: int | None = None) -> tuple[ApiKeyRecord, str]:
        """A new key of `project` (which must exist) and its token, ``psk_<43 chars>``: the
        only time the token is available. `scopes` None: `DEFAULT_API_KEY_SCOPES` (every scope
        but models and admin)."""
        scopes = list(DEFAULT_API_KEY_SCOPES if scopes is None else dict.fromkeys(scopes))
        for scope in scopes:
            _check_one_of("scope", scope, API_KEY_SCOPES)
        for label, value in (("requests_per_minute", requests_per_minute),
                             ("images_per_day", images_per_day),
                             ("model_seconds_per_day", model_seconds_per_day)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"{label} must be a positive integer, got {value!r}",
                                 param=label)
        if self.get_project(project_id=project) is None:
            raise InputError(f"no project {project!r}; create it first", param="project")
        token = "psk_" + secrets.token_urlsafe(32)
        row = ApiKey(id=new_id("key"), project=project, name=name, key_hash=hash_api_key(token),
                     prefix=token[:8], scopes=scopes, requests_per_minute=requests_per_minute,
                     images_per_day=images_per_day,
                     model_seconds_per_day=model_seconds_per_day, created_at=utcnow(),
                     revoked_at=None)
        with self._session.begin() as s:
            s.add(row)
        return _record(ApiKeyRecord, row), token

    # -- usage accounting ---------------------------------------------------------------------
    def add_usage(self, *, rows: Sequence[dict[str, Any]]) -> None:
        """Add usage sums (`storage.tables.USAGE_DIMENSIONS` + `USAGE_COUNTERS` per row) in
        one transaction: a row whose dimensions exist adds its counters to the stored ones
        (an upsert, so replicas flushing at once never lose each other's sums)."""
        if not rows:
            return
        table = UsageRow.__table__
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        stmt = upsert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(USAGE_DIMENSIONS),
            set_={c: table.c[c] + stmt.excluded[c] for c in USAGE_COUNTERS})
        with self.engine.begin() as conn:
            conn.execute(stmt, [dict(r) for r in rows])

    def usage_report(self, *, start: datetime, end: datetime, group_by: str,
                     project: str | None = None) -> list[dict[str, Any]]:
        """Sums of usage with ``start <= hour < end``, grouped by `group_by` (key, project,
        model, route or day), for one project (None: all). Each group: its counters, and
        ``model_seconds_by_deployment``."""
        columns = {"key": UsageRow.key_id, "project": UsageRow.project,
                   "model": UsageRow.model, "route": UsageRow.route}
        if group_by not in (*columns, "day"):
            raise InputError(f"group_by must be one of key, project, model, route, day; got "
                             f"{group_by!r}", param="group_by")
        q = select(UsageRow).where(UsageRow.bucket >= start, UsageRow.bucket < end)
        if project is not None:
            q = q.where(UsageRow.project == project)
        groups: dict[str, dict[str, Any]] = {}
        with self._session() as s:
            for row in s.execute(q).scalars():
                name = (as_utc(row.bucket).date().isoformat() if group_by == "day"
                        else getattr(row, columns[group_by].key))
                group = groups.setdefault(name, {
                    "group": name, **{c: 0 for c in USAGE_COUNTERS},
                    "model_seconds_by_deployment": {}, "statuses": {}})
                for c in USAGE_COUNTERS:
                    group[c] += getattr(row, c)
                if row.deployment:
                    by = group["model_seconds_by_deployment"]
                    by[row.deployment] = by.get(row.deployment, 0.0) + row.model_seconds
                else:
                    status = str(row.status)
                    group["statuses"][status] = group["statuses"].get(status, 0) + row.requests
        return [groups[k] for k in sorted(groups)]

    def authenticate_api_key(self, *, token: str) -> ApiKeyRecord | None:
        """The key whose token this is, revoked or not (None: no such key)."""
        with self._session() as s:
            row = s.execute(select(ApiKey).where(ApiKey.key_hash == hash_api_key(token))
                            ).scalar_one_or_none()
            return _record(ApiKeyRecord, row) if row else None

    def get_api_key(self, *, key_id: str) -> ApiKeyRecord | None:
        with self._session() as s:
            row = s.get(ApiKey, key_id)
            return _record(ApiKeyRecord, row) if row else None

    def list_api_keys(self, *, project: str | None = None, include_revoked: bool = False
                      ) -> list[ApiKeyRecord]:
        q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if project is not None:
            q = q.where(ApiKey.project == project)
        if not include_revoked:
            q = q.where(ApiKey.revoked_at.is_(None))
        with self._session() as s:
            return [_record(ApiKeyRecord, row) for row in s.execute(q).scalars()]

    def revoke_api_key(self, *, key_id: str) -> bool:
        """Revoke a key (at once, for every replica: keys are checked on each request).
        False: no such key, or already revoked."""
        with self._session.begin() as s:
            return s.execute(update(ApiKey).where(ApiKey.id == key_id,
                                                  ApiKey.revoked_at.is_(None))
                             .values(revoked_at=utcnow())).rowcount == 1

    def shared_secret(self, *, name: str) -> str:
        """A random secret every replica reads the same (created on first use; e.g. the key
        that signs asset URLs). Kept as a provider config of kind ``secret``."""
        found = self.get_provider_config(name=name)
        if found is None:
            try:
                found = self.create_provider_config(
                    name=name, kind="secret", settings={"secret": secrets.token_urlsafe(32)})
            except ValueError:  # another replica created it first
                found = self.get_provider_config(name=name)
        return found.settings["secret"]

    # -- chat sessions ----------------------------------------------------------------------
    def create_session(self, *, project: str = "default", title: str | None = None,
                       data: dict[str, Any] | None = None) -> SessionRecord:
        now = utcnow()
        row = ChatSession(id=new_id("sess"), project=project, title=title, data=data or {},
                          created_at=now, updated_at=now)
        with self._session.begin() as s:
            s.add(row)
        return _record(SessionRecord, row, messages=[])

    def add_message(self, *, session_id: str, role: str, content: str,
                    data: dict[str, Any] | None = None,
                    image_ids: list[str] | None = None) -> MessageRecord:
        """Append a message (and bump the session's `updated_at`). KeyError: no such session."""
        _check_one_of("role", role, MESSAGE_ROLES)
        now = utcnow()
        with self._session.begin() as s:
            # the UPDATE first: it takes the write lock (SQLite) and proves the session exists
            touched = s.execute(update(ChatSession).where(ChatSession.id == session_id)
                                .values(updated_at=now)
                                .execution_options(synchronize_session=False))
            if touched.rowcount != 1:
                raise KeyError(f"no session {session_id!r}")
            row = Message(session_id=session_id, role=role, content=content, data=data or {},
                          image_ids=list(image_ids or []), created_at=now)
            s.add(row)
            s.flush()
            return _record(MessageRecord, row)

    def add_turn(self, *, session_id: str | None, project: str,
                 messages: Sequence[dict[str, Any]]) -> str:
        """A chat turn in one transaction: create a session of `project` when `session_id` is
        None (as `create_session` does), else bump the session's `updated_at`, then append
        `messages` in order, each given as `add_message`'s keyword arguments (role, content,
        data, image_ids). Returns the session's id. Same errors as `add_message`, raised
        before anything is written: ValueError for a role, KeyError for an unknown session
        (a session of another project counts as unknown)."""
        (result,) = self.add_turns([{"session_id": session_id, "project": project,
                                     "messages": messages}])
        if isinstance(result, Exception):
            raise result
        return result

    def add_turns(self, turns: Sequence[dict[str, Any]]) -> list[str | Exception]:
        """Several chat turns (each `add_turn`'s keyword arguments) in one transaction: a
        group commit for a writer that collects the turns of concurrent requests. Returns,
        in order, each turn's session id or the error that turn alone would have raised
        (ValueError, KeyError, TypeError); a failed turn writes nothing, the others are
        written. An error of the database itself fails the transaction and is raised."""
        now = utcnow()
        results: list[str | Exception] = []
        rows: list[list[dict[str, Any]]] = []
        for turn in turns:
            try:
                rows.append([_message_row(now=now, **m) for m in turn["messages"]])
                results.append(turn["session_id"] or "")
            except (ValueError, TypeError) as exc:
                rows.append([])
                results.append(exc)
        new_sessions: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            for i, turn in enumerate(turns):
                if isinstance(results[i], Exception):
                    continue
                if turn["session_id"] is None:
                    results[i] = new_id("sess")
                    new_sessions.append({"id": results[i], "project": turn["project"],
                                         "title": None, "data": {}, "created_at": now,
                                         "updated_at": now})
                else:  # the UPDATE first: it takes the write lock (SQLite), proves the session
                    touched = conn.execute(update(ChatSession.__table__)
                                           .where(ChatSession.id == turn["session_id"],
                                                  ChatSession.project == turn["project"])
                                           .values(updated_at=now))
                    if touched.rowcount != 1:
                        results[i] = KeyError(f"no session {turn['session_id']!r}")
                        continue
                messages += [{**row, "session_id": results[i]} for row in rows[i]]
            if new_sessions:
                conn.execute(insert(ChatSession.__table__), new_sessions)
            if messages:  # sessions before their messages (foreign key), in turn order
                conn.execute(insert(Message.__table__), messages)
        return results

    def get_session(self, *, session_id: str, project: str, message_limit: int | None = None
                    ) -> SessionRecord | None:
        """The session of `project` with its messages, oldest first (the last `message_limit`
        if given); None when `project` has no such session."""
        with self._session() as s:
            row = s.get(ChatSession, session_id)
            if row is None or row.project != project:
                return None
            q = select(Message).where(Message.session_id == session_id)
            if message_limit is not None:
                _check_limit(message_limit)
                q = q.order_by(Message.id.desc()).limit(message_limit)
                messages = list(reversed(s.scalars(q).all()))
            else:
                messages = list(s.scalars(q.order_by(Message.id)))
            return _record(SessionRecord, row,
                           messages=[_record(MessageRecord, m) for m in messages])

    def list_sessions(self, *, project: str, limit: int = 50,
                      cursor: str | None = None) -> Page[SessionRecord]:
        """A project's sessions, most recently active first (without their messages)."""
        _check_limit(limit)
        q = select(ChatSession).where(ChatSession.project == project)
        return self._page(q, ChatSession.updated_at, ChatSession.id, "sessions", limit, cursor,
                          lambda row: _record(SessionRecord, row, messages=[]),
                          key=lambda row: (row.updated_at, row.id))

    def delete_session(self, *, session_id: str, project: str) -> bool:
        return bool(self._delete_sessions((ChatSession.id == session_id)
                                          & (ChatSession.project == project)))

    def expire_sessions(self, *, older_than: timedelta, dry_run: bool = False,
                        now: datetime | None = None) -> list[str]:
        """Delete sessions (and their messages) idle for longer than `older_than`."""
        cutoff = as_utc(now or utcnow()) - older_than
        condition = ChatSession.updated_at < _ts(cutoff)
        if dry_run:
            with self._session() as s:
                return list(s.scalars(select(ChatSession.id).where(condition)
                                      .order_by(ChatSession.updated_at)))
        return self._delete_sessions(condition)

    def _delete_sessions(self, condition: ColumnElement[bool]) -> list[str]:
        with self._session.begin() as s:
            ids = list(s.scalars(delete(ChatSession).where(condition).returning(ChatSession.id)
                                 .execution_options(synchronize_session=False)))
            # ON DELETE CASCADE does this where foreign keys are enforced; be explicit anyway
            for i in range(0, len(ids), _IN_CHUNK):
                s.execute(delete(Message).where(Message.session_id.in_(ids[i:i + _IN_CHUNK])))
        return ids

    # -- provider / model configs -------------------------------------------------------------
    def create_provider_config(self, *, name: str, kind: str, settings: dict[str, Any]
                               ) -> ProviderConfigRecord:
        if not name or len(name) > 128:
            raise InputError(f"name must be 1–128 characters, got {name!r}", param="name")
        now = utcnow()
        row = ProviderConfig(name=name, kind=kind, settings=settings, created_at=now,
                             updated_at=now)
        try:
            with self._session.begin() as s:
                s.add(row)
        except IntegrityError:
            raise InputError(f"a provider config named {name!r} already exists", param="name",
                             code="exists", status=409) from None
        return _record(ProviderConfigRecord, row)

    def get_provider_config(self, *, name: str) -> ProviderConfigRecord | None:
        with self._session() as s:
            row = s.get(ProviderConfig, name)
            return _record(ProviderConfigRecord, row) if row else None

    def list_provider_configs(self, *, kind: str | None = None) -> list[ProviderConfigRecord]:
        q = select(ProviderConfig).order_by(ProviderConfig.name)
        if kind is not None:
            q = q.where(ProviderConfig.kind == kind)
        with self._session() as s:
            return [_record(ProviderConfigRecord, r) for r in s.scalars(q)]

    def update_provider_config(self, *, name: str, kind: str | None = None,
                               settings: dict[str, Any] | None = None) -> ProviderConfigRecord:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if kind is not None:
            values["kind"] = kind
        if settings is not None:
            values["settings"] = settings
        with self._session.begin() as s:
            res = s.execute(update(ProviderConfig).where(ProviderConfig.name == name)
                            .values(**values).execution_options(synchronize_session=False))
            if res.rowcount != 1:
                raise KeyError(f"no provider config {name!r}")
        record = self.get_provider_config(name=name)
        if record is None:  # deleted meanwhile
            raise KeyError(f"no provider config {name!r}")
        return record

    def delete_provider_config(self, *, name: str) -> bool:
        with self._session.begin() as s:
            return s.execute(delete(ProviderConfig)
                             .where(ProviderConfig.name == name)).rowcount == 1

    # -- saved workflows and presets ---------------------------------------------------------
    def create_library_item(self, *, project: str, kind: str, name: str,
                            description: str | None, body: dict[str, Any],
                            item_id: str | None = None) -> LibraryRecord:
        if kind not in LIBRARY_KINDS:
            raise ValueError(f"kind must be one of {LIBRARY_KINDS}, got {kind!r}")
        now = utcnow()
        row = LibraryItem(id=item_id or new_id(kind[:2]), project=project, kind=kind,
                          name=name, description=description, body=body, version=1,
                          created_at=now, updated_at=now)
        try:
            with self._session.begin() as s:
                s.add(row)
        except IntegrityError:
            raise InputError(f"a {kind} with id {row.id!r} already exists", param="id",
                             code="exists", status=409) from None
        return _record(LibraryRecord, row)

    def get_library_item(self, *, item_id: str, project: str, kind: str
                         ) -> LibraryRecord | None:
        with self._session() as s:
            row = s.get(LibraryItem, item_id)
            ok = row is not None and row.project == project and row.kind == kind
            return _record(LibraryRecord, row) if ok else None

    def list_library_items(self, *, project: str, kind: str, limit: int = 50,
                           cursor: str | None = None) -> Page[LibraryRecord]:
        q = select(LibraryItem).where(LibraryItem.project == project, LibraryItem.kind == kind)
        return self._page(q, LibraryItem.created_at, LibraryItem.id, f"library-{kind}", limit,
                          cursor, lambda r: _record(LibraryRecord, r))

    def update_library_item(self, *, item_id: str, project: str, kind: str,
                            **values: Any) -> LibraryRecord | None:
        """Change name / description / body (one version more); None when it is missing."""
        values = {k: v for k, v in values.items() if k in ("name", "description", "body")}
        with self._session.begin() as s:
            res = s.execute(update(LibraryItem).where(
                LibraryItem.id == item_id, LibraryItem.project == project,
                LibraryItem.kind == kind).values(
                    **values, updated_at=utcnow(), version=LibraryItem.version + 1)
                .execution_options(synchronize_session=False))
            if res.rowcount != 1:
                return None
        return self.get_library_item(item_id=item_id, project=project, kind=kind)

    def delete_library_item(self, *, item_id: str, project: str, kind: str) -> bool:
        with self._session.begin() as s:
            return s.execute(delete(LibraryItem).where(
                LibraryItem.id == item_id, LibraryItem.project == project,
                LibraryItem.kind == kind)).rowcount == 1

    # -- registered LoRA adapters --------------------------------------------------------------
    def create_lora(self, *, name: str, base: str, store: str, key: str, sha256: str,
                    size_bytes: int, rank: int, project: str, description: str | None = None,
                    trigger_words: Sequence[str] = (), tags: Sequence[str] = (),
                    default_weight: float = 1.0, preview_asset: str | None = None,
                    meta: dict[str, Any] | None = None, created_by: str | None = None
                    ) -> LoraRecord:
        """Record a LoRA whose file is stored. 409 `InputError` when the name is taken."""
        row = LoraAdapter(name=name, base=base, store=store, key=key, sha256=sha256,
                          size_bytes=size_bytes, rank=rank, description=description,
                          trigger_words=list(trigger_words), tags=list(tags),
                          default_weight=default_weight, preview_asset=preview_asset,
                          meta=dict(meta or {}), project=project, created_by=created_by,
                          created_at=utcnow())
        try:
            with self._session.begin() as s:
                s.add(row)
        except IntegrityError:
            raise InputError(f"a LoRA named {name!r} is already registered: pick another "
                             "name, or delete it first (DELETE /v1/models/loras/{name})",
                             param="name", code="exists", status=409) from None
        return _record(LoraRecord, row)

    def get_lora(self, *, name: str) -> LoraRecord | None:
        with self._session() as s:
            row = s.get(LoraAdapter, name)
            return _record(LoraRecord, row) if row else None

    def list_loras(self, *, base: str | None = None) -> list[LoraRecord]:
        """Every registered LoRA (fitting `base`, when given), by name."""
        q = select(LoraAdapter).order_by(LoraAdapter.name)
        if base is not None:
            q = q.where(LoraAdapter.base == base)
        with self._session() as s:
            return [_record(LoraRecord, r) for r in s.scalars(q)]

    def delete_lora(self, *, name: str) -> bool:
        with self._session.begin() as s:
            return s.execute(delete(LoraAdapter).where(LoraAdapter.name == name)).rowcount == 1

    # -- helpers ----------------------------------------------------------------------------
    def _page(self, q, ts_col, id_col, kind: str, limit: int, cursor: str | None, to_record,
              key=lambda row: (row.created_at, row.id)) -> Page:
        if cursor is not None:
            when, ident = _decode_cursor(kind, cursor)
            q = q.where(tuple_(ts_col, id_col) < tuple_(_ts(when), literal(ident)))
        q = q.order_by(ts_col.desc(), id_col.desc()).limit(limit + 1)
        with self._session() as s:
            rows = list(s.execute(q)) if _is_multi_entity(q) else list(s.scalars(q))
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(kind, *key(rows[-1])) if more else None
        return Page(items=[to_record(r) for r in rows], next_cursor=next_cursor)


def _is_multi_entity(q) -> bool:
    return len(q.column_descriptions) > 1


def _behind_transaction_pooler(url: str) -> bool:
    u = make_url(url)
    return u.port == 6543 or "pooler.supabase.com" in (u.host or "")
