"""HTTP API schemas (requests and responses), apart from route code and logic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PROMPT_CHARS = 10_000  # longer prompts: 400 naming this limit
MAX_PROMPT_ACCEPTED = 32_000  # what the schema accepts (OpenAI's limit) before the prompt rules
MAX_IMAGES = 10
SIZE_PATTERN = r"^(auto|[0-9]{1,5}x[0-9]{1,5})$"

Quality = Literal["low", "medium", "high", "auto"]
Background = Literal["transparent", "opaque", "auto"]
OutputFormat = Literal["png", "jpeg", "webp"]


class ImageGenerationRequest(BaseModel):
    """OpenAI-shaped image generation, plus our diffusion controls."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_ACCEPTED,
                        description=f"What to draw; at most {MAX_PROMPT_CHARS} characters.")
    model: str | None = Field(None, description="Model name (see /v1/capabilities).")
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="Number of images, 1-10.")
    size: str = Field("auto", pattern=SIZE_PATTERN,
                      description="WIDTHxHEIGHT (multiples of 8 within the model's limits) "
                                  "or 'auto' for the model's default.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    quality: Quality = Field("auto", description="low|medium|high → fewer/more denoising "
                             "steps (see README); auto = medium")
    background: Background = Field("auto", description="transparent: generated, then the "
                                   "background is removed (needs png or webp)")
    output_format: OutputFormat = "png"
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg/webp "
                                           "encoder quality 0-100 (default 90)")
    moderation: Literal["auto", "low"] = Field("auto", description="accepted for "
                                               "compatibility; no moderation model runs here")
    stream: bool = Field(False, description="Server-Sent Events with partial images")
    partial_images: int = Field(0, ge=0, le=3, description="previews streamed, 0-3")
    user: str | None = Field(None, max_length=256)
    lora: str | None = Field(None, max_length=128, description="a loaded LoRA adapter name")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, le=2**32 - 1,
                             description="Seed of the first image; image k uses seed+k.")
    steps: int | None = Field(None, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)


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
