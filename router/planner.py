"""Turn decided steps into a `Plan`: parameters on the right steps, clean subject prompts, and
where each step's images come from (an upload, the previous step, or the session's last image).

Pure Python; used by every cascade stage (rules, embedding, LLM) so plans look the same
whichever stage decided.
"""

from __future__ import annotations

import re
from typing import Any

from router.params import style_value
from router.replies import generate_new
from router.rules import RETRO, DraftStep, RuleResult, Span
from router.schemas import (
    PROMPT_INTENTS,
    Alternative,
    InputRef,
    MissingInput,
    Plan,
    SessionContext,
    Step,
)
from router.text import blank_spans, fold, squash, squash_keeping

# Words around the subject that are conversation, not content: removed from the start of a
# generation prompt (repeatedly: "hey! can you please draw me a fox" -> "a fox").
_POLITE = (r"please|pls|plz|kindly|stp|svp|s'il\s+(?:te|vous)\s+plait|"
           r"(?:would|do)\s+you\s+mind(?:\s+\w+ing\b)?|(?:can|could|would|will)\s+(?:you|u)"
           r"(?:\s+please)?|"
           r"(?:would|will)\s+it\s+be\s+possible\s+to|is\s+it\s+possible\s+to|"
           r"i\s+was\s+wondering\s+if\s+you\s+could|i\s+(?:want|need|would\s+like|'d\s+like)\s+"
           r"you\s+to|peux-tu|pourrais-tu|pouvez-vous|pourriez-vous|tu\s+(?:peux|pourrais)|"
           r"vous\s+(?:pouvez|pourriez)|est-ce\s+que\s+(?:tu\s+(?:peux|pourrais)|vous\s+"
           r"(?:pouvez|pourriez))|je\s+voudrais\s+que\s+tu|j'aimerais\s+que\s+tu")
_GREET = (r"hi|hello|hey|hiya|yo|ok(?:ay)?|alright|right|so|well|bonjour|salut|coucou|bon|alors|"
          r"d'accord|(?:great|cool|nice|perfect|awesome|thanks|thank\s+you|merci|parfait|super|"
          r"genial|top)(?=\s*[,!.:;])")
_GEN_VERB = (r"generate|create|make|draw|paint|render|design|imagine|sketch|picture|"
             r"visuali[sz]e|envision|produce|illustrate|depict|do|craft|whip\s+up|"
             r"come\s+up\s+with|dream\s+up|mock\s+up|genere[rz]?|cree[rz]?|dessine[rz]?|peins|"
             r"peindre|imagine[rz]?|fais|faire|realise[rz]?|produis|produire|illustre[rz]?|"
             r"represente[rz]?")
