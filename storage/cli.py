"""`photostudio db …` and `photostudio storage …`: schema migrations and retention.

    photostudio db upgrade [--database-url URL]       apply migrations (replica-safe)
    photostudio db check [--database-url URL]         models and migrations agree?
    photostudio storage cleanup --older-than 30d [--dry-run] [--database-url URL]
    photostudio keys create --project P [--name N] [--scope S ...] [--requests-per-minute N]
                            [--images-per-day N] [--create-project]   (token on stdout, once)
    photostudio keys list [--project P] [--all]
    photostudio keys revoke KEY_ID

Configuration comes from `storage.config.StorageSettings` (``PHOTOSTUDIO_*`` variables and
`.env`), or from the settings factory `add_subcommands` is given; flags override it.

`graphs.cli` imports this module for every ``photostudio`` command (``--help`` included), so
what the commands need is imported inside them, not at the top: the database stack
(`storage.records`, `storage.migrate`, `storage.tables`: SQLAlchemy and Alembic, about a second
of imports) and the settings (`storage.config`: pydantic-settings and the S3 store's modules,
a few hundred ms).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from storage.assets import AssetStore
from storage.key_events import is_redis_url, revoke_api_key

if TYPE_CHECKING:  # the database stack: see above
    from storage.records import AssetRecord, RecordStore

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` (also ``s`` and ``w``) → timedelta."""
    match = _DURATION.match(text or "")
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"older_than must be a positive duration like 30d, 12h or 90m "
                         f"(units: s, m, h, d, w); got {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def db_upgrade(url: str) -> str | None:
    """Upgrade the database at `url` to the newest migration; returns that revision."""
    from sqlalchemy import create_engine

    from storage import migrate

    engine = create_engine(migrate.normalize_url(url))
    try:
        _, after = migrate.upgrade(engine)
        return after
    finally:
        engine.dispose()


def db_check(url: str) -> list:
    """Differences between the models and the database's schema (empty: in sync)."""
    from sqlalchemy import create_engine

    from storage import migrate

    engine = create_engine(migrate.normalize_url(url))
    try:
        return migrate.check(engine)
    finally:
        engine.dispose()


