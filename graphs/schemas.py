"""HTTP API schemas (requests and responses), apart from route code and logic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PROMPT_CHARS = 10_000
MAX_IMAGES = 10
SIZE_PATTERN = r"^(auto|[0-9]{1,5}x[0-9]{1,5})$"


class ImageGenerationRequest(BaseModel):
    """OpenAI-shaped image generation, plus our diffusion controls."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS,
                        description=f"What to draw; at most {MAX_PROMPT_CHARS} characters.")
    model: str | None = Field(None, description="Model name (see /v1/capabilities).")
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="Number of images, 1-10.")
    size: str = Field("auto", pattern=SIZE_PATTERN,
                      description="WIDTHxHEIGHT (multiples of 8 within the model's limits) "
                                  "or 'auto' for the model's default.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    user: str | None = Field(None, max_length=256)
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


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: Literal["png", "jpeg", "webp"] = "png"
    size: str
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