_LEAD_FILLER = re.compile(
    r"^(?:[^\w\"'(\[]|_|\b(?:" + _POLITE + "|" + _GREET + r"|"
    r"(?:can|could|may)\s+(?:i|we)\s+(?:please\s+)?(?:get|have|see)|"
    r"i\s+(?:really\s+|would\s+|'d\s+)?(?:want|need|like|love|wish)(?:\s+to\s+(?:see|have|get))?|"
    r"i'd\s+(?:really\s+)?(?:like|love)(?:\s+to\s+(?:see|have|get))?|"
    r"i\s*'?\s*m\s+(?:looking\s+for|searching\s+for|after|thinking\s+of|imagining|picturing|"
    r"dreaming\s+of)|i\s+am\s+(?:looking\s+for|searching\s+for|after|thinking\s+of|"
    r"imagining|picturing)|"
    r"we\s+(?:need|want|would\s+like|'d\s+like)|let'?s\s+(?:see|have|get|make|create|do|try|"
    r"imagine|draw)|let\s+me\s+(?:see|have|get)|"
    r"(?:show|give|make|get|send|draw|create|paint|render|generate|design|bring|find|sketch)"
    r"\s+(?:me|us)|"
    # slang: "gimme a pic of …", "lemme see …", "i wanna see …", "hook me up with …"
    r"gim+i?e|giv\s+me|lem+e(?:\s+(?:see|have|get))?|(?:i\s+)?wan+a(?:\s+(?:see|have|get))?|"
    r"(?:i\s+)?gotta\s+(?:see|have|get)|hook\s+(?:me|us)\s+up\s+(?:with|w/)|how\s+'?bout|"
    r"whip\s+(?:me|us)\s+up|like|kinda|sorta|literally|"
    r"(?:can|could|would|will|cud|cn|kan)\s+(?:u|ya|you|yu)|u|ya|pl[sz]+|pleas+e+|"
    r"(?:" + _GEN_VERB + r")(?=\s+(?:me\s+|us\s+|moi\s+)?(?:an?|the|some|this|my|one|two|three|"
    r"four|five|\d+|another|une?|des|le|la|les|l'|mon|ma|deux|trois|quatre|cinq)\b|\s*:)|"
    r"(?:picture|imagine|envision|imagine|visuali[sz]e)\s+(?:this|that|ceci|cela)|"
    r"(?:" + _GEN_VERB + r")[\s-]*(?:moi|nous)|"
    r"je\s+(?:voudrais|veux|souhaite|souhaiterais|aimerais)(?:\s+(?:bien|voir|avoir))*|"
    r"j'aimerais(?:\s+(?:bien|voir|avoir))*|j'ai\s+besoin\s+(?:d'|de)|il\s+me\s+(?:faut|"
    r"faudrait)|(?:montre|donne)[\s-]*(?:moi|nous)|"
    r"me\s+(?=(?:dessiner|creer|generer|faire|montrer|peindre|imaginer|realiser)\b)|"
    r"for\s+me|for\s+us|me|us|moi|nous|-moi|-nous|also|just|now|then|and|et|puis|ensuite|"
    r"quickly|maybe|vite|je\s+cherche|on\s+cherche|"
    r"maintenant|(?:something\s+|quelque\s+chose\s+)?(?:totally|completely|entirely|tout\s+a\s+"
    r"fait|completement)\s+(?:different|differente?)|"
    r"(?:an?|une?)\s+(?:new|nouvelle?|nouvel)\s+(?:one|image|picture|photo|version|une)|"
    r"(?:an?|one|the|some|sum|une?|des)\s+(?:new\s+|quick\s+|nouvelle\s+)?(?:image|picture|pic|"
    r"illustration|visual|visuel|render|rendering|version|rendition|art|artwork)s?\s+"
    r"(?:of|showing|with|that\s+shows?|"
    r"which\s+shows?|depicting|featuring|where|de|d'|du|des|avec|montrant|qui\s+montre)|"
    r"(?:image|picture|pic|illustration|render|rendering)s?\s+(?:of|showing|de|d'|du|des)|"
    r"(?:an?|the|une?)(?=\s+(?:of|de|d')\b)|"  # "a [pixar version] of X": the style left
    r"of|de|d'|du|des|showing|with|depicting|featuring|montrant|avec|pour\s+moi|"
    r"how\s+about|what\s+about|et\s+si|it|this|that)\b)+",
    re.IGNORECASE)
_TRAIL_FILLER = re.compile(
    r"(?:[^\w\"')\]]|_|\b(?:please|pls|plz|pleas+e+|pl[sz]{2,}|lol|lmao|rn|thnx|thanx|kthx|"
    r"thanks|thank\s+you|thx|ty|for\s+me|stp|svp|s'il\s+te\s+"
    r"plait|s'il\s+vous\s+plait|merci|and|then|et|puis|ensuite|but|mais|also|now|too|aussi|"
    r"maintenant|ok|okay|for\s+us|pour\s+moi|and\s+then|with|avec|in|en|as|of|de|after|before|"
    r"apres|avant|it|them|-la|-le|la|le|les|so|a|an|the|une?|des|de|d'|du|some|any|instead|"
    r"plutot|a\s+la\s+place|if\s+(?:you\s+)?(?:can|could|possible)|si\s+(?:possible|tu\s+peux|"
    r"vous\s+pouvez)|on|at|to|for|from|by|about|right\s+now|asap)\b)+$",
    re.IGNORECASE)
