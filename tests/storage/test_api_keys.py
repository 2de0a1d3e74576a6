"""API keys in the record store (SQLite and Postgres): hashed, scoped, revocable; and the
`photostudio keys` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.records import hash_api_key
from storage.tables import ApiKey

REPO = Path(__file__).resolve().parents[2]


def test_create_stores_only_the_hash(records):
    key, token = records.create_api_key(project="default", name="ci")
    assert token.startswith("psk_") and len(token) == 47
    with records.engine.connect() as conn:
        row = conn.execute(select(ApiKey).where(ApiKey.id == key.id)).one()
    assert row.key_hash == hash_api_key(token) and token not in str(tuple(row))
    assert key.prefix == token[:8] and key.active
    assert key.scopes == ["generate", "tools", "chat"]  # default: not models, not admin


def test_authenticate_and_revoke(records):
    key, token = records.create_api_key(project="default", name="a", scopes=["tools"])
    found = records.authenticate_api_key(token=token)
    assert found.id == key.id and found.project == "default" and found.scopes == ["tools"]
    assert records.authenticate_api_key(token=token + "x") is None
    assert records.revoke_api_key(key_id=key.id) is True
    assert records.revoke_api_key(key_id=key.id) is False  # already revoked
    assert records.authenticate_api_key(token=token).active is False
    assert [k.id for k in records.list_api_keys()] == []
    assert [k.id for k in records.list_api_keys(include_revoked=True)] == [key.id]


def test_keys_belong_to_an_existing_project(records):
    with pytest.raises(ValueError, match="no project 'acme'"):
        records.create_api_key(project="acme", name="x")
    records.create_project(project_id="acme")
    key, _ = records.create_api_key(project="acme", name="x", requests_per_minute=5,
                                    images_per_day=7)
    assert (key.requests_per_minute, key.images_per_day) == (5, 7)
    records.create_api_key(project="default", name="y")
    assert [k.id for k in records.list_api_keys(project="acme")] == [key.id]


@pytest.mark.parametrize("bad", [{"scopes": ["root"]}, {"requests_per_minute": 0},
                                 {"images_per_day": -1}])
def test_bad_key_settings_are_refused(records, bad):
    with pytest.raises(ValueError):
        records.create_api_key(project="default", name="x", **bad)


def test_shared_secret_is_created_once(records):
    first = records.shared_secret(name="asset-url-signing")
    assert len(first) >= 32 and records.shared_secret(name="asset-url-signing") == first


def _cli(*args, db):
    return subprocess.run([sys.executable, "-m", "graphs.cli", "keys", *args,
                           "--database-url", db], capture_output=True, text=True, timeout=120)


def test_keys_cli_create_list_revoke(tmp_path):
    db = f"sqlite:///{tmp_path / 'k.db'}"
    made = _cli("create", "--project", "acme", "--scope", "generate", db=db)
    assert made.returncode == 2 and "--create-project" in made.stderr
    made = _cli("create", "--project", "acme", "--create-project", "--scope", "generate",
                "--images-per-day", "5", db=db)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()  # stdout holds only the token: KEY=$(photostudio keys create)
    assert token.startswith("psk_") and "\n" not in token
    listed = _cli("list", db=db)
    key_id = listed.stdout.split()[0]
    assert key_id.startswith("key_") and "project=acme" in listed.stdout
    assert "scopes=generate" in listed.stdout and "5 images/day" in listed.stdout
    assert token not in listed.stdout + listed.stderr
    assert _cli("revoke", key_id, db=db).returncode == 0
    again = _cli("revoke", key_id, db=db)
    assert again.returncode == 1 and "already revoked" in again.stderr
    assert key_id not in _cli("list", db=db).stdout
    assert "revoked" in _cli("list", "--all", db=db).stdout


def test_keys_cli_takes_the_models_scope(tmp_path, records):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    made = _cli("create", "--project", "default", "--create-project", "--scope", "generate",
                "--scope", "models", db=db)
    assert made.returncode == 0, made.stderr
    assert "scopes=generate,models" in _cli("list", db=db).stdout
    bad = _cli("create", "--project", "default", "--scope", "model", db=db)
    assert bad.returncode == 2 and "models" in bad.stderr  # argparse names the choices


def test_keys_create_before_the_server_ever_ran(tmp_path):
    """A newcomer's first command in a fresh folder: the default data dir does not exist yet.
    The database is created and migrated (no raw `sqlite3.OperationalError: unable to open
    database file`)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PHOTOSTUDIO_") or k == "PHOTOSTUDIO_ZOO_DIR"}
    made = subprocess.run([sys.executable, "-m", "graphs.cli", "keys", "create"], cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("psk_") and "Traceback" not in made.stderr
    assert (tmp_path / "data" / "photostudio.db").exists()
