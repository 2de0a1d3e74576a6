"""The one Settings object: environment variables (``PHOTOSTUDIO_*``) and an optional `.env`.

Builder args (`graphs.app.AppArgs`, e.g. from `serve_config.yaml`) take precedence; any arg
left unset falls back to these settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from storage.config import StorageSettings

Profile = Literal["tiny", "local", "production"]


class Settings(StorageSettings):
    """Gateway settings; the storage fields (data_dir, database_url, asset_store, bucket,
    credentials…) are inherited from `storage.config.StorageSettings`."""

    model_config = SettingsConfigDict(env_prefix="PHOTOSTUDIO_", env_file=".env", extra="ignore")

    profile: Profile = "tiny"
    zoo_dir: Path | None = Field(None, description="tiny model cache (default ~/.cache/...)")
    generator_model: str | None = None
    generator_source: str | None = Field(None, description="local folder or hub id of weights")
    public_base_url: str | None = Field(None, description="base of asset URLs in responses")
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
