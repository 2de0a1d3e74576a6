"""Prompt validation limits, analysis, deterministic and LLM compression, refinement."""

from __future__ import annotations

import asyncio
import json

import pytest

from common.errors import InputError
from router.prompts import (
    COMPRESS_ABOVE,
    MAX_PROMPT_CHARS,
    analyze_prompt,
    arefine_prompt,
    check_prompt,
    compress_prompt,
    compress_prompt_llm,
    refine_prompt,
    validate_prompt,
)
from router.styles import GENERIC_NEGATIVE, STYLES


def _long_prompt(chars: int) -> str:
    """A subject, a lot of repetitive filler, then style and quality terms at the end."""
    head = "A majestic red fox sitting in a snowy birch forest at dawn. "
    filler = [f"The snowflake number {i} glitters very softly on the quiet branches." for i in
              range(400)]
    tail = " watercolor, highly detailed, soft lighting, 8k"
    body = head + " ".join(filler)
    return body[: chars - len(tail)].rsplit(" ", 1)[0] + "," + tail


def _chat_response(content: str, finish_reason: str = "stop") -> dict:
    return {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content},
         "finish_reason": finish_reason}]}


@pytest.mark.parametrize("prompt,code,message", [
    ("", "empty_prompt", "prompt must not be empty"),
    ("   \n ", "empty_prompt", "prompt must not be empty"),
    ("x" * (MAX_PROMPT_CHARS + 1), "prompt_too_long", "the limit is 10000 characters"),
    (42, "invalid_type", "prompt must be a string, got int"),
])
def test_validate_rejects(prompt, code, message):
    result = validate_prompt(prompt)
    assert not result.valid and result.error.code == code and message in result.error.message
    with pytest.raises(InputError, match=message) as info:
        check_prompt(prompt)
    assert info.value.param == "prompt"
    with pytest.raises(ValueError, match=message):
        refine_prompt(prompt)


def test_validate_accepts_and_analyses():
    result = validate_prompt("a watercolor painting of a fox in the snow, no people, "
                             "highly detailed")
    assert result.valid and result.error is None and not result.needs_compression
    analysis = result.analysis
    assert analysis.length == 70 and analysis.words == 13
    assert analysis.detected_style == "watercolor" and analysis.style_preset == "watercolor"
    assert analysis.keywords[:3] == ["watercolor", "painting", "fox"]
    assert analysis.negative_terms == ["people"]
    assert result.limits == {"max_chars": 10_000, "compress_above": 3_000,
                             "compressed_max": 2_999}


@pytest.mark.parametrize("length,needs", [(COMPRESS_ABOVE, False), (COMPRESS_ABOVE + 1, True),
                                          (MAX_PROMPT_CHARS, True)])
def test_needs_compression_boundaries(length, needs):
    result = validate_prompt("a" * length)
    assert result.valid and result.needs_compression is needs


def test_analysis_categories_and_language():
    assert analyze_prompt("a logo for a bakery").detected_style == "logo"
    assert analyze_prompt("a portrait photo of an old man").detected_style == "photo"
    assert analyze_prompt("une photo d'un chat").language == "fr"
    assert analyze_prompt("in the style of stained glass, a rose").detected_style == \
        "stained glass"


def test_deterministic_compression_keeps_subject_style_and_quality():
    prompt = _long_prompt(7_000)
    out = compress_prompt(prompt)
    assert len(prompt) == pytest.approx(7_000, abs=80) and len(out) < COMPRESS_ABOVE
    assert out.startswith("A majestic red fox sitting in a snowy birch forest at dawn")
    for term in ("watercolor", "highly detailed", "soft lighting", "8k"):
        assert term in out
    assert "very" not in out  # filler words go first
    assert compress_prompt("short prompt") == "short prompt"


def test_deterministic_compression_drops_repeats_first():
    prompt = ", ".join(["a lighthouse on a cliff"] + ["stormy sea"] * 400 + ["oil painting"])
    out = compress_prompt(prompt)
    assert out == "a lighthouse on a cliff, stormy sea, oil painting"  # original order