_EDIT_LEAD = re.compile(
    r"^(?:[^\w\"'(\[]|_|\b(?:" + _POLITE + "|" + _GREET + r"|also|just|now|then|and|et|puis|"
    r"ensuite|maintenant|i\s+want\s+to|let's|i\s+need\s+you\s+to)\b)+", re.IGNORECASE)

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
           "style_transfer": "restyle", "image_edit": "edit", "face_swap": "use",
           "image_analysis": "describe"},
    "fr": {"upscale": "agrandir", "background_removal": "détourer",
           "style_transfer": "transformer", "image_edit": "modifier", "face_swap": "utiliser",
           "image_analysis": "décrire"},
}


def clean_prompt(result: RuleResult, region: Span, *, drop: list[Span], edit: bool) -> str:
    """The text of `region` without the spans in `drop` and without conversational filler.
    Words a parameter keeps (the "logo" of "2 logos") are written back singular; quoted text
    comes out verbatim."""
    start, end = region
    if end <= start:
        return ""
    folded = list(blank_spans(result.folded, drop))
    original = list(blank_spans(result.original, drop))
    for (s, e), text in result.params.keep:
        if start <= s < end and len(text) <= e - s:
            folded[s:e] = list(fold(text).ljust(e - s))
            original[s:e] = list(text.ljust(e - s))
    for s, e in result.quotes:  # never cut into a quoted passage
        folded[s:e] = list(result.folded[s:e])
        original[s:e] = list(result.original[s:e])
    if result.language == "en":
        _fix_articles(original, folded, [d for d in drop if start <= d[0] < end])
    folded_text = "".join(folded[start:end])
    original_text = "".join(original[start:end])
    lead = (_EDIT_LEAD if edit else _LEAD_FILLER).match(folded_text)
    cut_start = lead.end() if lead else 0
    trail = _TRAIL_FILLER.search(folded_text, cut_start)
    cut_end = trail.start() if trail else len(folded_text)
    keep = [(s - start - cut_start, e - start - cut_start) for s, e in result.quotes
            if start + cut_start <= s and e <= start + cut_end]
    return squash_keeping(original_text[cut_start:cut_end], keep)


_ARTICLE_BEFORE = re.compile(r"(?:^|(?<=\s))(an?|An?)\s+$")


def _fix_articles(original: list[str], folded: list[str], dropped: list[Span]) -> None:
    """'render an isometric-style tiny office' -> 'a tiny office': an English article left in
    front of a removed phrase agrees with the word that now follows it (in place)."""
    text = "".join(original)
    for s, e in sorted(dropped):
        article = _ARTICLE_BEFORE.search(text, max(0, s - 4), s)
        nxt = re.match(r"\s*([A-Za-z])", text[e:])
        if not article or not nxt or e <= s:
            continue
        word = article.group(1)
        want = "an" if nxt.group(1).lower() in "aeiou" else "a"
        if word.lower() == want:
            continue
        a = article.start(1)
        new = (word[0] + "n " if want == "an" else word[0] + "  ")
        original[a:a + 3] = list(new)
        folded[a:a + 3] = list(new.lower())
        text = "".join(original)


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
            drop += [span for c in step.cues if not c.weak
                     for span in _verb_spans(result.folded, c)]
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
            follow = [c for c in step.cues if c.name.startswith("follow-up")]
            drop += [c.span for c in follow]
            prompt = clean_prompt(result, step.region, drop=drop, edit=True)
            if follow and ctx.last_prompt and len(follow) == len(step.cues) and not any(
                    c.name == "follow-up-same" for c in follow):
                # "another one like this but in winter": the change on the last image's
                # subject (img2img repaints the whole image from the prompt)
                prompt = f"{ctx.last_prompt}, {prompt}" if prompt else ctx.last_prompt
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


_WANT_VERB = re.compile(r"^.*?\b(?:like|love|want|need|for|get|have|see|make|voudrais|veux|"
                        r"souhaite|souhaiterais|aimerais|besoin\s+d'|faut|moi)\s+"
                        r"(?:to\s+(?:see|have|get)\s+)?")


