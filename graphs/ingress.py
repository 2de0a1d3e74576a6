"""The HTTP ingress: FastAPI routes on a Serve deployment. Routes stay thin; the logic is in
`graphs/generation.py`, the schemas in `graphs/schemas.py`, errors in `graphs/errors.py`.

No `from __future__ import annotations` here: Serve's class-based FastAPI views rebuild the
route signatures, and string annotations then stop resolving (bodies read as missing).
"""

import asyncio
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from graphs import errors
from graphs.errors import ERROR_RESPONSES, ApiError
from graphs.generation import GenerationService
from graphs.jobs import JobRunner
from graphs.schemas import (
    Capabilities,
    DeploymentInfo,
    Health,
    ImageGenerationRequest,
    ImagesResponse,
)
from storage.assets import AssetNotFound, LocalAssetStore
from storage.records import RecordStore

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="Photo Studio Gateway",
    version="0.1.0",
    description="AI photo features behind one API: generation (OpenAI-compatible), "
    "background removal, face swap, upscaling and chat. Every error is "
    '`{"error": {"message", "type", "param", "code"}}`.',
)
errors.install(app)


class IngressConfig(BaseModel):
    profile: str
    asset_dir: str
    database_url: str
    public_base_url: str | None = None
    project: str = "default"


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=200,
    max_queued_requests=400,
)
@serve.ingress(app)
class Ingress:
    def __init__(self, generator: DeploymentHandle, config: IngressConfig):
        self.config = config
        self.assets = LocalAssetStore(config.asset_dir)
        self.records = RecordStore(config.database_url)
        self.runner = JobRunner(assets=self.assets, records=self.records, project=config.project)
        self.generation = GenerationService(generator=generator, runner=self.runner)

    def _base_url(self, request: Request) -> str:
        return self.config.public_base_url or str(request.base_url)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz(self) -> Health:
        return Health()

    @app.get("/v1/capabilities", response_model=Capabilities, tags=["ops"])
    async def capabilities(self) -> Capabilities:
        info = await self.generation.model_info()
        warnings = []
        if info["fallback"]:
            warnings.append(f"generator fell back to tiny model {info['name']!r}: "
                            f"{info['fallback_reason']}; outputs come from random weights")
        elif info["tiny"]:
            warnings.append(f"generator serves tiny random-weight model {info['name']!r}")
        return Capabilities(
            profile=self.config.profile,
            deployments={"generator": DeploymentInfo(**info)},
            endpoints=sorted(p for p in app.openapi()["paths"] if p.startswith("/v1/")),
            warnings=warnings,
        )

    @app.post("/v1/images/generations", response_model=ImagesResponse,
              responses=ERROR_RESPONSES, tags=["images"])
    async def generations(self, body: ImageGenerationRequest, request: Request
                          ) -> ImagesResponse:
        return await self.generation.generate(body, base_url=self._base_url(request))

    @app.get("/v1/assets/{asset_id}", responses={**ERROR_RESPONSES, 200: {
        "content": {"image/png": {}}, "description": "the asset's bytes"}}, tags=["assets"])
    async def asset(self, asset_id: str) -> Response:
        record = await asyncio.to_thread(self.records.get_asset, asset_id=asset_id)
        if record is None:
            raise ApiError(404, f"no asset {asset_id!r}", param="asset_id", code="not_found")
        if isinstance(self.assets, LocalAssetStore):
            path: Path = self.assets.path(record.key)
            if not path.exists():
                raise ApiError(404, f"asset {asset_id!r} is recorded but its bytes are gone",
                               param="asset_id", code="not_found")
            # FileResponse sets Content-Type, ETag, Last-Modified and answers Range requests.
            return FileResponse(path, media_type=record.content_type)
        try:
            data = await asyncio.to_thread(self.assets.get, key=record.key)
        except AssetNotFound:
            raise ApiError(404, f"no asset {asset_id!r}", param="asset_id") from None
        return Response(data, media_type=record.content_type)

    def check_health(self) -> Any:
        with self.records.engine.connect():
            pass
