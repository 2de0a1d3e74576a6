"""Schema migrations (Alembic), applied at start — safely when several replicas start at once.

`upgrade(engine)` holds a database-wide lock for the whole upgrade, so exactly one process
migrates and the others wait, then find the schema at head and do nothing:

- Postgres: ``pg_advisory_xact_lock`` in the migration's own transaction (Postgres DDL is
  transactional: a failed upgrade leaves the previous schema). A transaction-scoped lock also
  works through a transaction-mode pooler (Supabase's port 6543).
- SQLite: the migration runs in one ``BEGIN EXCLUSIVE`` transaction on its own connection;
  other processes wait on SQLite's busy timeout. Switching a fresh file to WAL, the one step
  before that lock, is retried on SQLITE_BUSY (see `enable_wal`).

Databases created before migrations existed (tables, no ``alembic_version``) are stamped at
revision 0001 and upgraded from there.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, pool, text
from sqlalchemy.engine import make_url

from storage.tables import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
LEGACY_REVISION = "0001"
# pg_advisory_xact_lock key: any constant 64-bit integer shared by all replicas
_PG_LOCK_KEY = 0x70686F746F737464  # "photostd"
_SQLITE_BUSY_TIMEOUT_S = 120
_sleep = time.sleep  # the back-off of `enable_wal` (tests replace it)

logger = logging.getLogger(__name__)


def normalize_url(url: str) -> str:
    """Postgres URLs as Supabase and Heroku print them (``postgres://``, ``postgresql://``)
    use the psycopg 3 driver (installed) rather than SQLAlchemy's default psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and reprs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a parseable URL: say nothing about it
        return "<unparseable database url>"


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % (e.g. in an encoded password) must be %%
        cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def is_memory_sqlite(url: str) -> bool:
    u = make_url(url)
    return u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY
    return "database is locked" in str(exc)


def enable_wal(dbapi_conn: sqlite3.Connection, *, timeout_s: float) -> str:
    """``PRAGMA journal_mode=WAL`` on a new SQLite connection, retried on SQLITE_BUSY for up to
    `timeout_s`; returns the journal mode now in force (``memory`` for an in-memory database).

    The mode is stored in the file, so once it is WAL the pragma writes nothing. Switching a
    file that is not WAL yet is a read-then-write: SQLite reads the header under a shared lock,
    then asks for the write lock. When another connection holds or wants that lock (replicas
    starting at once on a fresh file all switch it; any writer in rollback mode), SQLite
    answers SQLITE_BUSY at once, without calling the busy handler (waiting while holding the
    shared lock could deadlock), so the busy timeout does not help: the statement itself is
    retried, with a short back-off, once the lock is gone (by then the other connection has
    usually switched the file already)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return str(cur.fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        finally:
            cur.close()
        _sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)


@contextmanager
def _locked_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that holds the migration lock."""
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            yield conn
    elif dialect == "sqlite" and not is_memory_sqlite(str(engine.url)):
        # A private engine: pysqlite's own transaction handling is switched off so that
        # SQLAlchemy's BEGIN is ours, and EXCLUSIVE (not deferred) from the first statement.
        locker = create_engine(engine.url, poolclass=pool.NullPool,
                               connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S})

        @event.listens_for(locker, "connect")
        def _autocommit_driver(dbapi_conn, _record):
            dbapi_conn.isolation_level = None
            enable_wal(dbapi_conn, timeout_s=_SQLITE_BUSY_TIMEOUT_S)  # as the store's engine

        @event.listens_for(locker, "begin")
        def _begin_exclusive(conn):
            conn.exec_driver_sql("BEGIN EXCLUSIVE")

        try:
            with locker.begin() as conn:
                yield conn
        finally:
            locker.dispose()
    else:  # in-memory SQLite (one process) or another backend: no cross-process lock
        with engine.begin() as conn:
            yield conn


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the schema to `revision` under the migration lock; returns (before, after)."""
    with _locked_connection(engine) as conn:
        before = current_revision(conn)
        cfg = alembic_config(connection=conn)
        if before is None and inspect(conn).has_table("jobs"):
            logger.warning("database %s predates migrations: stamping it at %s",
                           redact_url(str(engine.url)), LEGACY_REVISION)
            command.stamp(cfg, LEGACY_REVISION)
            before = LEGACY_REVISION
        command.upgrade(cfg, revision)
        after = current_revision(conn)
    if before != after:
        logger.info("database %s upgraded from %s to %s", redact_url(str(engine.url)),
                    before or "<empty>", after)
    return before, after


def check(engine: Engine) -> list:
    """Differences between the tables and the migrated schema (empty when in sync), as
    ``alembic check`` sees them."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)
