"""Real components for the storage tests.

- `pg_admin`: the Postgres server on 127.0.0.1:5432 (trust auth); started with
  ``pg_ctlcluster`` when the port is closed (and stopped again at the end if we started it).
- `pg_database`: a factory of throwaway databases (``ps_test_<random>``), dropped at the end of
  the run, so parallel or interrupted runs never collide; `pg_url`: one for the whole run.
- `records`: a `RecordStore` on SQLite and on Postgres (parametrised), emptied per test.
- `s3_endpoint`: moto's S3 server over real HTTP on a free port; `s3_store`: an
  `S3AssetStore` on a fresh bucket there.
- `azurite`: Azurite's Blob service (the Azure Storage emulator, npm package `azurite`) on a
  free port, installed with npm into ``~/.cache/photostudio/azurite`` when missing (or the
  one ``$PHOTOSTUDIO_AZURITE_BLOB_URL`` points at); `make_azure_store`: an
  `AzureBlobAssetStore` on fresh containers there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
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
        AssetTag,
        ChatSession,
        Job,
        Message,
        Project,
        ProviderConfig,
    )

    with store.engine.begin() as conn:
        for table in (Message, ChatSession, AssetTag, Asset, Job, ProviderConfig, ApiKey):
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


# -- Azurite ----------------------------------------------------------------------------------
AZURITE_VERSION = "3.37.0"
AZURITE_ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


def azurite_cache() -> Path:
    return Path(os.environ.get("PHOTOSTUDIO_AZURITE_HOME")
                or Path.home() / ".cache" / "photostudio" / "azurite")


def azurite_binary() -> str:
    """`azurite-blob`: on PATH, in the cache folder, or installed there with npm now."""
    found = shutil.which("azurite-blob")
    if found:
        return found
    cache = azurite_cache()
    binary = cache / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return str(binary)
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("Azurite is not installed and npm is missing: install Node.js and npm, "
                    f"or `npm install -g azurite@{AZURITE_VERSION}`")
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache),
                           f"azurite@{AZURITE_VERSION}"], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0 or not binary.exists():
        pytest.fail(f"npm install azurite@{AZURITE_VERSION} failed: "
                    f"{(done.stderr or done.stdout)[-2000:]}")
    return str(binary)


@dataclass(frozen=True)
class Azurite:
    blob_url: str  # http://127.0.0.1:<port>/devstoreaccount1

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};BlobEndpoint={self.blob_url};")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    external = os.environ.get("PHOTOSTUDIO_AZURITE_BLOB_URL")
    if external:
        yield Azurite(external.rstrip("/"))
        return
    binary = azurite_binary()
    port = free_port()
    location = tmp_path_factory.mktemp("azurite")
    log = open(location / "azurite.log", "wb")  # noqa: SIM115 - closed at the end
    proc = subprocess.Popen([binary, "--blobHost", "127.0.0.1", "--blobPort", str(port),
                             "--location", str(location), "--silent", "--skipApiVersionCheck",
                             "--loose"], stdout=log, stderr=subprocess.STDOUT)

    def listening():
        if proc.poll() is not None:
            raise RuntimeError(f"Azurite exited ({proc.returncode}): "
                               f"{(location / 'azurite.log').read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, timeout=60, interval=0.2, what="Azurite to listen")
        yield Azurite(f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def make_azure_store(azurite: Azurite, *, auth: str = "key", **overrides):
    """An `AzureBlobAssetStore` on fresh containers; `auth`: key, connection_string or sas."""
    from storage.azure import AzureBlobAssetStore

    suffix = secrets.token_hex(4)
    settings: dict = dict(image_container=f"img-{suffix}", video_container=f"vid-{suffix}",
                          retry_initial_s=0.01, retry_max_s=0.05)
    settings.update(overrides)
    keyed = AzureBlobAssetStore(account_url=azurite.blob_url, account_key=AZURITE_KEY,
                                create_containers=True, **settings)
    if auth == "key":
        return keyed
    if auth == "connection_string":
        return AzureBlobAssetStore(connection_string=azurite.connection_string, **settings)
    if auth == "sas":
        from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

        from storage.tables import utcnow

        sas = generate_account_sas(
            AZURITE_ACCOUNT, AZURITE_KEY,
            resource_types=ResourceTypes(container=True, object=True),
            permission=AccountSasPermissions(read=True, write=True, delete=True, list=True,
                                             create=True, add=True),
            expiry=utcnow() + timedelta(hours=2))
        return AzureBlobAssetStore(account_url=azurite.blob_url, sas_token=sas, **settings)
    raise ValueError(auth)
