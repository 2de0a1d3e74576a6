"""HTTP API schemas (requests and responses), apart from route code and logic."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from router.prompts import MAX_PROMPT_CHARS
from router.schemas import Plan  # the prompt rules' limit: one number

MAX_PROMPT_ACCEPTED = 32_000  # /v1/prompts/*: what they take in, to report on (OpenAI's limit)
MAX_IMAGES = 10
MAX_EDIT_IMAGES = 16  # reference images of one edit
SIZE_PATTERN = r"^(auto|[0-9]{1,5}x[0-9]{1,5})$"

Quality = Literal["low", "medium", "high", "auto"]
Background = Literal["transparent", "opaque", "auto"]
OutputFormat = Literal["png", "jpeg", "webp"]
ResponseFormat = Literal["b64_json", "url"]


def _check_prompt(value: str) -> str:
    """The edge's prompt rule (the model's `check_inputs` keeps its own)."""
    if not value.strip():
        raise PydanticCustomError("empty_prompt", "prompt must not be empty",
                                  {"param": "prompt"})
    if len(value) > MAX_PROMPT_CHARS:
        raise PydanticCustomError(
            "prompt_too_long", "prompt is {length} characters; the limit is {limit}. Shorten "
            "it (keep subject, style and quality terms)",
            {"param": "prompt", "length": len(value), "limit": MAX_PROMPT_CHARS})
    return value


# bounded by the schema (OpenAI's 32,000) so a huge value is refused before the rule runs
Prompt = Annotated[str, Field(max_length=MAX_PROMPT_ACCEPTED,
                              description=f"What to draw; at most {MAX_PROMPT_CHARS} "
                              "characters."), AfterValidator(_check_prompt)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
MAX_PROVIDERS = 10  # names in one request's `provider` chain
MAX_BATCH = 20  # prompts of one POST /v1/images/generations/batch


class LoraItem(BaseModel):
    """One LoRA adapter of a request (GET /v1/models?kind=lora lists them)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128)
    weight: float | None = Field(None, ge=-4.0, le=4.0, description="default: the adapter's "
                                 "default_weight (GET /v1/models/{name})")


def _loras_json(value: Any) -> Any:
    """Multipart forms carry `loras` as JSON text ('[{"name": "x", "weight": 0.8}]')."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        items: list = []
        for text in value:
            try:
                parsed = json.loads(text)
            except ValueError:
                raise PydanticCustomError("invalid_loras", "loras must be a JSON list of "
                                          '{{"name", "weight"}} objects', {"param": "loras"}
                                          ) from None
            items += parsed if isinstance(parsed, list) else [parsed]
        return items
    return value


Loras = Annotated[
    # the length limit on the list itself (on `list | None` pydantic applies it to None too:
    # a 500 for "loras": null)
    Annotated[list[LoraItem], Field(max_length=5)] | None,
    BeforeValidator(_loras_json),
    Field(None, description="LoRA adapters, up to 5: [{name, weight}] (also A1111's "
          "<lora:name:weight> inside the prompt)")]


def _provider_chain(value: str | list[str] | None) -> list[str] | None:
    """`provider`: one name, an ordered list, or (forms) names separated by commas."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    if not names:
        return None
    if len(names) > MAX_PROVIDERS:
        raise PydanticCustomError("too_many_providers", "provider names at most {limit} "
                                  "providers", {"param": "provider", "limit": MAX_PROVIDERS})
    return names


ProviderChain = Annotated[
    str | list[Annotated[str, Field(max_length=64)]] | None,
    Field(None, description="A provider name, or an ordered list of them (forms: "
          "comma-separated): pins the providers tried and their order (see GET "
          "/v1/providers). Default: the configured order, local first."),
    AfterValidator(_provider_chain)]


