"""Stage 1 of the cascade: rules. Fast (regular expressions over the folded text), always
available, English and French.

How a message becomes steps:

0. *Typos*: small misspellings of the key operation words ("upsacle x4", "remov bg") are
   corrected first, where the rest of the message fits the operation (router/typos.py).
1. *Cues*: phrases that name an operation ("remove the background", "upscale", "swap faces",
   "make it look like a watercolor", "génère", "détoure"…). Patterns run in priority order
   (face swap, background removal, upscale, style, edit, generation); a matched span is
   claimed, so "remove the background" is never also read as an object-removal edit.
2. *Negation*: a cue preceded in its clause by "don't", "no need to", "without", "ne … pas",
   "pas besoin de", "sans"… is dropped ("don't remove the background, just upscale");
   "keep the background" vetoes background removal.
3. *Steps*: remaining cues in message order; consecutive cues of one intent merge; a style
   mention inside a generation becomes its `style` parameter; "X after Y-ing" / "before X-ing,
   Y" / "but first" reorder.
   Questions about the service itself ("is face swapping allowed on …?", "can you remove
   backgrounds from PDFs?") are general, not the operation they name.
4. *Confidence*: from the weakest cue used; a sequential clause ("…, then <something>") no cue
   explains, or only weak cues, leave the rules unsure, and the embedding stage looks again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from router.params import STYLE_TERMS_RE, Extracted, StyleMention, extract, find_styles
from router.schemas import SessionContext
from router.text import (
    STOPWORDS,
    blank_spans,
    detect_language,
    fold,
    mask_spans,
    nfc,
    quoted_spans,
)
from router.typos import apply_edits, find_typos

Span = tuple[int, int]
STYLE = rf"(?:{STYLE_TERMS_RE})(?![\w-])"
# Art-form nouns that name a style only after "into / as / like a" ("turn it into a sketch").
STYLE_NOUN = (r"(?:sketch|drawing|painting|cartoon|caricature|illustration|mosaic|statue|"
              r"sculpture|comic|cartoon\s+character|dessin|peinture|caricature|bd)(?![\w-])")

# French restyles: what is restyled ("ma photo", "cette image") and the effect named.
_FR_IMAGE = (r"(?:ma|mon|mes|cette|cet|ce|la|le|l'|les|ces|notre|nos|son|sa|ton|ta)\s*"
             r"(?:[\w-]+\s+)?(?:photo|photos|image|images|portrait|selfie|cliche|photographie|"
             r"tof|dessin|visage)\b")
_FR_EFFECT = (r"(?:une?|des|du|le|la|l'|ce|cet|cette)\s*(?:(?:petit|petite|leger|legere|vrai|"
              r"vraie|joli|jolie|beau|bel|belle)\s+)?(?:effet|style|look|aspect|rendu|filtre|"
              r"ambiance|touche|cote|allure|patine|grain)\b")
# An old photograph's look (the vintage-photo preset), named only to restyle an image.
RETRO = (r"(?:vieille\s+photo|vieilles\s+photos|photo\s+ancienne|ancienne\s+photo|vieux\s+film|"
         r"photo\s+(?:vintage|retro|argentique|jaunie)|retro|vintage|sepia|argentique|polaroid|"
         r"old(?:-timey|\s+timey)?\s+(?:photo|photograph|film)|old-school\s+photo)(?![\w-])")

_EN_IMAGE = (r"(?:my|this|that|the|her|his|our|their|your)\s+(?:[\w-]+\s+)?(?:photo|image|picture|"
             r"pic|portrait|selfie|shot|photograph)s?\b")
# "an old-timey film look", "a grainy film effect", "a soft watercolor finish"
_EN_STYLED = (r"(?:[\w-]+\s+){0,2}?(?:" + STYLE + "|" + RETRO + r"|film|analog)\s+(?:[\w-]+\s+)?"
              r"(?:look|effect|filter|vibe|aesthetic|finish|treatment|feel)\b")
# Art-form nouns after a style word: "a watercolor *painting* of", "a pencil *sketch* of".
ART_NOUN = (r"(?:paintings?|drawings?|sketch(?:es)?|illustrations?|portraits?|pictures?|"
            r"images?|photos?|photographs?|prints?|renders?|renderings?|art|artworks?|pieces?|"
            r"stud(?:y|ies)|posters?|versions?|characters?|scenes?|peintures?|dessins?|croquis|"
            r"esquisses?|tableaux?|versions?|personnages?|scenes?|covers?|panels?|strips?)"
            r"(?![\w-])")
# What "of" introduces when the image exists already ("a sketch of this photo", "of me").
_NOT_NEW_SUBJECT = (r"(?:it|this|that|these|those|me|us|him|her|them|myself|my|our|ce|cet|cette|"
                    r"ces|ma|mon|mes|moi|nous|the\s+(?:image|photo|picture|pic|selfie|upload)|"
                    r"la\s+photo|l'image)\b")

STRONG, SURE, GOOD, FAIR, WEAK = 0.95, 0.9, 0.85, 0.8, 0.6
# The rules decide alone at or above this confidence.
RULES_THRESHOLD = 0.8

_OBJ = (r"(?:it|this|that|them|him|her|me|us|myself|everything|"
        r"(?:the|this|that|my|our|his|her|their|your)\s+(?:\w+\s+)?(?:image|photo|picture|pic|"
        r"selfie|portrait|shot|result|scene|drawing|one|file|output|version|render))")


def required_literals(regex: re.Pattern[str]) -> frozenset[str] | None:
    """Strings one of which every match of `regex` contains, or None when this cannot tell
    (then the regex is always run). Read from the regex's parse tree: a run of literal
    characters in a sequence; every branch of an alternation (each must have its own); a
    repeat of at least one; a character set of plain characters. Lookarounds, classes and
    optional parts require nothing. Of a sequence's candidates the one with the longest
    shortest string is kept (the rarest in text)."""
    if regex.flags & re.IGNORECASE:
        return None
    try:
        from re import _constants as c
        from re import _parser

        tree = _parser.parse(regex.pattern, regex.flags)
    except Exception:  # noqa: BLE001 - the stdlib's private parser moved: no prefilter
        return None

    def better(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
        if not b:
            return a
        if not a:
            return b
        key = (min(map(len, b)), -len(b))
        return b if key > (min(map(len, a)), -len(a)) else a

    def of_sequence(items) -> frozenset[str] | None:
        best, run = None, []
        for op, av in items:
            if op is c.LITERAL:
                run.append(chr(av))
                continue
            if run:
                best, run = better(best, frozenset(["".join(run)])), []
            if op is c.SUBPATTERN:
                _, add_flags, _, sub = av
                if not add_flags & c.SRE_FLAG_IGNORECASE:
                    best = better(best, of_sequence(sub))
            elif op is c.BRANCH:
                branches = [of_sequence(b) for b in av[1]]
                if all(branches):
                    best = better(best, frozenset().union(*branches))
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
                low, _, sub = av
                if low >= 1:
                    best = better(best, of_sequence(sub))
            elif op is c.IN and av and all(o is c.LITERAL for o, _ in av):
                best = better(best, frozenset(chr(v) for _, v in av))
        if run:
            best = better(best, frozenset(["".join(run)]))
        return best

    return of_sequence(tree)


@dataclass(frozen=True)
class Pattern:
    intent: str
    regex: re.Pattern[str]
    weight: float
    name: str
    weak: bool = False  # dropped next to a generation cue, or when no image exists
    veto: bool = False  # "keep the background": a negated cue by construction
    # strings one of which every match contains (`required_literals`): a message with none
    # of them is not searched (`find_cues`)
    needs: frozenset[str] | None = field(default=None, compare=False)


def _p(intent: str, name: str, regex: str, weight: float, **kw) -> Pattern:
    compiled = re.compile(regex)
    return Pattern(intent, compiled, weight, name, needs=required_literals(compiled), **kw)


B, U, F, S, E, G, Q = ("background_removal", "upscale", "face_swap", "style_transfer",
                       "image_edit", "image_generation", "general")
A = "image_analysis"
_PIC = r"(?:image|photo|picture|pic|shot|selfie|photograph|upload|one)s?"
_THIS = r"(?:this|that|the|my|these|those|our|your)"
# "what is in this picture?", "describe it": a description only (no question for the VQA model)
DESCRIBE_ONLY = re.compile(
    rf"^\W*(?:(?:can|could|would)\s+you\s+|please\s+)?(?:describe\s+(?:it|this|that|them|{_THIS}\s+"
    rf"(?:\w+\s+)?{_PIC}|what\s+you\s+see)|what(?:'s|\s+is|\s+are)?\s+(?:in|on)\s+(?:it|this|"
    rf"that|{_THIS}\s+(?:\w+\s+)?{_PIC})|what\s+do\s+you\s+see|(?:caption|analy[sz]e)\s+"
    rf"(?:it|this|that|{_THIS}\s+{_PIC})|decri\w*(?:[\s-]+(?:la|le|les|moi|nous))*(?:\s+(?:cette|"
    rf"la|ma|l')\s*(?:photo|image))?|qu'?est[\s-]ce\s+qu'?(?:il\s+y\s+a|on\s+voit)\s+(?:sur|"
    rf"dans)\s+(?:cette|la|ma|l')\s*(?:photo|image)|que\s+vois[\s-]tu|c'?est\s+quoi\s+(?:sur|"
    rf"dans)\s+(?:cette|la|ma)\s+(?:photo|image))\W*(?:please|pls|stp|svp)?\W*$")
_BG = r"(?:background|backround|backgroud|backdrop|bg|bgs|backgrounds|fond|fonds|arriere-plan|" \
      r"arriere\s+plan|arriere-plans|decor)"

PATTERNS: tuple[Pattern, ...] = (
    # vetoes
    _p(B, "keep-bg", rf"\b(?:keep|keeping|preserve|leave|retain|garde\w*|conserve\w*|laisse\w*)"
       rf"\s+(?:the\s+|its\s+|their\s+|le\s+|l'|son\s+|leur\s+|same\s+|original\s+)*{_BG}\b",
       STRONG, veto=True),
    # face swap
    _p(F, "face-swap", r"\bface[\s-]?swap\w*|\bswap\w*\s+(?:(?:of|the|our|their|my|his|her|"
       r"both|these|those|two|les|all|first|second|third|1st|2nd|3rd|left|right|middle|other|"
       r"\w+'s)\s+){0,3}faces?\b|\bswitch\w*\s+"
       r"(?:the\s+|our\s+|their\s+)?faces\b|\bfaces?\s+(?:swap|switch|exchange|replacement|"
       r"transfer)\w*|\bexchange\s+(?:the\s+|our\s+|their\s+)?faces\b", STRONG),
    _p(F, "put-face", r"\b(?:put|place|paste|stick|transfer|map|apply|use|add|swap|transplant|"
       r"want|need)\w*\s+(?:my|his|her|their|our|the|this|that|your|a|one|the\s+same|"
       r"(?:my|his|her|the|our|their)\s+\w+'s|\w+'s)\s+(?:own\s+)?face\b"
       r"(?!\s+(?:paint|mask|cream)|\s+to\b)", SURE),
    _p(F, "replace-face", r"\breplac\w*\s+(?:my|his|her|their|the|this|that|your|its)\s+"
       r"(?:\w+'s\s+|\w+\s+)?face\b|\b(?:chang|switch|exchang|trad)\w*\s+(?:my|his|her|their|"
       r"the|our)\s+(?:\w+'s\s+)?faces?\s+(?:with|for)\b|"
       r"\bface\s+(?:of|from)\s+.{0,40}?\b(?:onto|on|into|with)\b", SURE),
    _p(F, "swap-me", r"\bswap\w*\s+(?:me|him|her|them|us|myself)\b", GOOD),
    _p(F, "fr-face", r"\b(?:echange\w*|inverse\w*|permute\w*|intervert\w*|swap\w*|change\w*)\s+"
       r"(?:de\s+|les\s+|nos\s+|leurs\s+|ses\s+|nos\s+deux\s+|mon\s+)?visages?\b(?!\s+de\s+l)"
       r"|\b(?:mets|met|mettre|mettez|place\w*|colle\w*|ajoute\w*|pose\w*|greffe\w*)\s+(?:mon|ton|"
       r"son|le|ce|notre|leur|un|ma)\s+(?:propre\s+)?(?:visage|tete|figure)\b|\bremplac\w*\s+"
       r"(?:le|son|ce|leur|mon|sa)\s+(?:visage|tete)\b", STRONG),
    # image analysis: describe an image, answer a question about it
    _p(A, "whats-in", rf"\bwhat(?:'s|\s+is|\s+are)?\s+(?:in|on)\s+(?:it|this|that|{_THIS}\s+"
       rf"(?:\w+\s+)?{_PIC})\b|\b(?:tell\s+me|explain)\s+what(?:'s|\s+is)\s+(?:in|on)\s+"
       rf"(?:it|this|that|{_THIS}\s+(?:\w+\s+)?{_PIC})\b", STRONG),
    _p(A, "describe", rf"\bdescrib\w*\s+(?:it|this|that|them|what\s+you\s+see|{_THIS}\s+"
       rf"(?:\w+\s+)?{_PIC}|(?:the\s+)?(?:content|scene|contents))\b|\bwhat\s+(?:do|can)\s+"
       rf"you\s+see\b|\b(?:caption|analy[sz]e|tag)\s+(?:it|this|that|{_THIS}\s+{_PIC})\b|"
       rf"\bwhat\s+(?:does|do)\s+{_THIS}\s+{_PIC}\s+show\b", STRONG),
    _p(A, "question-about", rf"\bhow\s+many\s+\w+\s+(?:are|is)\s+(?:there\s+)?(?:in|on)\s+"
       rf"(?:it|this|that|{_THIS}\s+(?:\w+\s+)?{_PIC})\b|\bis\s+there\s+(?:an?|any|some)\s+"
       rf"[\w\s]{{1,30}}?\s+(?:in|on)\s+(?:it|this|that|{_THIS}\s+(?:\w+\s+)?{_PIC})\b|"
       rf"\bwhat\s+colou?rs?\s+(?:is|are)\s+(?:the\s+\w+\s+in\s+)?(?:it|this|that|{_THIS}\s+"
       rf"(?:\w+\s+)?{_PIC})\b|\bwho\s+is\s+(?:in|on)\s+(?:it|this|that|{_THIS}\s+"
       rf"(?:\w+\s+)?{_PIC})\b", SURE),
    _p(A, "fr-describe", r"\bdecri(?:s|re|vez|vons|t)\b|\bqu'?est[\s-]ce\s+qu'?(?:il\s+y\s+a|"
       r"on\s+voit|tu\s+vois)\s+(?:sur|dans)\s+(?:cette|la|ma|l'|ce|cet)\s*(?:photo|image|"
       r"cliche)\b|\bque\s+vois[\s-]tu\b|\bc'?est\s+quoi\s+(?:sur|dans)\s+(?:cette|la|ma)\s+"
       r"(?:photo|image)\b|\banalyse[rz]?\s+(?:cette|la|ma|l')\s*(?:photo|image)\b|"
       r"\bcombien\s+de\s+\w+\s+(?:y\s+a[\s-]t[\s-]il\s+)?(?:sur|dans)\s+(?:cette|la|ma|l')\s*"
       r"(?:photo|image)\b|\by\s+a[\s-]t[\s-]il\s+(?:un|une|des)\s+[\w\s]{1,30}?\s+(?:sur|dans)\s+"
       r"(?:cette|la|ma|l')\s*(?:photo|image)\b", STRONG),
    # background removal
    _p(B, "remove-bg", rf"\b(?:remove|removing|removed|delete|deleting|erase|erasing|drop|strip|"
       rf"clear|lose|take\s+out|take\s+away|take\s+off|get\s+rid\s+of|getting\s+rid\s+of|"
       rf"eliminate|ditch|kill|nuke|cut\s+out|cut\s+away|cut|hide|blank\s+out|white\s+out)\s+"
       rf"(?:(?:the|its|their|this|that|my|his|her|your|our|any|all|of|just|only|please)\s+)*"
       rf"(?:(?!in\b|on\b|from\b|of\b|behind\b|at\b|and\b)\w+\s+){{0,2}}{_BG}\b", STRONG),
    _p(B, "bg-removal", rf"\b{_BG}[\s-]+(?:removal|remover|removed|remove|free|transparent|gone|"
       rf"off|out|erased|deleted|supprime|enleve|transparente?)\b|\bno[\s-]+{_BG}\b"
       rf"(?!\s+(?!(?:please|pls|and|then|just|so|for|in|on|at|needed|required|behind|around|"
       rf"et|puis|stp|svp)\b)[a-z])|"
       rf"\bwithout\s+(?:a\s+|the\s+|any\s+)?{_BG}\b|\btransparent\s+{_BG}s?\b|"
       rf"\b(?:alpha|transparent)\s+(?:channel|png|image|version|cutout|cut-out|layer)\b|"
       rf"\bpng\s+(?:transparent|with\s+(?:transparency|alpha))\b|\bmake\s+{_OBJ}\s+"
       rf"transparent\b|{_BG}\s+(?:to\s+|en\s+)?transparen\w+", STRONG),
    _p(B, "cut-out", r"\b(?:cut|clip)\s*-?\s*out\b|\b(?:erase|remove|delete|cut|clear|get\s+rid\s+"
       r"of|take\s+(?:out|away)|blank\s+out|white\s+out|wipe(?:\s+out)?|ditch|drop)\s+"
       r"(?:everything|all|anything|stuff)\s+(?:behind|around|but|except|apart)\b|\bcutouts?\b|"
       r"\bcut\s+(?:it|this|him|her|them|that|me|us|the\s+\w+(?:\s+\w+)?)\s+out\b", SURE),
    _p(B, "isolate-any", r"\b(?:isolate|isolating)\s+(?:the\s+|this\s+|that\s+|my\s+|a\s+|"
       r"his\s+|her\s+|their\s+|its\s+)?\w+", GOOD),
    _p(B, "isolate", r"\b(?:isolate|isolating|extract|extracting|separate|separating|segment|"
       r"segmenting|mask\s+out|pull\s+out|lift)\s+(?:the\s+|this\s+|my\s+|a\s+|his\s+|her\s+)?"
       r"(?:\w+\s+)?(?:subject|object|person|product|foreground|item|figure|character|him|her|"
       r"it|them|me|dog|cat|car|shoe|logo|model)\b", GOOD),
    _p(B, "fr-bg", rf"\b(?:enleve\w*|enlever|supprime\w*|retir(?:e|es|er|ez|ons|ent)|"
       rf"efface\w*|vire\w*|ote\w*|elimine\w*|degage\w*|enlevez|retirez|supprimez)"
       rf"(?:[\s-]+(?:moi|lui|leur))?\s+"
       rf"(?:(?:pas|juste|seulement|simplement|vite|donc|moi|lui|stp)\s+)*"
       rf"(?:(?:le|l'|son|ce|cet|leur|mon|ton|tout\s+le|les|ses|sa|du)\s*)?"
       rf"{_BG}\b|\bdetour\w*|\bsans\s+(?:le\s+|son\s+|de\s+)?(?:fond|arriere-plan)\b|"
       rf"\bfond\s+(?:transparent|blanc\s+transparent|vide)\b|\bpng\s+transparent\b|"
       rf"\bdecoup\w*|\bisole[rz]?\s+(?:le|la|l'|ce|cette)\b|\bsupprimer\s+le\s+fond\b", STRONG),
    # upscale (strong)
    _p(U, "upscale", r"\bup[\s-]?scal\w*|\bupres\w*|\bupsampl\w*|\bupsiz\w*|\bsuper[\s-]?res"
       r"(?:olution)?\b|\besrgan\b|\b(?:scale|size|resize|blow)\w*\s+(?:it\s+|this\s+|them\s+|"
       r"the\s+\w+\s+)?up\b", STRONG),
    _p(U, "make-res-higher", r"\bmake\s+(?:the|its|their|this)\s+(?:image\s+|photo\s+)?"
       r"(?:resolution|res|size|quality|definition)\s+(?:\w+\s+)?(?:higher|bigger|larger|better)\b|"
       r"\b(?:\d+|two|three|four|twice|double)\s*(?:x|times)?\s+(?:the\s+)?(?:resolution|size)\b|"
       r"^\W*(?:\d{1,2}\s?x|x\s?\d{1,2})\W*(?:please|pls|stp|svp)?\W*$", SURE),
    _p(U, "bigger-version", r"\b(?:bigger|larger|high[\s-]?res(?:olution)?|hi-?res|higher[\s-]"
       r"res(?:olution)?|hd|4k|8k|sharper|upscaled|enlarged|full[\s-]size|print[\s-]size)\s+"
       r"(?:version|copy|file|one|edition)\b|\bversion\s+(?:plus\s+grande|en\s+(?:hd|4k|haute\s+"
       r"(?:resolution|definition)))\b", SURE),
    _p(U, "enlarge", r"\benlarg\w*|\bmagnif(?:y|ied)\w*|\bblow\s+(?:it\s+|this\s+)?up\b",
       SURE),
    _p(U, "make-bigger", rf"\b(?:make|making|render|get|turn|have)\s+{_OBJ}\s+(?:(?:\d+\s?x|\w+\s+"
       rf"times|a\s+(?:lot|bit|little)|much|even|way)\s+)?(?:(?:\w+\s+){{0,3}}(?:and|&)\s+)?"
       rf"(?:bigger|larger|huger|higher[\s-]res(?:olution)?|hi-?res|high[\s-]res(?:olution)?|"
       rf"hd|4k|8k|uhd|full[\s-]hd|crisper|sharper\s+and\s+bigger)\b", SURE),
    _p(U, "increase-res", r"\b(?:increase|increasing|boost|boosting|raise|improve|improving|"
       r"enhance|enhancing|bump\s+up|up|augment|maximi[sz]e|better)\s+(?:the\s+|its\s+|their\s+|"
       r"this\s+|my\s+|image\s+|photo\s+|picture\s+)*(?:resolution|res|size|quality|definition|"
       r"sharpness|details?|pixel\s+count|dpi|pixels|clarity)\b", GOOD),
    _p(U, "double-size", r"\b(?:double|doubl\w+|triple|quadruple)\w*\s+(?:the\s+|its\s+|their\s+|"
       r"la\s+|sa\s+|leur\s+)?(?:size|resolution|dimensions|taille|resolution|res)\b|"
       r"\b(?:twice|deux\s+fois|\w+\s+times)\s+(?:as\s+)?(?:big|large|bigger|larger|plus\s+"
       r"grande?s?)\b|\b(?:\d+|two|three|four|eight)\s*(?:x|times)\s+(?:bigger|larger)\b",
       SURE),
    _p(U, "fr-upscale", r"\bagrandi\w*|\bgrossi[rs]\w*|\b(?:augmente\w*|ameliore\w*|accroi\w*|"
       r"monte\w*|booste\w*)\s+(?:la\s+|sa\s+|leur\s+)?(?:resolution|definition|qualite|taille|"
       r"nettete)\b|\b(?:rends|rendre|rend|fais|faire)[\s-]+(?:la|le|les|l'|-la|-le)?\s*"
       r"(?:\w+\s+){0,2}plus\s+grande?s?\b|\b(?:passe\w*|mets|mettre|converti\w*)[\s-]+"
       r"(?:la|le|les|-la|-le)?\s*(?:(?:cette|cet|ce|ma|mon|l')\s*\w+\s+)?(?:(?:juste|seulement|"
       r"simplement|vite|donc|just|only)\s+)?en\s+(?:haute\s+"
       r"(?:definition|resolution|qualite)|hd|4k|8k|uhd)\b|\bdouble[rz]?\s+la\s+taille\b",
       SURE),
    # style transfer
    _p(S, "make-style", rf"\b(?:make|making|turn|convert|transform|change|changing|redo|redraw|"
       rf"repaint|"
       rf"reimagine|recreate|style|restyle|stylize|stylise|switch)\w*\s+"
       rf"{_OBJ}\s+(?:(?:look|looks|appear|seem)\s+)?(?:(?:more\s+)?(?:like|into|to|as|in|"
       rf"into\s+the\s+style\s+of|in\s+the\s+style\s+of)\s+)?(?:an?\s+|the\s+|some\s+|a\s+real\s+)"
       rf"?(?:\w+\s+)?{STYLE}", STRONG),
    _p(S, "draw-as-style", rf"\b(?:draw|paint|render|show|do|put|picture|imagine)\w*\s+{_OBJ}\s+"
       rf"(?:more\s+)?(?:like|into|as|in|in\s+the\s+style\s+of)\s+(?:an?\s+|the\s+|some\s+)?"
       rf"(?:\w+\s+)?{STYLE}", STRONG),
    _p(S, "only-style", rf"^\W*(?:an?\s+|une?\s+|in\s+|en\s+)?{STYLE}\W*(?:please|pls|stp|svp|"
       rf"s'il\s+te\s+plait|now|maintenant)?\W*$", SURE),
    _p(S, "turn-into-style", rf"\b(?:turn|convert|transform|change|switch|transpose)\w*\s+"
       rf"(?:\w+\s+){{0,3}}?(?:into|to)\s+(?:an?\s+|the\s+)?(?:[\w-]+\s+)?(?:{STYLE}|{STYLE_NOUN})",
       SURE),
    _p(S, "into-art-form", rf"\b(?:turn|convert|transform|change|redo|redraw|make|making|render|"
       rf"show|draw|paint|transforme\w*|converti\w*)\w*[\s-]+{_OBJ}?\s*(?:-?(?:la|le|moi)\s+)?"
       rf"(?:into|to|as|like|en)\s+(?:an?\s+|une?\s+)?(?:[\w-]+\s+)?{STYLE_NOUN}", GOOD),
    _p(S, "style-version", rf"\b(?:make|create|give\s+me|do|want|need|fais|cree)\w*\s+"
       rf"(?:an?\s+|une?\s+)(?:{STYLE}|{STYLE_NOUN}|\w+)\s+(?:version|copy|rendition)\s+of\s+"
       rf"(?:me|this|it|my|the|us|him|her)\b", GOOD),
    _p(S, "look-like", rf"\b(?:look|looks|looking)\s+(?:more\s+)?like\s+(?:an?\s+|the\s+)?"
       rf"(?:\w+\s+)?{STYLE}", SURE),
    _p(S, "give-look", rf"\b(?:give|add|apply|use)\s+(?:{_OBJ})?"
       rf"\s*(?:an?\s+|the\s+|some\s+)?(?:\w+\s+)?{STYLE}[\w\s-]{{0,15}}?(?:style|look|effect|"
       rf"filter|vibe|feel|touch|aesthetic|treatment|finish)\b", STRONG),
    _p(S, "stylize", r"\b(?:cartooni[sz]\w*|cartoonif\w*|toonif\w*|animef\w*|anime-?if\w*|"
       r"styli[sz]\w*|restyl\w*|style\s+transfer|transfert\s+de\s+style|(?:apply|add|use)\s+"
       r"(?:an?\s+|the\s+)?(?:\w+\s+){0,3}?(?:style|filter|art\s+filter)\b)", GOOD),
    _p(S, "now-in-style", rf"\b(?:now|next|maintenant|et|then|puis|ensuite|same|meme|redo)\s+"
       rf"(?:\w+\s+)?(?:in|en|as|comme|style|version|but\s+in|mais\s+en)\s+(?:an?\s+|une?\s+|"
       rf"style\s+)?(?:\w+\s+)?{STYLE}", SURE),
    # "give my photo an old-timey film look", "put a grainy film effect on this picture"
    _p(S, "give-image-look", rf"\bgive\s+{_EN_IMAGE}\s+(?:an?|some|that)\s+{_EN_STYLED}|"
       rf"\b(?:give|add|apply|put)\s+(?:an?|some|that)\s+{_EN_STYLED}\s+(?:to|on|onto)\s+"
       rf"{_EN_IMAGE}", STRONG),
    # "donne à ma photo un effet vieille photo", "applique un filtre rétro à cette image",
    # "mets-lui un filtre sépia", "un effet BD sur ma photo": an effect on an image
    _p(S, "fr-give-effect", rf"\b(?:donne\w*|applique\w*|ajoute\w*|rajoute\w*|mets|met|"
       rf"mettez|mettre|pose\w*|colle\w*)(?:[\s-]+(?:lui|leur|moi|y))?\s+(?:(?:a|au|aux)\s+"
       rf"{_FR_IMAGE}\s+)?{_FR_EFFECT}|{_FR_EFFECT}\s+(?:[\w'-]+\s+){{0,4}}?(?:sur|a|pour)\s+"
       rf"{_FR_IMAGE}", STRONG),
    # "rends ma photo rétro", "fais-en une vieille photo": the look of an old photograph
    _p(S, "fr-retro", rf"\b(?:transforme\w*|converti\w*|passe[rz]?|fais|faites|rends|rendre|"
       rf"rendez|change\w*|mets)(?:[\s-]+(?:la|le|les|l'|en|moi))?\s+(?:{_FR_IMAGE}\s+)?"
       rf"(?:(?:en|une?|style|fa[cç]on|version|comme|au|a\s+la)\s+)*{RETRO}", STRONG),
    _p(S, "fr-style", rf"\b(?:transforme\w*|converti\w*|passe[rz]?|fais|faites|rends|rendre|"
       rf"mets|mettre|change\w*|modifie\w*|redessine\w*|repeins)(?:[\s-]+(?:en|la|le|les|l'|"
       rf"moi|-la|-le|-les|-en|-moi))?\s+(?:(?:cette|ma|mon|la|le|ce|l'|mes|ces)\s*(?:\w+\s+)?)?"
       rf"(?:en|une?|comme|fa[cç]on|style|version|au|a\s+la|a\s+l')?\s*(?:une?\s+|style\s+|"
       rf"version\s+)?(?:[\w']+\s+){{0,3}}?{STYLE}", STRONG),
    _p(S, "in-style-short", rf"(?:^|[\s,])(?:in|en|as|comme|into)\s+(?:an?\s+|une?\s+)?"
       rf"{STYLE}", FAIR),
    # "a pencil sketch of this photo", "a watercolor painting of my dog": the image exists
    _p(S, "style-art-of-image", rf"(?:^|(?<=[\s,:;(]))(?:(?:an?|une?|the)\s+)?(?:[\w-]+\s+)?"
       rf"(?:{STYLE})(?:\s+{ART_NOUN})?\s+(?:of|de|d'|du|des)\s*(?={_NOT_NEW_SUBJECT})", GOOD),
    # edit
    _p(E, "combine", r"\b(?:combin\w*|merg(?:e|es|ed|ing)|blend(?:s|ed|ing)?|composit\w*|"
       r"collages?|mash(?:ed|ing)?\s+up|fus(?:e|es|ed|ing)|stitch\w*|splic\w*|fusionn\w*|"
       r"assembl\w*|melang\w*|montages?|photomontages?)\b", SURE),
    _p(E, "remove-object", r"\b(?:remove|removing|delete|deleting|erase|erasing|get\s+rid\s+of|"
       r"take\s+out|take\s+away|eliminate|clean\s+up|wipe|retouch\s+out|paint\s+out)\s+"
       r"(?:the|this|that|those|these|a|an|his|her|their|its|all|any|my|some)?\s*\w+", GOOD),
    _p(E, "replace", r"\b(?:replace|replacing|swap|switch|exchange|substitute|trade)\w*\s+(?:the|"
       r"this|that|his|her|their|its|a|an|my)?\s*\w+(?:\s+\w+){0,4}?\s+(?:with|by|for|to|into)\b"
       r"|\breplac\w*\s+(?:the|this|that|his|her|their|its|an?|my|all)\s+\w+", SURE),
    _p(E, "change", r"\b(?:change|changing|alter|modify|recolou?r|update|swap|switch)\w*\s+(?:the|"
       r"this|that|his|her|their|its|my|all)\s+(?!style\b|image\b|photo\b|picture\b)\w+",
       GOOD),
    _p(E, "make-thing", r"\b(?:make|making|turn|paint|color|colour|dye|get)\s+(?:the|his|her|their|"
       r"its|"
       r"my|this|that|those|these|all)\s+(?!image\b|photo\b|picture\b|pic\b|selfie\b|result\b|"
       r"one\b)\w+|\bmake\s+(?:him|her|them)\s+(?!look\b)(?:into\s+|an?\s+|more\s+|less\s+)?"
       r"\w+|\bturn\s+(?:him|her|them|me|us)\s+(?:into|to)\s+\w+|\bmake\s+(?:me|us|him|her|them)"
       r"\s+look\s+(?!like\b)\w+|\b(?:want|need|like|would\s+like)\s+(?:the|his|her|their|its|my)"
       r"\s+\w+(?:\s+\w+)?\s+to\s+(?:be|look|become|appear)\b", FAIR),
    _p(E, "make-it-other", r"\b(?:make|making|turn)\s+(?:(?:the|this|that|my)\s+(?:image|photo|"
       r"picture|pic|scene|result|selfie|shot)|it|this|that|them)\s+"
       r"(?!look\b|an?\b|the\b|into\b|to\b|more\s+like\b|like\b|again\b)\w+", FAIR),
    _p(E, "draw-on", r"\b(?:draw|paint|sketch|write)\w*\s+(?:\w+\s+){1,4}?(?:on|onto|over)\s+"
       r"(?:him|her|them|it|his\s+\w+|her\s+\w+|their\s+\w+|its\s+\w+|my\s+\w+|this\s+\w+)\b",
       SURE),
    _p(E, "add", r"\b(?:add|adding|insert|inserting|include|put|place|attach)\w*\s+"
       r"(?:an?|some|the|more|another|two|three|few|his|her|their|its|my|snow|rain|fog|sun|"
       r"text|light|lights|color|colour)\b(?:\s+\w+){0,5}?\s+(?:to|on|onto|in|into|at|under|"
       r"behind|next\s+to|inside|beside|over|around|near|above|below|across)\b", SURE),
    _p(E, "add-simple", r"\b(?:add|adding|insert)\s+\w+", GOOD),
    _p(E, "put-on", r"\b(?:put|place|move|paste|insert|drop|set|position)\s+(?:\w+\s+){1,6}?"
       r"(?:on|onto|in|into|at|under|behind|next\s+to|inside|beside|in\s+front\s+of|over|"
       r"against)\b", GOOD),
    _p(E, "give-thing", r"\bgive\s+(?:him|her|them|it|the\s+\w+|this\s+\w+)\s+(?:an?\s+|"
       r"some\s+|more\s+|less\s+)?\w+", FAIR),
    _p(E, "edit-verb", r"\b(?:brighten|darken|lighten|recolou?r|colori[sz]e|retouch|fix|repair|"
       r"restore|crop|rotate|flip|mirror|blur|unblur|straighten|whiten|smooth|fill|inpaint|"
       r"outpaint|extend|expand|desaturate|saturate|warm\s+up|cool\s+down|relight|touch\s+up|"
       r"edit|tweak|adjust|correct|remaster|reshape|widen|shorten|lengthen|age|de-?age)"
       r"(?:s|ed|d|ing|en|ning|ped|ping)?\b",
       FAIR),
    _p(E, "fr-put-on-him", r"\b(?:mets|met|mettez|ajoute|ajoutez|colle|pose)[\s-]+"
       r"(?:lui|leur|moi)\s+(?:une?|des|du|de\s+la|de\s+l')\s*\w+", GOOD),
    _p(E, "fr-edit", r"\b(?:ajout\w*|rajout\w*)\b|\b(?:enleve\w*|enlever|supprime\w*|"
       r"retir(?:e|es|er|ez|ons|ent)\b|"
       r"efface\w*|vire\w*|ote\w*|elimine\w*)\s+(?:la|le|les|l'|ce|cette|ces|son|sa|ses|un|une|"
       r"des|tous|toutes)?\s*\w+|\bremplac\w*|\bchang\w*\s+(?:le|la|les|l'|son|sa|ses|ce|cette|"
       r"leur)\s*\w+|\b(?:mets|met|mettre|mettez|place\w*|pose\w*|deplace\w*)(?:[\s-]+(?:le|la|"
       r"les|lui|moi|leur))?\s+(?:\w+\s+){0,4}?(?:sur|dans|devant|derriere|sous|a\s+cote|au|"
       r"a\s+la|a\s+(?:mon|ma|mes|son|sa|ses|leur|leurs|ce|cette|cet|notre|nos)|contre)\b|"
       r"\b(?:rends|rendre|rendez|fais|faire)[\s-]+(?:ses|son|sa|le|la|les|l'|"
       r"leurs?)\s*(?!pareil|meme|identique)\w+|\b(?:fai(?:s|re|tes)\s+disparaitre|eclairci\w*|"
       r"assombri\w*|colori\w*|recadr\w*|retouch\w*|repar\w*|"
       r"restaur\w*|floute?\w*|corrig\w*|remplis\w*|redresse\w*|modifie\w*|transforme[rz]?\s+"
       r"(?:le|la|les|l'|son|sa|ses)\s*\w+\s+en)\b", GOOD),
    # generation
    # "a pencil sketch of X", "a watercolor painting of X", "une aquarelle d'un village": a
    # style named as the medium of a new image (its words stay in the prompt: see planner)
    _p(G, "style-art", rf"(?:^|(?<=[\s,:;(]))(?:(?:an?|une?|the|some|one|two|three|four|\d+)"
       rf"\s+)?(?:[\w-]+\s+)?(?:{STYLE})(?:\s+(?:3d|2d|digital|animated|movie|film|book|"
       rf"cartoon|styled?|hand-drawn))?(?:\s+{ART_NOUN})?(?:\s+(?:au\s+crayon|au\s+fusain|"
       rf"a\s+l'huile|a\s+l'encre|sur\s+toile|on\s+canvas))?\s+(?:of|de|d'|du|des|showing|"
       rf"depicting|featuring|representant|montrant)(?=\s*\w)(?!\s*{_NOT_NEW_SUBJECT})", GOOD),
    # "watercolor painting: a fox in the snow", "pencil sketch, an old man with a cane"
    _p(G, "style-art", rf"^\W*(?:(?:an?|une?)\s+)?(?:{STYLE})(?:\s+{ART_NOUN})?\s*[:,-]\s*"
       rf"(?=\w)(?!{_NOT_NEW_SUBJECT})", GOOD),
    _p(G, "generate", r"(?<!\ba\s)(?<!\ban\s)(?<!\bthe\s)(?<!\bune\s)"
       r"\b(?:generate|generating|create|creating|draw|paint|render|design|"
       r"imagine|produce|illustrate|sketch|visuali[sz]e|dream\s+up|come\s+up\s+with|conjure|"
       r"compose|craft|invent|envision|depict|mock\s+up|whip\s+up|picture\s+me|"
       r"gener\w*|cree|creer|creez|creee?s?|creation|dessine\w*|peins|peindre|peignez|"
       r"imagine[rz]?|realise[rz]?|produis|produire|illustre[rz]?|con[cç]oi[st]|compose[rz]?|"
       r"invente[rz]?|visualise[rz]?|represente[rz]?)\b", SURE),
    _p(G, "do-a", rf"\bdo\s+(?:me\s+|us\s+)?(?:an?|some|one|two|three|four|\d+)\s+"
       rf"(?:[\w-]+\s+){{0,3}}?(?:image|picture|pic|photo|illustration|drawing|painting|sketch|"
       rf"render|portrait|wallpaper|logo|poster|sticker|icon|artwork|doodle|banner|mascot)"
       rf"(?:s|es)?\b(?!\s+(?:of|for)\s+{_NOT_NEW_SUBJECT})", GOOD),
    _p(G, "make-a", r"\b(?:make|give|show|get|send|bring|build|fais|faites|fait|montre|"
       r"donne|gim+i?e|giv\s+me|lem+e\s+(?:see|have|get)|(?:i\s+)?wan+a\s+(?:see|have|get)|"
       r"hook\s+(?:me|us)\s+up\s+(?:with|w/)|whip\s+(?:me|us)\s+up)"
       r"(?:[\s-]+(?:me|us|moi|nous))?\s+(?:(?:like|sum)\s+)?"
       # (French "donne à ma photo …": "à" folds to "a", which is not an article there)
       r"(?!a\s+(?:ma|mon|mes|cette|cet|ce|la|le|l'|les|ces|son|sa|notre|nos|leur)\b)"
       r"(?=(?:an?|some|sum|another|\d+|one|two|three|four|five|six|seven|eight|nine|ten|"
       r"a\s+couple\s+of|a\s+few|une?|des|deux|trois|quatre|cinq|"
       r"plusieurs)\s+(?!(?:[\w-]+\s+)?(?:png|jpe?g|webp|gif|version|copy|file|cutout|cut-out|"
       r"transparent|bigger|larger|higher|hd)\b))",
       GOOD),
    _p(G, "want-image", r"(?:(?:\bi(?:'d|\s+would)?\s+|^\W*|\bwe\s+)(?:like|love|want|need)|"
       r"\bi'm\s+looking\s+for|"
       r"\bcan\s+i\s+(?:get|have|see)|\bcould\s+i\s+(?:get|have|see)|\bmay\s+i\s+have|"
       r"\blet'?s\s+(?:see|have|get|make)|\bje\s+(?:voudrais|veux|souhaite|souhaiterais|"
       r"aimerais)|\bj'aimerais|\bj'ai\s+besoin\s+d'|\bil\s+me\s+faut|\bmontre[\s-]*moi|"
       r"\bdonne[\s-]*moi)\s+"
       r"(?:to\s+(?:see|have|get)\s+)?(?:an?|some|\d+|one|two|three|four|five|une?|des|deux|"
       r"trois|quatre|cinq)\s+(?:new\s+)?(?:[\w-]+\s+){0,3}?(?:image|picture|photo|pic|"
       r"illustration|drawing|painting|render|portrait|wallpaper|logo|poster|sticker|icon|shot|"
       r"artwork|art|design|versions?|variations?|scene|dessin|peinture|affiche|fond\s+d'ecran|"
       r"visuel|rendu|variantes?|banner|avatar|cover|thumbnail)s?\b", GOOD),
    # "something totally different: a koi pond", "a new image of …" (with an image in the
    # session too: a new subject, not a follow-up)
    _p(G, "new-image", r"\b(?:something\s+(?:(?:totally|completely|entirely)\s+)?(?:else|"
       r"different)|(?:totally|completely|entirely)\s+different(?:\s+(?:one|image|picture))?|"
       r"(?:an?\s+|une\s+)?(?:brand[\s-]new|new|fresh|nouvelle|autre)\s+(?:image|picture|one|"
       r"photo|illustration)|tout\s+autre\s+chose|autre\s+chose|from\s+scratch|de\s+zero)"
       r"(?=\s*(?:[:,.!?]|of\b|de\b|d'|showing\b|with\b|avec\b|$))", GOOD),
    _p(G, "again", r"^\W*(?:another(?:\s+one)?|one\s+more|again|more|encore|une\s+autre|un\s+"
       r"autre|re-?generate|regenerate|retry|try\s+(?:it\s+|that\s+|this\s+)?again|redo\s+it|"
       r"refais|recommence|same\s+again|(?:do|make|run|generate)\s+(?:it|that|this|one)\s+again|"
       r"once\s+more|new\s+one|give\s+me\s+another)\b", GOOD),
    # weak cues (dropped next to a generation cue, or when there is no image at all)
    _p(U, "hd-words", r"\b(?:higher|high|better|full|max(?:imum)?|haute|meilleure|plus\s+haute)"
       r"[\s-](?:resolution|res|definition|quality|qualite)\b|\bhi-?res\b|\b(?:in|to|en)\s+"
       r"(?:hd|4k|8k|uhd)\b|\bhd\b|\b4k\b|\b8k\b|\benhance\w*|\bameliore\w*|\bsharp\w*|"
       r"\bdeblur\w*|\bnet(?:tete|te)\b|\bbigger\b|\blarger\b|\bplus\s+grand", WEAK, weak=True),
    _p(G, "image-of", r"\b(?:an?\s+|the\s+)?(?:image|picture|photo|pic|illustration|drawing|"
       r"painting|render|rendering|portrait|wallpaper|artwork|poster|logo|icon|sticker|shot|"
       r"close-?up|scene|view|landscape|still)s?\s+(?:of|showing|with|depicting|featuring)\b|"
       r"\b(?:une?|des)\s+(?:image|photo|illustration|dessin|peinture|portrait|affiche|logo)s?"
       r"\s+(?:de|d'|du|des|avec|montrant)", WEAK, weak=True),
)

# every pattern's required strings, each once (`find_cues`)
_NEEDED: tuple[str, ...] = tuple(sorted(frozenset().union(
    *(p.needs for p in PATTERNS if p.needs is not None))))


def _trie(words: tuple[str, ...]) -> dict:
    """Character trie of `words`; the key "" of a node holds the word ending there."""
    root: dict = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = word
    return root


_NEEDED_TRIE = _trie(_NEEDED)


def present_needs(folded: str) -> set[str]:
    """The strings of `_NEEDED` that occur in `folded`: one trie walk from each position
    (~5 us for a short message, against ~50 us for 500 substring tests)."""
    found: set[str] = set()
    end = len(folded)
    for start in range(end):
        node = _NEEDED_TRIE.get(folded[start])
        pos = start + 1
        while node is not None:
            word = node.get("")
            if word is not None:
                found.add(word)
            if pos == end:
                break
            node = node.get(folded[pos])
            pos += 1
    return found

# General (questions, greetings, help): checked on the whole message.
_INFO_Q = re.compile(
    r"^\W*(?:how(?!\s+about)|what(?!\s+about|\s+if)|what's|whats|which|why|who|when|where|"
    r"is\s+(?:it(?!\s+possible\s+to\s+(?!know|see))|there|my|this|the|that)|"
    r"are\s+(?:you|there|my|the|your)|does|do\s+you|did\s+you|"
    r"(?:can|could|may)\s+i(?!\s+(?:get|have|see|please\s+(?:get|have)))|puis-je|"
    r"est-ce\s+que\s+je\s+peux|je\s+peux\s+(?!avoir)|"
    r"can\s+you\s+(?:tell|explain|help|describe|list)|could\s+you\s+(?:tell|explain|help|"
    r"describe|list)|tell\s+me|explain|list|describe|comment|quel\w*|pourquoi|qui|quand|"
    r"ou\s+(?:est|sont)|combien|est-ce\s+que|qu'est|c'est\s+quoi|peux-tu\s+(?:m'expliquer|"
    r"me\s+dire|m'aider)|explique\w*|dis[\s-]moi|aide[\s-]moi|do\s+i\s+need|should\s+i|"
    r"is\s+it\s+possible\s+to\s+(?:know|see)|est-il|y\s+a-t-il|as-tu|avez-vous|tu\s+(?:peux|sais)"
    r"\s+(?:faire\s+quoi|quoi))\b")
_GREETING = re.compile(
    r"^\W*(?:hi|hello|hey|hiya|yo|howdy|good\s+(?:morning|afternoon|evening|night)|thanks?|"
    r"thank\s+you|thx|ty|cheers|merci|bonjour|bonsoir|salut|coucou|ok(?:ay)?|cool|great|nice|"
    r"awesome|perfect|parfait|super|genial|top|bye|goodbye|au\s+revoir|help|aide|sos|wow|"
    r"amazing|love\s+it|j'adore|bravo|excellent|nope|no|yes|oui|non|yep|sure|d'accord)\b")
_GENERAL_CUE = re.compile(
    r"\b(?:tell\s+me|explain|what\s+(?:styles|formats|sizes|can\s+you)|which\s+(?:styles|"
    r"formats)|list\s+(?:the|your|all)|help\s+me\s+(?:understand|choose)|dis-moi|explique|"
    r"quels?\s+(?:styles|formats))\b")
_REQUEST_IN_QUESTION = re.compile(
    r"^\W*(?:(?:can|could|would|will)\s+(?:you|u)\s+(?:please\s+)?|(?:is|would|will)\s+it\s+be\s+"
    r"possible\s+to\s+|is\s+it\s+possible\s+to\s+|(?:est-il|serait-il|c'est)\s+possible\s+"
    r"d(?:e\s+|')|est-ce\s+que\s+(?:tu\s+peux|vous\s+pouvez|tu\s+pourrais|vous\s+pourriez)\s+|"
    r"(?:peux|pourrais)-tu\s+|(?:pouvez|pourriez)-vous\s+|tu\s+(?:peux|pourrais)\s+)"
    r"(?!tell|explain|help|describe|list|m'expliquer|me\s+dire|m'aider|expliquer|dire)")

# Questions about the service rather than requests: its rules ("is face swapping allowed on
# photos of celebrities?", "c'est légal de …?") and what it handles ("can you remove
# backgrounds from PDFs?", "peux-tu agrandir des vidéos ?").
_QUESTION = re.compile(
    r"\?\W*$|^\W*(?:(?:hey|hi|hello|so|ok(?:ay)?|quick\s+question|question|dis|dites|salut|"
    r"bonjour)\W+)?(?:is|are|am|was|can|could|may|might|do|does|did|will|would|should|"
    r"est-ce|a-t-on|ai-je|peut-on|puis-je|c'est|est-il|serait-il|peux-tu|pouvez-vous|"
    r"on\s+peut|sais-tu|savez-vous)\b")
_POLICY = re.compile(
    r"(?:\bfree\s*\?|\b(?:allowed|permitted|permissible|illegal|lawful|unlawful|forbidden|"
    r"prohibited|banned|against\s+(?:the\s+|your\s+)?"
    r"(?:rules|policy|policies|law|terms|tos|guidelines)|polic(?:y|ies)|terms\s+of\s+"
    r"(?:use|service)|copyright\w*|consent|ethical|for\s+free|free\s+of\s+charge|"
    r"commercial\s+use|supported|autorise\w*|interdit\w*|permis|legaux|illegale?s?|illegaux|"
    r"legal(?:e|es|s)?(?!\s+(?:pad|paper|document|brief|team|size))|"
    r"le\s+droit\s+(?:de|d')|droits?\s+d'auteur|conditions\s+d'utilisation|politique|"
    r"gratuit\w*|usage\s+commercial|pris\s+en\s+charge)\b)")
_CAPABILITY = re.compile(
    r"^\W*(?:(?:hey|hi|hello|so|ok(?:ay)?|quick\s+question|salut|bonjour)\W+)?"
    r"(?:(?:can|could|will|would)\s+(?:you|u|it|this|the\s+\w+|your\s+\w+)|"
    r"do(?:es)?\s+(?:you|u|it|this|the\s+\w+|your\s+\w+)|are\s+you\s+able|"
    r"is\s+(?:it|there)\s+(?:possible|a\s+way)|(?:peux|pourrais)-tu|(?:pouvez|pourriez)-vous|"
    r"tu\s+(?:peux|pourrais|sais)|vous\s+(?:pouvez|pourriez|savez)|est-ce\s+(?:que|qu')|"
    r"est-il\s+possible|c'est\s+possible|on\s+peut|peut-on|sais-tu|savez-vous)\b")
# What the service does not take or make: not an image (or a whole batch of them).
_OTHER_MEDIA = re.compile(
    r"\b(?:pdfs?|videos?|vids?|video\s+clips?|clips?|movies?|documents?|docs|svgs?|psds?|"
    r"raw\s+files?|word\s+files?|powerpoints?|slides|live\s*streams?|gifs?|animated|"
    r"animations?|in\s+bulk|batch(?:es)?|en\s+masse|en\s+lots?|par\s+lots?|"
    r"fichiers?\s+pdf)\b")


def _about_the_service(folded: str, images: int) -> bool:
    if not _QUESTION.search(folded):
        return False
    if _POLICY.search(folded):
        return True
    media = _OTHER_MEDIA.search(folded)
    # (an attached GIF is an image: "can you upscale this gif?")
    return bool(media and _CAPABILITY.search(folded)
                and not (images and media.group(0).startswith(("gif", "animated"))))


_NEGATION = re.compile(
    r"(?:\bdon'?t|\bdo\s+not|\bdoes\s*n[o']?t|\bdid\s*n[o']?t|\bnever|\bnot|\bno\s+need\s+"
    r"(?:to|for)|\bno|\bwithout|\bw/o|\bstop|\bskip|\bavoid|\binstead\s+of|\brather\s+than|"
    r"\bpas|\bne|(?:^|\s)n'|\bsans|\bjamais|\bplutot\s+que|\bau\s+lieu\s+d|\bexcept|"
    r"\bwon'?t|\bshouldn'?t|\bcan'?t|\bnor|\bneither|\bni)(?:\b|(?<='))")
_CLAUSE_BREAK = re.compile(r"[,.;!?:]|\b(?:but|mais|just|only|juste|seulement|instead|plutot|"
                           r"then|puis|ensuite|rather|and\s+then|et\s+puis)\b")
# "X, then Y": a new operation; what no cue explains after it is suspicious.
SEQ_CONNECTOR = re.compile(
    r"(?:,\s*|\s+)(?:and\s+then|then|after\s+that|afterwards|finally|and\s+also|also|"
    r"(?<=[,;]\s)next|"
    r"puis|ensuite|et\s+puis|et\s+ensuite|apres\s+(?:ca|cela)|enfin|et\s+aussi)\b\s*,?|"
    r"[.;!?]+\s+|\n+")
_BEFORE = re.compile(r"\b(?:before|avant\s+de|avant\s+d')\s*$")
_AFTER = re.compile(r"\b(?:after|once|apres\s+avoir|apres|une\s+fois)\s*(?:you\s+|having\s+|"
                    r"i\s+|we\s+)?$")
_FIRST = re.compile(r"\b(?:but\s+first|first|mais\s+d'abord|d'abord|tout\s+d'abord)\s*,?\s*$")
_DEICTIC = re.compile(r"\b(?:it|this|that|them|him|her|me|myself|us|my|our|the\s+(?:image|"
                      r"photo|picture|pic|selfie|result)|la|le|les|cette|ce|cet|ma|mon|mes|moi|"
                      r"nos|notre)\b|-(?:la|le|les|moi)\b|\bl'")


_DATIVE = re.compile(r"(?:\b|-)(?:me|us|moi|nous)(?=\s+(?:an?|some|one|two|three|\d+|une?|des)\b)")


@dataclass
class Cue:
    intent: str
    span: Span
    weight: float
    name: str
    negated: bool = False
    weak: bool = False
    style: str | None = None


@dataclass
class DraftStep:
    """A step before parameters and inputs are attached (see router.planner)."""

    intent: str
    start: int
    end: int  # end of the last cue merged into this step
    cues: list[Cue]
    confidence: float
    stage: str = "rules"
    style: str | None = None
    region: Span = (0, 0)  # the text this step's prompt/instruction comes from

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cues]


@dataclass
class Segment:
    span: Span
    sequential: bool  # starts after "then", "puis", "." …
    cues: list[Cue] = field(default_factory=list)


@dataclass
class RuleResult:
    original: str
    folded: str
    language: str
    images: int
    context: SessionContext
    params: Extracted
    styles: list[StyleMention]
    cues: list[Cue]
    steps: list[DraftStep]
    confidence: float
    segments: list[Segment]
    uncovered: list[Segment]  # sequential clauses no cue explains
    general: str | None = None  # why the message is general, when it is
    quotes: list[Span] = field(default_factory=list)  # verbatim quoted text (masked in folded)

    @property
    def intents(self) -> list[str]:
        return [s.intent for s in self.steps]


def _overlaps(span: Span, spans: list[Span]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in spans)


def _window_start(folded: str, pos: int, prev_end: int) -> int:
    start = prev_end
    for match in _CLAUSE_BREAK.finditer(folded, prev_end, pos):
        start = max(start, match.end())
    return start


# "sketch", "render", "design" after an article and a modifier are nouns ("a pencil sketch of
# a dog", "a quick sketch", "a 3d render of", "a logo design for"), not the generation verb.
_NOUN_VERB = re.compile(r"(?:sketch|sketches|render|renders|design|designs|creation)$")
_NOUN_BEFORE = re.compile(
    r"(?:(?:^|[\s,:;(])(?:an?|the|une?|some|one|my|our|your|his|her|their|this|that|\d+)\s+"
    r"(?:[\w'-]+\s+){0,2}|(?:^|\s)(?:pencil|charcoal|ink|quick|rough|loose|3d|digital|"
    r"graphite|concept|line|fashion|architectural|logo|crayon|fusain)\s+)$")
_MODAL_BEFORE = re.compile(r"\b(?:can|could|will|would|to|and|then|please|pls|u|you|i|we|"
                           r"let's)\s+$")


def _noun_reading(folded: str, span: Span) -> bool:
    if not _NOUN_VERB.search(folded[span[0]:span[1]]):
        return False
    before = folded[max(0, span[0] - 40):span[0]]
    return bool(_NOUN_BEFORE.search(before)) and not _MODAL_BEFORE.search(before)


def find_cues(folded: str, *, claimed: list[Span] | None = None) -> list[Cue]:
    taken: list[Span] = list(claimed or [])
    cues: list[Cue] = []
    # the patterns' required strings present in the message: a pattern none of whose strings
    # is present cannot match, and its regex is not run (~2.5x faster on a short message)
    present = present_needs(folded)
    for pattern in PATTERNS:
        if pattern.needs is not None and pattern.needs.isdisjoint(present):
            continue
        for match in pattern.regex.finditer(folded):
            span = match.span()
            # trim leading separators a pattern may have consumed
            while span[0] < span[1] and not folded[span[0]].isalnum():
                span = (span[0] + 1, span[1])
            if span[0] >= span[1] or _overlaps(span, taken):
                continue
            if pattern.name == "generate" and _noun_reading(folded, span):
                continue
            taken.append(span)
            cues.append(Cue(pattern.intent, span, pattern.weight, pattern.name,
                            negated=pattern.veto, weak=pattern.weak))
    cues.sort(key=lambda c: c.span[0])
    prev_end = 0
    for cue in cues:
        window = folded[_window_start(folded, cue.span[0], prev_end):cue.span[0]]
        if not cue.negated and _NEGATION.search(window):
            cue.negated = True
        prev_end = cue.span[1]
    return cues


def split_segments(folded: str) -> list[Segment]:
    segments: list[Segment] = []
    pos, sequential = 0, False
    for match in SEQ_CONNECTOR.finditer(folded):
        if match.start() > pos:
            segments.append(Segment((pos, match.start()), sequential))
        pos, sequential = match.end(), True
    if pos < len(folded):
        segments.append(Segment((pos, len(folded)), sequential))
    return [s for s in segments if folded[s.span[0]:s.span[1]].strip()] or \
        [Segment((0, len(folded)), False)]


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9][a-z0-9'-]*", text) if w not in STOPWORDS]


def _style_cues(styles: list[StyleMention], cues: list[Cue], folded: str) -> None:
    """Explicit style phrases ("in the style of X", "X style", "style X") no pattern claimed
    become style cues; bare style words stay parameters (a generation's style)."""
    taken = [c.span for c in cues]
    for mention in styles:
        if not mention.explicit or _overlaps(mention.span, taken):
            continue
        cues.append(Cue(S, mention.span, GOOD, "style-phrase", style=mention.value))
    cues.sort(key=lambda c: c.span[0])
    prev_end = 0
    for cue in cues:
        if cue.name == "style-phrase":
            window = folded[_window_start(folded, cue.span[0], prev_end):cue.span[0]]
            cue.negated = bool(_NEGATION.search(window))
        prev_end = cue.span[1]


def _style_of(cue: Cue, styles: list[StyleMention]) -> str | None:
    if cue.style:
        return cue.style
    inside = [m for m in styles if m.span[0] < cue.span[1] + 2 and cue.span[0] < m.span[1]]
    return inside[0].value if inside else None


def analyze(message: str, images: int = 0, context: SessionContext | None = None
            ) -> RuleResult:
    """Run the rules on one message. Never raises on text content."""
    context = context or SessionContext()
    original = nfc(message)
    folded = fold(original)
    # "upsacle x4", "remov bg": operation-word typos, corrected where the rest fits
    edits = find_typos(folded, quoted_spans(folded) if ('"' in folded or "'" in folded) else None)
    if edits:
        original = apply_edits(original, edits, keep_case=True)
        folded = apply_edits(folded, edits)
    language = detect_language(folded)
    # Quoted words to write in the image ('a sign saying "remove the background"') are
    # neither instructions nor parameters: the rules read the text with their inside blanked.
    quotes = verbatim_quotes(folded)
    folded = mask_spans(folded, quotes)
    has_image = images > 0 or bool(context.last_image_id)
    cues = find_cues(folded)
    if images:  # "a watercolor painting of a dog" with a photo attached: restyle it
        cues = [c for c in cues if c.name != "style-art"]
    look = [] if images else _look_like_cues(folded, claimed=[c.span for c in cues
                                                            if c.intent != G],
                                             definite_ok=not has_image)
    if look:
        cues = [c for c in cues if not (c.intent == G and _overlaps(c.span, [x.span
                                                                           for x in look]))]
        cues = sorted(cues + look, key=lambda c: c.span[0])
    styles = find_styles(folded, [c.span for c in look], language=language)
    explicit = [m.span for m in styles if m.explicit]
    # "style bande dessinée": a generation verb inside a style phrase is part of its name
    cues = [c for c in cues if not (c.intent == G and any(s <= c.span[0] and c.span[1] <= e
                                                          for s, e in explicit))]
    _style_cues(styles, cues, folded)
    segments = split_segments(folded)
    if has_image:
        cues = _follow_up(folded, cues, segments)
    params = extract(folded, original, cue_spans=[c.span for c in cues if not c.negated])
    for seg in segments:
        seg.cues = [c for c in cues if seg.span[0] <= c.span[0] < seg.span[1]]

    result = RuleResult(original=original, folded=folded, language=language, images=images,
                        context=context, params=params, styles=styles, cues=cues, steps=[],
                        confidence=0.0, segments=segments, uncovered=[], quotes=quotes)
    active = [c for c in cues if not c.negated]
    has_generation = any(c.intent == G and not c.weak for c in active)

    # Weak cues: only where nothing stronger explains the message.
    kept: list[Cue] = []
    for cue in active:
        if cue.weak and any(not c.weak and segment_of(segments, c.span[0]) is
                            segment_of(segments, cue.span[0]) for c in active):
            continue
        if cue.weak and cue.intent == U and (has_generation or not has_image):
            continue
        if cue.weak and cue.intent == U and any(c.intent == U and not c.weak for c in active):
            continue
        if cue.weak and cue.intent == G and (has_image or any(
                not c.weak and c.intent in (G, E, S, F) for c in active)):
            continue
        kept.append(cue)
    active = kept

    active = _drop_subsumed(folded, active)

    # General: information questions override; greetings only when nothing else is asked.
    greeting = _GREETING.search(folded)
    # a question about the image itself ("what is in this photo?") is an analysis, not chat
    about_image = has_image and any(c.intent == A and not c.weak for c in active)
    if not about_image and ((_INFO_Q.search(folded) and not _REQUEST_IN_QUESTION.search(folded)
                             and not look) or _about_the_service(folded, images)):
        result.general = "question"
    elif not active and greeting and len(content_words(folded[greeting.end():])) <= 3:
        result.general = "greeting"  # "thanks, that's perfect"; not "hi! a cat on a bike"
    elif _GENERAL_CUE.search(folded) and not [c for c in active if not c.weak]:
        result.general = "help"
    if result.general:
        result.steps = [DraftStep(Q, 0, len(folded), [], SURE, region=(0, len(folded)))]
        result.confidence = SURE
        return result

    steps = _build_steps(result, active, has_image)
    result.steps = steps
    _mark_uncovered(result)
    conf = min((s.confidence for s in steps), default=0.0)
    if result.uncovered:
        conf = min(conf, 0.5)
    result.confidence = conf
    return result


# --- quoted text ---------------------------------------------------------------------------

_TEXT_INTRO = re.compile(
    r"\b(?:says?|saying|said|reads?|reading|read|called|named|titled|entitled|text|words?|"
    r"caption(?:ed)?|slogan|tagline|name|label(?:led)?|lettering|inscription|writing|written|"
    r"spelling|spells|motto|headline|title|dit|disant|intitulee?s?|appelee?s?|nommee?s?|"
    r"texte|mots?|inscrit|ecrit|marque|enseigne|devise|titre|legende)\W{0,3}$")


def verbatim_quotes(folded: str) -> list[Span]:
    """Quoted passages that are text for the image (a sign's words, a name): after "says",
    "called", "the text"…, or short and inside a longer description. A message that only
    quotes its whole prompt (`generate "a cat on a mat"`) is not verbatim text."""
    spans = quoted_spans(folded)
    if not spans:
        return []
    outside = content_words(mask_spans(folded, spans).replace('"', " ").replace("'", " "))
    kept = []
    for start, end in spans:
        intro = _TEXT_INTRO.search(folded, max(0, start - 30), start)
        short = len(folded[start + 1:end - 1].split()) <= 5
        if intro or (short and len(outside) >= 2):
            kept.append((start, end))
    return kept


# --- "what would X look like" ---------------------------------------------------------------

_NOT_SUBJECT = (r"(?!(?:it|this|that|i|me|my|we|us|our|he|she|him|her|they|them|you|your|"
                r"these|those|ca|cela|ceci|il|elle|mon|ma|mes|cette|ce|cet|notre|nos|would|"
                r"might|could|will|may|does|do|should|can|is|are)\b)")
_LOOK_LEAD = re.compile(
    rf"\b(?:(?:show|tell)\s+me\s+|let\s+me\s+see\s+|i\s+wonder\s+|i'm\s+curious\s+)?"
    rf"(?:what|how)\s+(?:(?:would|might|could|will|may|does|do)\s+)?{_NOT_SUBJECT}"
    rf"(?=(?:[\w'-]+[\s,]+){{1,12}}?(?:(?:would|might|could|will|may)\s+)?(?:look|looks)\b)")
_LOOK_TAIL = re.compile(r"\s(?:(?:would|might|could|will|may)\s+)?(?:look|looks)(?:\s+like)?\b")
_FR_LOOK = re.compile(
    rf"\b(?:montre[\s-]*moi\s+|dis[\s-]*moi\s+)?a\s+quoi\s+(?:(?:pourrai(?:t|ent)|"
    rf"devrai(?:t|ent)|va|vont)\s+)?(?:ressembler|ressemblerai(?:t|ent)|ressemble(?:nt)?)\s+"
    rf"{_NOT_SUBJECT}(?=\w)")


def _look_like_cues(folded: str, *, claimed: list[Span], definite_ok: bool = True
                    ) -> list[Cue]:
    """'Show me what an underwater hotel room could look like', 'how would X look', 'à quoi
    ressemblerait X': a request to see X (generation). Two cues, the words before X and the
    'would look like' after it, so the prompt is X (and what follows: "…look like as a
    knight"). Not asked about an attached image (the caller skips those), nor, with an image
    in the session, about "the dog" in it (`definite_ok`)."""
    out: list[Cue] = []
    lead = _LOOK_LEAD.search(folded)
    if lead and not definite_ok and re.match(r"(?:the|his|her|their|its|le|la|les|l')\b",
                                             folded[lead.end():]):
        return []
    if lead:
        tail = _LOOK_TAIL.search(folded, lead.end())
        if tail:
            out = [Cue(G, lead.span(), SURE, "look-like"),
                   Cue(G, (tail.start() + 1, tail.end()), SURE, "look-like")]
    else:
        fr = _FR_LOOK.search(folded)
        if fr:
            out = [Cue(G, (fr.start(), fr.end() - 1 if folded[fr.end() - 1] == " " else
                           fr.end()), SURE, "look-like")]
    return [] if any(_overlaps(c.span, claimed) for c in out) else out


# --- follow-ups on the session's image ------------------------------------------------------

# "the same thing/scene/size but …": nothing to keep in the prompt but the change
_SAME_PRONOUN = (r"(?:thing|things|scene|one|image|picture|photo|pic|again|idea|composition|shot|"
                 r"setup|version|exact\s+(?:thing|one|image)|size|colou?rs?|style|pose|angle|"
                 r"framing|lighting|layout|format|chose|image|scene|photo|version|idee|"
                 r"composition|taille|couleurs?|style|pose|angle|cadrage|eclairage)")
_FOLLOW_UPS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # "keep everything the same but …", "garde tout pareil mais …"
    ("follow-up", re.compile(
        r"\b(?:keep(?:ing)?|leave)\s+(?:everything|it|all|the\s+rest|the\s+image)(?:\s+else)?"
        r"\s+(?:the\s+)?(?:same|as\s+is|unchanged)\s*,?\s*(?:but|except|and\s+just|just)\b|"
        r"\b(?:garde[rz]?|on\s+garde)\s+tout\s+(?:pareil|identique|la\s+meme\s+chose)\s*,?\s*"
        r"(?:mais|sauf)\b")),
    # "(make) another one like this but …", "one more like that", "another version of this"
    ("follow-up", re.compile(
        r"\b(?:(?:make|do|give|create|generate|draw|render|try)\s+(?:me\s+|us\s+)?)?"
        r"(?:another(?:\s+one)?|one\s+more|a\s+new\s+one|a\s+second\s+one|a\s+different\s+one)"
        r"\s+(?:(?:just|exactly|very\s+much|more\s+or\s+less)\s+)?(?:like|similar\s+to|as)\s+"
        r"(?:this|that|it|the\s+(?:last|previous|first)(?:\s+one)?|before)(?:\s+one)?\s*,?\s*"
        r"(?:(?:but|except|only)\b)?|"
        r"\b(?:(?:make|do|give|create|generate|draw|render|try)\s+(?:me\s+|us\s+)?)?"
        r"(?:another(?:\s+one)?|one\s+more)\s*,?\s*(?:but|except)\b|"
        r"\b(?:(?:re)?fai(?:s|tes)(?:[\s-]+(?:en|moi))?[\s-]+une?(?:\s+autre)?|une?\s+autre)\s*,?\s*"
        r"(?:mais|sauf)\b|"
        r"\b(?:redo|remake|refais|refaites|recommence)(?:[\s-]+(?:it|this|that|la|le|les))?\s*,?\s*"
        r"(?:but|except|mais|sauf)\b|"
        r"\b(?:(?:make|do|give|create|generate)\s+(?:me\s+)?)?(?:another|a\s+new|a\s+different|"
        r"a\s+second)\s+version\s+(?:of\s+)?(?:this|that|it)(?:\s+one)?\s*,?\s*"
        r"(?:(?:but|except)\b)?|"
        r"\b(?:(?:re)?fai(?:s|tes)|genere|cree|donne)(?:[\s-]+(?:en|moi|nous))?[\s-]+(?:une?\s+)?"
        r"(?:(?:autre|nouvelle|deuxieme|seconde)\s+)?(?:version\s+|image\s+)?(?:comme|pareille?\s+"
        r"(?:a|que)|similaire\s+a)\s+(?:ca|cela|ceci|celle-ci|celui-ci|celle-la|celui-la|"
        r"la\s+derniere|la\s+precedente)\s*,?\s*(?:(?:mais|sauf)\b)?|"
        r"\b(?:une?\s+)?(?:autre|nouvelle)\s+(?:version\s+|image\s+)?(?:comme|pareille?\s+"
        r"(?:a|que)|similaire\s+a)\s+(?:ca|cela|ceci|celle-ci|celui-ci|celle-la|celui-la)\s*,?\s*"
        r"(?:(?:mais|sauf)\b)?")),
    # "the same X but …" / "le même X mais …" (X kept unless a pronoun: "same thing")
    ("follow-up-same", re.compile(
        r"\b(?:the\s+)?(?:exact\s+)?same(?P<x>\s+(?:[\w'-]+\s+){0,3}?)?\s*,?\s*"
        r"(?:but|except|only)\b|"
        r"\b(?:la|le|les)\s+memes?(?P<x2>\s+(?:[\w'-]+\s+){0,3}?)?\s*,?\s*(?:mais|sauf)\b")),
    # "similar but …", "pareil mais …", "like this but …"
    ("follow-up", re.compile(
        r"\b(?:something\s+)?similar(?:\s+to\s+(?:this|that|it))?\s*,?\s*(?:but|except)\b|"
        r"^\W*(?:just\s+)?like\s+(?:this|that)\s*,?\s*but\b|"
        r"\b(?:pareil|pareille|pareils|similaire|idem|identique|a\s+l'identique)\s*,?\s*"
        r"(?:mais|sauf)\b|"
        # "do it again but with a hat", "encore une fois mais avec un chapeau"
        r"\b(?:again|once\s+more|one\s+more\s+time|encore(?:\s+une\s+fois)?|"
        r"une\s+nouvelle\s+fois|de\s+nouveau)\s*,?\s*(?:but|except|mais|sauf)\b|"
        r"^\W*(?:but|mais)\s+(?=(?:in|with|at|as|during|under|en|avec|la|de|sous|au)\b)|"
        # "la même en plus sombre", "pareil en moins saturé"
        r"^\W*(?:(?:la|le|les)\s+memes?(?:\s+chose)?|pareil|pareille|idem)\s*,?\s*"
        r"(?=en\s+(?:plus|moins)\b)")),
    # "now in black and white", "this time with a hat", "maintenant avec de la neige"
    ("follow-up-now", re.compile(
        r"^\W*(?:(?:and|ok(?:ay)?|great|nice|cool|good|et|bon|super)\W+)?(?:now|this\s+time|"
        r"next|maintenant|cette\s+fois(?:-ci)?|a\s+present)\s*,?\s*"
        r"(?=(?:in|with|without|at|as|during|under|on|covered|wearing|from|seen|by|en|avec|sans|"
        r"de\s+nuit|la\s+nuit|au|a\s+la|sous|dans|vue?\s+d[eu])\b)")),
)
_NEW_IMAGE = re.compile(
    r"\b(?:new\s+(?:image|picture|photo|drawing|scene|subject)|brand[\s-]new|from\s+scratch|"
    r"(?:completely|totally|entirely)\s+different|something\s+(?:else|different)|"
    r"nouvelle\s+image|autre\s+chose|de\s+zero|rien\s+a\s+voir|tout\s+autre)\b")


