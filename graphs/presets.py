"""Presets behind /v1/presets, and `preset` on generations and workflow nodes: the built-ins
of `router.presets` (named presets, styles, templates: one concept) and each project's own
(stored as library items of kind `preset`)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError

from graphs.errors import ApiError
from graphs.schemas import (
    ImageGenerationRequest,
    PresetApplied,
    PresetApply,
    PresetCreate,
    PresetList,
    PresetView,
    VideoCreate,
)
from router.presets import BUILTIN, Preset, builtin, user_preset

USER_PREFIX = "pr_"  # ids of a project's presets
ENDPOINTS = {"image": "/v1/images/generations", "video": "/v1/videos"}


class PresetService:
    def __init__(self, *, records: Any, project: Any):
        self.records = records
        self._project = project  # () -> the caller's project

    async def get(self, preset_id: str, *, param: str = "preset") -> Preset:
        found = builtin(preset_id)
        if found is not None:
            return found
        record = None
        if isinstance(preset_id, str) and preset_id.startswith(USER_PREFIX):
            record = await asyncio.to_thread(self.records.get_library_item, item_id=preset_id,
                                             project=self._project(), kind="preset")
        if record is None:
            raise ApiError(400 if param != "preset_id" else 404,
                           f"no preset {preset_id!r}; built-in: {', '.join(BUILTIN)} (GET "
                           "/v1/presets lists them with the project's own)", param=param,
                           code="preset_not_found")
        return user_preset(record.id, {**record.body, "title": record.name,
                                       "description": record.description})

    async def list(self, kind: str | None = None) -> PresetList:
        page = await asyncio.to_thread(self.records.list_library_items,
                                       project=self._project(), kind="preset", limit=1000)
        own = [user_preset(r.id, {**r.body, "title": r.name, "description": r.description})
               for r in page.items]
        presets = [*BUILTIN.values(), *own]
        return PresetList(data=[PresetView(**p.as_dict()) for p in presets
                                if kind is None or p.kind == kind])

    async def create(self, body: PresetCreate) -> PresetView:
        stored = {"kind": body.kind, "prompt_template": body.prompt_template,
                  "negative_prompt": body.negative_prompt or "", "params": body.params}
        try:
            user_preset("check", stored)  # the template has {prompt}, the params are known
        except ValueError as exc:
            raise ApiError(400, str(exc), param="prompt_template" if "prompt_template" in
                           str(exc) else "params", code="invalid_preset") from None
        record = await asyncio.to_thread(
            self.records.create_library_item, project=self._project(), kind="preset",
            name=body.title, description=body.description, body=stored)
        return PresetView(**user_preset(record.id, {**stored, "title": record.name,
                                                    "description": record.description}
                                        ).as_dict())

    async def delete(self, preset_id: str) -> None:
        if builtin(preset_id) is not None:
            raise ApiError(403, f"{preset_id!r} is a built-in preset and cannot be deleted",
                           param="preset_id", code="read_only")
        if not await asyncio.to_thread(self.records.delete_library_item, item_id=preset_id,
                                       project=self._project(), kind="preset"):
            raise ApiError(404, f"no preset {preset_id!r}", param="preset_id",
                           code="not_found")

    async def apply(self, preset_id: str, body: PresetApply) -> PresetApplied:
        preset = await self.get(preset_id, param="preset_id")
        return PresetApplied(preset=preset.id, kind=preset.kind,
                             endpoint=ENDPOINTS[preset.kind],
                             request=preset.compose(body.prompt, body.params))

    async def apply_to_generation(self, body: ImageGenerationRequest
                                  ) -> ImageGenerationRequest:
        """A generation request with its `preset` applied (fields the request set win)."""
        if not body.preset:
            return body
        preset = await self.get(body.preset)
        if preset.kind != "image":
            raise ApiError(400, f"preset {body.preset!r} is a {preset.kind} preset: use it "
                           f"with {ENDPOINTS[preset.kind]}", param="preset",
                           code="invalid_preset")
        return compose_generation(preset, body)

    async def for_video(self, name: str) -> Preset:
        """The video preset `name` (built-in id or alias, or the project's own): a 400 on
        `preset` names the video presets when it is unknown or an image preset."""
        try:
            preset = await self.get(name)
        except ApiError:
            preset = None
        if preset is None or preset.kind != "video":
            names = ", ".join(p.id for p in BUILTIN.values() if p.kind == "video")
            raise ApiError(400, f"preset must be a video preset ({names}, or one of the "
                           f"project's own: GET /v1/presets?kind=video), got {name!r}",
                           param="preset", code="invalid_preset")
        return preset


def compose_video(preset: Preset, body: VideoCreate) -> VideoCreate:
    """A /v1/videos request with `preset` applied: its template wraps the prompt, its negative
    prompt joined with the request's, its fps / camera / motion / ... unless the request sets
    them. Checked again like the request itself (a project's preset may hold a bad value)."""
    set_fields = body.model_fields_set
    composed = preset.compose(body.prompt, {"negative_prompt": body.negative_prompt})
    update = {name: value for name, value in composed.items()
              if name in ("prompt", "negative_prompt") or
              (name in VideoCreate.model_fields and name not in set_fields)}
    try:
        return VideoCreate.model_validate({**body.model_dump(exclude_unset=True), **update})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"]))
        raise ApiError(400, f"preset {preset.id!r} sets {field}: {first['msg']}",
                       param="preset", code="invalid_preset") from None


def compose_generation(preset: Preset, body: ImageGenerationRequest
                       ) -> ImageGenerationRequest:
    set_fields = body.model_fields_set
    composed = preset.compose(body.prompt, {"negative_prompt": body.negative_prompt})
    # `preset` stays: it is recorded in the images' recipes (applied once, here)
    update = {"prompt": composed["prompt"], "negative_prompt":
              composed.get("negative_prompt")}
    for name, value in composed.items():
        if name in ImageGenerationRequest.model_fields and name not in set_fields and \
                name not in update:
            update[name] = value
    # re-validated: the preset's values are checked like the request's own
    return ImageGenerationRequest.model_validate({**body.model_dump(exclude_unset=True),
                                                  **update})