class OutputOptions(BaseModel):
    """Output options of generations and edits, checked together once, here."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1, le=MAX_IMAGES, description="Number of images, 1-10.")
    size: str = Field("auto", pattern=SIZE_PATTERN,
                      description="WIDTHxHEIGHT (multiples of 8 within the model's limits) "
                                  "or 'auto' for the model's default.")
    response_format: ResponseFormat = "b64_json"
    quality: Quality = Field("auto", description="low|medium|high → fewer/more denoising "
                             "steps (see README); auto = medium")
    background: Background = Field("auto", description="transparent: generated, then the "
                                   "background is removed (needs png or webp)")
    output_format: OutputFormat = "png"
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg/webp "
                                           "encoder quality 0-100 (default 90)")
    stream: bool = Field(False, description="Server-Sent Events with partial images")
    partial_images: int = Field(0, ge=0, le=3, description="previews streamed, 0-3")
    model: str | None = Field(None, description="Model name (see /v1/capabilities), or "
                              "'provider/model' to pin a provider (e.g. "
                              "'runware/runware:101@1').")
    provider: ProviderChain = None
    user: str | None = Field(None, max_length=256)
    loras: Loras = None
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    seed: Seed | None = Field(None, description="Seed of the first image; image k uses seed+k.")
    steps: int | None = Field(None, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)

    @model_validator(mode="after")
    def _combinations(self):
        if self.background == "transparent" and self.output_format == "jpeg":
            raise _combination("background", "background=transparent needs output_format png "
                               "or webp (JPEG has no alpha channel)")
        if self.stream and self.n != 1:
            raise _combination("n", "stream=true generates one image: use n=1")
        if self.partial_images and not self.stream:
            raise _combination("partial_images", "partial_images needs stream=true")
        if self.stream and self.response_format == "url":
            raise _combination("response_format", "stream=true returns b64_json images")
        return self


def _combination(param: str, message: str) -> PydanticCustomError:
    # `param` travels in the error's context: graphs.errors puts it in the envelope
    return PydanticCustomError("invalid_combination", message, {"param": param})


class ImageGenerationRequest(OutputOptions):
    """OpenAI-shaped image generation, plus our diffusion controls."""

    prompt: Prompt
    moderation: Literal["auto", "low"] = Field("auto", description="accepted for "
                                               "compatibility; no moderation model runs here")
    preset: str | None = Field(None, max_length=128, description="an image preset (GET "
                               "/v1/presets): its template wraps the prompt, its negative "
                               "prompt is added, its parameters fill what the request leaves "
                               "unset")


class ImageGenerationBatch(BaseModel):
    """POST /v1/images/generations/batch: up to 20 generations, one async job each."""

    model_config = ConfigDict(extra="forbid")

    requests: list[ImageGenerationRequest] = Field(
        ..., min_length=1, max_length=MAX_BATCH,
        description=f"1-{MAX_BATCH} image generation requests (stream is not available)")

    @model_validator(mode="after")
    def _no_stream(self):
        if any(r.stream for r in self.requests):
            raise _combination("requests", "a batch runs as async jobs: stream is not "
                               "available (drop stream)")
        return self


# --- multipart forms (FastAPI form models: one field list, unknown fields are a 400) ----------

FORM = "multipart/form-data"


class EditForm(OutputOptions):
    """POST /v1/images/edits (OpenAI-compatible multipart)."""

    prompt: Prompt
    image: list[UploadFile] | None = Field(None, description="one image (or use image[])")
    images: list[UploadFile] | None = Field(None, alias="image[]",
                                            description=f"1-{MAX_EDIT_IMAGES} reference images")
    mask: UploadFile | None = Field(None, description="PNG with alpha; transparent = the area "
                                    "to change; same size as the first image")
    input_fidelity: Literal["high", "low"] = "low"

    @property
    def uploads(self) -> list[UploadFile]:
        return [*(self.image or []), *(self.images or [])]

    @model_validator(mode="after")
    def _image_count(self):
        count = len(self.uploads)
        if not count:
            raise PydanticCustomError("missing_parameter",
                                      "missing required parameter 'image' (or 'image[]')",
                                      {"param": "image"})
        if count > MAX_EDIT_IMAGES:
            raise PydanticCustomError("too_many_images",
                                      "give 1 to {limit} images, got {count}",
                                      {"param": "image", "limit": MAX_EDIT_IMAGES,
                                       "count": count})
        return self


class VariationForm(BaseModel):
    """POST /v1/images/variations (OpenAI-compatible multipart)."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str = Field("auto", pattern=SIZE_PATTERN)
    response_format: ResponseFormat = "b64_json"
    output_format: OutputFormat = "png"
    model: str | None = None
    provider: ProviderChain = None
    user: str | None = Field(None, max_length=256)
    seed: Seed | None = None
    loras: Loras = None


