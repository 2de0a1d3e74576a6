"""The HTTP ingress: FastAPI routes on a Serve deployment. Routes stay thin; the logic is in
`graphs/generation.py`, the schemas in `graphs/schemas.py`, errors in `graphs/errors.py`.

No `from __future__ import annotations` here: Serve's class-based FastAPI views rebuild the
route signatures, and string annotations then stop resolving (bodies read as missing).
"""

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from graphs import auth, errors, middleware, observability
from graphs.auth import AuthConfig
from graphs.chat import ChatService
from graphs.errors import COMMON_RESPONSES, ERROR_RESPONSES, ApiError
from graphs.generation import MAX_EDIT_IMAGES, GenerationService, Options
from graphs.jobs import JobRunner
from graphs.schemas import (
    MAX_IMAGES,
    MAX_PROMPT_ACCEPTED,
    MAX_PROMPT_CHARS,
    SIZE_PATTERN,
    Background,
    Capabilities,
    ChatRequest,
    ChatResponse,
    DeploymentInfo,
    Health,
    ImageGenerationRequest,
    ImagesResponse,
    OutputFormat,
    Quality,
    Readiness,
)
from graphs.tools import Limits, ToolService
from storage.assets import AssetNotFound, LocalAssetStore
from storage.records import MAX_PAGE

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="Photo Studio Gateway",
    version="0.1.0",
    description="AI photo features behind one API: generation (OpenAI-compatible), "
    "background removal, face swap, upscaling and chat. Every error is "
    '`{"error": {"message", "type", "param", "code"}}`.',
    responses=COMMON_RESPONSES,
)
errors.install(app)
# API keys, scopes and per-key limits: innermost (added first), so 401/403/429 answers still
# carry the request id, metrics and CORS headers of the middlewares below.
app.add_middleware(auth.AuthMiddleware)
auth.document(app)


def _document_chat_request(app: FastAPI) -> None:
    """/v1/chat and /v1/chat/plan read their body themselves (JSON or multipart), so FastAPI
    does not publish the `ChatRequest` schema their JSON body refers to: add it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        spec = build()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        if "ChatRequest" not in schemas:
            schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas["ChatRequest"] = schema
        return spec

    app.openapi = openapi


_document_chat_request(app)
# Body limit (413), timeout (504, cancels model calls), request id, CORS, metrics. Before
# @serve.ingress(app): Serve freezes the app when the class is decorated.
middleware.install(app, middleware.HardeningConfig.from_settings())


class IngressConfig(BaseModel):
    profile: str
    asset_dir: str
    database_url: str
    public_base_url: str | None = None
    project: str = "default"
    storage: dict[str, Any] = {}  # StorageSettings overrides (the environment fills the rest)
    max_image_pixels: int = 4096 * 4096
    max_request_pixels: int = 2 * 4096 * 4096  # all the images of one request together
    max_upload_bytes: int = 20 * 1024 * 1024
    job_heartbeat_s: float = 10.0
    job_stale_s: float = 60.0  # no heartbeat for this long: the worker died → job failed
    session_ttl_s: float = 24 * 3600  # chat sessions idle this long are deleted
    auth: AuthConfig = AuthConfig()


ResponseFormat = Literal["b64_json", "url"]
_FORMAT_FIELDS = {"output_format", "response_format"}
_EDIT_FIELDS = {"prompt", "image", "image[]", "mask", "input_fidelity", "n", "size",
                "quality", "background", "output_compression", "stream", "partial_images",
                "model", "user", "negative_prompt", "seed", "steps", "guidance_scale"}


_CHAT_BODY = {"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["message"], "properties": {
        "message": {"type": "string"}, "session_id": {"type": "string"},
        "context": {"type": "string", "description": "JSON object"},
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}, "required": True}}


class PromptBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., max_length=MAX_PROMPT_ACCEPTED)
    style: str | None = Field(None, max_length=300)


class ProjectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                    description="1-64 of a-z, 0-9, '-', '_'")
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)


def _project_json(record) -> dict[str, Any]:
    return {"id": record.id, "object": "project", "name": record.name,
            "description": record.description, "created_at": record.created_at.isoformat()}


def _session_json(record, messages: list | None = None) -> dict[str, Any]:
    out = {"id": record.id, "title": record.title, "created_at": record.created_at.isoformat(),
           "updated_at": record.updated_at.isoformat()}
    if messages is not None:
        out["messages"] = messages
    return out


def _wants_async(request: Request) -> bool:
    """`?async=true` or `Prefer: respond-async` (RFC 7240)."""
    flag = request.query_params.get("async", "").lower()
    if flag and flag not in ("true", "false", "1", "0"):
        raise ApiError(400, f"async must be true or false, got {flag!r}", param="async")
    return flag in ("true", "1") or "respond-async" in request.headers.get("prefer", "")


def _job_json(record, base_url: str) -> dict[str, Any]:
    return {
        "id": record.id, "object": "job", "kind": record.kind, "status": record.status,
        "progress": record.progress, "step": record.step, "model": record.model,
        "created_at": record.created_at.isoformat(),
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "result": record.result, "error": record.error,
        "assets": [{"id": a, "url": JobRunner.asset_url(a, base_url, record.project)}
                   for a in record.asset_ids],
        "links": {"self": f"/v1/jobs/{record.id}", "events": f"/v1/jobs/{record.id}/events"},
    }


def _deployment_statuses() -> dict[str, str]:
    """Serve's status of each deployment of the application this replica belongs to."""
    app_name = serve.get_replica_context().app_name
    status = serve.status().applications.get(app_name)
    if status is None:
        return {}
    return {name: str(getattr(d.status, "value", d.status))
            for name, d in status.deployments.items()}