def test_deterministic_compression_of_one_huge_clause():
    out = compress_prompt("word " * 1_500)
    assert 0 < len(out) < COMPRESS_ABOVE


def test_refine_adds_descriptors_and_moves_negatives():
    refined = refine_prompt("a logo for a bakery, avoid text")
    assert refined.prompt == ("a logo for a bakery, clean vector design, simple shapes, "
                              "flat colors, centered composition, high contrast")
    assert refined.negative_prompt.startswith("text, lowres, blurry")
    assert refined.style is None and not refined.compressed
    assert refined.added_terms[0] == "clean vector design"


def test_refine_with_a_preset_uses_its_template_and_negative():
    refined = refine_prompt("a red fox in the snow", style="Oil Painting")
    preset = STYLES["oil-painting"]
    assert refined.style == "oil-painting"
    assert refined.prompt == preset.render("a red fox in the snow")
    assert refined.negative_prompt == preset.negative_prompt


def test_refine_detects_the_style_in_the_prompt():
    refined = refine_prompt("an anime girl under cherry blossoms")
    assert refined.style == "anime"
    assert "cel shading" in refined.prompt and refined.prompt.count("anime girl") == 1


def test_refine_free_text_style():
    refined = refine_prompt("a rose", style="in the style of stained glass")
    assert refined.prompt == "a rose, in the style of stained glass, high quality, detailed"
    assert refined.negative_prompt == GENERIC_NEGATIVE
    with pytest.raises(ValueError, match="style must be at most 300 characters"):
        refine_prompt("a rose", style="x" * 301)


def test_refine_compresses_long_prompts_without_llm():
    refined = refine_prompt(_long_prompt(6_000))
    assert refined.compressed and refined.compression == "deterministic"
    assert len(refined.prompt) < COMPRESS_ABOVE
    assert refined.prompt.startswith("A majestic red fox")
    assert refined.analysis.length == len(_long_prompt(6_000))


def test_llm_compression_is_used_when_valid():
    requests = []

    async def llm(request):
        requests.append(request)
        return _chat_response(json.dumps({"prompt": "a red fox in a snowy birch forest at "
                                                    "dawn, watercolor, highly detailed, 8k"}))

    refined = asyncio.run(arefine_prompt(_long_prompt(5_000), llm=llm))
    assert refined.compression == "llm" and refined.llm_error is None
    assert refined.prompt.startswith("a red fox in a snowy birch forest at dawn, watercolor")
    schema = requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["prompt"]["maxLength"] == COMPRESS_ABOVE - 1
    assert requests[0]["temperature"] == 0


@pytest.mark.parametrize("content,error", [
    ("this is not json", "not valid JSON"),
    (json.dumps({"text": "a fox"}), 'lacks a string "prompt"'),
    (json.dumps({"prompt": ""}), "empty prompt"),
    (json.dumps({"prompt": "x " * 2_000}), "not under 3000"),
    (json.dumps({"prompt": "a bowl of soup, watercolor"}), "dropped the subject"),
])
def test_llm_compression_falls_back_on_bad_answers(content, error):
    async def llm(request):
        return _chat_response(content)

    prompt = _long_prompt(5_000)
    text, reason, method = asyncio.run(compress_prompt_llm(prompt, llm))
    assert method == "deterministic" and error in reason
    assert text == compress_prompt(prompt)


def test_llm_compression_falls_back_on_timeout_and_errors():
    async def slow(request):
        await asyncio.Event().wait()  # never answers: only the timeout ends it

    async def broken(request):
        raise ConnectionError("replica died")

    prompt = _long_prompt(4_000)
    _, reason, method = asyncio.run(compress_prompt_llm(prompt, slow, timeout_s=0.05))
    assert method == "deterministic" and "did not answer within 0.05s" in reason
    _, reason, _ = asyncio.run(compress_prompt_llm(prompt, broken))
    assert reason == "LLM call failed: ConnectionError: replica died"


def test_short_prompts_never_call_the_llm():
    async def llm(request):
        raise AssertionError("must not be called")

    refined = asyncio.run(arefine_prompt("a cat", llm=llm))
    assert refined.prompt.startswith("a cat, ") and not refined.compressed
