"""Prompt templates for GET /v1/templates: starting points an app can offer its users.

Each template is a prompt with `{subject}` to fill in, the style preset it pairs with (see
router/styles.py) and a suggested size.
"""

from __future__ import annotations

from typing import Any

TEMPLATES: list[dict[str, Any]] = [
    {"id": "product-shot", "title": "Product shot",
     "prompt": "professional studio product photo of {subject}, soft light, clean white "
               "background, high detail", "style": "photorealistic", "size": "1024x1024"},
    {"id": "portrait", "title": "Portrait",
     "prompt": "portrait of {subject}, shallow depth of field, 85mm, natural light",
     "style": "photorealistic", "size": "768x1024"},
    {"id": "storybook", "title": "Storybook illustration",
     "prompt": "children's storybook illustration of {subject}, soft colours, whimsical",
     "style": "watercolor", "size": "1024x768"},
    {"id": "anime-character", "title": "Anime character",
     "prompt": "{subject}, anime character design, full body, vibrant colours",
     "style": "anime", "size": "768x1024"},
    {"id": "poster", "title": "Retro poster",
     "prompt": "retro travel poster of {subject}, bold shapes, limited palette",
     "style": "pop-art", "size": "768x1024"},
    {"id": "logo", "title": "Logo sketch",
     "prompt": "minimal flat logo of {subject}, vector style, simple shapes",
     "style": None, "size": "1024x1024"},
    {"id": "landscape", "title": "Landscape",
     "prompt": "wide landscape of {subject}, golden hour, dramatic sky",
     "style": "oil-painting", "size": "1536x1024"},
    {"id": "city-night", "title": "Neon city",
     "prompt": "{subject} in a neon-lit city at night, rain reflections",
     "style": "cyberpunk", "size": "1024x768"},
]


def list_templates() -> list[dict[str, Any]]:
    return [dict(t) for t in TEMPLATES]


def fill(template_id: str, subject: str) -> str:
    for t in TEMPLATES:
        if t["id"] == template_id:
            return t["prompt"].format(subject=subject)
    raise ValueError(f"template must be one of {', '.join(t['id'] for t in TEMPLATES)}, "
                     f"got {template_id!r}")