class ToolForm(BaseModel):
    """What every tool route takes besides its own fields."""

    model_config = ConfigDict(extra="forbid")

    output_format: OutputFormat = "png"
    response_format: ResponseFormat = "b64_json"


class RemoveBackgroundForm(ToolForm):
    image: UploadFile = Field(..., description="PNG, JPEG or WebP")
    output: Literal["cutout", "mask", "solid"] = Field(
        "cutout", description="cutout: RGBA; mask: the alpha matte; solid: on bg_color")
    bg_color: str | None = Field(None, max_length=32,
                                 description="'#RRGGBB' or 'r,g,b' (output=solid)")
    alpha_matting: bool = Field(False, description="refine edges (slower)")

    @model_validator(mode="after")
    def _combinations(self):
        if self.bg_color and self.output != "solid":
            raise _combination("bg_color", "bg_color is only used with output=solid")
        if self.output == "cutout" and self.output_format == "jpeg":
            raise _combination("output_format", "a cut-out has transparency: use output_format "
                               "png or webp (or output=solid for JPEG)")
        return self


class FaceSwapForm(ToolForm):
    source: UploadFile = Field(..., description="image with the face to use")
    target: UploadFile = Field(..., description="image whose face(s) are replaced")
    target_face_index: int | None = Field(
        None, ge=0, description="which target face, left to right (default: largest)")
    all_faces: bool = Field(False, description="replace every face in the target")

    @model_validator(mode="after")
    def _one_choice(self):
        if self.all_faces and self.target_face_index is not None:
            raise _combination("target_face_index", "give either target_face_index or "
                               "all_faces=true, not both")
        return self


class UpscaleForm(ToolForm):
    image: UploadFile
    scale: int = Field(4, description="2 or 4")

    @model_validator(mode="after")
    def _scale(self):
        if self.scale not in (2, 4):  # (a Literal[2, 4] would refuse the form's text "2")
            raise PydanticCustomError("invalid_scale", "scale must be one of 2, 4, got "
                                      "{scale}", {"param": "scale", "scale": self.scale})
        return self


class EditOpsForm(ToolForm):
    image: UploadFile
    ops: str = Field(..., max_length=64 * 1024, description=(
        'JSON list applied in order, e.g. [{"op": "crop", "x": 0, "y": 0, "width": 64, '
        '"height": 64}, {"op": "grayscale"}]; ops: crop, resize, rotate, flip, brightness, '
        "contrast, saturation, grayscale, blur"))


class StyleTransferForm(ToolForm):
    image: UploadFile
    style: str = Field(..., max_length=300,
                       description="a preset name (GET /v1/styles) or free text")
    prompt: str | None = Field(None, max_length=2000, description="what the image shows")
    loras: Loras = None
    strength: float | None = Field(None, gt=0, le=1, description="default: the preset's")
    seed: Seed | None = None
    steps: int | None = Field(None, ge=1, le=150)


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    id: str = Field(..., description="Asset id (GET /v1/assets/{id})")
    seed: int | None = None
    # the encoded image itself, kept by the ingress that stored it (never serialized): a
    # client that asks for image bytes (Accept: image/png) gets these, no base64 or JSON
    _blob: bytes | None = PrivateAttr(default=None)


