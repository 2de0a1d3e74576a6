"""Typed settings per provider kind, the factory, and `provider/model` names.

Settings are pydantic models (what the record store's provider configs hold as JSON): keys
are `SecretStr`, so `repr`, `str`, logs and `redacted()` never show them; `stored()` is the
one view with the secrets in it, for writing the record back.

    build_provider("runware", "rw", {"api_key": "...", "priority": 20})
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

if TYPE_CHECKING:
    from providers.base import Provider

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MiB = 1024 * 1024


class ProviderSettings(BaseModel):
    """Settings every provider has."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(100, description="lower is tried first; equal priorities share load")
    weight: float = Field(1.0, gt=0, le=1000,
                          description="share of load among providers of equal priority")
    timeout_s: float = Field(120.0, gt=0, le=3600,
                             description="one attempt, from the request to decoded images")
    models: list[str] = Field(default_factory=list,
                              description="models offered; the first is the default")
    capabilities: dict[str, Any] | None = Field(
        None, description="overrides of the kind's declared capabilities (e.g. sizes)")
    max_image_bytes: int = Field(40 * MiB, ge=1024, description="per returned image")
    max_image_pixels: int = Field(40_000_000, ge=64 * 64, description="per returned image")
    retries: int = Field(2, ge=0, le=10,
                         description="retries of idempotent reads (polls, results, downloads)")

    def secret_values(self) -> list[str]:
        return [value.get_secret_value() for value in self.__dict__.values()
                if isinstance(value, SecretStr) and value.get_secret_value()]

    def redacted(self) -> dict[str, Any]:
        """JSON-able view for APIs and logs: every secret is '***' (or None when unset)."""
        out = self.model_dump(mode="json")
        for key, value in self.__dict__.items():
            if isinstance(value, SecretStr):
                out[key] = "***" if value.get_secret_value() else None
        return out

    def stored(self) -> dict[str, Any]:
        """JSON-able view with the secrets, for the record store only."""
        out = self.model_dump(mode="json")
        for key, value in self.__dict__.items():
            if isinstance(value, SecretStr):
                out[key] = value.get_secret_value()
        return out