_RESTYLE_VERB = re.compile(
    r"(?:(?:please|pls|plz|just|now|then|and|can\s+(?:you|u)|could\s+(?:you|u))\s+)*"
    r"(?:make|making|turn|convert|transform|change|redo|redraw|repaint|reimagine|recreate|"
    r"restyle|stylize|stylise|switch|draw|paint|render|show|do|put|picture|imagine|give|add|"
    r"apply|use|transpose|create|generate|transforme\w*|converti\w*|fais|faites|rends|rendre|"
    r"mets|mettre|passe[rz]?|dessine\w*|repeins|donne\w*|applique\w*)\w*"
    r"(?:[\s-]+(?:me|us|moi|nous))?\b")
_RESTYLE_LINK = re.compile(r"\b(?:into|to|as|like|en|comme)\b")
_ART_AFTER = re.compile(r"\s+(?:painting|drawing|sketch|illustration|character|version|"
                        r"artwork|art|picture|image|peinture|dessin|personnage)\b")


def _restyle_spans(folded: str, cue) -> list[Span]:
    """A restyle phrase read as a generation in that style (no image to restyle): "turn a
    fox into a watercolor painting" -> the verb and "into a watercolor painting" go, the
    subject ("a fox") stays; "make me a pixar style character of X" -> "make me" goes."""
    start, end = cue.span
    verb = _RESTYLE_VERB.match(folded, start, end)
    if not verb:
        return [cue.span]
    spans = [(start, verb.end())]
    link = _RESTYLE_LINK.search(folded, verb.end(), end)
    if link:
        art = _ART_AFTER.match(folded, end)
        spans.append((link.start(), art.end() if art else end))
    return spans


def _verb_spans(folded: str, cue) -> list[Span]:
    if cue.intent == "style_transfer":
        return _restyle_spans(folded, cue)
    return [_verb_part(folded, cue)]


def _verb_part(folded: str, cue) -> Span:
    """What of a generation cue the prompt leaves out: "I'd like a poster" names its subject
    ("a poster" stays); other cues are only the verb."""
    if cue.name == "do-a":  # "do a quick sketch of X": the verb goes
        return (cue.span[0], cue.span[0] + 2)
    if cue.name == "style-art":  # "a watercolor painting of X": all of it is the image
        return (cue.span[0], cue.span[0])
    if cue.name != "want-image":
        return cue.span
    match = _WANT_VERB.match(folded, cue.span[0], cue.span[1])
    return (cue.span[0], match.end()) if match else cue.span


def _style_from_text(result: RuleResult, step: DraftStep) -> str | None:
    inside = [m for m in result.styles if step.region[0] <= m.span[0] < step.region[1]]
    if inside:
        return inside[0].value
    text = result.folded[step.region[0]:step.region[1]]
    noun = _ART_FORM.search(text)
    if noun:
        return style_value(noun.group(0))
    retro = _RETRO.search(text)  # "rends ma photo rétro": the old-photograph preset
    if retro:
        return style_value(retro.group(0))
    if re.search(r"\b(?:film|analog)\b", text):  # "a grainy film effect on this picture"
        return style_value("film")
    if re.search(r"toon", text):
        return "cartoon"
    if re.search(r"anime", text):
        return "anime"
    return None


_RETRO = re.compile(RETRO)
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
                warnings=list(warnings or []),
                alternatives=_alternatives(steps, built, result.language))


def _alternatives(drafts: list[DraftStep], built: list[Step], language: str
                  ) -> list[Alternative]:
    """A follow-up read as an edit of the last image ("the same dog but wearing a scarf")
    can also mean a new image: the reply offers that reading."""
    for draft, step in zip(drafts, built, strict=True):
        if step.intent == "image_edit" and step.params.get("prompt") and any(
                c.name.startswith("follow-up") for c in draft.cues):
            label, message = generate_new(step.params["prompt"], language)
            return [Alternative(id="generate_new", label=label, message=message)]
    return []


def finish_plan(plan: Plan, *, images: int, context: SessionContext, language: str) -> Plan:
    """Inputs and clarification for steps that came from elsewhere (the LLM)."""
    steps = [Step(intent=s.intent, params=dict(s.params), text=s.text) for s in plan.steps]
    missing = resolve_inputs(steps, images=images, context=context,
                             texts=[s.text.lower() for s in steps])
    return plan.model_copy(update={"steps": steps, "missing_inputs": missing,
                                   "clarification": clarification(missing, language)})