class ResponseMetadata(BaseModel):
    job_id: str
    model: str
    tiny: bool = Field(..., description="True when outputs come from a tiny random-weight model")
    fallback: bool = Field(..., description="True when the configured model could not be "
                                            "loaded and the tiny model answered instead")
    fallback_reason: str | None = None
    batch_size: int | None = Field(None, description="Images computed together in one model call")
    timings: dict[str, float]
    extra: dict[str, Any] = Field(default_factory=dict, description="tool-specific details")
    loras: list[dict[str, Any]] = Field(default_factory=list, description="LoRA adapters "
                                        "applied: [{name, weight}]")
    provider: str | None = Field(None, description="the image provider that answered "
                                 "(generator work; see GET /v1/providers)")
    attempts: list[dict[str, Any]] = Field(
        default_factory=list, description="each provider tried, in order: provider, outcome "
        "('ok', 'breaker_open', 'timeout', 'connection_error', ...), seconds, detail")


class UsageDetails(BaseModel):
    text_tokens: int = 0
    image_tokens: int = 0


class Usage(BaseModel):
    """OpenAI's shape: input tokens are the prompt's words and the input images; plus what
    this request really used here (the same counts `GET /v1/usage` sums)."""

    input_tokens: int = 0
    input_tokens_details: UsageDetails = Field(default_factory=UsageDetails)
    output_tokens: int = 0
    total_tokens: int = 0
    images: int = Field(0, description="images made")
    pixels: int = Field(0, description="pixels of the images made")
    model_seconds: float = Field(0.0, description="seconds the models worked")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat = "png"
    size: str
    background: Literal["transparent", "opaque"] | None = None
    quality: Literal["low", "medium", "high"] | None = None
    usage: Usage | None = None
    metadata: ResponseMetadata


