"""Presets: one concept for styles, templates and generation presets (router/presets.py), and
their application to generation requests and workflow nodes."""

from __future__ import annotations

import pytest

from graphs.presets import compose_generation
from graphs.schemas import ImageGenerationRequest
from graphs.workflows import CATALOGUE, with_preset
from router.presets import BUILTIN, Preset, builtin, list_presets
from router.styles import STYLES
from router.templates import TEMPLATES
from workflows import WorkflowInvalid, validate

SEED_002 = {"cinematic-portrait", "anime", "photorealistic", "concept-art", "oil-painting",
            "cinematic-video", "vlog", "time-lapse"}


def test_builtins_cover_the_named_presets_styles_and_templates():
    assert SEED_002 <= set(BUILTIN)
    assert set(STYLES) <= set(BUILTIN) and {t["id"] for t in TEMPLATES} <= set(BUILTIN)
    assert {p["id"] for p in list_presets("video")} == {"cinematic-video", "vlog",
                                                        "time-lapse"}
    # a style is the same preset under the old name, its strength kept
    assert BUILTIN["watercolor"].params["strength"] == STYLES["watercolor"].strength
    assert builtin("Oil Painting") is BUILTIN["oil-painting"] and builtin("aquarelle")


def test_compose_renders_joins_and_lets_the_request_win():
    preset = BUILTIN["cinematic-portrait"]
    request = preset.compose("an old sailor", {"negative_prompt": "hats", "quality": "low"})
    assert request["prompt"].startswith("cinematic portrait of an old sailor,")
    assert request["negative_prompt"].endswith(", hats")
    assert request["quality"] == "low" and request["guidance_scale"] == 7.0
    # a template folds its style in
    portrait = BUILTIN["portrait"].compose("a sailor")
    assert "portrait of a sailor" in portrait["prompt"] and "photorealistic" in \
        portrait["prompt"] and portrait["negative_prompt"] == STYLES[
            "photorealistic"].negative_prompt


def test_a_preset_is_checked():
    with pytest.raises(ValueError, match="exactly once"):
        Preset("x", "image", "X", "no placeholder")
    with pytest.raises(ValueError, match="not image parameters"):
        Preset("x", "image", "X", "{prompt}", params={"seconds": 3})


def test_preset_on_a_generation_request():
    body = ImageGenerationRequest(prompt="a fox", preset="concept-art", guidance_scale=3.0)
    out = compose_generation(BUILTIN["concept-art"], body)
    assert out.prompt.startswith("concept art of a fox") and out.preset == "concept-art"
    assert out.guidance_scale == 3.0  # set by the request: kept
    assert out.quality == "high"  # unset: the preset's


def test_preset_on_workflow_nodes():
    graph = {"nodes": {"g": {"op": "generate", "preset": "anime",
                             "params": {"prompt": "a cat"}},
                       "s": {"op": "style_transfer", "preset": "watercolor",
                             "in": {"image": "g.image"}}}}
    valid = validate(graph, CATALOGUE, prepare=with_preset)
    assert valid.params["g"].preset == "anime" and valid.params["s"].style == "watercolor"
    graph["nodes"]["g"]["preset"] = "no-such-preset"
    with pytest.raises(WorkflowInvalid) as info:
        validate(graph, CATALOGUE, prepare=with_preset)
    assert [p.code for p in info.value.problems] == ["invalid_preset"]


def test_video_presets_are_the_videos_route_presets():
    """One store: the video presets carry what POST /v1/videos applies (fps, camera move,
    motion), `cinematic` (their old name) still finds cinematic-video, and a request's own
    fields win."""
    from graphs.errors import ApiError
    from graphs.presets import compose_video
    from graphs.schemas import VideoCreate
    from router.presets import user_preset

    assert builtin("cinematic") is BUILTIN["cinematic-video"]
    out = compose_video(BUILTIN["vlog"], VideoCreate(prompt="a market", preset="vlog", fps=12,
                                                     negative_prompt="rain"))
    assert out.prompt.startswith("a market, handheld vlog footage")
    assert out.fps == 12 and out.camera == "static" and out.motion == 0.5
    assert out.negative_prompt.endswith(", rain") and out.preset == "vlog"
    # a project's preset with a value the route refuses: a 400 on `preset` naming the field
    bad = user_preset("pr_x", {"kind": "video", "prompt_template": "{prompt}",
                               "params": {"motion": 3}})
    with pytest.raises(ApiError) as info:
        compose_video(bad, VideoCreate(prompt="x", preset="pr_x"))
    assert info.value.param == "preset" and "motion" in info.value.message


def test_video_nodes_take_video_presets_only():
    graph = {"nodes": {"v": {"op": "video", "preset": "time-lapse", "params": {"prompt": "x"}}}}
    assert validate(graph, CATALOGUE, prepare=with_preset).params["v"].preset == "time-lapse"
    graph["nodes"]["v"]["preset"] = "anime"
    with pytest.raises(WorkflowInvalid) as info:
        validate(graph, CATALOGUE, prepare=with_preset)
    assert info.value.problems[0].code == "invalid_preset"
    assert "video preset" in info.value.problems[0].message
