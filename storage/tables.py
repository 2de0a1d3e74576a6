"""SQLAlchemy tables of the record store. The schema is owned by the Alembic migrations in
`storage/migrations/`; a test checks that autogenerate finds no difference between the two.

Timestamps are stored in UTC and always come back timezone-aware (`UTCDateTime`), on SQLite
(which has no time zones) as on Postgres. Indexes follow the listing queries: newest first by
``(created_at, id)`` (or ``(updated_at, id)`` for chat sessions), optionally per project or
per status, so keyset pagination is an index range scan.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_JOB_STATUSES = ("queued", "running")
TERMINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")
MESSAGE_ROLES = ("user", "assistant", "system", "tool")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (naive inputs are taken as UTC).

    SQLite stores naive text: values are converted to UTC before writing so that text order
    is time order (cursors and range filters compare them).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect):
        """SQLite: the text SQLAlchemy's DATETIME writes (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC),
        made in one call (`sqlite_text`) instead of `process_bind_param` and then the
        dialect's %-formatting of a dict: a few microseconds less per value on every write."""
        if dialect.name == "sqlite":
            return sqlite_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def sqlite_text(value: datetime | None) -> str | None:
    """A datetime as SQLite stores `UTCDateTime`: naive UTC text with microseconds."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (Index("ix_projects_created", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_status_created", "status", "created_at", "id"),
        Index("ix_jobs_project_created", "project", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16))
    project: Mapped[str] = mapped_column(String(64), default="default")
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    asset_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # added for asynchronous jobs (migration 0002)
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    step: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False,
                                                   server_default=false())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True,
                                                        default=utcnow)


class Asset(Base):
    __tablename__ = "assets"
    __table_args__ = (Index("ix_assets_project_created", "project", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    project: Mapped[str] = mapped_column(String(64), default="default")
    kind: Mapped[str] = mapped_column(String(32))
    store: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # how it was made (prompt, negative, model, LoRAs, seed, steps, guidance, size, preset,
    # workflow node): also embedded in the image (PNG text chunk / WebP XMP)
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # its image analysis (POST /v1/images/analyze; migration 0008): searched by the gallery
    caption: Mapped[str | None] = mapped_column(Text, nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    analyzed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


MAX_TAG_CHARS = 64


class AssetTag(Base):
    """One tag of an asset (from its analysis): the gallery's tag filter is an index range
    scan on (project, tag)."""

    __tablename__ = "asset_tags"
    __table_args__ = (Index("ix_asset_tags_project_tag", "project", "tag", "asset_id"),)

    asset_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(MAX_TAG_CHARS), primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)  # the analysis's order (most telling first)


class ChatSession(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_project_updated", "project", "updated_at", "id"),
        Index("ix_sessions_updated", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), default="default")
    title: Mapped[str | None] = mapped_column(String(200), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_session", "session_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("sessions.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    image_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProviderConfig(Base):
    """A named provider/model configuration (e.g. an LLM endpoint), `settings` as JSON."""

    __tablename__ = "provider_configs"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


API_KEY_SCOPES = ("generate", "tools", "chat", "models", "admin")
# a key made without scopes gets these: registering models and admin work are asked for
DEFAULT_API_KEY_SCOPES = ("generate", "tools", "chat")


class ApiKey(Base):
    """An API key of one project. Only the SHA-256 of the token is stored (tokens are 256-bit
    random, so a fast hash is enough; nothing here can recover a token)."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_project_created", "project", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings, e.g. "psk_Ab12"
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    images_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_seconds_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


USAGE_DIMENSIONS = ("bucket", "project", "key_id", "route", "model", "provider", "status",
                    "deployment")
USAGE_COUNTERS = ("requests", "images", "videos", "pixels", "model_seconds", "tokens_in",
                  "tokens_out")


class UsageRow(Base):
    """Usage aggregated per hour and (project, key, route, model, provider, status,
    deployment): ingress replicas add their in-memory sums here in batches
    (`RecordStore.add_usage`), never one write per request. Request counts, images, pixels and
    tokens are on the rows with ``deployment = ''``; model seconds on one row per deployment
    that worked for those requests. ``key_id = ''``: auth off."""

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_project_bucket", "project", "bucket"),)

    bucket: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    project: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    route: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(64), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    images: Mapped[int] = mapped_column(Integer, default=0)
    videos: Mapped[int] = mapped_column(Integer, default=0)
    pixels: Mapped[int] = mapped_column(BigInteger, default=0)
    model_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)


LIBRARY_KINDS = ("workflow", "preset")


class LibraryItem(Base):
    """A project's saved workflow or preset: a name, a description and its JSON body (the
    graph, or the preset's template and parameters); `version` counts its updates."""

    __tablename__ = "library_items"
    __table_args__ = (Index("ix_library_items_project_kind_created", "project", "kind",
                            "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LoraAdapter(Base):
    """A registered LoRA adapter (POST /v1/models/loras): its .safetensors file lives in the
    asset store at `key` (`store` names which); a catalogue entry like the built-in ones
    (models/registry.py) for every project. `meta`: provenance as JSON (dataset, trigger
    word, training parameters…); `project`/`created_by`: who registered it."""

    __tablename__ = "loras"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    base: Mapped[str] = mapped_column(String(128))
    store: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rank: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    trigger_words: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    default_weight: Mapped[float] = mapped_column(Float, default=1.0)
    preview_asset: Mapped[str | None] = mapped_column(String(512), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    project: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


CAPTION_SOURCES = ("user", "file", "vision", "trigger")


class Dataset(Base):
    """A project's image dataset (e.g. to train a LoRA on): its images are assets (kind
    ``dataset``) listed in `dataset_images`, each with its caption."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_project_created", "project", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatasetImage(Base):
    """One image of a dataset: its asset and caption (`caption_source`: user, file (a .txt
    in an uploaded zip), vision (auto-captioned), trigger (the training's trigger word);
    None: no caption yet)."""

    __tablename__ = "dataset_images"
    __table_args__ = (Index("ix_dataset_images_dataset", "dataset_id", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(64), ForeignKey("datasets.id",
                                                                   ondelete="CASCADE"))
    asset_id: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    caption: Mapped[str | None] = mapped_column(Text, nullable=True)
    caption_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Training(Base):
    """What a LoRA training job adds to its job record (same id, `jobs.kind = training`):
    the dataset, the hyper-parameters, the loss curve, the last checkpoint, the samples and
    the resulting adapter."""

    __tablename__ = "trainings"
    __table_args__ = (Index("ix_trainings_project_created", "project", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"),
                                    primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))  # the resulting adapter's name
    base_model: Mapped[str] = mapped_column(String(128))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    total_steps: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0)
    losses: Mapped[list[float]] = mapped_column(JSON, default=list)
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    samples: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    resumed_from: Mapped[list[int]] = mapped_column(JSON, default=list)
    worker: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    adapter: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