class PromptRequest(BaseModel):
    """POST /v1/prompts/validate and /refine: prompts up to 32,000 characters are taken in,
    so that the answer can say what is wrong with a long one."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., max_length=MAX_PROMPT_ACCEPTED)
    style: str | None = Field(None, max_length=300)


# --- resources: jobs, projects, assets, sessions (graphs/resources.py builds them) -----------

class AssetLink(BaseModel):
    id: str
    url: str = Field(..., description="signed: works without the key until it expires")


class JobLinks(BaseModel):
    self: str
    events: str


class Job(BaseModel):
    id: str
    object: Literal["job"] = "job"
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    step: str | None = None
    model: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = Field(None, description="async jobs: the response; "
                                          "others: the provider and attempts (metadata)")
    error: str | None = None
    assets: list[AssetLink] = Field(default_factory=list)
    links: JobLinks


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    next_cursor: str | None = None


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                    description="1-64 of a-z, 0-9, '-', '_'")
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    images_per_day: int | None = Field(None, ge=1, description="quota of the project, all "
                                       "its keys together (default: none)")
    model_seconds_per_day: int | None = Field(None, ge=1, description="quota of model time "
                                              "of the project (default: none)")


class Project(BaseModel):
    id: str
    object: Literal["project"] = "project"
    name: str
    description: str | None = None
    created_at: datetime


class ProjectList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Project]
    next_cursor: str | None = None


class GalleryAsset(BaseModel):
    id: str
    kind: str
    url: str
    content_type: str
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    created_at: datetime
    job_id: str | None = None
    prompt: str | None = None
    parameters: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = Field(None, description="how it was made (as GET "
                                          "/v1/assets/{id}/recipe); null: no recipe (uploads)")
    caption: str | None = Field(None, description="from its image analysis (None until "
                                "analysed: POST /v1/images/analyze with asset_id)")
    description: str | None = None
    tags: list[str] = Field(default_factory=list, description="from its image analysis; "
                            "filter with ?tag=")


class AssetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[GalleryAsset]
    next_cursor: str | None = None


class JobBatch(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job] = Field(..., description="one async job per request, in their order")


class ProviderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., max_length=64, description="a-z, 0-9, '_', '.', '-'")
    kind: str = Field(..., description="local, openai, comfyui, runware, leonardo, gemini, "
                      "imagen")
    settings: dict[str, Any] = Field(default_factory=dict, description="the kind's settings "
                                     "(README, Providers); keys are write-only")


class ProviderUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(..., description="merged into the stored settings; a "
                                     "key left out keeps its value, null resets a field")


class ProviderInfo(BaseModel):
    name: str
    kind: str
    priority: int
    weight: float
    models: list[str]
    capabilities: dict[str, Any]
    breaker: dict[str, Any]
    window_s: float
    requests: int
    success_rate: float | None = None
    p50_latency_s: float | None = None
    ewma_latency_s: float | None = None
    settings: dict[str, Any] | None = Field(None, description="admin keys only; secrets "
                                            "as '***'")


class ProviderList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ProviderInfo]


class Deleted(BaseModel):
    id: str
    deleted: bool = True


class SessionMessage(BaseModel):
    role: str
    content: str
    created_at: datetime
    type: str | None = None
    images: list[AssetLink] = Field(default_factory=list)


class Session(BaseModel):
    id: str
    title: str | None = None
    created_at: datetime
    updated_at: datetime
    messages: list[SessionMessage] | None = Field(
        None, description="oldest first (GET /v1/sessions/{id}; not in listings)")


class SessionList(BaseModel):
    data: list[Session]
    next_cursor: str | None = None


class ModelCard(BaseModel):
    """One model, OpenAI's shape plus the catalogue's fields (models/registry.py)."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "photostudio"
    kind: str = Field(..., description="base, lora, vae, upscaler, matting, face or llm")
    deployment: str | None = Field(None, description="the deployment serving it now "
                                   "(None: in the catalogue, not deployed)")
    tiny: bool
    fallback: bool = False
    description: str = ""
    base: str | None = Field(None, description="LoRA/VAE: the base model it fits")
    size: str | None = None
    tags: list[str] = Field(default_factory=list)
    trigger_words: list[str] = Field(default_factory=list)
    default_weight: float | None = Field(None, description="LoRA: weight when none is given")
    preview: str | None = Field(None, description="a sample image (URL or asset id)")
    registered: bool = Field(False, description="LoRA registered through POST "
                             "/v1/models/loras (deletable); False: built into the catalogue")
    rank: int | None = Field(None, description="registered LoRA: its largest rank")
    size_bytes: int | None = Field(None, description="registered LoRA: file size")
    sha256: str | None = Field(None, description="registered LoRA: SHA-256 of the file")
    meta: dict[str, Any] | None = Field(None, description="registered LoRA: provenance "
                                        "(dataset, training parameters, ...)")


