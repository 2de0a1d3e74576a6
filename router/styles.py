"""Style presets for style transfer (img2img on the generator), and free-text styles.

A preset is a prompt template (``"{prompt}"`` marks where the subject goes), a negative prompt
and an img2img strength (how far the result may move from the input image: low keeps the
photo's layout and identity, high repaints more). `resolve_style` turns what a client or the
chat router sends — a preset name or a free description such as "in the style of stained
glass" — into the prompt, negative prompt and strength the generator takes.

Names are matched ignoring case, spaces, hyphens and underscores ("Oil Painting",
"oil_painting" and "oilpainting" are all ``oil-painting``); each preset also has a few aliases.
Pure Python: no Ray, no models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from common.errors import InputError

PLACEHOLDER = "{prompt}"
MAX_STYLE_CHARS = 300
DEFAULT_FREE_STRENGTH = 0.6
GENERIC_NEGATIVE = ("lowres, blurry, jpeg artifacts, watermark, text, signature, logo, "
                    "deformed, disfigured, bad anatomy, extra limbs, cropped, worst quality")
FREE_TEMPLATE_SUFFIX = "high quality, detailed"


def _key(name: str) -> str:
    """Case-, space-, hyphen- and underscore-insensitive matching key."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def _tidy(text: str) -> str:
    """Collapse whitespace and empty comma separators left by a removed placeholder."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,(\s*,)+", ",", text)
    return text.strip(" ,")


@dataclass(frozen=True)
class StylePreset:
    name: str
    title: str
    prompt_template: str
    negative_prompt: str
    strength: float
    description: str
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", self.name):
            raise ValueError(f"name must be lower-case words joined by '-', got {self.name!r}")
        if self.prompt_template.count(PLACEHOLDER) != 1:
            raise ValueError(f"prompt_template must contain {PLACEHOLDER} exactly once, got "
                             f"{self.prompt_template!r}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")

    def render(self, subject: str | None = None) -> str:
        """The prompt for `subject`; without one (img2img: the image is the subject), the
        placeholder is dropped and only the style words remain."""
        subject = " ".join(subject.split()) if subject else ""
        return _tidy(self.prompt_template.replace(PLACEHOLDER, subject, 1))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description,
                "strength": self.strength, "prompt_template": self.prompt_template,
                "negative_prompt": self.negative_prompt, "aliases": list(self.aliases)}


@dataclass(frozen=True)
class ResolvedStyle:
    """What the generator gets for a style request."""

    prompt: str
    negative_prompt: str
    strength: float
    preset_name: str | None  # None: a free-text style


_PRESETS = (
    StylePreset(
        name="watercolor",
        title="Watercolor",
        prompt_template="{prompt}, watercolor painting, soft translucent washes, wet-on-wet "
                        "bleeding edges, visible paper texture, delicate pastel palette",
        negative_prompt="photo, photorealistic, 3d render, hard outlines, oversaturated, "
                        "digital art, " + GENERIC_NEGATIVE,
        strength=0.6,
        description="Soft translucent washes and paper texture; keeps the composition.",
        aliases=("watercolour", "watercolor painting", "watercolour painting", "aquarelle"),
    ),
    StylePreset(
        name="anime",
        title="Anime",
        prompt_template="{prompt}, anime style, cel shading, clean line art, vibrant colors, "
                        "expressive eyes, studio anime key visual",
        negative_prompt="photo, photorealistic, 3d render, western cartoon, realistic skin "
                        "texture, " + GENERIC_NEGATIVE,
        strength=0.65,
        description="Japanese animation look: clean lines, cel shading, bright colours.",
        aliases=("manga", "anime style", "cel shaded"),
    ),
    StylePreset(
        name="oil-painting",
        title="Oil painting",
        prompt_template="{prompt}, oil painting on canvas, thick impasto brushstrokes, rich "
                        "colors, classical fine art, dramatic lighting",
        negative_prompt="photo, photorealistic, 3d render, flat colors, cartoon, "
                        + GENERIC_NEGATIVE,
        strength=0.6,
        description="Classical oil on canvas with visible brushstrokes.",
        aliases=("oil", "oil paint", "impasto"),
    ),
    StylePreset(
        name="pencil-sketch",
        title="Pencil sketch",
        prompt_template="{prompt}, graphite pencil sketch, hand-drawn, fine cross-hatching, "
                        "monochrome, sketchbook paper",
        negative_prompt="color, colorful, photo, photorealistic, painting, 3d render, "
                        + GENERIC_NEGATIVE,
        strength=0.6,
        description="Monochrome graphite drawing with hatching on paper.",
        aliases=("pencil", "sketch", "pencil drawing", "graphite", "drawing"),
    ),
    StylePreset(
        name="pixar-3d",
        title="3D animated film",
        prompt_template="{prompt}, 3d animated movie still, stylized cartoon character, "
                        "soft global illumination, subsurface scattering, cute, octane render",
        negative_prompt="photo, photorealistic, 2d, flat, sketch, painting, uncanny, "
                        + GENERIC_NEGATIVE,
        strength=0.7,
        description="Stylised 3D feature-animation look with soft lighting.",
        aliases=("pixar", "3d cartoon", "3d animation", "3d animated"),
    ),
    StylePreset(
        name="ukiyo-e",
        title="Ukiyo-e woodblock print",
        prompt_template="{prompt}, ukiyo-e japanese woodblock print, bold outlines, flat color "
                        "areas, edo period, washi paper texture",
        negative_prompt="photo, photorealistic, 3d render, gradients, modern, "
                        + GENERIC_NEGATIVE,
        strength=0.65,
        description="Edo-period Japanese woodblock print: flat colours, bold outlines.",
        aliases=("woodblock", "woodblock print", "japanese woodblock", "hokusai"),
    ),
    StylePreset(
        name="cyberpunk",
        title="Cyberpunk",
        prompt_template="{prompt}, cyberpunk, neon lights, rain-soaked night city, magenta and "
                        "cyan glow, futuristic, high tech, cinematic",
        negative_prompt="daylight, pastoral, vintage, washed out, dull colors, "
                        + GENERIC_NEGATIVE,
        strength=0.6,
        description="Neon-lit futuristic night scene in magenta and cyan.",
        aliases=("neon", "blade runner"),
    ),
    StylePreset(
        name="comic",
        title="Comic book",
        prompt_template="{prompt}, comic book art, bold ink outlines, halftone dots, flat "
                        "vivid colors, dynamic graphic novel panel",
        negative_prompt="photo, photorealistic, 3d render, soft focus, painterly, "
                        + GENERIC_NEGATIVE,
        strength=0.6,
        description="Inked comic-book look with halftone shading.",
        aliases=("comic book", "comics", "graphic novel"),
    ),
    StylePreset(
        name="photorealistic",
        title="Photorealistic",
        prompt_template="{prompt}, photorealistic, professional photograph, natural lighting, "
                        "35mm lens, sharp focus, fine detail",
        negative_prompt="painting, illustration, drawing, cartoon, anime, 3d render, cgi, "
                        "plastic skin, " + GENERIC_NEGATIVE,
        strength=0.45,
        description="Turns drawings or renders into a natural-looking photograph.",
        aliases=("realistic", "photo", "photograph", "realism"),
    ),
    StylePreset(
        name="pop-art",
        title="Pop art",
        prompt_template="{prompt}, pop art, bold flat colors, Ben-Day dots, thick black "
                        "outlines, screen print, 1960s poster",
        negative_prompt="photo, photorealistic, muted colors, gradients, 3d render, "
                        + GENERIC_NEGATIVE,
        strength=0.65,
        description="1960s screen-print look: flat bold colours and Ben-Day dots.",
        aliases=("warhol", "pop"),
    ),
    StylePreset(
        name="low-poly",
        title="Low poly",
        prompt_template="{prompt}, low poly 3d art, faceted geometric polygons, flat shading, "
                        "minimal, clean gradient background",
        negative_prompt="photo, photorealistic, smooth surfaces, high detail textures, noise, "
                        + GENERIC_NEGATIVE,
        strength=0.7,
        description="Faceted geometric 3D made of flat-shaded polygons.",
        aliases=("polygon", "polygonal", "geometric"),
    ),
    StylePreset(
        name="vintage-photo",
        title="Vintage photo",
        prompt_template="{prompt}, vintage film photograph, 1970s, faded warm colors, film "
                        "grain, light leaks, soft vignette",
        negative_prompt="digital, hdr, oversaturated, modern, illustration, painting, "
                        + GENERIC_NEGATIVE,
        strength=0.4,
        description="Faded 1970s film look with grain and warm tones; keeps the photo.",
        aliases=("vintage", "retro photo", "old photo", "film", "analog"),
    ),
)

STYLES: dict[str, StylePreset] = {p.name: p for p in _PRESETS}


def _build_index(presets: dict[str, StylePreset]) -> dict[str, StylePreset]:
    index: dict[str, StylePreset] = {}
    for preset in presets.values():
        for label in (preset.name, preset.title, *preset.aliases):
            key = _key(label)
            other = index.setdefault(key, preset)
            if other is not preset:
                raise ValueError(f"style name {label!r} of {preset.name!r} clashes with "
                                 f"{other.name!r}")
    return index


_INDEX = _build_index(STYLES)

# Filler around a style name in free text: "in the style of X", "X style", "make it look like X".
_WRAPPERS = re.compile(
    r"^(?:(?:make|turn|render|paint|draw)\s+(?:it|this|me)\s+)?"
    r"(?:(?:look|looks|in|as|like|into|the|a|an|style\s+of)\s+)*"
    r"(?P<core>.+?)(?:[\s-]+style)?$",
    re.IGNORECASE,
)


def _core(text: str) -> str:
    """The style words without the filler around them ("in the style of X" -> "X")."""
    match = _WRAPPERS.match(text.strip())
    return match.group("core") if match else text.strip()


def _lookup(text: str) -> StylePreset | None:
    return _INDEX.get(_key(text)) or _INDEX.get(_key(_core(text)))


def available_styles() -> list[str]:
    return list(STYLES)


def get_style(name: str) -> StylePreset:
    """The preset called `name` (ignoring case, spaces, hyphens, underscores; aliases too)."""
    preset = _INDEX.get(_key(name)) if isinstance(name, str) else None
    if preset is None:
        raise InputError(f"style must be one of {', '.join(STYLES)}; got {name!r}",
                         param="style")
    return preset


def resolve_style(style: str, subject: str | None = None) -> ResolvedStyle:
    """Turn a preset name or a free-text style into prompt, negative prompt and strength.

    `subject` is what the image shows ("a cat on a sofa"); None for plain img2img restyling,
    where the input image is the subject.
    """
    if not isinstance(style, str) or not style.strip():
        raise InputError(f"style must be a preset name ({', '.join(STYLES)}) or a short "
                         "description such as 'in the style of stained glass'", param="style")
    if len(style) > MAX_STYLE_CHARS:
        raise InputError(f"style must be at most {MAX_STYLE_CHARS} characters, got {len(style)}",
                         param="style")
    preset = _lookup(style)
    if preset is not None:
        return ResolvedStyle(prompt=preset.render(subject), negative_prompt=preset.negative_prompt,
                             strength=preset.strength, preset_name=preset.name)
    text = _core(_tidy(re.sub(r"[{}]", "", style)))
    if not text:
        raise InputError(f"style must contain words, got {style!r}", param="style")
    if not re.match(r"(with|without)\b", text, re.IGNORECASE) and "style" not in text.lower():
        text = f"in the style of {text}"
    template = f"{PLACEHOLDER}, {text}, {FREE_TEMPLATE_SUFFIX}"
    subject = " ".join(subject.split()) if subject else ""
    return ResolvedStyle(prompt=_tidy(template.replace(PLACEHOLDER, subject, 1)),
                         negative_prompt=GENERIC_NEGATIVE, strength=DEFAULT_FREE_STRENGTH,
                         preset_name=None)


def list_styles() -> list[dict[str, Any]]:
    """The presets for ``GET /v1/styles``, in display order."""
    return [preset.as_dict() for preset in STYLES.values()]


__all__ = ["STYLES", "StylePreset", "ResolvedStyle", "available_styles", "get_style",
           "resolve_style", "list_styles", "GENERIC_NEGATIVE", "DEFAULT_FREE_STRENGTH"]