_CLITIC = re.compile(r"(?:(?:-|\s+)(?:la|le|les|l'|moi|nous|it|this|that|them)\b|"
                     r"\s*(?<=\s|')(?:image|photo|picture|pic|one)\b)+")
# "redo it *exactly* the same but …", "refais-le *exactement* pareil mais …"
_EXACTLY = re.compile(r"\b(?:exactly|precisely|just|exactement|precisement|juste|tout\s+a\s+fait)"
                      r"\s+$")


def _follow_up(folded: str, cues: list[Cue], segments: list[Segment]) -> list[Cue]:
    """With an image to work on, 'the same X but Y', 'another one like this but Y', 'now in
    black and white' ask to change that image: an edit whose prompt is the change (the
    wrapper words become edit cues the prompt leaves out). Not when the change names another
    operation ("the same but bigger": an upscale) or the user asks for something new."""
    for name, pattern in _FOLLOW_UPS:
        match = pattern.search(folded)
        if not match or match.end() <= match.start():
            continue
        if name == "follow-up-now" and _NEW_IMAGE.search(folded):
            continue
        seg = segment_of(segments, match.start())
        change = (match.end(), seg.span[1])
        if not content_words(folded[change[0]:change[1]]):
            continue
        redo = [c for c in cues if c.intent == G and c.name == "again" and not c.negated
                and seg.span[0] <= c.span[0] and c.span[1] <= match.start()]
        if any(c.intent not in (G, E) and not c.negated and change[0] <= c.span[0] < change[1]
               for c in cues):
            # "redo it the same but bigger", "refais-la pareil mais en aquarelle": the other
            # operation, on the same image (no new generation first)
            return [c for c in cues if c not in redo] if redo else cues
        wrapper: list[Cue] = []
        x = match.groupdict().get("x") or match.groupdict().get("x2")
        if name == "follow-up-same" and x and x.strip() and not re.fullmatch(
                _SAME_PRONOUN, x.strip()):
            x_start = match.start("x") if match.groupdict().get("x") else match.start("x2")
            x_end = x_start + len(x)
            # "the same dog but …": the subject stays, the words around it go
            wrapper = [Cue(E, (match.start(), x_start), SURE, "follow-up-same"),
                       Cue(E, (x_end, match.end()), SURE, "follow-up-but")]
        else:
            wrapper = [Cue(E, match.span(), SURE, "follow-up")]
        wrapper = [c for c in wrapper if folded[c.span[0]:c.span[1]].strip()]
        # "refais-la pareil mais …", "redo it the same but …": the redo is the same edit
        for c in redo:
            clitic = _CLITIC.match(folded, c.span[1], match.start())
            wrapper.append(Cue(E, (c.span[0], clitic.end() if clitic else c.span[1]), SURE,
                               "follow-up"))
        exactly = _EXACTLY.search(folded, seg.span[0], match.start())
        if exactly:
            wrapper.append(Cue(E, (exactly.start(), exactly.end() - 1), SURE, "follow-up"))
        spans = [c.span for c in wrapper] + [match.span()]
        kept = [c for c in cues if not (c.intent == G and _overlaps(c.span, spans))]
        if any(_overlaps(c.span, spans) for c in kept):
            continue  # another operation's words: not a follow-up
        return sorted(kept + wrapper, key=lambda c: c.span[0])
    return cues


