"""Request/response schemas of datasets (`/v1/datasets`) and LoRA trainings (`/v1/trainings`).

A bad field is a 400 whose `param` names it (graphs/errors.py maps pydantic's errors)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    kind: Literal["image"] = "image"
    tags: list[str] = Field(default_factory=list, max_length=32)


class DatasetImageUpdate(BaseModel):
    """PATCH /v1/datasets/{id}/images/{image_id}: the image's caption (yours from now on;
    null or empty: none, so training uses the trigger word alone)."""

    model_config = ConfigDict(extra="forbid")

    caption: str | None = Field(..., max_length=2000)


class DatasetImageView(BaseModel):
    id: str
    asset_id: str
    url: str
    filename: str | None = None
    caption: str | None = None
    caption_source: str | None = Field(None, description="user | file (a .txt in a zip) | "
                                       "vision (auto-captioned); null: none yet (trained "
                                       "with the trigger word)")
    width: int
    height: int
    size_bytes: int


class CaptionInfo(BaseModel):
    captioned: int
    missing: int
    coverage: float = Field(..., description="captioned / images (0-1)")
    by_source: dict[str, int]
    auto_captioner: str | None = Field(None, description="the vision model that captions "
                                       "uploads without a caption; null: none deployed")
    missing_captions: Literal["vision", "trigger_word"] = Field(
        ..., description="what images without a caption get: a caption from the vision model "
        "(when one is deployed), else the training's trigger word alone")


class Dataset(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    description: str | None = None
    kind: str
    tags: list[str]
    images: int
    bytes: int
    captions: CaptionInfo
    created_at: datetime
    updated_at: datetime
    data: list[DatasetImageView] | None = Field(None, description="the images (GET by id)")


class DatasetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Dataset]
    next_cursor: str | None = None


class DatasetStats(BaseModel):
    id: str
    images: int
    bytes: int
    mean_bytes: float
    captioned: int
    caption_coverage: float
    caption_sources: dict[str, int]
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    trainable: bool = Field(..., description="at least one image")


class DatasetImagesAdded(BaseModel):
    dataset: Dataset
    added: list[DatasetImageView]
    skipped: list[str] = Field(default_factory=list, description="zip members ignored "
                               "(not images, captions without an image, hidden files)")


class TrainingCreate(BaseModel):
    """POST /v1/trainings. `steps` or `epochs` (passes over the dataset), not both."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(..., min_length=1, max_length=64)
    name: str = Field(..., min_length=1, max_length=64, description="the resulting adapter's name "
                      "(GET /v1/models/{name}; `loras: [{name}]` in generations)")
    base_model: str | None = Field(None, max_length=128, description="default: the base "
                                   "model the Generator serves")
    kind: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1, le=256)
    alpha: float | None = Field(None, gt=0, description="default: = rank")
    learning_rate: float = Field(1e-4, gt=0, le=1)
    steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1, le=10_000)
    batch_size: int = Field(1, ge=1, le=64)
    resolution: int | None = Field(None, ge=32, le=2048, description="multiple of 8; "
                                   "default: the base model's default size")
    trigger_word: str | None = Field(None, min_length=1, max_length=64, description="default: "
                                     "the adapter's name")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    checkpoint_every: int | None = Field(None, ge=1, description="steps between checkpoints "
                                         "(and sample images); default: steps/5")


class TrainingSample(BaseModel):
    step: int
    asset_id: str
    url: str


class TrainingLinks(BaseModel):
    self: str
    events: str
    metrics: str
    job: str


class Training(BaseModel):
    id: str
    object: Literal["training"] = "training"
    status: str
    name: str = Field(..., description="the adapter's name")
    dataset_id: str
    base_model: str
    params: dict[str, Any]
    step: int
    total_steps: int
    progress: float
    loss: float | None = None
    losses: list[float] = Field(default_factory=list, description="the loss curve (per step)")
    steps_per_s: float | None = None
    eta_s: float | None = None
    attempts: int
    resumed_from: list[int] = Field(default_factory=list, description="the step each attempt "
                                    "started from (a restarted worker resumes from its last "
                                    "checkpoint)")
    checkpoint_step: int | None = None
    samples: list[TrainingSample] = Field(default_factory=list)
    adapter: dict[str, Any] | None = None
    model: str | None = Field(None, description="the registered model's name (usable in "
                              "generations) once succeeded")
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: TrainingLinks


class TrainingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Training]
    next_cursor: str | None = None


class TrainingMetrics(BaseModel):
    id: str
    status: str
    steps: list[int]
    loss: list[float]
    loss_ema: list[float]
    last_loss: float | None = None
    min_loss: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    samples: list[TrainingSample] = Field(default_factory=list)
