"""Style presets: templates, name matching, free-text styles, the /v1/styles listing."""

from __future__ import annotations

import dataclasses

import pytest

from common.errors import InputError
from router.styles import (
    DEFAULT_FREE_STRENGTH,
    GENERIC_NEGATIVE,
    STYLES,
    ResolvedStyle,
    StylePreset,
    get_style,
    list_styles,
    resolve_style,
)

REQUIRED = ("watercolor", "anime", "oil-painting", "pencil-sketch", "pixar-3d", "ukiyo-e",
            "cyberpunk", "comic")


def test_required_presets_present():
    assert set(REQUIRED) <= set(STYLES)
    assert len(STYLES) >= len(REQUIRED) + 3


@pytest.mark.parametrize("name", list(STYLES))
def test_preset_well_formed(name):
    preset = STYLES[name]
    assert preset.name == name
    assert preset.prompt_template.count("{prompt}") == 1
    assert 0.0 < preset.strength <= 1.0
    assert preset.title and preset.description and preset.negative_prompt
    with_subject = preset.render("a red fox")
    assert "a red fox" in with_subject and "{" not in with_subject
    bare = preset.render(None)
    assert "{" not in bare and not bare.startswith(",") and ", ," not in bare and "  " not in bare
    assert bare == preset.render("   ")


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        STYLES["anime"].strength = 0.1  # type: ignore[misc]


def test_preset_checks_its_fields():
    base = dict(name="x", title="X", prompt_template="{prompt}, x", negative_prompt="",
                strength=0.5, description="")
    with pytest.raises(ValueError, match="prompt_template"):
        StylePreset(**{**base, "prompt_template": "no placeholder"})
    with pytest.raises(ValueError, match="strength"):
        StylePreset(**{**base, "strength": 0.0})
    with pytest.raises(ValueError, match="strength"):
        StylePreset(**{**base, "strength": 1.5})
    with pytest.raises(ValueError, match="name"):
        StylePreset(**{**base, "name": "Oil Painting"})


@pytest.mark.parametrize(("given", "name"), [
    ("watercolor", "watercolor"),
    ("WaterColor", "watercolor"),
    ("  anime ", "anime"),
    ("Oil Painting", "oil-painting"),
    ("oil_painting", "oil-painting"),
    ("OIL-PAINTING", "oil-painting"),
    ("oilpainting", "oil-painting"),
    ("pencil sketch", "pencil-sketch"),
    ("Pixar 3D", "pixar-3d"),
    ("ukiyo_e", "ukiyo-e"),
    ("Ukiyo E", "ukiyo-e"),
    ("pop_art", "pop-art"),
    ("low poly", "low-poly"),
    ("Vintage Photo", "vintage-photo"),
    ("watercolour", "watercolor"),   # alias
    ("Comic Book", "comic"),         # alias
])
def test_get_style_normalises(given, name):
    assert get_style(given).name == name


def test_unknown_style_lists_names():
    with pytest.raises(ValueError) as info:
        get_style("vaporwave")
    message = str(info.value)
    assert message.startswith("style must be one of")
    assert "'vaporwave'" in message
    for name in STYLES:
        assert name in message


def test_resolve_preset_with_and_without_subject():
    resolved = resolve_style("Oil Painting", "a lighthouse at dusk")
    preset = STYLES["oil-painting"]
    assert resolved == ResolvedStyle(prompt=preset.render("a lighthouse at dusk"),
                                     negative_prompt=preset.negative_prompt,
                                     strength=preset.strength, preset_name="oil-painting")
    assert resolved.prompt.startswith("a lighthouse at dusk, oil painting")
    bare = resolve_style("anime", None)
    assert bare.preset_name == "anime" and bare.prompt.startswith("anime style")


@pytest.mark.parametrize(("given", "name"), [
    ("anime style", "anime"),
    ("in the style of ukiyo-e", "ukiyo-e"),
    ("make it look like a watercolor", "watercolor"),
    ("turn it into an oil painting", "oil-painting"),
    ("comic-style", "comic"),
])
def test_resolve_preset_wrapped_in_words(given, name):
    assert resolve_style(given, "a cat").preset_name == name


def test_resolve_free_text():
    resolved = resolve_style("in the style of stained glass", "a cat on a sofa")
    assert resolved.preset_name is None
    assert resolved.prompt.startswith("a cat on a sofa, in the style of stained glass")
    assert resolved.negative_prompt == GENERIC_NEGATIVE
    assert resolved.strength == DEFAULT_FREE_STRENGTH
    assert 0.0 < resolved.strength <= 1.0
    # bare style words get the "in the style of" phrasing; no subject: no leading comma
    bare = resolve_style("Art Nouveau poster", None)
    assert bare.prompt.startswith("in the style of Art Nouveau poster")
    assert resolve_style("with heavy film grain", "x").prompt.startswith("x, with heavy film")
    # braces from the client can't act as a placeholder
    assert "{" not in resolve_style("{prompt} glitch art", "a dog").prompt


@pytest.mark.parametrize("bad", ["", "   ", "x" * 301, "{}"])
def test_resolve_bad_style(bad):
    with pytest.raises(InputError, match="^style must") as info:
        resolve_style(bad, "a cat")
    assert info.value.param == "style"


def test_list_styles():
    listed = list_styles()
    assert [item["name"] for item in listed] == list(STYLES)
    for item in listed:
        assert {"name", "title", "description", "strength", "prompt_template",
                "negative_prompt", "aliases"} <= set(item)
        assert isinstance(item["aliases"], list)
    import json

    json.dumps(listed)  # ready for a JSON response