_DET_ONLY = re.compile(r"^\s*(?:(?:an?|the|some|une?|des|quick|new|nice|good|proper|little|small|"
                       r"petite?|rapide|nouvel(?:le)?|nouveau|vraie?|real)\s+){0,3}$")
_BY_MEANS = re.compile(r"\b(?:by|via|through|using)\s*$")


def _drop_subsumed(folded: str, cues: list[Cue]) -> list[Cue]:
    """'make a face swap', 'fais un échange de visage': the verb's object is an operation, so
    the generic generation verb goes. 'put me in this poster by swapping my face': the means
    ("by …") names the operation, so the goal's cue goes."""
    drop: set[int] = set()
    for i, cue in enumerate(cues):
        nxt = cues[i + 1] if i + 1 < len(cues) else None
        if (cue.intent == G and cue.name in ("make-a", "generate", "want-image") and nxt
                and nxt.intent != G and _DET_ONLY.match(folded[cue.span[1]:nxt.span[0]])):
            drop.add(i)
        if i > 0 and _BY_MEANS.search(folded[cues[i - 1].span[1]:cue.span[0]]) and \
                cues[i - 1].intent != cue.intent and cue.intent != G:
            drop.add(i - 1)
    return [c for i, c in enumerate(cues) if i not in drop]


