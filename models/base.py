"""The small interface every model family implements (in the spirit of rembg's sessions)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from common.errors import InputError


@dataclass(frozen=True)
class LoadedInfo:
    """What was actually loaded: reported in `/v1/capabilities` and response metadata."""

    name: str
    family: str
    source: str
    tiny: bool
    device: str
    dtype: str
    fallback_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fallback(self) -> bool:
        return self.fallback_reason is not None


def torch_device_dtype(device: str | None, *, bf16: bool = False) -> tuple[str, Any]:
    """The device to load on (CUDA when present unless `device` says otherwise) and its dtype:
    fp32 on CPU; on CUDA fp16, or bf16 where `bf16` is asked for and the card supports it."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not device.startswith("cuda"):
        return device, torch.float32
    if bf16 and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float16


def check_pipeline_location(location: str) -> None:
    """`registry.resolve`'s load check for a diffusers pipeline: a local folder is taken as is;
    a hub id must at least serve its `model_index.json` (fails fast when offline)."""
    from pathlib import Path

    if not Path(location).exists():
        from huggingface_hub import snapshot_download

        snapshot_download(location, allow_patterns=["model_index.json"])


class ModelFamily(ABC):
    """Load once (`load`), run many times (`run`). Subclasses add typed entry points."""

    family: ClassVar[str]
    kind: ClassVar[str]  # the catalogue kind this family serves (models/registry.py)

    @classmethod
    def from_spec(cls, spec: Any, **kwargs: Any) -> ModelFamily:
        """Resolve a catalogue spec (tiny zoo, local path, hub id) and load it."""
        raise NotImplementedError

    @classmethod
    def from_name(cls, name: str, *, source: str | None = None, **kwargs: Any) -> ModelFamily:
        """Load catalogue model `name` (`ValueError` for unknown names), from other weights
        when `source` is given. Every family loads by name through this one path."""
        from models.registry import get_spec

        return cls.from_spec(get_spec(name, kind=cls.kind, source=source), **kwargs)

    @classmethod
    @abstractmethod
    def load(cls, source: str, *, name: str, device: str | None = None) -> ModelFamily:
        """Load weights from a local folder or a model id."""

    @abstractmethod
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run inference."""

    @property
    @abstractmethod
    def info(self) -> LoadedInfo:
        """Describe what is loaded."""


def check_image(image: Any, *, name: str = "image", min_side: int = 1,
                max_side: int = 4096) -> None:
    """Raise `InputError` (a `ValueError`) with param `name` unless `image` is an HxWx3 (RGB) /
    HxWx4 (RGBA) uint8 array with sides in [min_side, max_side]. Shared by every family that
    takes images."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name} must be a numpy array (HxWx3 RGB or HxWx4 RGBA, uint8), "
                         f"got {type(image).__name__}", param=name)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"{name} must have shape HxWx3 (RGB) or HxWx4 (RGBA), "
                         f"got {tuple(image.shape)}", param=name)
    if image.dtype != np.uint8:
        raise InputError(f"{name} must have dtype uint8 (0-255), got {image.dtype}", param=name)
    height, width = image.shape[:2]
    if not (min_side <= height <= max_side and min_side <= width <= max_side):
        raise InputError(f"{name} sides must be between {min_side} and {max_side} pixels, "
                         f"got {width}x{height}" + (" (empty image)" if image.size == 0 else ""),
                         param=name)
