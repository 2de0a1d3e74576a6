"""Typed app builders: `build_app(args) -> Application`.

Used by `photostudio serve` and by Serve configs (``import_path: graphs.app:build_app`` with
``args:``), so `serve run serve_config.yaml` / `serve deploy serve_config.yaml` and the CLI
build the same graph.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from graphs.settings import Profile, Settings

DEFAULT_MODEL = {"tiny": "tiny-sd", "local": "sd15", "production": "sd15"}


class AppArgs(BaseModel):
    """Builder args. Unset fields fall back to `Settings` (``PHOTOSTUDIO_*`` env vars)."""

    model_config = ConfigDict(extra="forbid")

    profile: Profile | None = Field(None, description="tiny | local | production")
    generator_model: str | None = Field(None, description="registry name, e.g. tiny-sd, sd15")
    generator_source: str | None = Field(None, description="weights: local folder or hub id")
    data_dir: str | None = None
    zoo_dir: str | None = None
    database_url: str | None = None
    public_base_url: str | None = None
    use_gpu: bool | None = Field(None, description="default: production yes, others no")
    generator_num_gpus: float | None = Field(None, gt=0, le=1)
    max_batch_size: int = Field(8, ge=1, le=64)
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=5)


def build_app(args: AppArgs) -> Application:
    from deployments.generator import DEFAULT_NUM_GPUS, Generator
    from graphs.ingress import Ingress, IngressConfig

    if isinstance(args, dict):  # serve's builder call passes a dict when untyped
        args = AppArgs(**args)
    settings = Settings()
    profile = args.profile or settings.profile
    data_dir = Path(args.data_dir or settings.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    zoo_dir = args.zoo_dir or (str(settings.zoo_dir) if settings.zoo_dir else None)
    database_url = (args.database_url or settings.database_url
                    or f"sqlite:///{data_dir / 'photostudio.db'}")
    model = args.generator_model or settings.generator_model or DEFAULT_MODEL[profile]
    use_gpu = args.use_gpu if args.use_gpu is not None else profile == "production"

    generator_opts = {}
    if use_gpu:
        generator_opts["ray_actor_options"] = {
            "num_cpus": 1, "num_gpus": args.generator_num_gpus or DEFAULT_NUM_GPUS}
    generator = Generator.options(**generator_opts).bind(
        model=model,
        source=args.generator_source or settings.generator_source,
        allow_fallback=profile == "local",
        zoo_dir=zoo_dir,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
    )
    config = IngressConfig(
        profile=profile,
        asset_dir=str(data_dir / "assets"),
        database_url=database_url,
        public_base_url=args.public_base_url or settings.public_base_url,
    )
    return Ingress.bind(generator, config)