_NEW_SUBJECT = re.compile(
    rf"\b(?:an?|une?|des|some|two|three|four|\d+)\s+(?!(?:style|look|version|filter|effect|"
    r"vibe|feel|touch|aesthetic|effet|filtre|rendu|bit|little|lot|more|same|new|different|"
    rf"other|autre|meme|peu|cartoon|comic|caricature)\b|{ART_NOUN})[a-z][\w'-]*")


def _new_subject(result: RuleResult, seg: Segment, cue: Cue) -> bool:
    """The clause names something new to draw ("character of a grumpy mailman"), outside the
    style phrase, with no word pointing at an existing image."""
    text = blank_spans(result.folded, [m.span for m in result.styles])
    text = text[seg.span[0]:seg.span[1]]
    return bool(_NEW_SUBJECT.search(text)) and not _DEICTIC.search(_DATIVE.sub(" ", text))


def _build_steps(result: RuleResult, cues: list[Cue], has_image: bool) -> list[DraftStep]:
    folded, styles = result.folded, result.styles
    steps: list[DraftStep] = []
    pending_styles: list[str | None] = []  # style phrases seen before their generation cue
    gen_spans = [c.span for c in cues if c.intent == G]
    for cue in cues:
        intent = cue.intent
        weight = cue.weight
        style = _style_of(cue, styles) if intent == S else None
        if intent == S:
            # A style phrase next to a generation cue is that generation's style.
            seg = segment_of(result.segments, cue.span[0])
            gen_here = [s for s in gen_spans if seg.span[0] <= s[0] < seg.span[1]]
            earlier_gen = [s for s in gen_here if s[0] < cue.span[0]]
            if earlier_gen or (gen_here and cue.name in ("style-phrase", "in-style-short")):
                target = next((st for st in reversed(steps) if st.intent == G), None)
                if target is None:
                    pending_styles.append(style)  # "in watercolor style, draw a fox"
                elif not target.style:
                    target.style = style
                continue
            # "give me a ghibli style landscape": "me" is who gets it, not what is restyled
            deictic = cue.name == "style-art-of-image" or bool(
                _DEICTIC.search(_DATIVE.sub(" ", folded[cue.span[0]:cue.span[1]])))
            prev_image_step = bool(steps)
            if not (has_image or deictic or prev_image_step):
                # "a watercolor painting of a fox" with no image: a generation in that style
                intent, weight = G, min(weight, FAIR)
            elif (not result.images and not deictic and not prev_image_step
                  and _new_subject(result, seg, cue)):
                # only the session's image, and the style comes with a new subject ("a
                # grumpy mailman in pixar style"): a generation in that style, not a restyle
                intent, weight = G, min(weight, FAIR)
            elif not (has_image or prev_image_step):
                weight = min(weight, FAIR)  # asks to restyle an image nobody gave (yet)
        if steps and steps[-1].intent == intent and intent not in (Q,):
            last = steps[-1]
            last.cues.append(cue)
            last.end = max(last.end, cue.span[1])
            last.confidence = max(last.confidence, weight)
            if style and not last.style:
                last.style = style
            continue
        steps.append(DraftStep(intent, cue.span[0], cue.span[1], [cue], weight,
                               style=style if intent in (S, G) else None))
        if intent == G and pending_styles:
            steps[-1].style = steps[-1].style or pending_styles.pop()

    # Generation style from a style word in its own text ("an anime girl", "en aquarelle").
    attach_regions(result, steps)
    for step in steps:
        if step.intent == G and not step.style:
            inside = [m for m in styles if step.region[0] <= m.span[0] < step.region[1]]
            if inside:
                step.style = inside[0].value

    if not steps and not result.general:
        # Nothing recognised: a plain description with no image is a generation (weakly).
        words = content_words(folded)
        if words and not has_image:
            step = DraftStep(G, 0, 0, [], 0.55 if len(words) >= 2 else 0.4)
            steps.append(step)
            attach_regions(result, steps)
            if styles:
                step.style = styles[0].value
    _generation_first(result, steps, has_image)
    _reorder(result, steps)
    return steps