def _words(value: Any) -> Any:
    """Forms send lists as JSON text or comma-separated text: 'a, b' or '["a", "b"]'."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise PydanticCustomError("invalid_list", "must be a JSON list of strings or "
                                          "comma-separated text", {}) from None
        return [w.strip() for w in text.split(",") if w.strip()]
    return value


def _json_object(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise PydanticCustomError("invalid_json", "must be a JSON object", {}) from None
    return value


Words = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]],
                  BeforeValidator(_words), Field(default_factory=list, max_length=16)]


class LoraCreate(BaseModel):
    """POST /v1/models/loras: one of `file` (multipart upload), `asset_id` (an asset of the
    caller's project holding a .safetensors file) or `path` (a file on the server, admin only,
    under the configured import folders)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=2, max_length=64, description="catalogue name: "
                      "lowercase letters, digits, '.', '_', '-' (used in <lora:name:w>)")
    base: str | None = Field(None, description="the base model it fits (default: the "
                             "deployed one, GET /v1/models?kind=base)")
    asset_id: str | None = Field(None, max_length=128)
    path: str | None = Field(None, max_length=1024, description="admin only")
    trigger_words: Words
    tags: Words
    default_weight: float = Field(1.0, ge=-4.0, le=4.0)
    description: str = Field("", max_length=2000)
    preview_asset: str | None = Field(None, max_length=512)
    meta: Annotated[dict[str, Any], BeforeValidator(_json_object)] = Field(
        default_factory=dict, description="provenance, stored as given (dataset id, trigger "
        "word, training parameters...)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class DeploymentInfo(BaseModel):
    name: str
    family: str
    source: str
    tiny: bool
    fallback: bool
    fallback_reason: str | None = None
    device: str
    dtype: str
    limits: dict[str, Any]


class ReadinessState(BaseModel):
    """What /readyz checks, as data (200 whatever the state): a client showing "warming up"
    reads it here instead of treating /readyz's 503 as a failure."""

    ready: bool
    deployments: dict[str, str] = Field(description="each deployment's Serve status")
    checks: dict[str, str] = Field(description="record store, rate-limit storage")
    not_ready: list[str] = Field(description="what keeps it from being ready (empty: ready)")
    replicas: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="each deployment's replicas per state (RUNNING...)")


class Capabilities(BaseModel):
    profile: str
    deployments: dict[str, DeploymentInfo]
    endpoints: list[str]
    warnings: list[str]
    readiness: ReadinessState | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    deployments: dict[str, str] = Field(description="each deployment's Serve status")
    checks: dict[str, str] = Field(description="record store, rate-limit storage")


# --- chat ------------------------------------------------------------------------------------

class ChatRequest(BaseModel):
    """JSON body of POST /v1/chat (or the same fields as multipart form, plus `image` files)."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
    session_id: str | None = Field(None, max_length=64)
    context: dict[str, Any] | None = Field(None, description="overrides of the session "
                                           "context, e.g. {\"last_image_id\": \"img_…\"}")
    loras: Loras = None


class ChatImage(BaseModel):
    id: str
    url: str
    width: int
    height: int
    format: str


class ChatAction(BaseModel):
    id: str
    label: str
    type: Literal["chat", "link"]
    data: dict[str, Any] = Field(default_factory=dict)


class ChatData(BaseModel):
    images: list[ChatImage] = Field(default_factory=list)
    plan: dict[str, Any] | None = None
    job_id: str | None = None
    analysis: dict[str, Any] | None = Field(None, description="image analysis (POST "
                                            "/v1/images/analyze's answer) of a describe turn")


class ChatResponse(BaseModel):
    session_id: str
    message: str
    type: Literal["image", "text", "error", "processing"]
    data: ChatData = Field(default_factory=ChatData)
    actions: list[ChatAction] = Field(default_factory=list)
    suggestions: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


# -- videos (OpenAI Videos API shape) ------------------------------------------------------------

class VideoCreate(BaseModel):
    """POST /v1/videos (JSON, or multipart with an `input_reference` image file). `seconds`,
    `size` and `model` as in OpenAI's Videos API; the rest are ours."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=10_000)
    model: str | None = Field(None, description="the deployed video model (default)")
    seconds: float | None = Field(None, gt=0, le=60, description="clip length (default 4)")
    size: str | None = Field(None, max_length=16, description="WxH, multiples of 32")
    fps: int | None = Field(None, description="frames per second (8-30)")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    steps: int | None = Field(None, ge=1, description="denoising steps")
    guidance_scale: float | None = Field(None, ge=0, le=20)
    negative_prompt: str | None = Field(None, max_length=10_000)
    camera: str | None = Field(None, description="static, pan-left/right, tilt-up/down, "
                               "zoom-in/out, dolly-in/out: applied as prompt conditioning")
    motion: float | None = Field(None, ge=0, le=1, description="motion intensity 0-1 "
                                 "(prompt conditioning)")
    preset: str | None = Field(None, description="a video preset (GET /v1/presets?kind=video: "
                               "cinematic-video, vlog, time-lapse, or the project's own)")
    preview: Literal["webp", "gif"] | None = Field(None, description="also make an "
                                                   "animated preview")


