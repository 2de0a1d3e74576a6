"""The HTTP ingress: FastAPI routes on a Serve deployment. Routes stay thin; the logic is in
`graphs/generation.py`, the schemas in `graphs/schemas.py`, errors in `graphs/errors.py`.

No `from __future__ import annotations` here: Serve's class-based FastAPI views rebuild the
route signatures, and string annotations then stop resolving (bodies read as missing).
"""

import asyncio
import gc
import json
import logging
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common import safe_json
from deployments._common import HandleTransport, with_transport
from graphs import auth, errors, middleware, observability, route_index, studio, usage
from graphs.analysis import AnalysisService, enhanced_prompt
from graphs.auth import AuthConfig
from graphs.chat import ChatService
from graphs.chores import Chores
from graphs.errors import COMMON_RESPONSES, ERROR_RESPONSES, ApiError
from graphs.generation import GenerationService, Options
from graphs.images import CONTENT_TYPES, accepted_image_formats, read_recipe
from graphs.jobs import JobRunner
from graphs.loras import LoraService, card_fields, lora_spec
from graphs.presets import PresetService
from graphs.providers import (
    ProviderRegistry,
    add_config,
    public_view,
    remove_config,
    update_config,
)
from graphs.recipes import RecipeService, recipe_workflow
from graphs.resources import Resources, job_view
from graphs.schemas import (
    FORM,
    MAX_IMAGES,
    AnalyzeForm,
    AssetList,
    Capabilities,
    ChatPlan,
    ChatRequest,
    ChatResponse,
    Deleted,
    DeploymentInfo,
    EditForm,
    EditOpsForm,
    EnhancedPrompt,
    FaceSwapForm,
    Health,
    HttpMetrics,
    ImageAnalysis,
    ImageGenerationBatch,
    ImageGenerationRequest,
    ImagesResponse,
    Job,
    JobBatch,
    JobList,
    LoraCreate,
    ModelCard,
    ModelList,
    PresetApplied,
    PresetApply,
    PresetCreate,
    PresetList,
    PresetView,
    Project,
    ProjectCreate,
    ProjectList,
    PromptRequest,
    ProviderCreate,
    ProviderInfo,
    ProviderList,
    ProviderUpdate,
    Readiness,
    ReadinessState,
    RemixRequest,
    RemoveBackgroundForm,
    SavedWorkflow,
    SavedWorkflowCreate,
    SavedWorkflowList,
    SavedWorkflowUpdate,
    Session,
    SessionList,
    StyleTransferForm,
    UpscaleForm,
    UsageGroup,
    UsageReport,
    VariationForm,
    Video,
    VideoCreate,
    VideoDeleted,
    VideoList,
    VideoRemix,
    VideoUpscale,
    WorkflowExecuteRequest,
)
from graphs.tools import Limits, ToolService
from graphs.training_routes import DATASET_IMAGES_BODY, dataset_images_form
from graphs.training_schemas import Dataset as DatasetView
from graphs.training_schemas import (
    DatasetCreate,
    DatasetImagesAdded,
    DatasetImageUpdate,
    DatasetImageView,
    DatasetList,
    DatasetStats,
    TrainingCreate,
    TrainingList,
    TrainingMetrics,
)
from graphs.training_schemas import Training as TrainingView
from graphs.video import VideoService, list_presets
from graphs.workflows import WorkflowService, sse
from models.lora import check_lora_filename
from models.registry import KINDS, MODELS, catalogue, close_matches
from router.schemas import PromptValidation, RefinedPrompt
from router.styles import list_styles
from router.suggestions import LRU, SuggestionIndex, normalise
from router.templates import list_templates
from storage.assets import AssetNotFound, LocalAssetStore
from storage.config import StorageSettings
from storage.records import MAX_PAGE
from storage.tables import as_utc, utcnow
from telemetry.logs import install_log_redaction

logger = logging.getLogger("ray.serve")


# Above the Ingress class: `serve.ingress` builds its routes from the module as it is then
# (defined below the class, these were a NameError inside the routes: a 500).
DEPLOYMENT_KIND = {"generator": "base", "matting": "matting", "faceswap": "face",
                   "upscaler": "upscaler", "upscale": "upscaler", "llm": "llm"}


def model_cards(infos: dict[str, dict[str, Any]], registered: dict[str, Any] | None = None
                ) -> list[ModelCard]:
    """The deployed models (`infos`: deployment -> replica info), then the catalogue's other
    entries, then the registered LoRAs (`registered`: name -> `LoraRecord`); LoRAs only where
    they fit the deployed base model."""
    cards = []
    for deployment, info in infos.items():
        spec = MODELS.get(info["name"])
        cards.append(_card(spec, id=info["name"], deployment=deployment, tiny=info["tiny"],
                           fallback=info["fallback"],
                           kind=spec.kind if spec else DEPLOYMENT_KIND.get(deployment, "base")))
    served = {c.id for c in cards}
    base = infos.get("generator", {}).get("name")
    for spec in catalogue():
        if spec.name in served or (spec.kind == "lora" and spec.base != base):
            continue
        cards.append(_card(spec, id=spec.name, tiny=spec.tiny, kind=spec.kind))
    for record in (registered or {}).values():
        if record.base == base and record.name not in MODELS:
            cards.append(_card(lora_spec(record), id=record.name, tiny=False, kind="lora",
                               **card_fields(record)))
    return cards


def _card(spec: Any, **fields: Any) -> ModelCard:
    if spec is not None:
        fields.update(description=spec.description, base=spec.base, size=spec.size,
                      tags=list(spec.tags), trigger_words=list(spec.trigger_words),
                      preview=spec.preview_asset,
                      default_weight=spec.default_weight if spec.kind == "lora" else None)
    return ModelCard(**fields)


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
app.add_middleware(usage.UsageMiddleware)  # inside auth: the caller is known
app.add_middleware(auth.AuthMiddleware)
auth.document(app)


def _document_chat_request(app: FastAPI) -> None:
    """/v1/chat, /v1/chat/plan and /v1/videos read their body themselves (JSON or multipart),
    so FastAPI does not publish the `ChatRequest`/`VideoCreate` schemas their JSON bodies
    refer to: add them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        spec = build()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in (ChatRequest, VideoCreate, LoraCreate):  # bodies read by their routes
            if model.__name__ not in schemas:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
        return spec

    app.openapi = openapi


_document_chat_request(app)
# the web studio's static files at /studio/ (/ redirects there), with their own CSP
studio.install(app)
# Body limit (413), timeout (504, cancels model calls), request id, CORS, metrics. Before
# @serve.ingress(app): Serve freezes the app when the class is decorated.
middleware.install(app, middleware.HardeningConfig.from_settings())


class IngressConfig(BaseModel):
    profile: str
    asset_dir: str
    database_url: str
    public_base_url: str | None = None
    # how this replica calls the model deployments (`model_handle`)
    handle_transport: HandleTransport = "grpc"
    project: str = "default"
    storage: dict[str, Any] = {}  # StorageSettings overrides (the environment fills the rest)
    max_image_pixels: int = 4096 * 4096
    max_request_pixels: int = 2 * 4096 * 4096  # all the images of one request together
    max_upload_bytes: int = 20 * 1024 * 1024
    job_heartbeat_s: float = 10.0
    job_stale_s: float = 60.0  # no heartbeat for this long: the worker died → job failed
    session_ttl_s: float = 24 * 3600  # chat sessions idle this long are deleted
    usage_flush_s: float = 2.0  # usage sums are written this often (graphs/usage.py)
    # analyse generated/edited images in the background and keep their tags (needs Vision)
    auto_tag: bool = False
    auth: AuthConfig = AuthConfig()
    # other replicas' provider config changes are picked up within this (graphs/providers.py)
    providers_reload_s: float = 10.0
    training: dict[str, Any] = {}  # graphs.training.TrainingSettings (AppArgs training_*)
    max_lora_bytes: int = 256 * 1024 * 1024  # POST /v1/models/loras (graphs/loras.py)
    lora_import_dirs: list[str] = []  # folders admin keys may register LoRAs from by path


def model_handle(handle: DeploymentHandle, transport: HandleTransport
                 ) -> middleware.CancellableHandle:
    """The ingress's handle to a model deployment: its calls cancelled with their request
    (`middleware.CancellableHandle`), sent over `transport` (`deployments._common.
    with_transport`: ``grpc`` by value to the replicas' gRPC servers, ``actor`` Ray actor
    calls)."""
    return middleware.CancellableHandle(with_transport(handle, transport))


_CHAT_FIELDS = {"message", "session_id", "context", "image", "image[]"}
_CHAT_BODY = {"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["message"], "properties": {
        "message": {"type": "string"}, "session_id": {"type": "string"},
        "context": {"type": "string", "description": "JSON object"},
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}, "required": True}}
_LORA_FIELDS = {
    "name": {"type": "string"}, "base": {"type": "string"}, "asset_id": {"type": "string"},
    "path": {"type": "string"}, "trigger_words": {"type": "string", "description":
                                                  "comma-separated or a JSON list"},
    "tags": {"type": "string", "description": "comma-separated or a JSON list"},
    "default_weight": {"type": "number"}, "description": {"type": "string"},
    "preview_asset": {"type": "string"},
    "meta": {"type": "string", "description": "JSON object"}}
_LORA_BODY = {"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/LoraCreate"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["name", "file"],
                                       "properties": {**_LORA_FIELDS, "file": {
                                           "type": "string", "format": "binary"}}}},
}, "required": True}}
_VIDEO_NOT_READY = {**ERROR_RESPONSES, 409: {"model": errors.ErrorEnvelope, "description":
                                           "the video is not completed (yet)"}}
_STREAMED = {**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}},
                                      "description": "JSON, or SSE when stream"}}


def _wants_async(request: Request) -> bool:
    """`?async=true` or `Prefer: respond-async` (RFC 7240)."""
    flag = request.query_params.get("async", "").lower()
    if flag and flag not in ("true", "false", "1", "0"):
        raise ApiError(400, f"async must be true or false, got {flag!r}", param="async")
    return flag in ("true", "1") or "respond-async" in request.headers.get("prefer", "")


def _deployment_statuses() -> dict[str, str]:
    """Serve's status of each deployment of the application this replica belongs to."""
    return {name: status for name, (status, _) in _deployment_states().items()}


