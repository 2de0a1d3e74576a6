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
    model_validator,
)
from pydantic_core import PydanticCustomError

from router.prompts import MAX_PROMPT_CHARS  # the prompt rules' limit: one number

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
    list[LoraItem] | None,
    BeforeValidator(_loras_json),
    Field(None, max_length=5, description="LoRA adapters, up to 5: [{name, weight}] (also "
          "A1111's <lora:name:weight> inside the prompt)")]


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
    """OpenAI's shape. Counts prompt words and input images; nothing is billed."""

    input_tokens: int = 0
    input_tokens_details: UsageDetails = Field(default_factory=UsageDetails)
    output_tokens: int = 0
    total_tokens: int = 0


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


class Capabilities(BaseModel):
    profile: str
    deployments: dict[str, DeploymentInfo]
    endpoints: list[str]
    warnings: list[str]


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


class ChatResponse(BaseModel):
    session_id: str
    message: str
    type: Literal["image", "text", "error", "processing"]
    data: ChatData = Field(default_factory=ChatData)
    actions: list[ChatAction] = Field(default_factory=list)
    suggestions: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