_REFERS_TO_IMAGE = re.compile(
    r"\b(?:photo|photos|picture|pictures|pic|pics|image|images|selfie|upload\w*|attach\w*|"
    r"file|i|we|i'm|i've|je|j'|on|nous)\b")


def _generation_first(result: RuleResult, steps: list[DraftStep], has_image: bool) -> None:
    """'A red sports car in the desert, then make it anime style' with no image anywhere: the
    description before the first operation is what to generate first (not a missing image)."""
    if has_image or not steps or any(s.intent in (G, Q) for s in steps):
        return
    first = min(c.span[0] for s in steps for c in s.cues) if any(s.cues for s in steps) else 0
    before = result.folded[:first]
    claimed = result.params.claimed()
    text = "".join(" " if any(a <= i < b for a, b in claimed) else ch
                   for i, ch in enumerate(before))
    if (len(content_words(text)) < 2 or _GREETING.match(text) or _DEICTIC.search(text)
            or _REFERS_TO_IMAGE.search(text) or _INFO_Q.search(text)):
        return
    steps.insert(0, DraftStep(G, 0, 0, [], FAIR))
    attach_regions(result, steps)
    styles = [m for m in result.styles if m.span[0] < first]
    if styles:
        steps[0].style = styles[0].value


def segment_of(segments: list[Segment], pos: int) -> Segment:
    for seg in segments:
        if seg.span[0] <= pos < seg.span[1]:
            return seg
    return segments[-1]