@dataclass
class CleanupReport:
    cutoff: datetime
    dry_run: bool
    assets: list[AssetRecord] = field(default_factory=list)  # deleted (or, dry run, to be)
    jobs: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (asset id, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (asset id, error)


def cleanup(older_than: timedelta, dry_run: bool, *, records: RecordStore,
            assets: AssetStore, now: datetime | None = None) -> CleanupReport:
    """Retention: delete what is older than `older_than` — assets (object first, then its
    record; a failed object delete keeps the record so a later run retries), then ended jobs
    left without assets, then chat sessions idle that long (with their messages). Queued and
    running jobs are never deleted. `dry_run` lists what would go and deletes nothing."""
    from storage.tables import as_utc, utcnow

    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be positive, got {older_than}")
    now = as_utc(now) if now else utcnow()
    cutoff = now - older_than
    report = CleanupReport(cutoff=cutoff, dry_run=dry_run)
    for record in records.iter_assets_created_before(created_before=cutoff):
        if record.store != assets.name:
            report.skipped.append((record.id, f"stored in {record.store!r}, not in the "
                                              f"configured {assets.name!r} store"))
            continue
        if not dry_run:
            try:
                assets.delete(key=record.key)
                records.delete_asset_record(asset_id=record.id)
            except Exception as exc:
                logger.warning("could not delete asset %s (%s): %s", record.id, record.key, exc)
                report.failed.append((record.id, f"{type(exc).__name__}: {exc}"))
                continue
        report.assets.append(record)
    report.jobs = records.purge_jobs(created_before=cutoff, dry_run=dry_run)
    report.sessions = records.expire_sessions(older_than=older_than, dry_run=dry_run, now=now)
    return report


# -- argparse ---------------------------------------------------------------------------------
SettingsFactory = Callable[[], Any]


def _default_settings():
    from storage.config import StorageSettings

    return StorageSettings()


def add_subcommands(subparsers: argparse._SubParsersAction,
                    settings_factory: SettingsFactory | None = None) -> None:
    """Add ``db`` and ``storage`` to a parser's subcommands. `settings_factory` returns an
    object with `StorageSettings`' fields and methods (default: `StorageSettings()`)."""
    factory = settings_factory or _default_settings

    db = subparsers.add_parser("db", help="database schema (Alembic migrations)")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply migrations up to the newest (replica-safe)")
    up.add_argument("--database-url", default=None,
                    help="SQLAlchemy URL (default: $PHOTOSTUDIO_DATABASE_URL or the SQLite "
                         "file in the data dir)")
    up.set_defaults(func=lambda ns: _db_upgrade(ns, factory))
    ck = dbsub.add_parser("check", help="fail if the models and the migrations disagree")
    ck.add_argument("--database-url", default=None)
    ck.set_defaults(func=lambda ns: _db_check(ns, factory))

    st = subparsers.add_parser("storage", help="asset and record retention")
    stsub = st.add_subparsers(dest="storage_command", required=True)
    cl = stsub.add_parser("cleanup", help="delete assets, ended jobs and idle chat sessions "
                                          "older than a duration")
    cl.add_argument("--older-than", required=True, type=_duration_arg,
                    help="e.g. 30d, 12h, 90m")
    cl.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    cl.add_argument("--database-url", default=None)
    cl.set_defaults(func=lambda ns: _cleanup(ns, factory))

    from storage.tables import API_KEY_SCOPES

    keys = subparsers.add_parser("keys", help="API keys (Authorization: Bearer <key>)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key; prints its token once (stdout)")
    kc.add_argument("--project", default="default", help="the key's project (default: default)")
    kc.add_argument("--name", default=None, help="what the key is for (default: the project)")
    kc.add_argument("--scope", action="append", choices=API_KEY_SCOPES, dest="scopes",
                    help="repeat for several; default: generate, tools, chat (models: "
                    "register LoRAs; admin: everything)")
    kc.add_argument("--requests-per-minute", type=int, default=None,
                    help="this key's limit (default: the gateway's)")
    kc.add_argument("--images-per-day", type=int, default=None,
                    help="this key's quota (default: the gateway's)")
    kc.add_argument("--model-seconds-per-day", type=int, default=None,
                    help="this key's quota of model time (default: unlimited)")
    kc.add_argument("--create-project", action="store_true",
                    help="create the project if it does not exist")
    kc.add_argument("--database-url", default=None)
    kc.set_defaults(func=lambda ns: _keys_create(ns, factory))
    kl = ksub.add_parser("list", help="list keys (never their tokens)")
    kl.add_argument("--project", default=None, help="only this project's")
    kl.add_argument("--all", action="store_true", help="include revoked keys")
    kl.add_argument("--database-url", default=None)
    kl.set_defaults(func=lambda ns: _keys_list(ns, factory))
    kr = ksub.add_parser("revoke", help="revoke a key (refused from the next request on)")
    kr.add_argument("key_id")
    kr.add_argument("--database-url", default=None)
    kr.set_defaults(func=lambda ns: _keys_revoke(ns, factory))


def _duration_arg(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _database_url(ns: argparse.Namespace, factory: SettingsFactory) -> str:
    return ns.database_url or factory().resolved_database_url()


def _db_upgrade(ns: argparse.Namespace, factory: SettingsFactory) -> int:
    from storage.migrate import redact_url

    url = _database_url(ns, factory)
    revision = db_upgrade(url)
    print(f"{redact_url(url)}: schema at revision {revision}")
    return 0


def _db_check(ns: argparse.Namespace, factory: SettingsFactory) -> int:
    diffs = db_check(_database_url(ns, factory))
    for diff in diffs:
        print(f"differs: {diff}")
    print("models and migrations agree" if not diffs else
          f"{len(diffs)} difference(s): write a migration (alembic revision --autogenerate)")
    return 1 if diffs else 0


def _cleanup(ns: argparse.Namespace, factory: SettingsFactory) -> int:
    from storage.records import RecordStore

    settings = factory()
    records = RecordStore(ns.database_url or settings.resolved_database_url())
    try:
        assets = settings.build_asset_store()
        report = cleanup(ns.older_than, ns.dry_run, records=records, assets=assets)
    finally:
        records.close()
    verb = "would delete" if report.dry_run else "deleted"
    print(f"cutoff {report.cutoff.isoformat()} ({'dry run' if report.dry_run else 'applied'})")
    for asset in report.assets:
        print(f"  {verb} asset {asset.id} {asset.key} ({asset.created_at.isoformat()})")
    for job_id in report.jobs:
        print(f"  {verb} job {job_id}")
    for session_id in report.sessions:
        print(f"  {verb} session {session_id}")
    for asset_id, why in report.skipped:
        print(f"  skipped asset {asset_id}: {why}")
    for asset_id, error in report.failed:
        print(f"  FAILED asset {asset_id}: {error}", file=sys.stderr)
    print(f"{verb}: {len(report.assets)} asset(s), {len(report.jobs)} job(s), "
          f"{len(report.sessions)} session(s); skipped {len(report.skipped)}, "
          f"failed {len(report.failed)}")
    return 1 if report.failed else 0


def _records(ns: argparse.Namespace, factory: SettingsFactory) -> RecordStore:
    from storage.records import RecordStore

    return RecordStore(_database_url(ns, factory))


def _keys_create(ns: argparse.Namespace, factory: SettingsFactory) -> int:
    records = _records(ns, factory)
    try:
        if ns.create_project and records.get_project(project_id=ns.project) is None:
            records.create_project(project_id=ns.project)
            print(f"created project {ns.project!r}", file=sys.stderr)
        try:
            key, token = records.create_api_key(
                project=ns.project, name=ns.name or ns.project, scopes=ns.scopes,
                requests_per_minute=ns.requests_per_minute, images_per_day=ns.images_per_day,
                model_seconds_per_day=ns.model_seconds_per_day)
        except ValueError as exc:
            hint = " (or pass --create-project)" if "no project" in str(exc) else ""
            print(f"error: {exc}{hint}", file=sys.stderr)
            return 2
    finally:
        records.close()
    print(f"created key {key.id} for project {key.project!r}, scopes: "
          f"{', '.join(key.scopes) or 'none'}; the token below is shown only now:",
          file=sys.stderr)
    print(token)
    return 0


def _keys_list(ns: argparse.Namespace, factory: SettingsFactory) -> int:
    records = _records(ns, factory)
    try:
        keys = records.list_api_keys(project=ns.project, include_revoked=ns.all)
    finally:
        records.close()
    for key in keys:
        state = f"revoked {key.revoked_at.isoformat()}" if key.revoked_at else "active"
        limits = (f"{key.requests_per_minute or 'default'} req/min, "
                  f"{key.images_per_day or 'default'} images/day")
        print(f"{key.id}  {key.prefix}…  project={key.project}  name={key.name!r}  "
              f"scopes={','.join(key.scopes) or '-'}  {limits}  {state}  "
              f"created {key.created_at.isoformat()}")
    print(f"{len(keys)} key(s)", file=sys.stderr)
    return 0


def _keys_revoke(ns: argparse.Namespace, factory: SettingsFactory) -> int:
    records = _records(ns, factory)
    try:
        # the gateway's settings carry the Redis URL its replicas listen on for revocations
        events_url = getattr(factory(), "rate_limit_storage", None)
        if revoke_api_key(records, key_id=ns.key_id, events_url=events_url):
            announced = " (announced to the gateway's replicas)" if is_redis_url(events_url) \
                else " (a running gateway without Redis refuses it within its key cache TTL)"
            print(f"revoked {ns.key_id}{announced}")
            return 0
        key = records.get_api_key(key_id=ns.key_id)
    finally:
        records.close()
    print(f"error: {'key already revoked' if key else 'no such key'}: {ns.key_id}",
          file=sys.stderr)
    return 1