def _deployment_states() -> dict[str, tuple[str, dict[str, int]]]:
    """Each deployment's Serve status and its replicas per state (RUNNING, STARTING, ...)."""
    app_name = serve.get_replica_context().app_name
    status = serve.status().applications.get(app_name)
    if status is None:
        return {}
    return {name: (str(getattr(d.status, "value", d.status)),
                   {str(getattr(k, "value", k)): int(v)
                    for k, v in (getattr(d, "replica_states", None) or {}).items()})
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


def _public_source(info: dict[str, Any], admin: bool) -> dict[str, Any]:
    """A deployment's info as a caller may see it: where the weights live on the servers (a
    local path, an S3 URL) only for admin keys; others see the model's name or hub id."""
    source = str(info.get("source") or "")
    private = source.startswith(("/", "~", ".", "s3://", "file:")) or os.sep in source \
        and os.path.exists(source)
    if admin or not private:
        return info
    return {**info, "source": info["name"]}


def _image_bytes(result: ImagesResponse) -> Response:
    """A one-image answer as the encoded image itself (`Accept: image/png`, `image/*`, …
    ranked above JSON): no base64, no JSON, ~25 % fewer bytes. Its format is the answer's
    `output_format` (the Content-Type says which); what the JSON's metadata would say comes
    in headers. Several images, a stream or an async job keep their JSON answers."""
    item = result.data[0]
    headers = {"X-Asset-Id": item.id, "X-Job-Id": result.metadata.job_id,
               "X-Image-Size": result.size or "", "X-Model": result.metadata.model}
    if item.seed is not None:
        headers["X-Seed"] = str(item.seed)
    return Response(item._blob, media_type=CONTENT_TYPES[result.output_format],
                    headers=headers)


def _maybe_stream(result: Any) -> Any:
    """A JSON response, or Server-Sent Events when the logic returned an event stream."""
    if isinstance(result, ImagesResponse):
        return result
    return EventSourceResponse(result, ping=15)


def freeze_startup_heap() -> int:
    """Move what the replica built while starting (modules, the app, its services: ~280k
    objects) to the garbage collector's permanent generation (`gc.freeze`, after a
    `gc.collect` of the start-up garbage): they live as long as the process, and each full
    collection would walk them all again: a ~160 ms pause in the request path every few
    thousand requests on the dev VM (~6 us per request on average). Objects made later are
    collected as usual. Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def json_object_body(request: Request) -> dict[str, Any]:
    """A route's JSON body (read by the route itself, as the chat and videos do for their
    JSON-or-multipart bodies): a JSON object, else the 400 envelope saying what to send."""
    try:
        body = safe_json.loads(await request.body() or b"null", what="the request body")
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc}); send a JSON object or "
                       "multipart form", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_body")
    return body


async def reject_unknown_fields(request: Request, allowed: set[str]) -> None:
    """A multipart form read by the route itself (the chat): an unknown field is a 400 (a
    typo must not be silently ignored). Routes with a form model forbid extras there."""
    form = await request.form()  # parsed once
    unknown = sorted(set(form.keys()) - allowed)
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; accepted: "
                       f"{', '.join(sorted(allowed))}", param=unknown[0],
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
                 config: IngressConfig, video: DeploymentHandle | None = None,
                 vision: DeploymentHandle | None = None):
        install_log_redaction()
        # FastAPI and Serve find a static path's route without walking all 87 routes, and
        # the routes call this instance's methods without solving a `self` dependency
        route_index.install(app, self)
        # a builder-arg public_base_url also fixes the URLs Starlette builds (redirects)
        middleware.set_public_base_url(config.public_base_url)
        # Calls through these handles are cancelled when a request times out (504).
        generator, matting, faceswap, upscaler, router, llm, video, vision = (
            model_handle(h, config.handle_transport) if h is not None else None
            for h in (generator, matting, faceswap, upscaler, router, llm, video, vision))
        self.config = config
        self._base_urls: dict[tuple, str] = {}  # `_base_url`'s memo
        storage = StorageSettings(**{"asset_root": config.asset_dir,
                                     "database_url": config.database_url, **config.storage})
        self.assets = storage.build_asset_store()
        self.records = storage.build_record_store()  # migrates to head (locked) on start
        self.gate = auth.configure(
            app, records=self.records,
            config=config.auth.model_copy(update={"project": config.project}))
        # per-request usage, summed in memory and written in batches (graphs/usage.py)
        self.usage = usage.UsageRecorder(self.records, flush_s=config.usage_flush_s).start()
        app.state.usage_recorder = self.usage
        self.runner = JobRunner(assets=self.assets, records=self.records, project=config.project,
                                gate=self.gate, heartbeat_s=config.job_heartbeat_s,
                                max_image_pixels=config.max_image_pixels,
                                max_image_bytes=config.max_upload_bytes)
        self.resources = Resources(records=self.records, assets=self.assets, runner=self.runner)
        # image providers: local (the Generator) first, then the record store's; breakers
        # shared through the rate-limit store (graphs/providers.py)
        self.providers = ProviderRegistry(
            records=self.records, generate=lambda req: self.generation.local_generate(req),
            breakers_url=config.auth.quotas.storage_url, reload_s=config.providers_reload_s)
        # registered LoRA adapters (records + asset store), checked on the Generator
        self.loras = LoraService(
            records=self.records, assets=self.assets,
            validate=lambda data, base: generator.check_lora.remote(data),
            served_base=self._served_base, max_bytes=config.max_lora_bytes,
            import_dirs=config.lora_import_dirs)
        self.generation = GenerationService(generator=generator, runner=self.runner,
                                            matting=matting, providers=self.providers,
                                            loras=self.loras)
        self.tools = ToolService(
            handles={"matting": matting, "faceswap": faceswap, "upscaler": upscaler},
            generation=self.generation, runner=self.runner,
            limits=Limits(max_pixels=config.max_image_pixels,
                          max_upload_bytes=config.max_upload_bytes,
                          max_request_pixels=config.max_request_pixels))
        self.presets = PresetService(records=self.records, project=lambda: self.runner.project)
        self.videos = VideoService(video=video, runner=self.runner, decode=self.tools.decode,
                                   upscaler=upscaler, presets=self.presets)
        # workflows, and the chat whose plans run as workflows (one executor)
        self.workflows = WorkflowService(generation=self.generation, tools=self.tools,
                                         runner=self.runner, router=router,
                                         presets=self.presets,
                                         videos=self.videos if video is not None else None)
        self.recipes = RecipeService(records=self.records, runner=self.runner,
                                     generation=self.generation, workflows=self.workflows)
        self.router = router
        self.suggestion_index = SuggestionIndex()  # categories, random (no embeddings here)
        self.autocomplete_cache = LRU(4096)  # (query, limit) -> the Router's answer
        self.llm = llm
        # image analysis (caption/VQA, faces, colours): the route, the chat and later callers
        self.analysis = AnalysisService(vision=vision, faceswap=faceswap, pool=self.tools.pool,
                                        runner=self.runner)
        if config.auto_tag and vision is not None:  # the gallery's tags without an analyze
            self.runner.after_images = self.analysis.auto_tag
        self.chat_service = ChatService(router=router, generation=self.generation,
                                        tools=self.tools, runner=self.runner,
                                        videos=self.videos, analysis=self.analysis,
                                        workflows=self.workflows)
        # periodic upkeep in its own thread, apart from the health check (graphs/chores.py)
        # datasets + LoRA trainings (built on first use; the chat starts trainings too)
        self.chat_service.trainings = lambda: self._trainings()[1]
        self.chores = Chores(records=self.records, job_stale_s=config.job_stale_s,
                             session_ttl_s=config.session_ttl_s,
                             jobs_every_s=min(10.0, config.job_stale_s / 3)).start()
        # last: what start-up built is never walked by the garbage collector again
        freeze_startup_heap()

    async def _served_base(self) -> str:
        return (await self.generation.model_info())["name"]

    def _base_url(self, request: Request) -> str:
        """Base of the URLs in responses: `public_base_url` (PHOTOSTUDIO_PUBLIC_BASE_URL),
        else the request's base URL, whose scheme and host `middleware.PublicOrigin` has
        already fixed (trusted proxies or allowed hosts only: never any client's Host)."""
        if self.config.public_base_url:
            return self.config.public_base_url
        scope = request.scope
        # what Starlette builds the base URL from (scheme, server, root path, Host): the same
        # few values on every request, so the URL is built once per combination
        key = (scope.get("scheme"), scope.get("server"),
               scope.get("app_root_path", scope.get("root_path", "")),
               request.headers.get("host"))
        url = self._base_urls.get(key)
        if url is None:
            if len(self._base_urls) >= 256:  # Hosts are few (PublicOrigin); bound it anyway
                self._base_urls.clear()
            url = self._base_urls[key] = str(request.base_url)
        return url

    async def _reply(self, result: Any, request: Request) -> Any:
        """JSON, an SSE stream, for async jobs 202 + the job (Location: /v1/jobs/{id}), or
        the image bytes themselves when the client asks for them (`_image_bytes`)."""
        if isinstance(result, str):
            job = await self.resources.job(result, base_url=self._base_url(request))
            return JSONResponse(job.model_dump(mode="json"), status_code=202,
                                headers={"Location": f"/v1/jobs/{result}"})
        if isinstance(result, ImagesResponse) and len(result.data) == 1 \
                and result.data[0]._blob is not None \
                and accepted_image_formats(request.headers.get("accept")) is not None:
            return _image_bytes(result)
        return _maybe_stream(result)

    # -- projects and gallery -----------------------------------------------------------------
    @app.post("/v1/projects", tags=["projects"], status_code=201, responses={
        **ERROR_RESPONSES, 409: {"model": errors.ErrorEnvelope, "description": "exists"}})
    async def create_project(self, body: ProjectCreate) -> Project:
        return await self.resources.create_project(body)

    @app.get("/v1/projects", tags=["projects"], responses=ERROR_RESPONSES)
    async def projects(self, limit: int = Query(50, ge=1, le=200),
                       cursor: str | None = Query(None, max_length=512)) -> ProjectList:
        return await self.resources.projects(limit=limit, cursor=cursor)

    @app.get("/v1/projects/{project_id}", tags=["projects"], responses=ERROR_RESPONSES)
    async def project(self, project_id: str) -> Project:
        return await self.resources.project(project_id)

    @app.get("/v1/projects/{project_id}/assets", tags=["projects"], responses=ERROR_RESPONSES)
    async def project_assets(
            self, project_id: str, request: Request,
            limit: int = Query(50, ge=1, le=200),
            cursor: str | None = Query(None, max_length=512),
            tag: list[str] = Query([], max_length=32, description="only assets with this tag "
                                   "(repeat for several: all must match; case-insensitive)"),
            q: str | None = Query(None, max_length=200, description="free text: every word "
                                  "in the caption, description, prompt, or a tag's start"),
    ) -> AssetList:
        """The project's gallery, newest first. Tags, caption and description come from the
        image analysis (POST /v1/images/analyze with `asset_id` keeps them with the asset)."""
        return await self.resources.gallery(project_id, limit=limit, cursor=cursor,
                                            base_url=self._base_url(request), tags=tag, q=q)

    @app.delete("/v1/assets/{asset_id}", tags=["assets"], responses=ERROR_RESPONSES)
    async def delete_asset(self, asset_id: str) -> Deleted:
        return await self.resources.delete_asset(asset_id)

    # -- usage ------------------------------------------------------------------------------
    @app.get("/v1/usage", tags=["usage"], responses=ERROR_RESPONSES,
             response_model_by_alias=True)
    async def usage_report(
            self,
            start: datetime | None = Query(None, alias="from", description="default: 30 days "
                                           "before `to` (hour precision)"),
            end: datetime | None = Query(None, alias="to", description="default: now"),
            group_by: Literal["key", "project", "model", "route", "day"] = "day",
    ) -> UsageReport:
        """Usage summed per key, project, model, route or day: requests (per status),
        images, videos, pixels, model seconds (per deployment), LLM tokens. Own project;
        an admin key sees every project. Sums reach the record store in batches (every
        `usage_flush_s`, 2 s); this replica's are written before it answers."""
        principal = auth.current()
        end = as_utc(end) if end else utcnow()
        start = as_utc(start) if start else end - timedelta(days=30)
        if start >= end:
            raise ApiError(400, "from must be before to", param="from")
        await asyncio.to_thread(self.usage.flush)
        project = None if principal.admin else principal.project
        hour = start.replace(minute=0, second=0, microsecond=0)
        groups = await asyncio.to_thread(self.records.usage_report, start=hour, end=end,
                                         group_by=group_by, project=project)
        return UsageReport(group_by=group_by, start=start, end=end, project=project,
                           data=[UsageGroup(**g) for g in groups])

    @app.get("/v1/metrics", tags=["usage"], responses=ERROR_RESPONSES)
    async def http_metrics(self) -> HttpMetrics:
        """This gateway's HTTP metrics (what /metrics gives Prometheus), summed per route over
        every ingress replica: requests by status and the latency histogram. Cumulative since
        the replicas started and refreshed every few seconds (Ray's metrics export): take two
        readings and divide the differences for requests/s and mean latency."""
        app_name = serve.get_replica_context().app_name
        return HttpMetrics(**await observability.http_metrics(app_name))

    # -- jobs -------------------------------------------------------------------------------
    @app.get("/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)
    async def jobs(self, request: Request,
                   status: Literal["queued", "running", "succeeded", "failed",
                                   "cancelled"] | None = None,
                   created_after: datetime | None = None,
                   created_before: datetime | None = None,
                   limit: int = Query(50, ge=1, le=200),
                   cursor: str | None = Query(None, max_length=512)) -> JobList:
        return await self.resources.jobs(
            status=status, created_after=created_after, created_before=created_before,
            limit=limit, cursor=cursor, base_url=self._base_url(request))

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], responses=ERROR_RESPONSES)
    async def job(self, job_id: str, request: Request) -> Job:
        return await self.resources.job(job_id, base_url=self._base_url(request))

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], responses=ERROR_RESPONSES)
    async def cancel_job(self, job_id: str, request: Request) -> Job:
        return await self.resources.cancel_job(job_id, base_url=self._base_url(request))

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"], responses=ERROR_RESPONSES)
    async def job_events(self, job_id: str, request: Request) -> Any:
        """Server-Sent Events: `progress` whenever status/progress/step change, then one of
        `succeeded`, `failed`, `cancelled` with the job, and the stream ends."""
        project = (await self.resources.job_record(job_id)).project
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
                           "data": job_view(record, base, self.runner).model_dump_json()}
                    if final:
                        return
                await asyncio.sleep(0.2)

        return EventSourceResponse(events(), ping=15)

    # -- operations -------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz(self) -> Health:
        """Liveness: this ingress replica answers."""
        return Health()

    @app.get("/readyz", response_model=Readiness, tags=["ops"], responses=ERROR_RESPONSES)
    async def readyz(self) -> Readiness:
        """Readiness: every deployment of this application is HEALTHY in Serve (its replicas
        pass their model probes), the record store answers and the rate-limit storage
        answers. 503 + Retry-After naming what is not ready."""
        state = await self._readiness()
        if not state.ready:
            raise ApiError(503, "not ready: " + "; ".join(state.not_ready),
                           code="not_ready", headers={"Retry-After": "5"})
        return Readiness(deployments=state.deployments, checks=state.checks)

    async def _readiness(self) -> ReadinessState:
        states, checks = await asyncio.gather(
            asyncio.to_thread(_deployment_states),
            _dependency_checks(self.records, self.gate))
        deployments = {name: status for name, (status, _) in states.items()}
        bad = [f"{name} is {status}" for name, status in deployments.items()
               if status != "HEALTHY"]
        bad += [f"{name}: {status}" for name, status in checks.items() if status != "ok"]
        if not deployments:
            bad.append("no deployments found")
        return ReadinessState(ready=not bad, deployments=deployments, checks=checks,
                              not_ready=bad,
                              replicas={name: r for name, (_, r) in states.items()})

    @app.get("/v1/capabilities", response_model=Capabilities, tags=["ops"],
             responses={400: ERROR_RESPONSES[400]})
    async def capabilities(self, readiness: bool = Query(
            False, description="also what /readyz checks, as data (`readiness`: 200 while "
            "warming up, where /readyz answers 503)")) -> Capabilities:
        """What is deployed. Where weights live on the servers (`source` as a path) is shown
        to admin keys only; other keys see the model's name or hub id."""
        infos = {"generator": await self.generation.model_info()}
        for name in self.tools.handles:
            infos[name] = await self.tools.info(name)
        warnings = []
        if self.videos.video is not None:
            infos["video"] = await self.videos.info()
        if self.llm is not None:
            infos["llm"] = await self.llm.info.remote()
        else:
            warnings.append("no LLM deployed: the chat router answers with rules + "
                            "embeddings only (prompt compression is deterministic)")
        vision_info = await self.analysis.vision_info()
        if vision_info is not None:
            infos["vision"] = vision_info
        else:
            warnings.append("no vision-language model deployed: image analysis has no "
                            "caption and answers no questions")
        for op in self.workflows.catalogue.ops.values():  # e.g. video: no Video deployment
            if op.unavailable:
                warnings.append(f"workflow op {op.name!r} is not available on this gateway "
                                f"({op.unavailable})")
        for deployment, info in infos.items():
            if info["fallback"]:
                warnings.append(f"{deployment} fell back to tiny model {info['name']!r}: "
                                f"{info['fallback_reason']}; outputs come from random weights")
            elif info["tiny"]:
                warnings.append(f"{deployment} serves tiny random-weight model {info['name']!r}")
        admin = auth.current().admin
        return Capabilities(
            profile=self.config.profile,
            deployments={k: DeploymentInfo(**_public_source(v, admin))
                         for k, v in infos.items()},
            endpoints=sorted(p for p in app.openapi()["paths"] if p.startswith("/v1/")),
            warnings=warnings,
            readiness=await self._readiness() if readiness else None,
        )

    # -- images (OpenAI-compatible) -----------------------------------------------------------
    @app.post("/v1/images/generations", response_model=ImagesResponse, responses=_STREAMED,
              tags=["images"])
    async def generations(self, body: ImageGenerationRequest, request: Request) -> Any:
        body = await self.presets.apply_to_generation(body)
        return await self._reply(await self.generation.generate(
            body.prompt, Options.of(body), base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.post("/v1/images/generations/batch", status_code=202, responses=ERROR_RESPONSES,
              tags=["images"])
    async def generations_batch(self, body: ImageGenerationBatch, request: Request
                                ) -> JobBatch:
        """Up to 20 generations, one async job each (202): follow them at /v1/jobs/{id}.
        Every item is checked before any job starts (a 400 names `requests[i].<field>`)."""
        base_url = self._base_url(request)
        items = [await self.presets.apply_to_generation(item) for item in body.requests]
        ids = await self.generation.generate_batch(
            [(item.prompt, Options.of(item)) for item in items], base_url=base_url)
        jobs = [await self.resources.job(job_id, base_url=base_url) for job_id in ids]
        return JobBatch(data=jobs)

    @app.post("/v1/images/edits", response_model=ImagesResponse, responses=_STREAMED,
              tags=["images"])
    async def edits(self, request: Request,
                    form: Annotated[EditForm, Form(media_type=FORM)]) -> Any:
        files = [("image" if i == 0 else f"image[{i}]", await f.read())
                 for i, f in enumerate(form.uploads)]
        if form.mask is not None:
            files.append(("mask", await form.mask.read()))
        decoded = await self.tools.decode_many(files)
        mask = decoded.pop() if form.mask is not None else None
        return await self._reply(await self.generation.edit(
            decoded, prompt=form.prompt, mask=mask, input_fidelity=form.input_fidelity,
            opts=Options.of(form), base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.post("/v1/images/variations", response_model=ImagesResponse,
              responses=ERROR_RESPONSES, tags=["images"])
    async def variations(self, request: Request,
                         form: Annotated[VariationForm, Form(media_type=FORM)]
                         ) -> ImagesResponse:
        decoded = await self.tools.decode(await form.image.read(), "image", keep_alpha=False)
        opts = Options(n=form.n, size=form.size, response_format=form.response_format,
                       output_format=form.output_format, model=form.model, seed=form.seed,
                       provider=form.provider, loras=form.loras)
        return await self._reply(await self.generation.variations(
            decoded, opts=opts, base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    async def _model_cards(self) -> list[ModelCard]:
        infos = {"generator": await self.generation.model_info()}
        for name in self.tools.handles:
            infos[name] = await self.tools.info(name)
        if self.videos.video is not None:
            infos["video"] = await self.videos.info()
        return model_cards(infos, await self.loras.refresh())

    @app.get("/v1/models", tags=["images"], responses=ERROR_RESPONSES)
    async def models(self, kind: str | None = None) -> ModelList:
        """Every model: the deployed ones first (`deployment` set), then the catalogue
        (models/registry.py), OpenAI's list shape. `kind`: base, lora, vae, upscaler,
        matting, face or llm; LoRAs are those that fit the deployed base model."""
        if kind is not None and kind not in KINDS:
            raise ApiError(400, f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}",
                           param="kind", code="invalid_value")
        cards = await self._model_cards()
        return ModelList(data=[c for c in cards if kind is None or c.kind == kind])

    @app.get("/v1/models/{model_id}", tags=["images"], responses=ERROR_RESPONSES)
    async def model(self, model_id: str) -> ModelCard:
        cards = {c.id: c for c in await self._model_cards()}
        if model_id not in cards:
            near = close_matches(model_id, cards)
            raise ApiError(404, f"no model {model_id!r}" + (
                f"; did you mean {', '.join(near)}?" if near else "") + " (GET /v1/models)",
                param="model_id", code="model_not_found")
        return cards[model_id]

    @app.post("/v1/models/loras", tags=["images"], status_code=201, responses={
        **ERROR_RESPONSES, 409: {"model": errors.ErrorEnvelope, "description": "name taken"}},
        openapi_extra=_LORA_BODY)
    async def lora_register(self, request: Request) -> ModelCard:
        """Register a LoRA adapter (`models` or `admin` scope): a `.safetensors` file by
        multipart upload (`file`), by `asset_id`, or by server `path` (admin; under the
        configured import folders). Checked by loading it onto the base model (400 naming
        why not), stored in the asset store; then usable by name in `loras` and
        <lora:name:w> everywhere, and listed in GET /v1/models?kind=lora."""
        body, data, filename = await self._lora_input(request)
        principal = auth.current(self.runner.project)
        if body.path is not None:
            if not principal.admin:
                raise ApiError(403, "registering a LoRA from a server path needs an admin key; "
                               "upload the file instead (multipart field 'file')",
                               param="path", code="insufficient_scope")
            data, filename = await self.loras.read_path(body.path)
        elif body.asset_id is not None:
            data, filename = await self.loras.read_asset(body.asset_id,
                                                         project=principal.project)
        record = await self.loras.register_lora(
            name=body.name, base=body.base, data=data, filename=filename,
            project=principal.project, meta=body.meta, trigger_words=body.trigger_words,
            tags=body.tags, default_weight=body.default_weight, description=body.description,
            preview_asset=body.preview_asset, created_by=principal.key_id)
        return await self.model(record.name)

    async def _lora_input(self, request: Request) -> tuple[LoraCreate, bytes | None, str]:
        """JSON (asset_id or path), or multipart with the same fields plus `file`. Exactly
        one source. A pickle file is refused by its name before its bytes are read."""
        content_type = request.headers.get("content-type", "")
        data, filename = None, "lora.safetensors"
        if content_type.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=1, max_fields=16)
            except StarletteHTTPException as exc:
                raise ApiError(400, f"{exc.detail} Send one file (field 'file') and the "
                               "fields of LoraCreate", param="file",
                               code="too_many_files") from None
            allowed = set(LoraCreate.model_fields) | {"file"}
            await reject_unknown_fields(request, allowed)
            upload = form.get("file")
            fields = {k: form.get(k) for k in LoraCreate.model_fields
                      if form.get(k) not in (None, "")}
            if upload is not None and not isinstance(upload, str):
                filename = upload.filename or filename
                try:
                    check_lora_filename(filename)
                except ValueError as exc:
                    raise ApiError(400, str(exc), param="file", code="invalid_lora") from None
                data = await upload.read(self.loras.max_bytes + 1)
                if len(data) > self.loras.max_bytes:
                    raise ApiError(413, f"the LoRA file is over the limit of "
                                   f"{self.loras.max_bytes} bytes", param="file",
                                   code="file_too_large")
        else:
            fields = await json_object_body(request)
        try:
            body = LoraCreate(**fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        sources = [n for n, v in (("file", data), ("asset_id", body.asset_id),
                                  ("path", body.path)) if v is not None]
        if len(sources) != 1:
            raise ApiError(400, "give the LoRA file one way: a multipart 'file' upload, an "
                           "'asset_id', or (admin) a server 'path'" + (
                               f"; got {', '.join(sources)}" if sources else ""),
                           param="file", code="invalid_source")
        return body, data, filename

    @app.delete("/v1/models/loras/{name}", tags=["images"], responses=ERROR_RESPONSES)
    async def lora_delete(self, name: str) -> Deleted:
        """Remove a registered LoRA (`models` or `admin` scope; another project's: admin):
        its record and its file. Built-in catalogue entries cannot be deleted (400)."""
        principal = auth.current(self.runner.project)
        await self.loras.delete_lora(name, project=principal.project, admin=principal.admin)
        return Deleted(id=name)

    # -- providers ----------------------------------------------------------------------------
    async def _providers(self) -> list[dict[str, Any]]:
        await self.generation.model_info()  # the router, up to date
        return await self.generation.router.stats()

    @app.get("/v1/providers", tags=["providers"], responses=ERROR_RESPONSES)
    async def providers_list(self) -> ProviderList:
        """The image providers in routing order of priority: kind, models, capabilities,
        breaker state, this replica's success rate and p50 latency. Never a secret; settings
        (keys as '***') for admin keys only."""
        admin = auth.current().admin
        return ProviderList(data=[ProviderInfo(**public_view(p, admin=admin))
                                  for p in await self._providers()])

    @app.get("/v1/providers/{name}", tags=["providers"], responses=ERROR_RESPONSES)
    async def provider_get(self, name: str) -> ProviderInfo:
        for p in await self._providers():
            if p["name"] == name:
                return ProviderInfo(**public_view(p, admin=auth.current().admin))
        raise ApiError(404, f"no provider {name!r} (GET /v1/providers lists them)",
                       param="name", code="not_found")

    @app.post("/v1/providers", tags=["providers"], status_code=201, responses={
        **ERROR_RESPONSES, 409: {"model": errors.ErrorEnvelope, "description": "exists"}})
    async def provider_create(self, body: ProviderCreate) -> ProviderInfo:
        """Admin: add a provider (its keys are stored, never shown again)."""
        await asyncio.to_thread(add_config, self.records, name=body.name, kind=body.kind,
                                settings=body.settings)
        await self.providers.reload()
        return await self.provider_get(body.name)

    @app.patch("/v1/providers/{name}", tags=["providers"], responses=ERROR_RESPONSES)
    async def provider_update(self, name: str, body: ProviderUpdate) -> ProviderInfo:
        """Admin: change a provider's settings (merged into the stored ones)."""
        await asyncio.to_thread(update_config, self.records, name=name, settings=body.settings)
        await self.providers.reload()
        return await self.provider_get(name)

    @app.delete("/v1/providers/{name}", tags=["providers"], responses=ERROR_RESPONSES)
    async def provider_delete(self, name: str) -> Deleted:
        """Admin: remove a provider (`local` goes back to its default settings)."""
        if not await asyncio.to_thread(remove_config, self.records, name=name):
            raise ApiError(404, f"no provider {name!r}", param="name", code="not_found")
        await self.providers.reload()
        return Deleted(id=name)

    # -- tools --------------------------------------------------------------------------------
    @app.post("/v1/images/remove-background", response_model=ImagesResponse,
              responses=ERROR_RESPONSES, tags=["tools"])
    async def remove_background(self, request: Request,
                                form: Annotated[RemoveBackgroundForm, Form(media_type=FORM)]
                                ) -> ImagesResponse:
        return await self._reply(await self.tools.remove_background(
            await form.image.read(), output=form.output, bg_color=form.bg_color,
            alpha_matting=form.alpha_matting, output_format=form.output_format,
            response_format=form.response_format, base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.post("/v1/images/face-swap", response_model=ImagesResponse,
              responses={**ERROR_RESPONSES, 422: {"model": errors.ErrorEnvelope,
                                                  "description": "no face found"}},
              tags=["tools"])
    async def face_swap(self, request: Request,
                        form: Annotated[FaceSwapForm, Form(media_type=FORM)]
                        ) -> ImagesResponse:
        return await self._reply(await self.tools.face_swap(
            await form.source.read(), await form.target.read(),
            target_face_index=form.target_face_index, all_faces=form.all_faces,
            output_format=form.output_format, response_format=form.response_format,
            base_url=self._base_url(request), async_job=_wants_async(request)), request)

    @app.post("/v1/images/upscale", response_model=ImagesResponse, responses=ERROR_RESPONSES,
              tags=["tools"])
    async def upscale(self, request: Request,
                      form: Annotated[UpscaleForm, Form(media_type=FORM)]) -> ImagesResponse:
        return await self._reply(await self.tools.upscale(
            await form.image.read(), scale=form.scale, output_format=form.output_format,
            response_format=form.response_format, base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.post("/v1/images/analyze", responses=ERROR_RESPONSES, tags=["tools"])
    async def analyze(self, form: Annotated[AnalyzeForm, Form(media_type=FORM)]
                      ) -> ImageAnalysis:
        """What is in an image: caption, description, tags, dominant colours, transparency,
        size/format, faces (boxes from the face detector) and, where a VQA model is
        deployed, the answer to `question`. Multipart `image`, or `asset_id`: then the
        caption, description and tags are kept with the asset for the gallery's search
        (GET /v1/projects/{id}/assets?tag=&q=)."""
        data = await form.image.read() if form.image is not None else None
        return await self.analysis.analyze_upload(
            data=data, asset_id=form.asset_id, decode=self.tools.decode,
            question=form.question, colors=form.colors)

    @app.post("/v1/images/edit-ops", response_model=ImagesResponse, responses=ERROR_RESPONSES,
              tags=["tools"])
    async def edit_ops(self, request: Request,
                       form: Annotated[EditOpsForm, Form(media_type=FORM)]) -> ImagesResponse:
        return await self._reply(await self.tools.edit_ops(
            await form.image.read(), form.ops, output_format=form.output_format,
            response_format=form.response_format, base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    @app.post("/v1/images/style-transfer", response_model=ImagesResponse,
              responses=ERROR_RESPONSES, tags=["tools"])
    async def style_transfer(self, request: Request,
                             form: Annotated[StyleTransferForm, Form(media_type=FORM)]
                             ) -> ImagesResponse:
        return await self._reply(await self.tools.style_transfer(
            await form.image.read(), style=form.style, prompt=form.prompt,
            strength=form.strength, seed=form.seed, steps=form.steps, loras=form.loras,
            output_format=form.output_format, response_format=form.response_format,
            base_url=self._base_url(request), async_job=_wants_async(request)), request)

    @app.get("/v1/styles", tags=["tools"])
    async def styles(self) -> dict[str, Any]:
        """The style presets in their original shape (an alias view of GET /v1/presets,
        source=style)."""
        return {"data": list_styles()}

    # -- presets ------------------------------------------------------------------------------
    @app.get("/v1/presets", tags=["presets"], responses=ERROR_RESPONSES)
    async def presets_list(self, kind: Literal["image", "video"] | None = None) -> PresetList:
        """Built-in presets (named presets, styles, templates: one concept) and the
        project's own."""
        return await self.presets.list(kind)

    @app.post("/v1/presets", tags=["presets"], status_code=201, responses=ERROR_RESPONSES)
    async def preset_create(self, body: PresetCreate) -> PresetView:
        return await self.presets.create(body)

    @app.get("/v1/presets/{preset_id}", tags=["presets"], responses=ERROR_RESPONSES)
    async def preset_get(self, preset_id: str) -> PresetView:
        return PresetView(**(await self.presets.get(preset_id, param="preset_id")).as_dict())

    @app.delete("/v1/presets/{preset_id}", tags=["presets"], responses=ERROR_RESPONSES)
    async def preset_delete(self, preset_id: str) -> Deleted:
        await self.presets.delete(preset_id)
        return Deleted(id=preset_id)

    @app.post("/v1/presets/{preset_id}/apply", tags=["presets"], responses=ERROR_RESPONSES)
    async def preset_apply(self, preset_id: str, body: PresetApply) -> PresetApplied:
        """The request the preset makes of a prompt (send it to `endpoint`)."""
        return await self.presets.apply(preset_id, body)

    # -- workflows --------------------------------------------------------------------------
    async def _json_body(self, request: Request) -> Any:
        try:
            return safe_json.loads(await request.body() or b"null", what="the request body")
        except ValueError as exc:
            raise ApiError(400, f"request body is not valid JSON ({exc})",
                           code="invalid_json") from None

    @app.get("/v1/workflows/ops", tags=["workflows"])
    async def workflow_ops(self) -> dict[str, Any]:
        """The ops a workflow node may use: typed ports, params schema, availability."""
        return {"data": self.workflows.ops()}

    @app.post("/v1/workflows/validate", tags=["workflows"], responses=ERROR_RESPONSES)
    async def workflow_validate(self, request: Request) -> dict[str, Any]:
        """200 with the execution order and parallel stages, or 400 naming every problem.
        A multipart `image` made here (PNG/WebP with an embedded recipe) is recognised: its
        recipe's workflow is validated and returned with the recipe."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "send the workflow as JSON, or an image with a recipe as "
                               "multipart field 'image'", param="image")
            recipe = read_recipe(await upload.read())
            if recipe is None:
                raise ApiError(400, "this image carries no recipe (only PNG and WebP images "
                               "made by this gateway do)", param="image", code="no_recipe")
            workflow = recipe_workflow(recipe)
            return {**self.workflows.validate(workflow).summary(), "recipe": recipe,
                    "workflow": workflow}
        body = await self._json_body(request)
        if isinstance(body, dict) and "workflow" in body and "nodes" not in body:
            body = body["workflow"]
        return self.workflows.validate(body).summary()

    @app.post("/v1/workflows/execute", tags=["workflows"], responses=ERROR_RESPONSES)
    async def workflow_execute(self, body: WorkflowExecuteRequest, request: Request) -> Any:
        """Run a workflow as one job: sync (the outputs, like the image routes), or with
        `?async=true` a 202 and the job (node events: /v1/workflows/jobs/{id}/events)."""
        raw = body.workflow if body.workflow is not None else \
            await self.workflows.saved_graph(body.workflow_id)
        graph = self.workflows.with_inputs(raw, body.inputs)
        return await self._reply(await self.workflows.execute(
            graph, base_url=self._base_url(request), async_job=_wants_async(request),
            keep_intermediates=body.keep_intermediates), request)

    @app.get("/v1/workflows", tags=["workflows"], responses=ERROR_RESPONSES)
    async def workflows_list(self, limit: int = Query(50, ge=1, le=200),
                             cursor: str | None = Query(None, max_length=512)
                             ) -> SavedWorkflowList:
        """The project's saved workflows, after the shipped examples (first page only)."""
        return await self.workflows.saved_list(limit=limit, cursor=cursor)

    @app.post("/v1/workflows", tags=["workflows"], status_code=201, responses=ERROR_RESPONSES)
    async def workflow_create(self, body: SavedWorkflowCreate) -> SavedWorkflow:
        return await self.workflows.save(body)

    @app.get("/v1/workflows/{workflow_id}", tags=["workflows"], responses=ERROR_RESPONSES)
    async def workflow_get(self, workflow_id: str) -> SavedWorkflow:
        return await self.workflows.saved(workflow_id)

    @app.patch("/v1/workflows/{workflow_id}", tags=["workflows"], responses=ERROR_RESPONSES)
    async def workflow_update(self, workflow_id: str, body: SavedWorkflowUpdate
                              ) -> SavedWorkflow:
        return await self.workflows.update(workflow_id, body)

    @app.delete("/v1/workflows/{workflow_id}", tags=["workflows"], responses=ERROR_RESPONSES)
    async def workflow_delete(self, workflow_id: str) -> Deleted:
        await self.workflows.delete(workflow_id)
        return Deleted(id=workflow_id)

    @app.get("/v1/workflows/jobs/{job_id}/events", tags=["workflows"],
             responses=ERROR_RESPONSES)
    async def workflow_events(self, job_id: str, request: Request) -> Any:
        """Server-Sent Events per node: node_started, progress, node_succeeded (its outputs'
        sizes, model, seed; the asset id with keep_intermediates), node_failed,
        node_skipped; then the job's end (succeeded / failed / cancelled, with the job)."""
        record = await self.resources.job_record(job_id)
        base = self._base_url(request)
        log = self.workflows.logs.get(job_id)

        async def events():
            if log is not None:
                async for event in log.follow():
                    yield sse(event)
            while True:
                current = await asyncio.to_thread(self.records.get_job, job_id=job_id,
                                                  project=record.project)
                if current is None:
                    return
                if current.status in ("succeeded", "failed", "cancelled"):
                    if log is None:
                        for event in self.workflows.replay(current):
                            yield sse(event)
                    yield {"event": current.status,
                           "data": job_view(current, base, self.runner).model_dump_json()}
                    return
                await asyncio.sleep(0.1)

        return EventSourceResponse(events(), ping=15)

    # -- chat -----------------------------------------------------------------------------
    async def _chat_input(self, request: Request) -> tuple[ChatRequest, list[UploadFile]]:
        """POST /v1/chat takes JSON, or multipart with the same fields plus `image` files."""
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
            body = await json_object_body(request)
        try:
            return ChatRequest(**body), files
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None

    @app.post("/v1/chat", response_model=ChatResponse, responses=ERROR_RESPONSES, tags=["chat"],
              openapi_extra=_CHAT_BODY)
    async def chat(self, request: Request) -> Any:
        body, files = await self._chat_input(request)
        # every file's header checked and the request's pixels budgeted before any is decoded
        blobs = [("image" if i == 0 else f"image[{i}]", await f.read())
                 for i, f in enumerate(files)]
        uploads = await self.tools.decode_many(blobs)
        reply = await self.chat_service.chat(
            message=body.message, session_id=body.session_id, context=body.context,
            uploads=uploads, base_url=self._base_url(request), async_job=_wants_async(request),
            loras=body.loras)
        # an image made here carries its recipe: the reply says how it was made
        recipes = [r for _, data in blobs if (r := read_recipe(data)) is not None]
        if recipes:
            reply.metadata["recipes"] = recipes
        if reply.type == "processing":
            return JSONResponse(reply.model_dump(mode="json"), status_code=202,
                                headers={"Location": f"/v1/jobs/{reply.data.job_id}"})
        return reply

    @app.post("/v1/chat/plan", responses=ERROR_RESPONSES, tags=["chat"],
              openapi_extra=_CHAT_BODY)
    async def chat_plan(self, request: Request) -> ChatPlan:
        body, files = await self._chat_input(request)
        session = await self.chat_service.session(body.session_id) if body.session_id \
            else None
        await self.chat_service.check_context(body.context)
        context = self.chat_service.context(session, body.context) \
            if session is not None or body.context else None
        return ChatPlan(**await self.chat_service.plan_with_workflow(
            body.message, images=len(files), context=context))

    @app.get("/v1/sessions", tags=["chat"], responses=ERROR_RESPONSES)
    async def sessions(self, limit: int = Query(50, ge=1, le=MAX_PAGE),
                       cursor: str | None = Query(None, max_length=512)) -> SessionList:
        return await self.resources.sessions(limit=limit, cursor=cursor)

    @app.get("/v1/sessions/{session_id}", tags=["chat"], responses=ERROR_RESPONSES)
    async def session(self, session_id: str, request: Request) -> Session:
        return await self.resources.session(session_id, base_url=self._base_url(request))

    @app.delete("/v1/sessions/{session_id}", tags=["chat"], responses=ERROR_RESPONSES)
    async def delete_session(self, session_id: str) -> Deleted:
        return await self.resources.delete_session(session_id)

    @app.get("/v1/templates", tags=["chat"])
    async def templates(self) -> dict[str, Any]:
        """The prompt templates in their original shape (an alias view of GET /v1/presets,
        source=template)."""
        return {"data": list_templates()}

    # -- prompt suggestions ---------------------------------------------------------------
    @app.get("/v1/suggestions/autocomplete", tags=["suggestions"], responses=ERROR_RESPONSES)
    async def suggestions_autocomplete(self, q: str = Query(..., min_length=1, max_length=200),
                                       limit: int = Query(10, ge=1, le=50)
                                       ) -> dict[str, Any]:
        """Phrases starting with `q` first, then the nearest in meaning (the router's
        all-MiniLM-L6-v2; prefix matches only when its embedding stage is off). Prefix
        matches that fill `limit` (or a fragment too short to embed) are answered here; the
        rest ask the Router once per (query, limit) and are kept in an LRU (the vocabulary
        is fixed: the same query always gets the same suggestions)."""
        prefix = self.suggestion_index.prefix(q, limit)
        if not SuggestionIndex.needs_neighbours(q, prefix, limit):
            return {"q": q, "data": [s.as_dict() for s in prefix]}
        key = (normalise(q), limit)
        data = self.autocomplete_cache.get(key)
        if data is None:
            data = await self.router.suggest.remote(q, limit)
            self.autocomplete_cache.put(key, data)
        return {"q": q, "data": data}

    @app.get("/v1/suggestions/categories", tags=["suggestions"])
    async def suggestions_categories(self) -> dict[str, Any]:
        return {"data": [{"id": c, "count": len(v)} for c, v in
                         self.suggestion_index.categories.items()]}

    @app.get("/v1/suggestions/by-category/{category}", tags=["suggestions"],
             responses=ERROR_RESPONSES)
    async def suggestions_by_category(self, category: str) -> dict[str, Any]:
        try:
            return {"category": category,
                    "data": self.suggestion_index.by_category(category)}
        except KeyError:
            raise ApiError(404, f"no category {category!r}; categories: "
                           f"{', '.join(self.suggestion_index.categories)}", param="category",
                           code="not_found") from None

    @app.post("/v1/suggestions/enhance", tags=["suggestions"], responses=ERROR_RESPONSES)
    async def suggestions_enhance(self, body: PromptRequest) -> dict[str, Any]:
        """The prompt with the quality, lighting and camera terms nearest to it that it
        lacks (and which were added)."""
        return await self.router.enhance.remote(body.prompt)

    @app.get("/v1/suggestions/random", tags=["suggestions"], responses=ERROR_RESPONSES)
    async def suggestions_random(self, n: int = Query(5, ge=1, le=50),
                                 category: str | None = Query(None, max_length=32),
                                 seed: int | None = Query(None, ge=0)) -> dict[str, Any]:
        if category is not None and category not in self.suggestion_index.categories:
            raise ApiError(400, f"category must be one of "
                           f"{', '.join(self.suggestion_index.categories)}", param="category")
        return {"data": [s.as_dict() for s in self.suggestion_index.random(
            n, category=category, seed=seed)]}

    @app.post("/v1/prompts/validate", tags=["prompts"], responses=ERROR_RESPONSES)
    async def validate_prompt(self, body: PromptRequest) -> PromptValidation:
        return await self.router.validate.remote(body.prompt)

    @app.post("/v1/prompts/refine", tags=["prompts"], responses=ERROR_RESPONSES)
    async def refine_prompt(self, body: PromptRequest) -> RefinedPrompt:
        validation = await self.router.validate.remote(body.prompt)
        if not validation.valid:
            raise ApiError(400, validation.error.message, param="prompt",
                           code=validation.error.code)
        return await self.router.refine.remote(body.prompt, style=body.style)

    # -- videos (OpenAI Videos API shape) ------------------------------------------------------
    async def _video_input(self, request: Request) -> tuple[VideoCreate, bytes | None]:
        """POST /v1/videos takes JSON, or multipart with the same fields plus an
        `input_reference` image (image-to-video)."""
        fields_ = set(VideoCreate.model_fields) | {"input_reference"}
        image = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=1, max_fields=len(fields_))
            except StarletteHTTPException as exc:
                raise ApiError(400, f"{exc.detail} A video takes one `input_reference` image "
                               "and the fields " + ", ".join(sorted(fields_)),
                               param="input_reference") from None
            await reject_unknown_fields(request, fields_)
            body: Any = {k: v for k, v in form.items() if isinstance(v, str)
                         and k != "input_reference" and v != ""}
            ref = form.get("input_reference")
            if ref is not None and not isinstance(ref, str):
                image = await ref.read()
            elif isinstance(ref, str):
                raise ApiError(400, "input_reference must be an image file (multipart file "
                               "part)", param="input_reference")
        else:
            body = await json_object_body(request)
        try:
            return VideoCreate(**body), image
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None

    @app.post("/v1/videos", tags=["videos"], responses=ERROR_RESPONSES, openapi_extra={
        "requestBody": {"content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/VideoCreate"}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["prompt"],
                                               "properties": {
                "prompt": {"type": "string"}, "seconds": {"type": "string"},
                "size": {"type": "string"},
                "input_reference": {"type": "string", "format": "binary"}}}}},
            "required": True}})
    async def create_video(self, request: Request) -> Video:
        """Always async: the queued video at once; poll GET /v1/videos/{id} (or follow
        /v1/jobs/{id}/events), then download GET /v1/videos/{id}/content."""
        body, image = await self._video_input(request)
        return await self.videos.create(body, image=image, base_url=self._base_url(request))

    @app.get("/v1/videos", tags=["videos"], responses=ERROR_RESPONSES)
    async def list_videos(self, request: Request, after: str | None = Query(None, max_length=128),
                          limit: int = Query(20, ge=1, le=100),
                          order: Literal["asc", "desc"] = "desc") -> VideoList:
        return await self.videos.list(after=after, limit=limit, order=order,
                                      base_url=self._base_url(request))

    @app.get("/v1/video-presets", tags=["videos"])
    async def video_presets(self) -> dict[str, Any]:
        return {"data": list_presets()}

    @app.get("/v1/videos/{video_id}", tags=["videos"], responses=ERROR_RESPONSES)
    async def get_video(self, video_id: str, request: Request) -> Video:
        return await self.videos.get(video_id, base_url=self._base_url(request))

    @app.delete("/v1/videos/{video_id}", tags=["videos"], responses=ERROR_RESPONSES)
    async def delete_video(self, video_id: str) -> VideoDeleted:
        await self.videos.delete(video_id)
        return VideoDeleted(id=video_id)

    @app.post("/v1/videos/{video_id}/remix", tags=["videos"], responses=ERROR_RESPONSES)
    async def remix_video(self, video_id: str, body: VideoRemix, request: Request) -> Video:
        """A new video: this one's settings and seed with a new prompt."""
        return await self.videos.remix(video_id, body.prompt,
                                       base_url=self._base_url(request))

    @app.post("/v1/videos/{video_id}/upscale", tags=["videos"], responses=_VIDEO_NOT_READY)
    async def upscale_video(self, video_id: str, body: VideoUpscale, request: Request
                            ) -> Video:
        """A new video (a job): this completed one upscaled frame by frame (x2 or x4) by the
        Upscaler deployment, same fps and length."""
        return await self.videos.upscale(video_id, body.scale,
                                         base_url=self._base_url(request))

    @app.get("/v1/videos/{video_id}/content", tags=["videos"], responses={
        **_VIDEO_NOT_READY, 200: {"content": {t: {"schema": {"type": "string",
                                                           "format": "binary"}}
                                             for t in ("video/mp4", "image/png", "image/webp",
                                                       "image/gif")},
                                 "description": "the MP4 (Range supported) or its poster"}})
    async def video_content(self, video_id: str, request: Request,
                            variant: str = Query("video", max_length=32)) -> Response:
        asset_id = await self.videos.content_asset(video_id, variant)
        return await self._send_asset(await self.resources.asset_record(asset_id), request)

    @app.post("/v1/prompts/enhance", tags=["prompts"], responses=ERROR_RESPONSES)
    async def enhance_prompt(self, body: PromptRequest) -> EnhancedPrompt:
        """The refiner's prompt (`/v1/prompts/refine`), with what it changed word by word."""
        refined = await self.refine_prompt(body)
        return enhanced_prompt(refined)

    # -- assets -------------------------------------------------------------------------------
    @app.get("/v1/assets/{asset_id}", responses={**ERROR_RESPONSES, 200: {
        "content": {t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/png", "image/jpeg", "image/webp", "image/gif",
                              "video/mp4")},
        "description": "the asset's bytes (images; videos and their previews)",
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
        return await self._send_asset(await self.resources.asset_record(asset_id), request)

    async def _send_asset(self, record: Any, request: Request) -> Response:
        asset_id = record.id
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

    @app.get("/v1/assets/{asset_id}/recipe", tags=["assets"], responses=ERROR_RESPONSES)
    async def asset_recipe(self, asset_id: str) -> dict[str, Any]:
        """How the asset was made: prompt, negative prompt, model, LoRAs, seed, steps,
        guidance, size, preset, or its workflow and node (also embedded in the PNG / WebP)."""
        return {"asset_id": asset_id, "recipe": await self.recipes.recipe(asset_id)}

    @app.post("/v1/assets/{asset_id}/remix", tags=["assets"], responses=ERROR_RESPONSES)
    async def asset_remix(self, asset_id: str, body: RemixRequest, request: Request) -> Any:
        """Run the asset's recipe again, with overrides (same seed: the same image)."""
        return await self._reply(await self.recipes.remix(
            asset_id, body.overrides, base_url=self._base_url(request),
            async_job=_wants_async(request)), request)

    # -- datasets and LoRA trainings (graphs/datasets.py, graphs/training.py) ----------------
    def _trainings(self):
        """(datasets, trainings) services, built on first use (the chat's training turns
        call them too: `ChatService.trainings`)."""
        if getattr(self, "_training_services", None) is None:
            from graphs.datasets import DatasetService
            from graphs.training import TrainingService, TrainingSettings
            from storage.datasets import DatasetRecords

            data = DatasetRecords(self.records)
            datasets = DatasetService(records=data, runner=self.runner,
                                      decode_many=self.tools.decode_many,
                                      vision=self.analysis.vision,
                                      vision_info=self.analysis.vision_info)
            storage = {"asset_root": self.config.asset_dir,
                       "database_url": self.config.database_url, **self.config.storage}
            self._training_services = (datasets, TrainingService(
                data=data, datasets=datasets, runner=self.runner, storage=storage,
                settings=TrainingSettings(**self.config.training)))
        return self._training_services

    @app.post("/v1/datasets", tags=["trainings"], status_code=201, responses=ERROR_RESPONSES)
    async def dataset_create(self, body: DatasetCreate, request: Request) -> DatasetView:
        return await self._trainings()[0].create(body, base_url=self._base_url(request))

    @app.get("/v1/datasets", tags=["trainings"], responses=ERROR_RESPONSES)
    async def datasets_list(self, request: Request, limit: int = Query(50, ge=1, le=200),
                            cursor: str | None = Query(None, max_length=512)) -> DatasetList:
        return await self._trainings()[0].list(limit=limit, cursor=cursor,
                                               base_url=self._base_url(request))

    @app.get("/v1/datasets/{dataset_id}", tags=["trainings"], responses=ERROR_RESPONSES)
    async def dataset_get(self, dataset_id: str, request: Request) -> DatasetView:
        return await self._trainings()[0].get(dataset_id, base_url=self._base_url(request))

    @app.get("/v1/datasets/{dataset_id}/stats", tags=["trainings"], responses=ERROR_RESPONSES)
    async def dataset_stats(self, dataset_id: str) -> DatasetStats:
        return await self._trainings()[0].stats(dataset_id)

    @app.delete("/v1/datasets/{dataset_id}", tags=["trainings"], responses=ERROR_RESPONSES)
    async def dataset_delete(self, dataset_id: str) -> Deleted:
        await self._trainings()[0].delete(dataset_id)
        return Deleted(id=dataset_id)

    @app.post("/v1/datasets/{dataset_id}/images", tags=["trainings"], status_code=201,
              responses=ERROR_RESPONSES, openapi_extra=DATASET_IMAGES_BODY)
    async def dataset_add_images(self, dataset_id: str, request: Request) -> DatasetImagesAdded:
        """Multipart: `image` files (many; `caption` fields aligned with them), `zip` files
        (images + `.txt` captions by file stem), `asset_id` fields (the project's images),
        `auto_caption` (default true: the Vision model captions images without one)."""
        form = await dataset_images_form(request)
        return await self._trainings()[0].add_images(
            dataset_id, **form, base_url=self._base_url(request))

    @app.patch("/v1/datasets/{dataset_id}/images/{image_id}", tags=["trainings"],
               responses=ERROR_RESPONSES)
    async def dataset_image_update(self, dataset_id: str, image_id: str,
                                   body: DatasetImageUpdate, request: Request
                                   ) -> DatasetImageView:
        """Edit one image's caption (source `user`; null or empty: no caption)."""
        return await self._trainings()[0].set_caption(dataset_id, image_id, body.caption,
                                                      base_url=self._base_url(request))

    @app.delete("/v1/datasets/{dataset_id}/images/{image_id}", tags=["trainings"],
                responses=ERROR_RESPONSES)
    async def dataset_image_delete(self, dataset_id: str, image_id: str) -> Deleted:
        """Remove one image from the dataset (its stored copy too)."""
        await self._trainings()[0].delete_image(dataset_id, image_id)
        return Deleted(id=image_id)

    @app.post("/v1/trainings", tags=["trainings"], status_code=202, responses=ERROR_RESPONSES)
    async def training_create(self, body: TrainingCreate, request: Request) -> JSONResponse:
        """A LoRA training job (202): follow /v1/trainings/{id} or its /events."""
        view = await self._trainings()[1].create(body, base_url=self._base_url(request))
        return JSONResponse(view.model_dump(mode="json"), status_code=202,
                            headers={"Location": view.links.self})

    @app.get("/v1/trainings", tags=["trainings"], responses=ERROR_RESPONSES)
    async def trainings_list(self, request: Request, limit: int = Query(50, ge=1, le=200),
                             cursor: str | None = Query(None, max_length=512)) -> TrainingList:
        return await self._trainings()[1].list(limit=limit, cursor=cursor,
                                               base_url=self._base_url(request))

    @app.get("/v1/trainings/{training_id}", tags=["trainings"], responses=ERROR_RESPONSES)
    async def training_get(self, training_id: str, request: Request) -> TrainingView:
        return await self._trainings()[1].get(training_id, base_url=self._base_url(request))

    @app.delete("/v1/trainings/{training_id}", tags=["trainings"], responses=ERROR_RESPONSES)
    async def training_cancel(self, training_id: str, request: Request) -> TrainingView:
        """Cancel: a queued training at once, a running one at its next step (nothing
        half-written is kept)."""
        return await self._trainings()[1].cancel(training_id, base_url=self._base_url(request))

    @app.get("/v1/trainings/{training_id}/metrics", tags=["trainings"],
             responses=ERROR_RESPONSES)
    async def training_metrics(self, training_id: str, request: Request) -> TrainingMetrics:
        return await self._trainings()[1].metrics(training_id,
                                                  base_url=self._base_url(request))

    @app.get("/v1/trainings/{training_id}/events", tags=["trainings"],
             responses=ERROR_RESPONSES)
    async def training_events(self, training_id: str, request: Request) -> Any:
        """Server-Sent Events: `progress` (step, loss, ETA) as it trains, then succeeded /
        failed / cancelled with the training."""
        stream = await self._trainings()[1].events(training_id,
                                                   base_url=self._base_url(request))
        return EventSourceResponse(stream, ping=15)

    def check_health(self) -> None:
        """Serve's probe: the record store answers. (Upkeep runs apart: `self.chores`.)"""
        self.records.ping()

    def __del__(self):  # the replica is being torn down
        recorder = getattr(self, "usage", None)
        if recorder is not None:
            recorder.stop(timeout_s=1.0)  # writes what is not written yet
        chores = getattr(self, "chores", None)
        if chores is not None:
            chores.stop(timeout_s=1.0)

