"""The small interface every model family implements (in the spirit of rembg's sessions)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar


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


class ModelFamily(ABC):
    """Load once (`load`), run many times (`run`). Subclasses add typed entry points."""

    family: ClassVar[str]

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
