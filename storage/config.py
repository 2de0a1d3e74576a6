"""Storage configuration: which asset store and database, from ``PHOTOSTUDIO_*`` variables.

`StorageSettings` holds only the storage fields, so `graphs.settings.Settings` can inherit
them (one Settings object, fields defined once) and `photostudio db|storage` commands can read
them without importing the gateway. Secrets are `SecretStr`: masked in reprs and logs. S3
credentials left unset come from boto3's own chain (``AWS_ACCESS_KEY_ID``…, shared config,
instance roles), which is the better choice on a cluster.

`build_asset_store(kind, **settings)` picks and builds an asset store: the local one
(`storage.assets`) or an S3-compatible one (`storage.s3`, which imports only the shared
base and errors from `storage.assets`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.assets import AssetStore, LocalAssetStore
from storage.azure import AzureBlobAssetStore
from storage.s3 import S3AssetStore, SupabaseAssetStore

if TYPE_CHECKING:
    from storage.records import RecordStore

AssetStoreKind = Literal["local", "s3", "supabase", "azure"]
ASSET_STORE_KINDS: tuple[str, ...] = get_args(AssetStoreKind)


def build_asset_store(kind: str, **settings: Any) -> AssetStore:
    """An asset store from configuration. Settings left as None are ignored (so a caller can
    pass every configured field); unknown ones are an error.

    - ``local``: ``root`` (folder).
    - ``s3``: ``bucket``, optional ``prefix``, ``endpoint_url`` (MinIO, R2…), ``region``,
      ``access_key_id``/``secret_access_key``/``session_token`` (else boto3's normal chain:
      environment, shared config, instance role), ``presign_expiry_s``, ``addressing_style``,
      ``max_attempts``… (see `storage.s3.S3AssetStore`).
    - ``supabase``: ``bucket``, ``supabase_url`` (``https://<ref>.supabase.co``) or
      ``endpoint_url``, ``region``, S3 access keys — or ``anon_key`` + ``session_token`` (a
      user JWT) — and the options of ``s3`` (see `storage.s3.SupabaseAssetStore`).
    - ``azure``: ``connection_string``, or ``account_url`` + ``account_key`` / ``sas_token``;
      ``image_container``, ``video_container``, ``prefix``, ``presign_expiry_s``… (see
      `storage.azure.AzureBlobAssetStore`).
    """
    settings = {k: v for k, v in settings.items() if v is not None}
    stores: dict[str, type] = {"local": LocalAssetStore, "s3": S3AssetStore,
                               "supabase": SupabaseAssetStore, "azure": AzureBlobAssetStore}
    cls = stores.get(kind)
    if cls is None:
        raise ValueError(f"asset_store must be one of {', '.join(ASSET_STORE_KINDS)}; "
                         f"got {kind!r}")
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r} for the {kind!r} asset store; "
                         f"accepted: {', '.join(accepted)}")
    return cls(**settings)


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PHOTOSTUDIO_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="assets, SQLite database, Ray temp files")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL (sqlite:///…, postgresql://… e.g. Supabase's "
        "connection string); default sqlite:///<data_dir>/photostudio.db")
    asset_store: AssetStoreKind = Field("local", description="local, s3, supabase or azure")
    asset_root: Path | None = Field(None, description="local store folder (default "
                                    "<data_dir>/assets)")
    asset_bucket: str | None = Field(None, description="s3/supabase bucket; azure: the "
                                     "image container (default images)")
    asset_video_bucket: str | None = Field(None, description="azure: the video container "
                                           "(default videos)")
    asset_prefix: str = Field("", description="key prefix inside the bucket")
    asset_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, R2…); for supabase, default "
        "<supabase_url>/storage/v1/s3")
    asset_region: str | None = None
    asset_access_key_id: str | None = Field(None, description="default: boto3's chain")
    asset_secret_access_key: SecretStr | None = None
    asset_session_token: SecretStr | None = None
    asset_presign_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600,
                                        description="lifetime of presigned asset URLs")
    asset_max_attempts: int = Field(4, ge=1, le=20, description="upload attempts")
    azure_account_url: str | None = Field(
        None, description="https://<account>.blob.core.windows.net (with a key or SAS)")
    azure_account_key: SecretStr | None = None
    azure_sas_token: SecretStr | None = None
    azure_connection_string: SecretStr | None = None
    supabase_url: str | None = Field(None, description="https://<project-ref>.supabase.co")
    supabase_anon_key: SecretStr | None = Field(
        None, description="with asset_session_token: act as a user under RLS")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'photostudio.db').expanduser().resolve()}"

    def asset_store_settings(self) -> dict:
        """The `build_asset_store` settings for the configured kind (secrets included: do not
        log this dict)."""
        if self.asset_store == "local":
            root = self.asset_root or self.data_dir / "assets"
            return {"root": str(Path(root).expanduser().resolve())}
        if self.asset_store == "azure":
            return {
                "account_url": self.azure_account_url, "account_key": self.azure_account_key,
                "sas_token": self.azure_sas_token,
                "connection_string": self.azure_connection_string,
                "image_container": self.asset_bucket, "video_container": self.asset_video_bucket,
                "prefix": self.asset_prefix, "presign_expiry_s": self.asset_presign_expiry_s,
                "max_attempts": self.asset_max_attempts,
            }
        common = {
            "bucket": self.asset_bucket, "prefix": self.asset_prefix,
            "endpoint_url": self.asset_endpoint_url, "region": self.asset_region,
            "access_key_id": self.asset_access_key_id,
            "secret_access_key": self.asset_secret_access_key,
            "session_token": self.asset_session_token,
            "presign_expiry_s": self.asset_presign_expiry_s,
            "max_attempts": self.asset_max_attempts,
        }
        if self.asset_store == "supabase":
            common.update(supabase_url=self.supabase_url, anon_key=self.supabase_anon_key)
        return common

    def build_asset_store(self) -> AssetStore:
        if self.asset_store in ("s3", "supabase") and not self.asset_bucket:
            raise ValueError(f"asset_bucket is required with asset_store={self.asset_store!r} "
                             "(set PHOTOSTUDIO_ASSET_BUCKET)")
        return build_asset_store(self.asset_store, **self.asset_store_settings())

    def build_record_store(self) -> RecordStore:
        # here, not at the top: every `photostudio` command and the gateway's settings import
        # this module, and storage.records brings sqlalchemy + alembic (~2 s of imports)
        from storage.records import RecordStore

        return RecordStore(self.resolved_database_url())