def attach_regions(result: RuleResult, steps: list[DraftStep]) -> None:
    """Each step's text runs from its first cue to the next step's first cue; a generation
    without a verb cue starts at the beginning of its clause."""
    folded = result.folded
    starts = sorted(s.start for s in steps)
    for step in steps:
        # by position in the text, not in the plan ("X after Y-ing" reorders the plan)
        end = next((s for s in starts if s > step.start), len(folded))
        start = step.start
        # (a style phrase read as a generation: "a picnic in a park, watercolor style")
        if step.intent == G and (not step.cues or step.cues[0].weak
                                 or step.cues[0].intent != G) and step.start == starts[0]:
            start = min(start, segment_of(result.segments, step.start).span[0])
        step.region = (start, end)


def _reorder(result: RuleResult, steps: list[DraftStep]) -> None:
    """'X after Y-ing' → Y, X; 'before X-ing, Y' → Y, X; 'X but first Y' → Y, X."""
    folded = result.folded
    i = 0
    moved = set()
    while i < len(steps):
        step = steps[i]
        seg_start = max(0, step.start - 40)
        before = folded[seg_start:step.start]
        key = id(step)
        if key in moved:
            i += 1
            continue
        if i > 0 and _AFTER.search(before):
            steps[i - 1], steps[i] = steps[i], steps[i - 1]
            moved.add(key)
            i = max(0, i - 1)
            continue
        if i + 1 < len(steps) and _BEFORE.search(before):
            steps[i], steps[i + 1] = steps[i + 1], steps[i]
            moved.add(key)
            continue
        if i > 0 and _FIRST.search(before) and re.search(r"\bbut\b|\bmais\b", before):
            steps.insert(0, steps.pop(i))
            moved.add(key)
            continue
        i += 1


def _mark_uncovered(result: RuleResult) -> None:
    """Sequential clauses with content no cue (negated or not) or parameter explains."""
    claimed = result.params.claimed() + [m.span for m in result.styles]
    for seg in result.segments:
        if not seg.sequential or seg.cues:
            continue
        text = result.folded[seg.span[0]:seg.span[1]]
        chars = list(text)
        for s, e in claimed:
            for k in range(max(s, seg.span[0]), min(e, seg.span[1])):
                chars[k - seg.span[0]] = " "
        words = content_words("".join(chars))
        if len(words) >= 1 and not re.fullmatch(r"(?:please|pls|thanks?|merci|stp|svp|"
                                                r"s'il\s+te\s+plait|ok|done|that's\s+it)",
                                                " ".join(words)):
            result.uncovered.append(seg)