async def _dependency_checks(records, gate) -> dict[str, str]:
    checks = {}
    try:
        await asyncio.wait_for(asyncio.to_thread(records.ping), timeout=5)
        checks["records"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; it is reported
        checks["records"] = f"failed ({type(exc).__name__})"
    if gate is not None and gate.config.enabled:
        try:
            ok = await asyncio.wait_for(gate.quotas.storage.check(), timeout=5)
            checks["rate_limits"] = "ok" if ok else "unreachable"
        except Exception as exc:  # noqa: BLE001
            checks["rate_limits"] = f"failed ({type(exc).__name__})"
    return checks


def _maybe_stream(result: Any) -> Any:
    """A JSON response, or Server-Sent Events when the logic returned an event stream."""
    if isinstance(result, ImagesResponse):
        return result
    from sse_starlette.sse import EventSourceResponse

    return EventSourceResponse(result, ping=15)


async def reject_unknown_fields(request: Request, allowed: set[str]) -> None:
    """Multipart forms: an unknown field is a 400 (a typo must not be silently ignored)."""
    form = await request.form()  # parsed once; FastAPI's File/Form params reuse it
    unknown = sorted(set(form.keys()) - allowed - _FORMAT_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; accepted: "
                       f"{', '.join(sorted(allowed | _FORMAT_FIELDS))}", param=unknown[0],
                       code="unknown_parameter")


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=200,
    max_queued_requests=400,
)
@serve.ingress(app)
class Ingress:
    def __init__(self, generator: DeploymentHandle, matting: DeploymentHandle,
                 faceswap: DeploymentHandle, upscaler: DeploymentHandle,
                 router: DeploymentHandle, llm: DeploymentHandle | None,
                 config: IngressConfig):
        observability.install_log_redaction()
        # a builder-arg public_base_url also fixes the URLs Starlette builds (redirects)
        middleware.set_public_base_url(config.public_base_url)
        # Calls through these handles are cancelled when a request times out (504).
        generator, matting, faceswap, upscaler, router = (
            middleware.CancellableHandle(h)
            for h in (generator, matting, faceswap, upscaler, router))
        llm = middleware.CancellableHandle(llm) if llm is not None else None
        self.config = config
        from storage.config import StorageSettings

        storage = StorageSettings(**{"asset_root": config.asset_dir,
                                     "database_url": config.database_url, **config.storage})
        self.assets = storage.build_asset_store()
        self.records = storage.build_record_store()  # migrates to head (locked) on start
        auth.configure(records=self.records,
                       config=config.auth.model_copy(update={"project": config.project}))
        self.runner = JobRunner(assets=self.assets, records=self.records, project=config.project,
                                heartbeat_s=config.job_heartbeat_s,
                                max_image_pixels=config.max_image_pixels,
                                max_image_bytes=config.max_upload_bytes)
        self.generation = GenerationService(generator=generator, runner=self.runner,
                                            matting=matting)
        self.tools = ToolService(
            handles={"matting": matting, "faceswap": faceswap, "upscaler": upscaler},
            generation=self.generation, runner=self.runner,
            limits=Limits(max_pixels=config.max_image_pixels,
                          max_upload_bytes=config.max_upload_bytes,
                          max_request_pixels=config.max_request_pixels))
        self.router = router
        self.llm = llm
        self._sessions_swept = 0.0
        self.chat_service = ChatService(router=router, generation=self.generation,
                                        tools=self.tools, runner=self.runner)

    def _base_url(self, request: Request) -> str:
        """Base of the URLs in responses: `public_base_url` (PHOTOSTUDIO_PUBLIC_BASE_URL),
        else the request's base URL, whose scheme and host `middleware.PublicOrigin` has
        already fixed (trusted proxies or allowed hosts only: never any client's Host)."""
        return self.config.public_base_url or str(request.base_url)

    async def _reply(self, result: Any, request: Request) -> Any:
        """JSON, an SSE stream, or for async jobs 202 + the job (Location: /v1/jobs/{id})."""
        if isinstance(result, str):
            record = await asyncio.to_thread(self.records.get_job, job_id=result,
                                             project=auth.current_project())
            return JSONResponse(_job_json(record, self._base_url(request)), status_code=202,
                                headers={"Location": f"/v1/jobs/{result}"})
        return _maybe_stream(result)

    async def _job(self, job_id: str):
        record = await asyncio.to_thread(self.records.get_job, job_id=job_id,
                                         project=auth.current_project())
        if record is None:
            raise ApiError(404, f"no job {job_id!r}", param="job_id", code="not_found")
        return record

    # -- projects and gallery -----------------------------------------------------------------
    @app.post("/v1/projects", tags=["projects"], status_code=201, responses={
        **ERROR_RESPONSES, 409: {"model": errors.ErrorEnvelope, "description": "exists"}})
    async def create_project(self, body: ProjectBody) -> dict[str, Any]:
        if await asyncio.to_thread(self.records.get_project, project_id=body.id):
            raise ApiError(409, f"project {body.id!r} exists", param="id", code="exists")
        record = await asyncio.to_thread(self.records.create_project, project_id=body.id,
                                         name=body.name, description=body.description)
        return _project_json(record)

    @app.get("/v1/projects", tags=["projects"], responses=ERROR_RESPONSES)
    async def projects(self, limit: int = Query(50, ge=1, le=200),
                       cursor: str | None = Query(None, max_length=512)) -> dict[str, Any]:
        if not auth.current().admin:  # a key sees its own project only
            own = await self._project(auth.current_project())
            return {"object": "list", "data": [_project_json(own)], "next_cursor": None}
        page = await asyncio.to_thread(self.records.list_projects, limit=limit, cursor=cursor)
        return {"object": "list", "data": [_project_json(p) for p in page.items],
                "next_cursor": page.next_cursor}

    @app.get("/v1/projects/{project_id}", tags=["projects"], responses=ERROR_RESPONSES)
    async def project(self, project_id: str) -> dict[str, Any]:
        return _project_json(await self._project(project_id))

    @app.get("/v1/projects/{project_id}/assets", tags=["projects"], responses=ERROR_RESPONSES)
    async def project_assets(self, project_id: str, request: Request,
                             limit: int = Query(50, ge=1, le=200),
                             cursor: str | None = Query(None, max_length=512)
                             ) -> dict[str, Any]:
        await self._project(project_id)
        page = await asyncio.to_thread(self.records.list_assets, project=project_id,
                                       limit=limit, cursor=cursor)
        base = self._base_url(request)
        return {"object": "list", "next_cursor": page.next_cursor, "data": [{
            "id": a.id, "kind": a.kind, "url": self.runner.asset_url(a.id, base, project_id),
            "content_type": a.content_type, "width": a.width, "height": a.height,
            "size_bytes": a.size_bytes, "created_at": a.created_at.isoformat(),
            "job_id": a.job_id, "prompt": a.prompt, "parameters": a.params,
        } for a in page.items]}

    @app.delete("/v1/assets/{asset_id}", tags=["assets"], responses=ERROR_RESPONSES)
    async def delete_asset(self, asset_id: str) -> dict[str, Any]:
        record = await self._asset(asset_id)
        await asyncio.to_thread(self.records.delete_asset, asset_id=asset_id,
                                project=record.project, assets=self.assets)
        return {"id": asset_id, "deleted": True}

    async def _asset(self, asset_id: str):
        principal = auth.current()
        # a signed URL reads only its own asset, in the project it was signed for
        visible = principal.signed_asset is None or principal.signed_asset == asset_id
        record = visible and await asyncio.to_thread(
            self.records.get_asset, asset_id=asset_id, project=principal.project)
        if not record:
            raise ApiError(404, f"no asset {asset_id!r}", param="asset_id", code="not_found")
        return record

    async def _session(self, session_id: str):
        record = await asyncio.to_thread(self.records.get_session, session_id=session_id,
                                         project=auth.current_project())
        if record is None:
            raise ApiError(404, f"no session {session_id!r}", param="session_id",
                           code="not_found")
        return record

    async def _project(self, project_id: str):
        """The project, if the caller may see it (its own; admin keys: any), else 404."""
        visible = auth.current().admin or project_id == auth.current_project()
        record = visible and await asyncio.to_thread(self.records.get_project,
                                                     project_id=project_id)
        if not record:
            raise ApiError(404, f"no project {project_id!r}", param="project_id",
                           code="not_found")
        return record

    # -- jobs -------------------------------------------------------------------------------
    @app.get("/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)
    async def jobs(self, request: Request,
                   status: Literal["queued", "running", "succeeded", "failed",
                                   "cancelled"] | None = None,
                   created_after: datetime | None = None,
                   created_before: datetime | None = None,
                   limit: int = Query(50, ge=1, le=200),
                   cursor: str | None = Query(None, max_length=512)) -> dict[str, Any]:
        page = await asyncio.to_thread(
            self.records.list_jobs, status=status, project=auth.current_project(),
            created_after=created_after, created_before=created_before, limit=limit,
            cursor=cursor)
        base = self._base_url(request)
        return {"object": "list", "data": [_job_json(j, base) for j in page.items],
                "next_cursor": page.next_cursor}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], responses=ERROR_RESPONSES)
    async def job(self, job_id: str, request: Request) -> dict[str, Any]:
        return _job_json(await self._job(job_id), self._base_url(request))

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], responses=ERROR_RESPONSES)
    async def cancel_job(self, job_id: str, request: Request) -> dict[str, Any]:
        await self._job(job_id)
        record = await asyncio.to_thread(self.records.request_cancel, job_id=job_id,
                                         project=auth.current_project())
        return _job_json(record, self._base_url(request))

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"], responses=ERROR_RESPONSES)
    async def job_events(self, job_id: str, request: Request) -> Any:
        """Server-Sent Events: `progress` whenever status/progress/step change, then one of
        `succeeded`, `failed`, `cancelled` with the job, and the stream ends."""
        from sse_starlette.sse import EventSourceResponse

        project = (await self._job(job_id)).project
        base = self._base_url(request)

        async def events():
            last = None
            while True:
                record = await asyncio.to_thread(self.records.get_job, job_id=job_id,
                                                 project=project)
                if record is None:  # deleted meanwhile (retention)
                    yield {"event": "error", "data": json.dumps({"error": {
                        "message": f"job {job_id!r} was deleted", "type": "not_found_error",
                        "param": "job_id", "code": "not_found"}})}
                    return
                state = (record.status, record.progress, record.step)
                if state != last:
                    last = state
                    final = record.status in ("succeeded", "failed", "cancelled")
                    yield {"event": record.status if final else "progress",
                           "data": json.dumps(_job_json(record, base))}
                    if final:
                        return
                await asyncio.sleep(0.2)

        return EventSourceResponse(events(), ping=15)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz(self) -> Health:
        """Liveness: this ingress replica answers."""
        return Health()

    @app.get("/readyz", response_model=Readiness, tags=["ops"], responses=ERROR_RESPONSES)
    async def readyz(self) -> Readiness:
        """Readiness: every deployment of this application is HEALTHY in Serve (its replicas
        pass their model probes), the record store answers and the rate-limit storage
        answers. 503 + Retry-After naming what is not ready."""
        deployments, checks = await asyncio.gather(
            asyncio.to_thread(_deployment_statuses),
            _dependency_checks(self.records, auth.gate()))
        bad = [f"{name} is {status}" for name, status in deployments.items()
               if status != "HEALTHY"]
        bad += [f"{name}: {status}" for name, status in checks.items() if status != "ok"]
        if bad or not deployments:
            raise ApiError(503, "not ready: " + ("; ".join(bad) or "no deployments found"),
                           code="not_ready", headers={"Retry-After": "5"})
        return Readiness(deployments=deployments, checks=checks)

    @app.get("/v1/capabilities", response_model=Capabilities, tags=["ops"])
    async def capabilities(self) -> Capabilities:
        infos = {"generator": await self.generation.model_info()}
        for name in self.tools.handles:
            infos[name] = await self.tools.info(name)
        warnings = []
        if self.llm is not None:
            infos["llm"] = await self.llm.info.remote()
        else:
            warnings.append("no LLM deployed: the chat router answers with rules + "
                            "embeddings only (prompt compression is deterministic)")
        for deployment, info in infos.items():
            if info["fallback"]:
                warnings.append(f"{deployment} fell back to tiny model {info['name']!r}: "
                                f"{info['fallback_reason']}; outputs come from random weights")
            elif info["tiny"]:
                warnings.append(f"{deployment} serves tiny random-weight model {info['name']!r}")
        return Capabilities(
            profile=self.config.profile,
            deployments={k: DeploymentInfo(**v) for k, v in infos.items()},
            endpoints=sorted(p for p in app.openapi()["paths"] if p.startswith("/v1/")),
            warnings=warnings,
        )

    @app.post("/v1/images/generations", response_model=ImagesResponse,
              responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}},
                                                  "description": "JSON, or SSE when stream"}},
              tags=["images"])
    async def generations(self, body: ImageGenerationRequest, request: Request) -> Any:
        result = await self.generation.generate(body, base_url=self._base_url(request),
                                                async_job=_wants_async(request))
        return await self._reply(result, request)

    @app.post("/v1/images/edits", response_model=ImagesResponse,
              responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}},
                                                  "description": "JSON, or SSE when stream"}},
              tags=["images"])
    async def edits(
        self,
        request: Request,
        prompt: str = Form(..., max_length=MAX_PROMPT_ACCEPTED),
        image: list[UploadFile] | None = File(None, description="one image (or use image[])"),
        images: list[UploadFile] | None = File(None, alias="image[]",
                                               description="1-16 reference images"),
        mask: UploadFile | None = File(None, description="PNG with alpha; transparent = "
                                       "the area to change; same size as the first image"),
        input_fidelity: Literal["high", "low"] = Form("low"),
        n: int = Form(1, ge=1, le=MAX_IMAGES),
        size: str = Form("auto", pattern=SIZE_PATTERN),
        quality: Quality = Form("auto"),
        background: Background = Form("auto"),
        output_format: OutputFormat = Form("png"),
        output_compression: int | None = Form(None, ge=0, le=100),
        response_format: ResponseFormat = Form("b64_json"),
        stream: bool = Form(False),
        partial_images: int = Form(0, ge=0, le=3),
        model: str | None = Form(None),
        user: str | None = Form(None, max_length=256),
        negative_prompt: str | None = Form(None, max_length=MAX_PROMPT_CHARS),
        seed: int | None = Form(None, ge=0, le=2**32 - 1),
        steps: int | None = Form(None, ge=1, le=150),
        guidance_scale: float | None = Form(None, ge=0, le=30),
    ) -> Any:
        await reject_unknown_fields(request, _EDIT_FIELDS)
        uploads = (image or []) + (images or [])
        if not uploads:
            raise ApiError(400, "missing required parameter 'image' (or 'image[]')",
                           param="image", code="missing_parameter")
        if len(uploads) > MAX_EDIT_IMAGES:
            raise ApiError(400, f"give 1 to {MAX_EDIT_IMAGES} images, got {len(uploads)}",
                           param="image", code="too_many_images")
        files = [("image" if i == 0 else f"image[{i}]", await f.read())
                 for i, f in enumerate(uploads)]
        if mask is not None:
            files.append(("mask", await mask.read()))
        decoded = await self.tools.decode_many(files)
        mask_array = decoded.pop() if mask is not None else None
        opts = Options(n=n, size=size, quality=quality, background=background,
                       output_format=output_format, output_compression=output_compression,
                       response_format=response_format, stream=stream,
                       partial_images=partial_images, negative_prompt=negative_prompt,
                       seed=seed, steps=steps, guidance_scale=guidance_scale, model=model)
        result = await self.generation.edit(list(decoded), prompt=prompt, mask=mask_array,
                                            input_fidelity=input_fidelity, opts=opts,
                                            base_url=self._base_url(request),
                                            async_job=_wants_async(request))
        return await self._reply(result, request)

    @app.post("/v1/images/variations", response_model=ImagesResponse,
              responses=ERROR_RESPONSES, tags=["images"])
    async def variations(
        self,
        request: Request,
        image: UploadFile = File(...),
        n: int = Form(1, ge=1, le=MAX_IMAGES),
        size: str = Form("auto", pattern=SIZE_PATTERN),
        response_format: ResponseFormat = Form("b64_json"),
        model: str | None = Form(None),
        user: str | None = Form(None, max_length=256),
        seed: int | None = Form(None, ge=0, le=2**32 - 1),
    ) -> ImagesResponse:
        await reject_unknown_fields(request, {"image", "n", "size", "model", "user", "seed"})
        decoded = await self.tools.decode(await image.read(), "image", keep_alpha=False)
        opts = Options(n=n, size=size, response_format=response_format, model=model,
                       seed=seed)
        return await self._reply(await self.generation.variations(
            decoded, opts=opts, base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.get("/v1/models", tags=["images"])
    async def models(self) -> dict[str, Any]:
        infos = {"generator": await self.generation.model_info()}
        for name in self.tools.handles:
            infos[name] = await self.tools.info(name)
        return {"object": "list", "data": [
            {"id": info["name"], "object": "model", "created": 0, "owned_by": "photostudio",
             "deployment": deployment, "tiny": info["tiny"], "fallback": info["fallback"]}
            for deployment, info in infos.items()]}

    @app.post("/v1/images/remove-background", response_model=ImagesResponse,
              responses=ERROR_RESPONSES, tags=["tools"])
    async def remove_background(
        self,
        request: Request,
        image: UploadFile = File(..., description="PNG, JPEG or WebP"),
        output: Literal["cutout", "mask", "solid"] = Form(
            "cutout", description="cutout: RGBA; mask: the alpha matte; solid: on bg_color"),
        bg_color: str | None = Form(None, description="'#RRGGBB' or 'r,g,b' (output=solid)"),
        alpha_matting: bool = Form(False, description="refine edges (slower)"),
        output_format: OutputFormat = Form("png"),
        response_format: ResponseFormat = Form("b64_json"),
    ) -> ImagesResponse:
        await reject_unknown_fields(request, {"image", "output", "bg_color", "alpha_matting"})
        return await self._reply(await self.tools.remove_background(
            await image.read(), output=output, bg_color=bg_color, alpha_matting=alpha_matting,
            output_format=output_format, response_format=response_format,
            base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.post("/v1/images/face-swap", response_model=ImagesResponse,
              responses={**ERROR_RESPONSES, 422: {"model": errors.ErrorEnvelope,
                                                  "description": "no face found"}},
              tags=["tools"])
    async def face_swap(
        self,
        request: Request,
        source: UploadFile = File(..., description="image with the face to use"),
        target: UploadFile = File(..., description="image whose face(s) are replaced"),
        target_face_index: int | None = Form(
            None, ge=0, description="which target face, left to right (default: largest)"),
        all_faces: bool = Form(False, description="replace every face in the target"),
        output_format: OutputFormat = Form("png"),
        response_format: ResponseFormat = Form("b64_json"),
    ) -> ImagesResponse:
        await reject_unknown_fields(request, {"source", "target", "target_face_index",
                                              "all_faces"})
        return await self._reply(await self.tools.face_swap(
            await source.read(), await target.read(), target_face_index=target_face_index,
            all_faces=all_faces, output_format=output_format, response_format=response_format,
            base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.post("/v1/images/upscale", response_model=ImagesResponse, responses=ERROR_RESPONSES,
              tags=["tools"])
    async def upscale(
        self,
        request: Request,
        image: UploadFile = File(...),
        scale: int = Form(4, description="2 or 4"),
        output_format: OutputFormat = Form("png"),
        response_format: ResponseFormat = Form("b64_json"),
    ) -> ImagesResponse:
        await reject_unknown_fields(request, {"image", "scale"})
        return await self._reply(await self.tools.upscale(
            await image.read(), scale=scale, output_format=output_format,
            response_format=response_format, base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.post("/v1/images/edit-ops", response_model=ImagesResponse, responses=ERROR_RESPONSES,
              tags=["tools"])
    async def edit_ops(
        self,
        request: Request,
        image: UploadFile = File(...),
        ops: str = Form(..., description='JSON list applied in order, e.g. [{"op": "crop", '
                        '"x": 0, "y": 0, "width": 64, "height": 64}, {"op": "grayscale"}]; '
                        "ops: crop, resize, rotate, flip, brightness, contrast, saturation, "
                        "grayscale, blur"),
        output_format: OutputFormat = Form("png"),
        response_format: ResponseFormat = Form("b64_json"),
    ) -> ImagesResponse:
        await reject_unknown_fields(request, {"image", "ops"})
        return await self._reply(await self.tools.edit_ops(
            await image.read(), ops, output_format=output_format,
            response_format=response_format, base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.post("/v1/images/style-transfer", response_model=ImagesResponse,
              responses=ERROR_RESPONSES, tags=["tools"])
    async def style_transfer(
        self,
        request: Request,
        image: UploadFile = File(...),
        style: str = Form(..., max_length=300,
                          description="a preset name (GET /v1/styles) or free text"),
        prompt: str | None = Form(None, max_length=2000, description="what the image shows"),
        strength: float | None = Form(None, gt=0, le=1, description="default: the preset's"),
        seed: int | None = Form(None, ge=0, le=2**32 - 1),
        steps: int | None = Form(None, ge=1, le=150),
        output_format: OutputFormat = Form("png"),
        response_format: ResponseFormat = Form("b64_json"),
    ) -> ImagesResponse:
        await reject_unknown_fields(request, {"image", "style", "prompt", "strength", "seed",
                                              "steps"})
        return await self._reply(await self.tools.style_transfer(
            await image.read(), style=style, prompt=prompt, strength=strength, seed=seed,
            steps=steps, output_format=output_format, response_format=response_format,
            base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.get("/v1/styles", tags=["tools"])
    async def styles(self) -> dict[str, Any]:
        from router.styles import list_styles

        return {"data": list_styles()}

    # -- chat -----------------------------------------------------------------------------
    async def _chat_input(self, request: Request) -> tuple[ChatRequest, list[UploadFile]]:
        """POST /v1/chat takes JSON, or multipart with the same fields plus `image` files."""
        from graphs import safe_json

        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            try:  # the parser stops at the first file over the limit: nothing more is read
                form = await request.form(max_files=MAX_IMAGES, max_fields=16)
            except StarletteHTTPException as exc:
                raise ApiError(400, f"{exc.detail} A chat message takes at most {MAX_IMAGES} "
                               "images (fields 'image' / 'image[]') and the fields message, "
                               "session_id and context", param="image",
                               code="too_many_files") from None
            await reject_unknown_fields(request, {"message", "session_id", "context", "image",
                                                  "image[]"})
            files = [f for key in ("image", "image[]") for f in form.getlist(key)
                     if not isinstance(f, str)]
            fields = {k: form.get(k) for k in ("message", "session_id", "context")
                      if form.get(k) is not None}
            if "context" in fields:
                try:  # depth-limited: deep nesting is a 400, never a RecursionError
                    fields["context"] = safe_json.loads(fields["context"], what="context")
                except ValueError as exc:
                    raise ApiError(400, f"context must be a JSON object ({exc})",
                                   param="context", code="invalid_json") from None
            body = fields
        else:
            files = []
            try:
                body = safe_json.loads(await request.body() or b"null",
                                       what="the request body")
            except ValueError as exc:
                raise ApiError(400, f"request body is not valid JSON ({exc}); send a JSON "
                               "object or multipart form", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_body")
        try:
            return ChatRequest(**body), files
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None

    @app.post("/v1/chat", response_model=ChatResponse, responses=ERROR_RESPONSES, tags=["chat"],
              openapi_extra=_CHAT_BODY)
    async def chat(self, request: Request) -> Any:
        body, files = await self._chat_input(request)
        # every file's header checked and the request's pixels budgeted before any is decoded
        uploads = await self.tools.decode_many(
            [("image" if i == 0 else f"image[{i}]", await f.read())
             for i, f in enumerate(files)])
        reply = await self.chat_service.chat(
            message=body.message, session_id=body.session_id, context=body.context,
            uploads=uploads, base_url=self._base_url(request), async_job=_wants_async(request))
        if reply.type == "processing":
            return JSONResponse(reply.model_dump(mode="json"), status_code=202,
                                headers={"Location": f"/v1/jobs/{reply.data.job_id}"})
        return reply

    @app.post("/v1/chat/plan", responses=ERROR_RESPONSES, tags=["chat"],
              openapi_extra=_CHAT_BODY)
    async def chat_plan(self, request: Request) -> dict[str, Any]:
        body, files = await self._chat_input(request)
        session = await self.chat_service.session(body.session_id) if body.session_id \
            else None
        await self.chat_service.check_context(body.context)
        context = self.chat_service.context(session, body.context) \
            if session is not None or body.context else None
        plan = await self.chat_service.plan(body.message, images=len(files), context=context)
        return plan.model_dump(mode="json")

    @app.get("/v1/sessions", tags=["chat"], responses=ERROR_RESPONSES)
    async def sessions(self, limit: int = Query(50, ge=1, le=MAX_PAGE),
                       cursor: str | None = None) -> dict[str, Any]:
        page = await asyncio.to_thread(self.records.list_sessions, project=auth.current_project(),
                                       limit=limit, cursor=cursor)
        return {"data": [_session_json(s) for s in page.items], "next_cursor": page.next_cursor}

    @app.get("/v1/sessions/{session_id}", tags=["chat"], responses=ERROR_RESPONSES)
    async def session(self, session_id: str, request: Request) -> dict[str, Any]:
        record = await self._session(session_id)
        base = self._base_url(request)
        return _session_json(record, messages=[{
            "role": m.role, "content": m.content, "created_at": m.created_at.isoformat(),
            "type": m.data.get("type"),
            "images": [{"id": i, "url": self.runner.asset_url(i, base, record.project)}
                       for i in m.image_ids],
        } for m in record.messages])

    @app.delete("/v1/sessions/{session_id}", tags=["chat"], responses=ERROR_RESPONSES)
    async def delete_session(self, session_id: str) -> dict[str, Any]:
        await self._session(session_id)
        if not await asyncio.to_thread(self.records.delete_session, session_id=session_id,
                                       project=auth.current_project()):
            raise ApiError(404, f"no session {session_id!r}", param="session_id",
                           code="not_found")
        return {"id": session_id, "deleted": True}

    @app.get("/v1/templates", tags=["chat"])
    async def templates(self) -> dict[str, Any]:
        from router.templates import list_templates

        return {"data": list_templates()}

    @app.post("/v1/prompts/validate", tags=["prompts"], responses=ERROR_RESPONSES)
    async def validate_prompt(self, body: PromptBody) -> dict[str, Any]:
        result = await self.router.validate.remote(body.prompt)
        return result.model_dump(mode="json")

    @app.post("/v1/prompts/refine", tags=["prompts"], responses=ERROR_RESPONSES)
    async def refine_prompt(self, body: PromptBody) -> dict[str, Any]:
        validation = await self.router.validate.remote(body.prompt)
        if not validation.valid:
            raise ApiError(400, validation.error.message, param="prompt",
                           code=validation.error.code)
        result = await self.router.refine.remote(body.prompt, style=body.style)
        return result.model_dump(mode="json")

    @app.get("/v1/assets/{asset_id}", responses={**ERROR_RESPONSES, 200: {
        "content": {t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/png", "image/jpeg", "image/webp")},
        "description": "the asset's bytes",
        "headers": {"ETag": {"description": "the asset's entity tag (its bytes never "
                             "change)", "schema": {"type": "string"}}}},
        304: {"description": "If-None-Match matched the ETag: the cached copy is current"},
        307: {"description": "stores with their own URLs (S3, Supabase): download there"}},
        tags=["assets"])
    async def asset(self, asset_id: str, request: Request) -> Response:
        """The asset's bytes. ``HEAD`` answers the same headers without them. ``ETag`` is the
        asset id (an asset is written once and never changes), so ``If-None-Match`` gets a
        304 without touching the store. Cache-Control: ``no-store`` with an API key;
        ``private, max-age`` until the URL expires with a signed URL (the URL is the
        credential: no shared cache may keep it, the browser may until it expires)."""
        record = await self._asset(asset_id)
        headers = {"ETag": f'"{record.id}"'}
        if auth.current().signed_asset == asset_id:
            try:
                left = int(request.query_params.get("expires", "")) - int(time.time())
            except ValueError:
                left = 0
            headers["Cache-Control"] = f"private, max-age={max(0, left)}"
        not_modified = middleware.etag_matches(request.headers.get("if-none-match"),
                                               headers["ETag"])
        if isinstance(self.assets, LocalAssetStore):
            path: Path = self.assets.path(record.key)
            if not path.exists():
                raise ApiError(404, f"asset {asset_id!r} is recorded but its bytes are gone",
                               param="asset_id", code="not_found")
            if not_modified:
                return Response(status_code=304, headers=headers)
            # FileResponse sets Content-Type, Content-Length, Last-Modified and answers Range
            # requests; our ETag replaces its mtime-based one (the same in every store).
            return FileResponse(path, media_type=record.content_type, headers=headers)
        url = await asyncio.to_thread(self.assets.url, key=record.key)
        if url:  # S3/Supabase: the client downloads from the store directly
            return RedirectResponse(url, status_code=307)
        if not_modified:
            return Response(status_code=304, headers=headers)
        try:
            data = await asyncio.to_thread(self.assets.get, key=record.key)
        except AssetNotFound:
            raise ApiError(404, f"no asset {asset_id!r}", param="asset_id") from None
        return Response(data, media_type=record.content_type, headers=headers)

    def check_health(self) -> None:
        """The record store answers; and (every health period, from every ingress replica)
        jobs whose worker stopped beating are marked failed, never left running."""
        stale = self.records.fail_stale_jobs(older_than_s=self.config.job_stale_s)
        if stale:
            logger.warning("marked %d stale job(s) failed: %s", len(stale), stale[:5])
        if time.monotonic() - self._sessions_swept > 300:  # every 5 minutes is plenty
            self._sessions_swept = time.monotonic()
            expired = self.records.expire_sessions(
                older_than=timedelta(seconds=self.config.session_ttl_s))
            if expired:
                logger.info("expired %d idle chat session(s)", len(expired))
