"""Real components for the storage tests.

- `pg_admin`: the Postgres server on 127.0.0.1:5432 (trust auth); started with
  ``pg_ctlcluster`` when the port is closed (and stopped again at the end if we started it).
- `pg_database`: a factory of throwaway databases (``ps_test_<random>``), dropped at the end of
  the run, so parallel or interrupted runs never collide; `pg_url`: one for the whole run.
- `records`: a `RecordStore` on SQLite and on Postgres (parametrised), emptied per test.
- `s3_endpoint`: moto's S3 server over real HTTP on a free port; `s3_store`: an
  `S3AssetStore` on a fresh bucket there.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until

PG_HOST, PG_PORT = "127.0.0.1", 5432
S3_REGION = "us-east-1"
S3_ACCESS_KEY_ID = "AKIDPHOTOSTUDIOTEST"
S3_SECRET = "s3cr3t-Photostudio-do-not-log-0123456789"


def _pg_listening() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((PG_HOST, PG_PORT)) == 0


def _start_postgres() -> None:
    versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    if not versions:
        pytest.fail("Postgres is not listening on 127.0.0.1:5432 and no cluster is installed "
                    "(/etc/postgresql is empty): install postgresql or start a server")
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed: {done.stderr or done.stdout}")
    wait_until(_pg_listening, timeout=60, interval=0.2, what="Postgres to listen on 5432")


@dataclass(frozen=True)
class PgAdmin:
    user: str
    admin_db: str

    def dsn(self, dbname: str | None = None) -> str:
        return f"host={PG_HOST} port={PG_PORT} user={self.user} dbname={dbname or self.admin_db}"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@{PG_HOST}:{PG_PORT}/{dbname}"


@pytest.fixture(scope="session")
def pg_admin():
    import psycopg

    started = False
    if not _pg_listening():
        _start_postgres()
        started = True

    def accepts():  # a just-started server refuses connections while it recovers
        for user in ("postgres", "root"):
            for dbname in ("test", "postgres"):
                try:
                    with psycopg.connect(PgAdmin(user, dbname).dsn(), connect_timeout=5):
                        return PgAdmin(user, dbname)
                except psycopg.OperationalError:
                    continue
        return None

    admin = wait_until(accepts, timeout=60, interval=0.5,
                       what="Postgres to accept user postgres or root")
    yield admin
    if started:
        versions = sorted(os.listdir("/etc/postgresql"))
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main",
                        "stop"], capture_output=True)


@pytest.fixture(scope="session")
def pg_database(pg_admin):
    """Factory: a new empty database's SQLAlchemy URL; all are dropped at the end."""
    import psycopg

    created: list[str] = []

    def make() -> str:
        name = f"ps_test_{secrets.token_hex(5)}"
        with psycopg.connect(pg_admin.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return pg_admin.url(name)

    yield make
    with psycopg.connect(pg_admin.dsn(), autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url(pg_database) -> str:
    return pg_database()


def empty_tables(store) -> None:
    """Delete every row except the default project the migrations seed."""
    from sqlalchemy import delete

    from storage.tables import (
        ApiKey,
        Asset,
        ChatSession,
        Job,
        Message,
        Project,
        ProviderConfig,
    )

    with store.engine.begin() as conn:
        for table in (Message, ChatSession, Asset, Job, ProviderConfig, ApiKey):
            conn.execute(delete(table))
        conn.execute(delete(Project).where(Project.id != "default"))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """A migrated-or-empty database of each kind: a fresh SQLite file, or the run's Postgres
    database emptied of rows."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def records(db_url):
    from storage.records import RecordStore

    store = RecordStore(db_url)
    empty_tables(store)
    yield store
    store.close()


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"

    def answering():
        import httpx

        try:
            return httpx.get(endpoint, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(answering, timeout=30, what="moto's S3 server")
    yield endpoint
    server.stop()


def make_s3_store(endpoint: str, **overrides):
    from storage.s3 import S3AssetStore

    settings = dict(bucket=f"ps-test-{secrets.token_hex(4)}", endpoint_url=endpoint,
                    region=S3_REGION, access_key_id=S3_ACCESS_KEY_ID,
                    secret_access_key=S3_SECRET, create_bucket=True, retry_initial_s=0.01,
                    retry_max_s=0.05)
    settings.update(overrides)
    return S3AssetStore(**settings)


@pytest.fixture
def s3_store(s3_endpoint):
    return make_s3_store(s3_endpoint)
