"""Turn decided steps into a `Plan`: parameters on the right steps, clean subject prompts, and
where each step's images come from (an upload, the previous step, or the session's last image).

Pure Python; used by every cascade stage (rules, embedding, LLM) so plans look the same
whichever stage decided.
"""

from __future__ import annotations

import re
from typing import Any

from router.params import style_value
from router.rules import DraftStep, RuleResult, Span
from router.schemas import (
    PROMPT_INTENTS,
    InputRef,
    MissingInput,
    Plan,
    SessionContext,
    Step,
)
from router.text import blank_spans, squash

_LEAD_FILLER = re.compile(
    r"^(?:[\s,:;.!?-]|\b(?:please|pls|plz|kindly|can\s+you|could\s+you|would\s+you|will\s+you|"
    r"can\s+i\s+(?:get|have)|i\s+want\s+you\s+to|i'd\s+like\s+you\s+to|for\s+me|for\s+us|me|us|"
    r"moi|nous|-moi|-nous|also|just|now|then|and|et|puis|ensuite|quickly|maybe|vite|"
    r"(?:an?|one|the|some|une?|des)\s+(?:new\s+)?(?:image|picture|pic|illustration|"
    r"visual|visuel|render|rendering)s?\s+(?:of|showing|with|de|d'|du|des|avec|montrant)|"
    r"(?:image|picture|pic|illustration|render|rendering)s?\s+(?:of|showing|de|d'|du|des)|"
    r"of|de|d'|du|des|showing|with|depicting|featuring|montrant|avec|pour\s+moi|stp|svp|"
    r"s'il\s+(?:te|vous)\s+plait|peux-tu|pourrais-tu|tu\s+peux|pouvez-vous|an?\s+image|"
    r"how\s+about|what\s+about|et\s+si|it|this|that|me\s+an?\s+image\s+of)\b)+",
    re.IGNORECASE)
_TRAIL_FILLER = re.compile(
    r"(?:[\s,:;.!?-]|\b(?:please|pls|plz|thanks|thank\s+you|thx|for\s+me|stp|svp|s'il\s+te\s+"
    r"plait|s'il\s+vous\s+plait|merci|and|then|et|puis|ensuite|but|mais|also|now|too|aussi|"
    r"maintenant|ok|okay|for\s+us|pour\s+moi|and\s+then|with|avec|in|en|as|of|de|after|before|"
    r"apres|avant|it|them|-la|-le|la|le|les|so|a|an|the|une?|des|de|d'|du|some|any)\b)+$",
    re.IGNORECASE)
_EDIT_LEAD = re.compile(
    r"^(?:[\s,:;.!?-]|\b(?:please|pls|kindly|can\s+you|could\s+you|would\s+you|will\s+you|"
    r"also|just|now|then|and|et|puis|ensuite|stp|svp|peux-tu|pourrais-tu|tu\s+peux|pouvez-vous|"
    r"i\s+want\s+you\s+to|i'd\s+like\s+you\s+to|i\s+want\s+to|let's)\b)+", re.IGNORECASE)

_UPLOAD_ORDINAL = re.compile(
    r"\b(?:the\s+|la\s+|le\s+)?(?P<o>first|1st|second|2nd|third|3rd|last|premiere?|deuxieme|"
    r"seconde?|troisieme|derniere?)\s*(?:one|image|photo|picture|pic|upload|file)?\b")
_ORD_INDEX = {"first": 0, "1st": 0, "premier": 0, "premiere": 0, "second": 1, "2nd": 1,
              "deuxieme": 1, "seconde": 1, "third": 2, "3rd": 2, "troisieme": 2,
              "last": -1, "dernier": -1, "derniere": -1}

_CLARIFY = {
    "en": {
        "image": "Please attach the image you want me to {what}.",
        "source_face": "Please attach a photo of the face you want to use.",
        "target": "Please attach the photo that should receive the face (or both photos).",
    },
    "fr": {
        "image": "Merci de joindre l'image à {what}.",
        "source_face": "Merci de joindre une photo du visage à utiliser.",
        "target": "Merci de joindre la photo qui doit recevoir le visage (ou les deux photos).",
    },
}
_WHAT = {
    "en": {"upscale": "upscale", "background_removal": "remove the background from",
           "style_transfer": "restyle", "image_edit": "edit", "face_swap": "use"},
    "fr": {"upscale": "agrandir", "background_removal": "détourer",
           "style_transfer": "transformer", "image_edit": "modifier", "face_swap": "utiliser"},
}


