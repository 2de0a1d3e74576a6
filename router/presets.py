"""Presets: one concept for what used to be three (style presets, prompt templates, and the
generation presets of seed 002).

A preset is a prompt template (``{prompt}`` marks where the subject goes), a negative prompt
and default request parameters, for images or videos. The built-ins are:

- the named generation presets (cinematic portrait, photorealistic, concept art, anime, oil
  painting; cinematic video, vlog, time-lapse),
- every style of `router.styles` (its img2img strength as a parameter): style transfer keeps
  taking them by name, and `resolve_style` is unchanged,
- every prompt template of `router.templates` (its ``{subject}`` is the ``{prompt}``; its style's
  words and negative prompt folded in).

GET /v1/styles and GET /v1/templates stay as views of the same data for existing clients.
`compose` turns a preset and a prompt into the request an app would have sent. Pure Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from router.styles import GENERIC_NEGATIVE, PLACEHOLDER, STYLES, _key, _tidy
from router.templates import TEMPLATES

Kind = Literal["image", "video"]
PRESET_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# request fields a preset may set (images: POST /v1/images/generations; videos: /v1/videos)
IMAGE_PARAMS = ("quality", "guidance_scale", "steps", "size", "strength", "background")
VIDEO_PARAMS = ("seconds", "fps", "size", "camera", "motion", "steps", "guidance_scale")


@dataclass(frozen=True)
class Preset:
    id: str
    kind: Kind
    title: str
    prompt_template: str
    negative_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: Literal["preset", "style", "template", "user"] = "preset"
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.prompt_template.count(PLACEHOLDER) != 1:
            raise ValueError(f"prompt_template must contain {PLACEHOLDER} exactly once, got "
                             f"{self.prompt_template!r}")
        allowed = IMAGE_PARAMS if self.kind == "image" else VIDEO_PARAMS
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ValueError(f"params {unknown} are not {self.kind} parameters; allowed: "
                             f"{', '.join(allowed)}")

    def render(self, prompt: str | None) -> str:
        subject = " ".join(prompt.split()) if prompt else ""
        return _tidy(self.prompt_template.replace(PLACEHOLDER, subject, 1))

    def compose(self, prompt: str | None, overrides: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """The request this preset makes of `prompt`: its rendered prompt, its negative prompt
        joined with the request's, its parameters unless the request sets them."""
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        negative = ", ".join(filter(None, [self.negative_prompt,
                                           overrides.pop("negative_prompt", None)]))
        return {"prompt": self.render(prompt), **({"negative_prompt": negative}
                                                   if negative else {}),
                **self.params, **overrides}

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title,
                "description": self.description, "prompt_template": self.prompt_template,
                "negative_prompt": self.negative_prompt, "params": dict(self.params),
                "source": self.source, "builtin": self.source != "user",
                "aliases": list(self.aliases)}


_NAMED = (
    Preset("cinematic-portrait", "image", "Cinematic portrait",
           "cinematic portrait of {prompt}, 85mm lens, shallow depth of field, rim light, "
           "film grain, color graded, dramatic lighting",
           "cartoon, illustration, flat lighting, " + GENERIC_NEGATIVE,
           {"quality": "high", "guidance_scale": 7.0},
           "Portrait with a film look: shallow focus, rim light, colour grading."),
    Preset("concept-art", "image", "Concept art",
           "concept art of {prompt}, matte painting, epic scale, volumetric light, highly "
           "detailed, artstation",
           "photo, photorealistic, " + GENERIC_NEGATIVE,
           {"quality": "high", "guidance_scale": 8.0},
           "Painterly key art for worlds and characters."),
    # the video presets of POST /v1/videos (fields the request sets win): fps, camera move and
    # motion are prompt conditioning there (models/video.py: condition_prompt)
    Preset("cinematic-video", "video", "Cinematic video",
           "{prompt}, cinematic film still in motion, shallow depth of field, dramatic "
           "lighting, film grain",
           "low quality, worst quality, deformed, distorted, jittery, text",
           {"fps": 24, "camera": "dolly-in", "motion": 0.35},
           "Film look: slow dolly, shallow depth of field, 24 fps", aliases=("cinematic",)),
    Preset("vlog", "video", "Vlog",
           "{prompt}, handheld vlog footage, natural light, eye-level camera, casual and "
           "candid", "low quality, blurry, distorted faces, text, watermark",
           {"fps": 30, "camera": "static", "motion": 0.5},
           "Handheld vlog: natural light, eye level, 30 fps"),
    Preset("time-lapse", "video", "Time-lapse",
           "{prompt}, time-lapse, accelerated motion, fast moving clouds and light, "
           "locked-off tripod shot", "low quality, blurry, flicker, text",
           {"fps": 24, "camera": "static", "motion": 1.0},
           "Time-lapse: locked-off camera, accelerated motion (clouds, crowds, light)"),
)
# named presets that are styles already: the style, with generation parameters added
_STYLE_PARAMS = {"photorealistic": {"quality": "high", "guidance_scale": 6.5},
                 "anime": {"quality": "high", "guidance_scale": 7.5},
                 "oil-painting": {"quality": "high", "guidance_scale": 7.5}}


def _from_style(style) -> Preset:
    return Preset(style.name, "image", style.title, style.prompt_template,
                  style.negative_prompt,
                  {"strength": style.strength, **_STYLE_PARAMS.get(style.name, {})},
                  style.description, "style", tuple(style.aliases))


def _from_template(t: dict[str, Any]) -> Preset:
    prompt = t["prompt"].replace("{subject}", PLACEHOLDER)
    negative = ""
    if t.get("style"):
        style = STYLES[t["style"]]
        prompt = style.prompt_template.replace(PLACEHOLDER, prompt, 1)
        negative = style.negative_prompt
    return Preset(t["id"], "image", t["title"], prompt, negative, {},
                  f"template (suggested size {t['size']}); style: {t.get('style') or 'none'}",
                  "template")


BUILTIN: dict[str, Preset] = {p.id: p for p in (
    *_NAMED[:2], *(_from_style(s) for s in STYLES.values()), *_NAMED[2:],
    *(_from_template(t) for t in TEMPLATES))}
_INDEX = {_key(label): p for p in BUILTIN.values() for label in (p.id, p.title, *p.aliases)}


def builtin(name: str) -> Preset | None:
    """A built-in preset by id, title or alias (case, spaces, '-' and '_' ignored)."""
    return _INDEX.get(_key(name)) if isinstance(name, str) else None


def list_presets(kind: Kind | None = None) -> list[dict[str, Any]]:
    return [p.as_dict() for p in BUILTIN.values() if kind is None or p.kind == kind]


def user_preset(item_id: str, body: dict[str, Any]) -> Preset:
    """A project's saved preset (its stored body) as a `Preset`."""
    return Preset(item_id, body.get("kind", "image"), body.get("title") or item_id,
                  body["prompt_template"], body.get("negative_prompt") or "",
                  dict(body.get("params") or {}), body.get("description") or "", "user")


__all__ = ["BUILTIN", "IMAGE_PARAMS", "VIDEO_PARAMS", "Preset", "builtin", "list_presets",
           "user_preset"]
