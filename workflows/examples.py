"""The workflows every project starts with (read-only; ids start with ``example-``). Run one
with POST /v1/workflows/execute {"workflow_id": ..., "inputs": {...}}."""

from __future__ import annotations

from typing import Any

EXAMPLES: list[dict[str, Any]] = [
    {"id": "example-cutout-upscaled", "name": "Text → image → cut-out → upscale",
     "description": "Generate from a prompt, remove the background, upscale ×2. Override "
                    "the prompt with inputs: {\"text\": {\"text\": \"...\"}}.",
     "workflow": {"nodes": {
         "text": {"op": "prompt", "params": {"text": "a ceramic mug on a table"}},
         "gen": {"op": "generate", "in": {"prompt": "text.text"}},
         "cut": {"op": "remove_background", "in": {"image": "gen.image"}},
         "up": {"op": "upscale", "in": {"image": "cut.image"}, "params": {"scale": 2}}},
         "outputs": ["up.image"]}},
    {"id": "example-three-styles", "name": "Image → three styles in parallel",
     "description": "One image restyled as watercolor, oil painting and anime at once. "
                    "Give the image with inputs: {\"photo\": {\"asset_id\": \"img_...\"}}.",
     "workflow": {"nodes": {
         "photo": {"op": "image_input", "params": {"asset_id": "your-image-asset-id"}},
         "watercolor": {"op": "style_transfer", "in": {"image": "photo.image"},
                        "params": {"style": "watercolor"}},
         "oil": {"op": "style_transfer", "in": {"image": "photo.image"},
                 "params": {"style": "oil-painting"}},
         "anime": {"op": "style_transfer", "in": {"image": "photo.image"},
                   "params": {"style": "anime"}}},
         "outputs": ["watercolor.image", "oil.image", "anime.image"]}},
    {"id": "example-text-to-video", "name": "Text → image → video",
     "description": "Generate a key frame, then animate it (needs a Video deployment).",
     "workflow": {"nodes": {
         "text": {"op": "prompt", "params": {"text": "a paper boat on a pond"}},
         "gen": {"op": "generate", "in": {"prompt": "text.text"}},
         "clip": {"op": "video", "in": {"image": "gen.image", "prompt": "text.text"}}},
         "outputs": ["gen.image", "clip.video"]}},
]


def example(workflow_id: str) -> dict[str, Any] | None:
    return next((e for e in EXAMPLES if e["id"] == workflow_id), None)
