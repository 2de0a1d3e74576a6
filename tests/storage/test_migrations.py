"""Alembic migrations: empty → head, models and migrations in sync, pre-migration databases,
and several replicas starting at once on one fresh database."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from alembic import command
from sqlalchemy import create_engine, func, inspect, select, text

from storage import migrate
from storage.records import RecordStore
from storage.tables import Job, Project

TABLES = {"jobs", "assets", "projects", "sessions", "messages", "provider_configs",
          "alembic_version"}


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("pg_database")()


def test_upgrade_empty_database_to_head(fresh_url):
    engine = create_engine(fresh_url)
    try:
        before, after = migrate.upgrade(engine)
        assert (before, after) == (None, migrate.head_revision())
        assert TABLES <= set(inspect(engine).get_table_names())
        assert migrate.upgrade(engine) == (after, after)  # at head: nothing to do
    finally:
        engine.dispose()


def test_models_and_migrations_agree(fresh_url):
    engine = create_engine(fresh_url)
    try:
        migrate.upgrade(engine)
        assert migrate.check(engine) == []
        with engine.connect() as conn:  # what `alembic check` runs: raises on any diff
            command.check(migrate.alembic_config(connection=conn))
    finally:
        engine.dispose()


def test_check_notices_a_schema_drift(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'drift.db'}")
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_jobs_status_created"))
        diffs = migrate.check(engine)
        assert any(d[0] == "add_index" and d[1].name == "ix_jobs_status_created" for d in diffs)
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'down.db'}")
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(connection=conn), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(engine)
        assert migrate.check(engine) == []
    finally:
        engine.dispose()


def test_database_from_before_migrations_is_stamped_and_upgraded(tmp_path):
    """A gateway database made by `create_all` (jobs + assets, no alembic_version) keeps its
    rows and gains the new columns and tables."""
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(connection=conn), migrate.LEGACY_REVISION)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text(
            "INSERT INTO jobs (id, kind, status, project, prompt, params, model, created_at, "
            "timings, asset_ids) VALUES ('job_old', 'generation', 'succeeded', 'default', "
            "'a cat', '{\"n\": 1}', 'tiny-sd', '2026-11-01 10:00:00.000000', '{}', '[]')"))
    engine.dispose()
    records = RecordStore(url)
    try:
        job = records.get_job(job_id="job_old", project="default")
        assert (job.prompt, job.params, job.progress, job.cancel_requested) == \
            ("a cat", {"n": 1}, 0.0, False)
        assert job.created_at.isoformat() == "2026-11-01T10:00:00+00:00"
        assert migrate.check(records.engine) == []
        assert records.list_jobs(project="default").items[0].id == "job_old"
    finally:
        records.close()


def test_replicas_starting_at_once_migrate_exactly_once(fresh_url):
    """Four 'replicas' construct a RecordStore on one fresh database at the same moment: all
    come up, the schema is at head once, and the migration's seed row exists once."""
    barrier = threading.Barrier(4)
    stores: list[RecordStore] = []
    errors: list[BaseException] = []

    def start():
        try:
            barrier.wait(timeout=30)
            stores.append(RecordStore(fresh_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, errors
        assert len(stores) == 4
        with stores[0].engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == \
                migrate.head_revision()
            assert conn.scalar(select(func.count()).select_from(Project)) == 1
        job_ids = [s.create_job(kind="k", prompt=None, params={}, model=None) for s in stores]
        with stores[-1].engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Job)) == len(set(job_ids)) == 4
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("migrate_schema", [True, False],
                         ids=["migration-connection", "store-connection"])
def test_switch_to_wal_waits_for_a_writer_on_a_fresh_sqlite_file(tmp_path, monkeypatch,
                                                                 migrate_schema):
    """Switching a fresh file to WAL reads its header, then needs the write lock; while
    another connection holds that lock (a replica starting at the same moment), SQLite answers
    'database is locked' at once, busy timeout or not. A starting store waits for the lock
    instead (here: the other connection commits at the store's first back-off)."""
    path = tmp_path / "fresh.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock (the file is still in rollback mode)
    backoffs: list[float] = []

    def back_off(seconds: float) -> None:
        backoffs.append(seconds)
        if other.in_transaction:
            other.execute("COMMIT")

    monkeypatch.setattr(migrate, "_sleep", back_off)
    store = RecordStore(f"sqlite:///{path}", migrate_schema=migrate_schema)
    try:
        store.ping()
        assert backoffs, "the store never met the other connection's write lock"
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        if migrate_schema:
            with store.engine.connect() as conn:
                assert migrate.current_revision(conn) == migrate.head_revision()
    finally:
        store.close()
        other.close()


def test_switch_to_wal_gives_up_after_the_busy_timeout(tmp_path, monkeypatch):
    """A lock held for longer than the timeout still ends in 'database is locked'."""
    path = tmp_path / "held.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    backoffs: list[float] = []

    def back_off(seconds: float) -> None:
        backoffs.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(migrate, "_sleep", back_off)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            migrate.enable_wal(conn, timeout_s=0.1)
        assert len(backoffs) > 1  # it did wait and retry
    finally:
        conn.close()
        other.close()


def test_enable_wal_on_memory_and_wal_files(tmp_path):
    memory = sqlite3.connect(":memory:")
    assert migrate.enable_wal(memory, timeout_s=1) == "memory"
    memory.close()
    for _ in range(2):  # the second time, the file is WAL already
        conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
        assert migrate.enable_wal(conn, timeout_s=1) == "wal"
        conn.close()


def test_postgres_urls_use_psycopg3():
    assert migrate.normalize_url("postgres://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    assert migrate.normalize_url("postgresql://h/db") == "postgresql+psycopg://h/db"
    assert migrate.normalize_url("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    assert migrate.normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_memory_sqlite_works_in_process():
    records = RecordStore("sqlite://")
    try:
        job_id = records.create_job(kind="k", prompt=None, params={}, model=None)
        assert records.get_job(job_id=job_id, project="default").status == "queued"
    finally:
        records.close()
