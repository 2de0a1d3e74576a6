"""Prompt validation, analysis, compression and refinement (pure functions).

Limits: an empty prompt is an error; over `MAX_PROMPT_CHARS` (10,000) is an error that names
the limit; over `COMPRESS_ABOVE` (3,000) and up to 10,000 the prompt is compressed to under
3,000 characters, by the LLM when one is given (keeping subject, style and quality terms;
checked) and otherwise, or when the LLM fails, by a deterministic compressor.

`validate_prompt` and `refine_prompt` / `arefine_prompt` are what ``POST /v1/prompts/validate``
and ``POST /v1/prompts/refine`` return; invalid prompts raise `ValueError` in the refine
functions (a 400 at the edge) and come back as ``valid: false`` from `validate_prompt`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from common.errors import InputError
from router import styles as style_presets
from router.llm import LLMError, call_llm, parse_json, response_text
from router.params import Extracted, find_negatives, find_styles
from router.schemas import PromptAnalysis, PromptIssue, PromptValidation, RefinedPrompt
from router.text import STOPWORDS, detect_language, fold, nfc, squash

MAX_PROMPT_CHARS = 10_000
COMPRESS_ABOVE = 3_000
LIMITS = {"max_chars": MAX_PROMPT_CHARS, "compress_above": COMPRESS_ABOVE,
          "compressed_max": COMPRESS_ABOVE - 1}

QUALITY_TERMS = (
    "highly detailed", "high detail", "detailed", "intricate", "sharp focus", "high quality",
    "best quality", "masterpiece", "4k", "8k", "uhd", "hdr", "high resolution", "professional",
    "studio lighting", "natural lighting", "soft lighting", "dramatic lighting", "cinematic",
    "golden hour", "volumetric", "bokeh", "depth of field", "35mm", "50mm", "85mm", "award winning",
    "trending on artstation", "octane render", "unreal engine", "ray tracing", "photorealistic",
    "hyperrealistic", "ultra realistic", "crisp", "vibrant colors", "global illumination",
    "composition", "haute qualite", "tres detaille", "eclairage",
)
_QUALITY_RE = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in QUALITY_TERMS) + r")\b")

# (category, detector over folded text, descriptors added when the prompt lacks them)
CATEGORIES: tuple[tuple[str, re.Pattern[str], tuple[str, ...]], ...] = (
    ("logo", re.compile(r"\b(?:logo|icon|icone|emblem|embleme|badge|sticker|autocollant|mascot|"
                        r"mascotte|favicon|pictogram|pictogramme)s?\b"),
     ("clean vector design", "simple shapes", "flat colors", "centered composition",
      "high contrast")),
    ("photo", re.compile(r"\b(?:photo|photos|photograph|photography|photographie|dslr|35mm|"
                         r"50mm|85mm|headshot|product shot|close-up|gros plan|macro|"
                         r"realistic|realiste|camera|bokeh|lens|objectif|selfie|portrait)\b"),
     ("professional photography", "natural lighting", "sharp focus", "high detail", "8k")),
    ("3d", re.compile(r"\b(?:3d|render|rendu|octane|blender|unreal engine|isometric|isometrique|"
                      r"cgi|low poly|claymation)\b"),
     ("3d render", "global illumination", "soft shadows", "highly detailed")),
    ("illustration", re.compile(r"\b(?:illustration|drawing|dessin|painting|peinture|painted|"
                                r"sketch|croquis|cartoon|anime|manga|comic|bd|watercolou?r|"
                                r"aquarelle|concept art|artwork|poster|affiche|art)\b"),
     ("detailed illustration", "vibrant colors", "clean composition", "high quality")),
    ("scenery", re.compile(r"\b(?:landscape|paysage|mountains?|montagnes?|forest|foret|beach|"
                           r"plage|ocean|mer|sky|ciel|sunset|coucher de soleil|city|ville|"
                           r"skyline|valley|vallee|lake|lac|desert|island|ile)\b"),
     ("epic composition", "golden hour lighting", "highly detailed", "8k")),
)
DEFAULT_DESCRIPTORS = ("highly detailed", "sharp focus", "high quality")


def check_prompt(prompt: Any, *, param: str = "prompt") -> str:
    """The prompt (NFC, stripped), or `InputError` (param `param`) saying what to fix."""
    if not isinstance(prompt, str):
        raise InputError(f"{param} must be a string, got {type(prompt).__name__}", param=param)
    text = nfc(prompt).strip()
    if not text:
        raise InputError(f"{param} must not be empty: describe the image you want", param=param)
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"{param} is {len(text)} characters; the limit is {MAX_PROMPT_CHARS} "
                         f"characters (prompts over {COMPRESS_ABOVE} are compressed, longer "
                         f"than {MAX_PROMPT_CHARS} are refused)", param=param)
    return text


def _keywords(folded: str, original: str, limit: int = 12) -> list[str]:
    words = re.findall(r"[a-z0-9][a-z0-9'-]{2,}", folded)
    counts = Counter(w for w in words if w not in STOPWORDS)
    first = {}
    for i, w in enumerate(words):
        first.setdefault(w, i)
    ranked = sorted(counts, key=lambda w: (-counts[w], first[w]))
    return ranked[:limit]


def _category(folded: str) -> tuple[str | None, tuple[str, ...]]:
    for name, detector, descriptors in CATEGORIES:
        if detector.search(folded):
            return name, descriptors
    return None, DEFAULT_DESCRIPTORS


def analyze_prompt(prompt: str) -> PromptAnalysis:
    """Length, keywords, detected style (preset, free-text style or broad category)."""
    text = nfc(prompt)
    folded = fold(text)
    mentions = find_styles(folded)
    preset = next((m.value for m in mentions if m.value in style_presets.STYLES), None)
    detected = mentions[0].value if mentions else _category(folded)[0]
    negatives = Extracted()
    find_negatives(folded, text, negatives, [])
    return PromptAnalysis(length=len(text), words=len(text.split()),
                          keywords=_keywords(folded, text), detected_style=detected,
                          style_preset=preset, negative_terms=negatives.negative_terms,
                          language=detect_language(folded))


def validate_prompt(prompt: Any) -> PromptValidation:
    """Never raises: ``valid`` with the analysis, or the error (code, message) to show."""
    try:
        text = check_prompt(prompt)
    except ValueError as exc:
        empty = isinstance(prompt, str) and not prompt.strip()
        code = ("empty_prompt" if empty else "prompt_too_long"
                if isinstance(prompt, str) else "invalid_type")
        analysis = analyze_prompt(prompt) if isinstance(prompt, str) and prompt.strip() else None
        return PromptValidation(valid=False, error=PromptIssue(message=str(exc), code=code),
                                limits=LIMITS, analysis=analysis)
    return PromptValidation(valid=True, needs_compression=len(text) > COMPRESS_ABOVE,
                            limits=LIMITS, analysis=analyze_prompt(text))


# --- compression ---------------------------------------------------------------------------

_FILLER = re.compile(
    r"\b(?:very|really|extremely|super|incredibly|absolutely|totally|quite|just|basically|"
    r"please|kindly|i\s+want|i\s+would\s+like|i'd\s+like|make\s+sure\s+(?:that\s+)?|"
    r"it\s+should\s+be|there\s+should\s+be|tres|vraiment|s'il\s+te\s+plait|je\s+veux)\b\s*",
    re.IGNORECASE)
_CLAUSE_SPLIT = re.compile(r"(?<=[,.;:!?\n])\s*|\s+-\s+")


def _clauses(text: str) -> list[str]:
    parts = [squash(p) for p in _CLAUSE_SPLIT.split(text)]
    return [p for p in parts if p]


def _clause_key(clause: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", fold(clause)))


def compress_prompt(prompt: str, *, limit: int = COMPRESS_ABOVE) -> str:
    """Deterministic compression to under `limit` characters: the subject (first clause)
    first, then clauses with style or quality terms, then the rest in order; repeated clauses
    and filler words go first."""
    text = re.sub(r"\s+", " ", nfc(prompt)).strip()
    if len(text) < limit:
        return text
    clauses: list[str] = []
    seen: set[str] = set()
    for clause in _clauses(text):
        slim = squash(_FILLER.sub("", clause)) or clause
        key = _clause_key(slim)
        if not key or key in seen:
            continue
        seen.add(key)
        clauses.append(slim)
    if not clauses:
        return text[:limit - 1].rsplit(" ", 1)[0]
    budget = limit - 1
    subject = clauses[0]
    if len(subject) > budget // 2:
        subject = subject[: budget // 2].rsplit(" ", 1)[0]
    styled = [i for i, c in enumerate(clauses[1:], 1)
              if _QUALITY_RE.search(fold(c)) or find_styles(fold(c))]
    keep = {0}
    used = len(subject)
    for group in (styled, [i for i in range(1, len(clauses)) if i not in styled]):
        for i in group:
            cost = len(clauses[i]) + 2
            if used + cost <= budget:
                keep.add(i)
                used += cost
    out = ", ".join(subject if i == 0 else clauses[i] for i in sorted(keep))
    out = re.sub(r"([.;:!?]),", r"\1", out)
    return out if len(out) < limit else out[: limit - 1].rsplit(" ", 1)[0]


def _subject_words(prompt: str) -> list[str]:
    first = _clauses(prompt)[:1]
    words = re.findall(r"[a-z0-9][a-z0-9'-]{2,}", fold(first[0])) if first else []
    return [w for w in words if w not in STOPWORDS][:4]


def compression_request(prompt: str, *, limit: int = COMPRESS_ABOVE) -> dict[str, Any]:
    schema = {"type": "object", "additionalProperties": False, "required": ["prompt"],
              "properties": {"prompt": {"type": "string", "maxLength": limit - 1}}}
    return {
        "messages": [
            {"role": "system", "content":
                f"Rewrite the image-generation prompt below in under {limit} characters. "
                "Keep the main subject first, keep every style term and quality term "
                "(lighting, detail, camera, medium); drop repetition and filler. Answer with "
                'JSON only: {"prompt": "..."}.'},
            {"role": "user", "content": prompt},
        ],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "compressed_prompt", "strict": True,
                                            "schema": schema}},
        "max_tokens": 1024,
        "temperature": 0,
    }


async def compress_prompt_llm(prompt: str, llm: Any, *, timeout_s: float = 20.0,
                              limit: int = COMPRESS_ABOVE) -> tuple[str, str | None, str]:
    """(compressed, llm_error, method): the LLM's compression when it is valid (JSON, under
    the limit, subject kept), else the deterministic one and the reason."""
    try:
        response = await call_llm(llm, compression_request(prompt, limit=limit),
                                  timeout_s=timeout_s)
        data = parse_json(response_text(response))
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise LLMError('LLM answer lacks a string "prompt"')
        text = squash(data["prompt"])
        if not text:
            raise LLMError("LLM returned an empty prompt")
        if len(text) >= limit:
            raise LLMError(f"LLM prompt is {len(text)} characters, not under {limit}")
        subject = _subject_words(prompt)
        kept = [w for w in subject if w in fold(text)]
        if subject and len(kept) * 2 < len(subject):
            raise LLMError(f"LLM prompt dropped the subject ({', '.join(subject)})")
        return text, None, "llm"
    except LLMError as exc:
        return compress_prompt(prompt, limit=limit), str(exc), "deterministic"


# --- refinement ----------------------------------------------------------------------------


def _split_terms(text: str) -> list[str]:
    return [t for t in (squash(p) for p in text.split(",")) if t]


def _merge_negative(*groups: list[str]) -> str:
    seen: set[str] = set()
    out: list[str] = []
    for group in groups:
        for term in group:
            key = fold(term)
            if key and key not in seen:
                seen.add(key)
                out.append(term)
    return ", ".join(out)


def _positive_and_negative(text: str) -> tuple[str, list[str]]:
    folded = fold(text)
    found = Extracted()
    find_negatives(folded, text, found, [])
    if not found.negative_spans:
        return text, []
    chars = list(text)
    for start, end in found.negative_spans:
        for i in range(start, end):
            chars[i] = " "
    return squash("".join(chars)) or text, found.negative_terms


def _refine(text: str, style: str | None, *, compressed: bool, method: str | None,
            llm_error: str | None, original: str) -> RefinedPrompt:
    positive, user_negative = _positive_and_negative(text)
    folded = fold(positive)
    chosen = style
    if chosen is None:
        mentions = find_styles(folded)
        chosen = mentions[0].value if mentions else None
    added: list[str] = []
    if chosen is not None:
        resolved = style_presets.resolve_style(chosen, subject=positive)
        terms = _split_terms(resolved.prompt)
        subject_key = fold(positive)
        extra = [t for t in terms if fold(t) not in subject_key and t != positive]
        added = extra
        negative = _merge_negative(user_negative, _split_terms(resolved.negative_prompt))
        style_name = resolved.preset_name or chosen
    else:
        _name, descriptors = _category(folded)
        added = [d for d in descriptors if d not in folded]
        negative = _merge_negative(user_negative, _split_terms(style_presets.GENERIC_NEGATIVE))
        style_name = None
    refined = ", ".join([positive, *added]) if added else positive
    if len(refined) >= COMPRESS_ABOVE:  # descriptors must not push it back over the limit
        refined = compress_prompt(refined)
    return RefinedPrompt(prompt=refined, negative_prompt=negative, original=original,
                         style=style_name, added_terms=added, compressed=compressed,
                         compression=method, llm_error=llm_error,
                         analysis=analyze_prompt(original))


def refine_prompt(prompt: Any, style: str | None = None) -> RefinedPrompt:
    """Deterministic refinement: negative terms moved to the negative prompt, quality and
    style descriptors added (a preset's template when `style` names one or the prompt
    mentions one), long prompts compressed without an LLM. `ValueError` for invalid input."""
    text = check_prompt(prompt)
    compressed = len(text) > COMPRESS_ABOVE
    body = compress_prompt(text) if compressed else text
    return _refine(body, style, compressed=compressed,
                   method="deterministic" if compressed else None, llm_error=None,
                   original=text)


async def arefine_prompt(prompt: Any, style: str | None = None, *, llm: Any = None,
                         timeout_s: float = 20.0) -> RefinedPrompt:
    """`refine_prompt`, with long prompts compressed by the LLM when one is given (falling
    back to the deterministic compressor, reason in ``llm_error``)."""
    text = check_prompt(prompt)
    if len(text) <= COMPRESS_ABOVE or llm is None:
        return refine_prompt(text, style)
    body, error, method = await compress_prompt_llm(text, llm, timeout_s=timeout_s)
    return _refine(body, style, compressed=True, method=method, llm_error=error, original=text)



def prompt_changes(original: str, refined: str) -> list[dict[str, str]]:
    """What refinement changed, word by word: ``{"op": added|removed|replaced, "before",
    "after"}`` for each differing run of words (punctuation kept with its word)."""
    import difflib

    before, after = original.split(), refined.split()
    ops = {"insert": "added", "delete": "removed", "replace": "replaced"}
    return [{"op": ops[tag], "before": " ".join(before[i1:i2]), "after": " ".join(after[j1:j2])}
            for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False)
            .get_opcodes() if tag != "equal"]