def clean_prompt(result: RuleResult, region: Span, *, drop: list[Span], edit: bool) -> str:
    """The text of `region` without the spans in `drop` and without instruction filler."""
    start, end = region
    if end <= start:
        return ""
    folded = blank_spans(result.folded, drop)[start:end]
    original = blank_spans(result.original, drop)[start:end]
    lead = (_EDIT_LEAD if edit else _LEAD_FILLER).match(folded)
    cut_start = lead.end() if lead else 0
    trail = _TRAIL_FILLER.search(folded, cut_start)
    cut_end = trail.start() if trail else len(folded)
    return squash(original[cut_start:cut_end])


def _step_params(result: RuleResult, step: DraftStep, steps: list[DraftStep]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    ctx = result.context
    intent = step.intent
    extracted = result.params
    if intent in PROMPT_INTENTS:
        drop = extracted.claimed() + [c.span for other in steps if other is not step
                                      for c in other.cues]
        drop += [c.span for c in result.cues if c.negated]
        if intent == "image_generation":
            drop += [c.span for c in step.cues if not c.weak]
            drop += [m.span for m in result.styles if m.explicit]
            prompt = clean_prompt(result, step.region, drop=drop, edit=False)
            if any(c.name == "again" for c in step.cues) or (not prompt and ctx.last_prompt
                                                             and step.stage != "rules"):
                prompt = prompt if len(prompt.split()) > 2 else (ctx.last_prompt or prompt)
                if ctx.last_style and not step.style:
                    params["style"] = ctx.last_style
            if prompt:
                params["prompt"] = prompt
        elif intent == "image_edit":
            prompt = clean_prompt(result, step.region, drop=drop, edit=True)
            if prompt:
                params["prompt"] = prompt
        if step.style:
            params["style"] = step.style
        elif intent == "style_transfer":
            style = _style_from_text(result, step)
            if style:
                params["style"] = style
        if extracted.negative_terms:
            params["negative_prompt"] = ", ".join(extracted.negative_terms)
        if extracted.seed is not None:
            params["seed"] = extracted.seed
    return params


def _style_from_text(result: RuleResult, step: DraftStep) -> str | None:
    inside = [m for m in result.styles if step.region[0] <= m.span[0] < step.region[1]]
    if inside:
        return inside[0].value
    text = result.folded[step.region[0]:step.region[1]]
    noun = _ART_FORM.search(text)
    if noun:
        return style_value(noun.group(0))
    if re.search(r"toon", text):
        return "cartoon"
    if re.search(r"anime", text):
        return "anime"
    return None


_ART_FORM = re.compile(r"\b(?:pencil\s+)?(?:sketch|drawing|cartoon|caricature|painting|"
                       r"illustration|mosaic|statue|sculpture|comic|dessin|peinture|bd)\b")


def _first(steps: list[Step], intents: tuple[str, ...]) -> Step | None:
    return next((s for s in steps if s.intent in intents), None)


def _assign_global_params(result: RuleResult, steps: list[Step]) -> None:
    ex = result.params
    gen = _first(steps, ("image_generation",)) or _first(steps, ("image_edit", "style_transfer"))
    if ex.width is not None and ex.height is not None:
        target = gen or _first(steps, ("upscale",))
        if target is not None:
            target.params["width"], target.params["height"] = ex.width, ex.height
            if ex.aspect:
                target.params["aspect"] = ex.aspect
    if ex.n is not None:
        target = gen or _first(steps, ("image_generation", "image_edit", "style_transfer"))
        if target is not None:
            target.params["n"] = ex.n
    if ex.scale is not None:
        for step in steps:
            if step.intent == "upscale":
                step.params["scale"] = ex.scale
    for step in steps:
        if step.intent == "face_swap":
            if ex.target_face_index is not None:
                step.params["target_face_index"] = ex.target_face_index
            if ex.all_faces:
                step.params["all_faces"] = True


def _upload_index(text: str, images: int) -> int | None:
    if images < 2:
        return None
    match = _UPLOAD_ORDINAL.search(text)
    if not match:
        return None
    index = _ORD_INDEX.get(match.group("o"))
    if index is None:
        return None
    index = images - 1 if index < 0 else index
    return index if index < images else None


def resolve_inputs(steps: list[Step], *, images: int, context: SessionContext,
                   texts: list[str]) -> list[MissingInput]:
    """Fill each step's `inputs` and `missing`; return what no one provides."""
    missing: list[MissingInput] = []
    session = context.last_image_id
    uploads_used: set[int] = set()

    def session_ref(role: str) -> InputRef:
        return InputRef(role=role, source="session", image_id=session)

    for i, step in enumerate(steps):
        prev = next((j for j in range(i - 1, -1, -1) if steps[j].intent != "general"), None)
        inputs: list[InputRef] = []
        lacking: list[str] = []
        if step.intent == "general":
            pass
        elif step.intent == "image_generation":
            pass
        elif step.intent == "face_swap":
            free = [k for k in range(images) if k not in uploads_used]
            if prev is not None:
                if free:
                    inputs.append(InputRef(role="source_face", source="upload", index=free[0]))
                    uploads_used.add(free[0])
                elif session:
                    inputs.append(session_ref("source_face"))
                else:
                    lacking.append("source_face")
                inputs.append(InputRef(role="target", source="previous_step", index=prev))
            elif len(free) >= 2:
                inputs.append(InputRef(role="source_face", source="upload", index=free[0]))
                inputs.append(InputRef(role="target", source="upload", index=free[1]))
                uploads_used.update(free[:2])
            elif len(free) == 1:
                inputs.append(InputRef(role="source_face", source="upload", index=free[0]))
                uploads_used.add(free[0])
                if session:
                    inputs.append(session_ref("target"))
                else:
                    lacking.append("target")
            else:
                lacking.append("source_face")
                if session:
                    inputs.append(session_ref("target"))
                else:
                    lacking.append("target")
        else:
            ordinal = _upload_index(texts[i], images)
            if step.intent == "image_edit" and prev is None and images >= 2 and ordinal is None:
                # composites read every upload: the first is the image edited, the others
                # are references to take content from
                inputs = [InputRef(role="image" if k == 0 else "reference", source="upload",
                                   index=k) for k in range(images)]
                uploads_used.update(range(images))
            elif ordinal is not None:
                inputs.append(InputRef(role="image", source="upload", index=ordinal))
                uploads_used.add(ordinal)
            elif prev is not None:
                inputs.append(InputRef(role="image", source="previous_step", index=prev))
            elif images:
                free = [k for k in range(images) if k not in uploads_used] or [0]
                inputs.append(InputRef(role="image", source="upload", index=free[0]))
                uploads_used.add(free[0])
            elif session:
                inputs.append(session_ref("image"))
            else:
                lacking.append("image")
        step.inputs = inputs
        step.missing = lacking
        missing += [MissingInput(step=i, role=role, intent=step.intent) for role in lacking]
    return missing


def clarification(missing: list[MissingInput], language: str) -> str | None:
    if not missing:
        return None
    texts = _CLARIFY.get(language, _CLARIFY["en"])
    first = missing[0]
    what = _WHAT.get(language, _WHAT["en"]).get(first.intent, "use")
    return texts.get(first.role, texts["image"]).format(what=what)


def build_plan(result: RuleResult, steps: list[DraftStep], *, stage: str, confidence: float,
               timings: dict[str, float], llm_error: str | None = None,
               warnings: list[str] | None = None) -> Plan:
    built: list[Step] = []
    texts: list[str] = []
    for draft in steps:
        params = _step_params(result, draft, steps)
        built.append(Step(intent=draft.intent, params=params,
                          text=squash(result.original[draft.region[0]:draft.region[1]])))
        texts.append(result.folded[draft.region[0]:draft.region[1]])
    _assign_global_params(result, built)
    missing = resolve_inputs(built, images=result.images, context=result.context, texts=texts)
    return Plan(steps=built, confidence=round(max(0.0, min(1.0, confidence)), 3), stage=stage,
                timings=timings, language=result.language, missing_inputs=missing,
                clarification=clarification(missing, result.language), llm_error=llm_error,
                warnings=list(warnings or []))


def finish_plan(plan: Plan, *, images: int, context: SessionContext, language: str) -> Plan:
    """Inputs and clarification for steps that came from elsewhere (the LLM)."""
    steps = [Step(intent=s.intent, params=dict(s.params), text=s.text) for s in plan.steps]
    missing = resolve_inputs(steps, images=images, context=context,
                             texts=[s.text.lower() for s in steps])
    return plan.model_copy(update={"steps": steps, "missing_inputs": missing,
                                   "clarification": clarification(missing, language)})