class VideoRemix(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=10_000)


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """OpenAI's video object, plus ours: `fps`, `seed`, `job_id`, `metadata`."""

    id: str
    object: Literal["video"] = "video"
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    model: str
    prompt: str | None = None
    seconds: str
    size: str
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    fps: int | None = None
    seed: int | None = None
    job_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class VideoUpscale(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: Literal[2, 4] = 2


# -- image analysis (POST /v1/images/analyze) -----------------------------------------------
class AnalyzeForm(BaseModel):
    """Multipart: `image` (a file) or `asset_id` (an asset of the caller's project)."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile | None = Field(None, description="PNG, JPEG or WebP")
    asset_id: str | None = Field(None, max_length=128, description="instead of image")
    question: str | None = Field(None, max_length=500, description="answered by the "
                                 "vision-language model (VQA), where one is deployed")
    colors: int = Field(5, ge=1, le=16, description="how many dominant colours")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.image is None) == (self.asset_id is None):
            raise _combination("image", "send exactly one of image (a file) or asset_id")
        return self


class AnalyzedColor(BaseModel):
    hex: str = Field(..., description="#rrggbb")
    rgb: tuple[int, int, int]
    share: float = Field(..., description="of the opaque pixels, 0..1")
    name: str = Field(..., description="the nearest plain colour name")


class FaceBox(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float
    score: float


class AnalyzedFaces(BaseModel):
    count: int
    boxes: list[FaceBox]


class ImageAnalysis(BaseModel):
    object: Literal["image.analysis"] = "image.analysis"
    caption: str | None = Field(..., description="one line from the vision-language model "
                                "(None when none is deployed)")
    description: str = Field(..., description="a short description: caption, colours, "
                             "faces, size")
    tags: list[str]
    colors: list[AnalyzedColor]
    has_alpha: bool = Field(..., description="some pixels are not fully opaque")
    transparent_share: float
    width: int
    height: int
    format: str | None = Field(None, description="png, jpeg, webp (of the upload or asset)")
    bytes: int | None = None
    faces: AnalyzedFaces
    question: str | None = None
    answer: str | None = Field(None, description="the VQA answer to `question`")
    asset_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, description="models (tiny, "
                                     "fallback) and timings")


class PromptChange(BaseModel):
    op: Literal["added", "removed", "replaced"]
    before: str = ""
    after: str = ""


class EnhancedPrompt(BaseModel):
    """POST /v1/prompts/enhance: the refiner's prompt and what it changed."""

    original: str
    prompt: str
    negative_prompt: str
    style: str | None
    changes: list[PromptChange]
    added_terms: list[str]
    moved_to_negative: list[str]
    compressed: bool


# -- usage (GET /v1/usage) ------------------------------------------------------------------
class UsageGroup(BaseModel):
    group: str = Field(..., description="the key id, project, model, route ('POST "
                       "/v1/images/generations') or day (YYYY-MM-DD)")
    requests: int
    images: int
    videos: int
    pixels: int
    model_seconds: float
    model_seconds_by_deployment: dict[str, float]
    tokens_in: int
    tokens_out: int
    statuses: dict[str, int] = Field(..., description="requests per HTTP status")


class RouteMetrics(BaseModel):
    route: str = Field(..., description="the route template ('/v1/assets/{asset_id}')")
    method: str
    requests: int
    statuses: dict[str, int] = Field(..., description="requests per HTTP status")
    latency_sum_s: float
    latency_count: int
    latency_buckets: dict[str, int] = Field(..., description="cumulative histogram: requests "
                                            "answered within `le` seconds (Prometheus')")


class HttpMetrics(BaseModel):
    """GET /v1/metrics: cumulative counters; two readings give rates."""

    object: Literal["metrics"] = "metrics"
    application: str
    time: float = Field(..., description="when they were read (Unix seconds)")
    nodes: int
    nodes_unreachable: int
    routes: list[RouteMetrics]


class UsageReport(BaseModel):
    object: Literal["list"] = "list"
    group_by: Literal["key", "project", "model", "route", "day"]
    start: datetime = Field(..., serialization_alias="from")
    end: datetime = Field(..., serialization_alias="to")
    project: str | None = Field(None, description="the caller's project (None: admin, all)")
    data: list[UsageGroup]


# -- workflows, presets, recipes --------------------------------------------------------------
class WorkflowExecuteRequest(BaseModel):
    """POST /v1/workflows/execute: an inline graph or a saved workflow's id, with params
    overrides per node."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] | None = Field(None, description="the graph: {nodes, outputs}")
    workflow_id: str | None = Field(None, max_length=64, description="a saved workflow")
    inputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="node id -> params merged over the node's own "
        "(e.g. {\"gen\": {\"prompt\": \"a red fox\", \"seed\": 7}})")
    keep_intermediates: bool = Field(False, description="store every node's image, not only "
                                     "the outputs (their ids in node_succeeded events)")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.workflow is None) == (self.workflow_id is None):
            raise _combination("workflow", "give either workflow (a graph) or workflow_id")
        return self


class SavedWorkflowCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    workflow: dict[str, Any] = Field(..., description="the graph: {nodes, outputs}")


class SavedWorkflowUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    workflow: dict[str, Any] | None = None


class SavedWorkflow(BaseModel):
    id: str
    object: Literal["workflow"] = "workflow"
    name: str
    description: str | None = None
    workflow: dict[str, Any]
    version: int = 1
    builtin: bool = Field(False, description="a shipped example (read-only)")
    available: bool = Field(True, description="every op it uses runs on this gateway")
    created_at: datetime | None = None
    updated_at: datetime | None = None


class SavedWorkflowList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SavedWorkflow]
    next_cursor: str | None = None


class ChatPlan(Plan):
    """POST /v1/chat/plan: the plan, and the workflow graph it runs as (save it with POST
    /v1/workflows, run it with POST /v1/workflows/execute)."""

    workflow: dict[str, Any] | None = Field(
        None, description="the plan as a workflow; null when it makes no image or lacks one")


class PresetCreate(BaseModel):
    """POST /v1/presets: a project's own preset."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["image", "video"] = "image"
    title: str = Field(..., min_length=1, max_length=200)
    prompt_template: str = Field(..., max_length=MAX_PROMPT_CHARS,
                                 description="with {prompt} where the subject goes")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    params: dict[str, Any] = Field(default_factory=dict, description="default request "
                                   "parameters (images: quality, guidance_scale, steps, size, "
                                   "strength, background; videos: seconds, fps, size, camera, "
                                   "motion, steps, guidance_scale)")
    description: str | None = Field(None, max_length=2000)


class PresetView(BaseModel):
    id: str
    object: Literal["preset"] = "preset"
    kind: Literal["image", "video"]
    title: str
    description: str = ""
    prompt_template: str
    negative_prompt: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    source: Literal["preset", "style", "template", "user"]
    builtin: bool
    aliases: list[str] = Field(default_factory=list)


class PresetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PresetView]


class PresetApply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Prompt | None = Field(None, description="the subject ({prompt} in the template)")
    params: dict[str, Any] = Field(default_factory=dict, description="request fields that "
                                   "win over the preset's (negative_prompt is joined)")


class PresetApplied(BaseModel):
    preset: str
    kind: Literal["image", "video"]
    endpoint: str = Field(..., description="where to send `request`")
    request: dict[str, Any]


class RemixRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Any] = Field(
        default_factory=dict, description="generation recipes: request fields (prompt, seed, "
        "size, ...); workflow recipes: node params ({\"gen\": {\"prompt\": ...}})")
