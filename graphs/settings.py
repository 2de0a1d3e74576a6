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
    public_base_url: str | None = Field(
        None, description="scheme://host[:port][/path] of URLs in responses (asset URLs, "
        "redirects); production must set it. Unset: the request's Host if allowed")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="peer IPs/CIDRs (JSON list) whose X-Forwarded-Proto "
        "and X-Forwarded-Host are used when public_base_url is unset; '*' = any")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host header names used as sent in URLs when "
        "public_base_url is unset (JSON list; 'name', '*.suffix'); localhost, 127.0.0.1 and "
        "[::1] always are; any other Host becomes host:port below")
    host: str = "127.0.0.1"
    port: int = 8000
    handle_transport: Literal["grpc", "actor"] = Field(
        "grpc", description="how the ingress (and the router, its LLM) calls the model "
        "deployments: grpc (Serve's by-value calls to each replica's inter-deployment gRPC "
        "server; ~1-1.6 ms less per call than actor) or actor (Ray actor calls, by reference "
        "through the object store; for clusters whose nodes only open Ray's own ports to "
        "each other)")
    log_level: str = "INFO"
    # Hardening (graphs/middleware.py). Lists from the environment are JSON:
    # PHOTOSTUDIO_CORS_ALLOW_ORIGINS='["https://studio.example.com"]'
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1,
                                   description="whole request body; larger → 413")
    request_timeout_s: float = Field(120, gt=0, description="no response started by then → "
                                     "504 and the work is cancelled (keep it below the Serve "
                                     "proxy's request_timeout_s)")
    cors_allow_origins: list[str] = Field(default_factory=list,
                                          description="browser origins allowed; empty = closed")
    admission_hold_s: float = Field(0.5, ge=0, description="an /v1/images/* route whose model "
                                    "queue was full is shed this long before its body is read "
                                    "(503 + Retry-After); 0: off")
    # API keys and per-key limits (graphs/auth.py, graphs/quotas.py)
    auth_enabled: bool = Field(True, description="false only for the tiny/local profiles "
                               "(the production profile refuses to start without auth)")
    rate_limit_storage: str = Field(
        "memory://", description="redis://host:port/db to share limits between ingress "
        "replicas; memory:// counts per replica (one-replica local use)")
    requests_per_minute: int = Field(600, ge=1, description="default per API key")
    images_per_day: int = Field(1000, ge=1, description="default per API key")