def _check_base_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value or ""):
        raise ValueError(f"base_url must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


class RemoteSettings(ProviderSettings):
    base_url: str
    api_key: SecretStr | None = None
    connect_timeout_s: float = Field(5.0, gt=0, le=120)

    _base_url = field_validator("base_url")(_check_base_url)


class LocalSettings(ProviderSettings):
    """Our Generator deployment, through the handle the ingress has."""

    priority: int = 0
    timeout_s: float = Field(600.0, gt=0, le=3600)
    default_steps: int = Field(25, ge=1, le=150)
    default_strength: float = Field(0.75, gt=0, le=1)


class OpenAISettings(RemoteSettings):
    """Any OpenAI-compatible Images API: OpenAI, Azure OpenAI, another gateway like this one."""

    base_url: str = "https://api.openai.com/v1"
    models: list[str] = Field(default_factory=lambda: ["gpt-image-1"])
    organization: str | None = None
    azure_api_version: str | None = Field(
        None, description="set for Azure OpenAI (base_url is then the resource endpoint)")
    gateway_extensions: bool = Field(
        False, description="the server takes this gateway's extra fields (negative_prompt, "
        "seed, steps, guidance_scale): true for another Photo Studio gateway")
    quality: Literal["low", "medium", "high", "auto"] | None = None


class WorkflowSettings(BaseModel):
    """An API-format ComfyUI workflow and where our parameters go: `bindings` maps a
    parameter (prompt, negative_prompt, width, height, n, seed, steps, guidance_scale,
    checkpoint, sampler_name, scheduler, image, strength) to [node_id, input_name] pairs."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="JSON file (API format); or `graph`")
    graph: dict[str, Any] | None = None
    bindings: dict[str, list[tuple[str, str]]]

    def load(self) -> dict[str, Any]:
        import json

        if self.graph is not None:
            return self.graph
        if not self.path:
            raise ValueError("a workflow needs a path or a graph")
        path = Path(self.path)
        if not path.is_absolute():
            path = Path(__file__).parent / path
        return json.loads(path.read_text())


def _shipped_workflows() -> dict[str, WorkflowSettings]:
    common = {
        "prompt": [("6", "text")], "negative_prompt": [("7", "text")],
        "seed": [("3", "seed")], "steps": [("3", "steps")], "guidance_scale": [("3", "cfg")],
        "sampler_name": [("3", "sampler_name")], "scheduler": [("3", "scheduler")],
        "checkpoint": [("4", "ckpt_name")],
    }
    return {
        "text2img": WorkflowSettings(path="workflows/sd_text2img.json", bindings={
            **common, "width": [("5", "width")], "height": [("5", "height")],
            "n": [("5", "batch_size")]}),
        "img2img": WorkflowSettings(path="workflows/sd_img2img.json", bindings={
            **common, "image": [("10", "image")], "strength": [("3", "denoise")],
            "n": [("12", "amount")], "width": [("13", "width")],
            "height": [("13", "height")]}),
    }


class ComfyUISettings(RemoteSettings):
    base_url: str = "http://127.0.0.1:8188"
    api_key: SecretStr | None = Field(None, description="Bearer token for a proxy in front")
    models: list[str] = Field(default_factory=lambda: ["v1-5-pruned-emaonly.safetensors"],
                              description="checkpoints (ckpt_name); the first is the default")
    workflows: dict[Literal["text2img", "img2img", "inpaint"], WorkflowSettings] = Field(
        default_factory=_shipped_workflows)
    sampler_name: str = "euler"
    scheduler: str = "normal"
    default_steps: int = Field(20, ge=1, le=150)
    default_guidance_scale: float = Field(7.0, ge=0, le=30)
    default_size: tuple[int, int] = (512, 512)
    use_websocket: bool = Field(True, description="progress over /ws; false: poll /history")
    poll_interval_s: float = Field(0.5, gt=0, le=30)


class RunwareSettings(RemoteSettings):
    base_url: str = "https://api.runware.ai/v1"
    api_key: SecretStr
    models: list[str] = Field(default_factory=lambda: ["runware:101@1"])
    default_size: tuple[int, int] = (1024, 1024)


class LeonardoSettings(RemoteSettings):
    base_url: str = "https://cloud.leonardo.ai/api/rest/v1"
    api_key: SecretStr
    models: list[str] = Field(default_factory=lambda: ["6bef9f1b-29cb-40c7-b9df-32b51c1f67d3"],
                              description="Leonardo model ids (modelId)")
    default_size: tuple[int, int] = (1024, 1024)
    poll_interval_s: float = Field(2.0, gt=0, le=60)


class GeminiSettings(RemoteSettings):
    base_url: str = "https://generativelanguage.googleapis.com/v1beta"
    api_key: SecretStr
    models: list[str] = Field(default_factory=lambda: ["gemini-2.5-flash-image"])
    max_parallel: int = Field(4, ge=1, le=10,
                              description="one image per call: n>1 runs n calls, this many at once")


class ImagenSettings(RemoteSettings):
    base_url: str = "https://generativelanguage.googleapis.com/v1beta"
    api_key: SecretStr
    models: list[str] = Field(default_factory=lambda: ["imagen-4.0-generate-001"])
    person_generation: Literal["dont_allow", "allow_adult", "allow_all"] | None = None


# kind → (settings class, "module:Class")
KINDS: dict[str, tuple[type[ProviderSettings], str]] = {
    "local": (LocalSettings, "providers.local:LocalProvider"),
    "openai": (OpenAISettings, "providers.openai_images:OpenAIProvider"),
    "comfyui": (ComfyUISettings, "providers.comfyui:ComfyUIProvider"),
    "runware": (RunwareSettings, "providers.runware:RunwareProvider"),
    "leonardo": (LeonardoSettings, "providers.leonardo:LeonardoProvider"),
    "gemini": (GeminiSettings, "providers.gemini:GeminiProvider"),
    "imagen": (ImagenSettings, "providers.gemini:ImagenProvider"),
}
PROVIDER_KINDS: tuple[str, ...] = tuple(sorted(KINDS))


def _kind(kind: str) -> tuple[type[ProviderSettings], str]:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; known kinds: "
                         f"{', '.join(PROVIDER_KINDS)}") from None


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"provider name {name!r} must be 1-64 characters of a-z, 0-9, '_', "
                         "'.', '-', starting with a letter or digit (no '/')")
    return name


def parse_settings(kind: str, settings: Mapping[str, Any] | ProviderSettings | None
                   ) -> ProviderSettings:
    """Validate `settings` for `kind`. A pydantic ValidationError's text may echo the input
    values (a key among them): report it with `safe_validation_message`."""
    settings_cls, _ = _kind(kind)
    if isinstance(settings, settings_cls):
        return settings
    if isinstance(settings, ProviderSettings):
        settings = settings.stored()
    return settings_cls.model_validate(dict(settings or {}))


def safe_validation_message(exc: Exception) -> str:
    """A ValidationError's message without the input values (which may hold a key)."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return type(exc).__name__
    parts = []
    for err in errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def build_provider(kind: str, name: str,
                   settings: Mapping[str, Any] | ProviderSettings | None = None,
                   **deps: Any) -> Provider:
    """The provider `kind` named `name`. `deps`: what the kind needs besides settings
    (local: `generate=`, optionally `info=`; HTTP kinds: optionally `transport=` for tests).
    ValueError for an unknown kind (listing the known ones), a bad name or bad settings
    (the message names the fields, never their values)."""
    _, target = _kind(kind)
    check_name(name)
    from pydantic import ValidationError

    try:
        parsed = parse_settings(kind, settings)
    except ValidationError as exc:
        raise ValueError(f"invalid settings for {kind} provider {name!r}: "
                         f"{safe_validation_message(exc)}") from None
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(name, parsed, **deps)


def parse_model_name(model: str | None, providers: Collection[str]
                     ) -> tuple[str | None, str | None]:
    """'provider/model' → (provider, model) when `provider` is a configured provider name;
    anything else (no slash, or a model id with slashes of its own such as
    'stabilityai/sdxl') → (None, model). 'provider/' → (provider, None): its default model."""
    if not model:
        return None, None
    head, sep, rest = model.partition("/")
    if sep and head in providers:
        return head, rest or None
    return None, model
