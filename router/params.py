"""Parameter extraction from a chat message: size, count, seed, scale, style, negative terms,
target face. English and French.

Every extractor works on the folded text (`router.text.fold`: lower case, no accents, same
length as the original) and returns the character spans it used, so the planner can cut the
parameters out of the subject prompt and the rules can skip them. Values that need the
user's spelling (negative terms, free-text styles) are read from the original text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from router import styles as style_presets
from router.text import NUMBER_RE, fold, parse_number, squash

Span = tuple[int, int]

# Sizes the orientation words stand for (SDXL-class defaults; the generator validates and
# snaps them to its own limits).
SQUARE = (1024, 1024)
PORTRAIT = (768, 1024)
LANDSCAPE = (1024, 768)
_LONG_SIDE = 1024


def _ratio_size(w: int, h: int) -> tuple[int, int]:
    """Width/height for an aspect ratio, long side 1024, multiples of 8."""
    if w >= h:
        return _LONG_SIDE, max(8, int(round(_LONG_SIDE * h / w / 8)) * 8)
    return max(8, int(round(_LONG_SIDE * w / h / 8)) * 8), _LONG_SIDE


@dataclass
class Extracted:
    """Parameters found in a message, with the spans they came from."""

    width: int | None = None
    height: int | None = None
    aspect: str | None = None
    n: int | None = None
    seed: int | None = None
    scale: int | None = None
    scale_span: Span | None = None
    negative_terms: list[str] = field(default_factory=list)
    negative_spans: list[Span] = field(default_factory=list)
    target_face_index: int | None = None
    all_faces: bool = False
    spans: dict[str, list[Span]] = field(default_factory=dict)
    # Words inside a claimed span that the subject prompt keeps ("2 logos" -> n=2 and the
    # prompt keeps "logo"): (span, text to write there), the text no longer than the span.
    keep: list[tuple[Span, str]] = field(default_factory=list)

    def add_span(self, name: str, span: Span) -> None:
        self.spans.setdefault(name, []).append(span)

    def claimed(self) -> list[Span]:
        return [s for spans in self.spans.values() for s in spans]


def _overlaps(span: Span, spans: list[Span]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in spans)


# --- size ----------------------------------------------------------------------------------

_SIZE_RE = re.compile(
    r"\b(\d{2,5})\s*(?:x|\*|by|par|sur)\s*(\d{2,5})\b(?:\s*(?:px|pixels?)\b)?")
_RATIO_RE = re.compile(
    r"(?:\b(?:aspect\s+ratio|ratio|format|aspect)\s+(?:of\s+|de\s+)?)?"
    r"\b(\d{1,2})\s*:\s*(\d{1,2})\b(?:\s+(?:aspect\s+ratio|ratio|format|aspect))?")
_ORIENT_WORDS = {
    "square": "square", "carre": "square", "carree": "square",
    "portrait": "portrait", "vertical": "portrait", "verticale": "portrait",
    "landscape": "landscape", "paysage": "landscape", "horizontal": "landscape",
    "horizontale": "landscape", "widescreen": "landscape", "panoramic": "landscape",
    "panoramique": "landscape",
}
_ORIENT_RE = re.compile(
    r"(?P<pre>\b(?:in|en|au|as\s+an?|as|format|mode|orientation|aspect)\s+)?"
    r"\b(?P<word>square|carree?|portrait|vertical|verticale|landscape|paysage|horizontale?|"
    r"widescreen|panorami(?:c|que))\b"
    r"(?P<post>\s+(?:format|mode|orientation|aspect(?:\s+ratio)?|ratio|crop|size|shape|"
    r"image|picture|photo|version)\b)?")
_KNOWN_RATIOS = {(1, 1), (4, 3), (3, 4), (16, 9), (9, 16), (3, 2), (2, 3), (21, 9), (9, 21),
                 (5, 4), (4, 5), (2, 1), (1, 2)}


def find_size(folded: str, out: Extracted) -> None:
    match = _SIZE_RE.search(folded)
    if match:
        out.width, out.height = int(match.group(1)), int(match.group(2))
        out.add_span("size", match.span())
        return
    for match in _RATIO_RE.finditer(folded):
        ratio = (int(match.group(1)), int(match.group(2)))
        if ratio in _KNOWN_RATIOS:
            out.width, out.height = _ratio_size(*ratio)
            out.aspect = f"{ratio[0]}:{ratio[1]}"
            out.add_span("size", match.span())
            return
    for match in _ORIENT_RE.finditer(folded):
        word = match.group("word")
        kind = _ORIENT_WORDS[word]
        pre, post = match.group("pre"), match.group("post")
        if post and post.strip() in ("image", "picture", "photo", "version") and kind != "square":
            post = None  # "a portrait photo of X" is a subject, not an orientation
        before = folded[:match.start("word")].rstrip()
        after = folded[match.end("word"):].lstrip()
        bounded = (not before or before[-1] in ",;:(") and (not after or after[0] in ",;.!?)")
        if not (pre and pre.strip() not in ("as",)) and not post and not bounded:
            continue
        if kind == "portrait" and pre is None and post is None and after.startswith("of"):
            continue
        out.width, out.height = {"square": SQUARE, "portrait": PORTRAIT,
                                 "landscape": LANDSCAPE}[kind]
        out.aspect = kind
        out.add_span("size", match.span())
        return


# --- count ---------------------------------------------------------------------------------

# What a count counts. Medium nouns only say "images" and leave the prompt with the number
# ("3 images of a cabin" -> n=3, "a cabin"); subject nouns are what each image shows and stay
# in it, in the singular ("2 logos for a bakery" -> n=2, "logo for a bakery").
_MEDIUM_NOUNS = (
    r"images?|pictures?|pics?|variations?|variants?|versions?|options?|renders?|renderings?|"
    r"shots?|alternatives?|takes?|samples?|outputs?|concepts?|ideas?|examples?|suggestions?|"
    r"variantes?|propositions?|declinaisons?|essais?|rendus?|visuels?|exemplaires?|tirages?|"
    r"exemples?|idees?"
)
_SUBJECT_NOUNS = (
    r"photos?|photographs?|illustrations?|drawings?|paintings?|wallpapers?|logos?|posters?|"
    r"icons?|stickers?|portraits?|designs?|covers?|avatars?|banners?|thumbnails?|artworks?|"
    r"mockups?|mascots?|flyers?|badges?|emojis?|sketches|sketch|postcards?|invitations?|"
    r"labels?|menus?|patterns?|textures?|cartes?\s+postales?|etiquettes?|"
    r"dessins?|affiches?|peintures?|autocollants?|bannieres?|icones?|mascottes?|"
    r"fonds?\s+d'ecran|vignettes?|miniatures?|tableaux|tableau|croquis|logotypes?"
)
_COUNT_NOUNS = f"{_SUBJECT_NOUNS}|{_MEDIUM_NOUNS}"
_MEDIUM_RE = re.compile(rf"(?:{_MEDIUM_NOUNS})$")
_COUNT_FILLER = (r"different|distinct|more|other|new|unique|separate|alternative|quick|"
                 r"possible|autres?|nouvelles?|nouveaux|differente?s?|possibles?")
_COUNT_RE = re.compile(
    rf"\b(?P<num>{NUMBER_RE})\s+(?:(?P<adj>{_COUNT_FILLER})\s+)?"
    rf"(?:(?P<free>(?!(?:{_COUNT_NOUNS})\b)[a-z][\w-]*)\s+)?"
    rf"(?P<n1>{_COUNT_NOUNS})\b(?:\s+(?P<n2>{_COUNT_NOUNS})\b)?")
_COUNT_KV_RE = re.compile(r"\b(?:n|count|num|number of images|nombre d'images|nombre)\s*[=:]"
                          r"\s*(\d{1,3})\b")
_NOT_COUNT_BEFORE = {"these", "those", "the", "my", "our", "your", "both", "ces", "les", "mes",
                     "nos", "vos", "between", "entre", "into", "en", "of", "last", "first",
                     "derniers", "dernieres"}
_SINGULAR = {"sketches": "sketch", "tableaux": "tableau", "fonds": "fond", "croquis": "croquis"}


def singular(text: str) -> str:
    """The singular of a counted noun as the user spelled it ("Logos" -> "Logo", "fonds
    d'écran" -> "fond d'écran", "icônes" -> "icône")."""
    words = text.split(" ")
    for i, word in enumerate(words):
        low = word.lower()
        if low in _SINGULAR:
            one = _SINGULAR[low]
            words[i] = one if word.islower() else one.capitalize()
        elif len(word) > 3 and low.endswith("s") and not low.endswith("ss") and "'" not in low:
            words[i] = word[:-1]  # "cartes postales" -> "carte postale"
    return " ".join(words)


def find_count(folded: str, out: Extracted, original: str | None = None) -> None:
    match = _COUNT_KV_RE.search(folded)
    if match:
        out.n = int(match.group(1))
        out.add_span("n", match.span())
        return
    for match in _COUNT_RE.finditer(folded):
        if _overlaps(match.span(), out.claimed()):
            continue
        before = folded[:match.start()].split()
        if before and before[-1] in _NOT_COUNT_BEFORE:
            continue
        free = match.group("free")
        if free and (free in _NOT_COUNT_BEFORE or free in ("of", "de", "d", "x", "by", "par")):
            continue
        value = parse_number(match.group("num"))
        if value and 1 <= value <= 100:
            out.n = value
            out.add_span("n", match.span())
            # "3 images of X": the medium noun goes; "3 images for my blog" keeps it (the
            # prompt would be "for my blog")
            after = folded[match.end():].lstrip()
            medium_goes = not after or re.match(r"(?:of|de|d'|du|des|showing|with|avec|"
                                                r"montrant|depicting|featuring|[:,.;!?(])",
                                                after) is not None
            subject = match.group("n1") and not _MEDIUM_RE.match(match.group("n1"))
            for group in ("free", "n1", "n2"):
                word = match.group(group)
                if not word or (group != "free" and _MEDIUM_RE.match(word) and (
                        medium_goes or (group == "n2" and subject))):
                    continue  # "6 icon ideas": the icon stays, the ideas go
                start, end = match.span(group)
                text = (original or folded)[start:end]
                out.keep.append(((start, end), text if group == "free" else singular(text)))
            return


# --- seed ----------------------------------------------------------------------------------

_SEED_RE = re.compile(
    r"\b(?:random\s+)?(?:seed|graine)\s*(?:number|numero|no\.?|#|n°)?\s*"
    r"(?:[:=]|is|of|de|egale?\s+a|set\s+to|=)?\s*#?(?P<v>\d{1,10})\b"
    r"|\b(?P<v2>\d{1,10})\s+(?:as|comme)\s+(?:the\s+|la\s+)?(?:seed|graine)\b")


def find_seed(folded: str, out: Extracted) -> None:
    match = _SEED_RE.search(folded)
    if match:
        out.seed = int(match.group("v") or match.group("v2"))
        out.add_span("seed", match.span())


# --- scale ---------------------------------------------------------------------------------

_SCALE_NUM = r"(?:\d{1,2}|two|three|four|eight|deux|trois|quatre|huit)"
_SCALE_PATTERNS = [
    re.compile(r"(?<![\w.])(?P<v>\d{1,2})\s?x(?![\w])(?!\s*\d)"),  # 4x, 2 x
    re.compile(r"(?<![\w.])x\s?(?P<v>\d{1,2})\b"),  # x4
    re.compile(rf"\b(?:by|par|of)\s+(?:a\s+factor\s+(?:of\s+)?|un\s+facteur\s+(?:de\s+)?)?"
               rf"(?P<v>{_SCALE_NUM})\b(?!\s*(?:px|pixels|%|images|photos))"
               rf"(?=\s*(?:$|[,.;:!?)]|x\b|times\b|fois\b|and\b|then\b|et\b|puis\b|"
               rf"please\b|pls\b|stp\b|svp\b|s'il\b|for\b|pour\b|in\b|en\b|to\b|a\b))"),
    re.compile(rf"\b(?:factor|facteur|scale|echelle)\s*(?:of|de|=|:)?\s*(?P<v>{_SCALE_NUM})\b"),
    re.compile(rf"\b(?P<v>{_SCALE_NUM})\s*(?:times|fois)\b"),
]
_SCALE_WORDS = [
    (re.compile(r"\b(?:double[sdr]?|doubling|doubler|doublez|twice)\b"), 2),
    (re.compile(r"\b(?:triple[sdr]?|tripler|three\s+times)\b"), 3),
    (re.compile(r"\b(?:quadruple[sdr]?|quadrupler)\b"), 4),
]


def find_scale(folded: str, out: Extracted) -> None:
    claimed = out.claimed()
    for pattern in _SCALE_PATTERNS:
        for match in pattern.finditer(folded):
            if _overlaps(match.span(), claimed):
                continue
            value = parse_number(match.group("v"))
            if value and 2 <= value <= 16:
                out.scale, out.scale_span = value, match.span()
                out.add_span("scale", match.span())
                return
    for pattern, value in _SCALE_WORDS:
        match = pattern.search(folded)
        if match and not _overlaps(match.span(), claimed):
            out.scale, out.scale_span = value, match.span()
            # not claimed for prompt cleaning: "double" is also the upscale verb
            return


# --- style ---------------------------------------------------------------------------------

# Extra names for the presets (French and common English phrasings) beyond router/styles.py.
EXTRA_ALIASES: dict[str, str] = {
    "aquarelle": "watercolor", "water color": "watercolor", "watercolors": "watercolor",
    "peinture aquarelle": "watercolor", "lavis": "watercolor",
    "manga": "anime", "anime": "anime", "dessin anime japonais": "anime", "japanimation": "anime",
    "peinture a l'huile": "oil-painting", "huile": "oil-painting", "oil painting": "oil-painting",
    "oil paint": "oil-painting", "tableau a l'huile": "oil-painting",
    "huile sur toile": "oil-painting", "oil on canvas": "oil-painting",
    "croquis": "pencil-sketch", "dessin au crayon": "pencil-sketch", "crayon": "pencil-sketch",
    "pencil sketch": "pencil-sketch", "esquisse": "pencil-sketch", "graphite": "pencil-sketch",
    "pencil drawing": "pencil-sketch", "fusain": "pencil-sketch", "charcoal": "pencil-sketch",
    "pixar": "pixar-3d", "disney pixar": "pixar-3d", "3d cartoon": "pixar-3d",
    "dessin anime 3d": "pixar-3d", "3d animated": "pixar-3d", "3d animation": "pixar-3d",
    "ukiyo-e": "ukiyo-e", "ukiyo e": "ukiyo-e", "ukiyoe": "ukiyo-e",
    "estampe japonaise": "ukiyo-e", "estampe": "ukiyo-e", "woodblock print": "ukiyo-e",
    "woodblock": "ukiyo-e", "hokusai": "ukiyo-e",
    "cyberpunk": "cyberpunk", "cyber punk": "cyberpunk", "neon": "cyberpunk",
    "comic": "comic", "comic book": "comic", "comics": "comic", "bande dessinee": "comic",
    "bd": "comic", "graphic novel": "comic", "comic-book": "comic",
    "photorealistic": "photorealistic", "photo-realistic": "photorealistic",
    "photorealiste": "photorealistic", "hyperrealistic": "photorealistic",
    "hyperrealiste": "photorealistic", "realistic photo": "photorealistic",
    "pop art": "pop-art", "pop-art": "pop-art", "warhol": "pop-art", "andy warhol": "pop-art",
    "low poly": "low-poly", "low-poly": "low-poly", "lowpoly": "low-poly",
    "polygonal": "low-poly",
    "vintage photo": "vintage-photo", "vintage film": "vintage-photo", "film look": "vintage-photo",
    "retro photo": "vintage-photo", "old photo": "vintage-photo", "vieille photo": "vintage-photo",
    "photo vintage": "vintage-photo", "photo retro": "vintage-photo", "argentique": "vintage-photo",
    "analog film": "vintage-photo", "70s film": "vintage-photo", "vintage": "vintage-photo",
    "retro": "vintage-photo", "sepia": "vintage-photo", "photo ancienne": "vintage-photo",
    "ancienne photo": "vintage-photo", "vieilles photos": "vintage-photo",
    "vieux film": "vintage-photo", "polaroid": "vintage-photo", "old film": "vintage-photo",
    "old photograph": "vintage-photo", "photo jaunie": "vintage-photo",
    "photo argentique": "vintage-photo", "old-timey photo": "vintage-photo",
    "old school photo": "vintage-photo", "film": "vintage-photo", "annees 70": "vintage-photo",
    "annees 60": "vintage-photo", "annees 50": "vintage-photo", "seventies": "vintage-photo",
    "70s": "vintage-photo", "60s": "vintage-photo", "50s": "vintage-photo",
    "croquis au crayon": "pencil-sketch",
    "dessin au fusain": "pencil-sketch", "crayonne": "pencil-sketch",
}
# Words that name a style on their own in a sentence ("an anime girl", "en aquarelle").
# Generic words ("photo", "film", "drawing", "oil", "pop") are left out: they mean other things.
BARE_STYLE_TERMS = (
    "watercolor", "watercolour", "aquarelle", "anime", "manga", "oil painting", "oil paint",
    "peinture a l'huile", "pencil sketch", "pencil drawing", "croquis", "dessin au crayon",
    "graphite", "charcoal", "fusain", "pixar", "ukiyo-e", "ukiyo e", "ukiyoe", "woodblock",
    "estampe japonaise", "cyberpunk", "comic book", "comic", "comics", "bande dessinee",
    "graphic novel", "photorealistic", "photorealiste", "hyperrealistic", "pop art", "warhol",
    "low poly", "low-poly", "lowpoly", "vintage film", "vintage photo", "retro photo",
    "cel shaded", "impasto", "hokusai", "tableau a l'huile", "huile sur toile", "disney pixar",
    "oil on canvas",
)
# Free-text styles recognised by name (kept as text: the generator takes free styles too).
FREE_STYLES = (
    "van gogh", "monet", "picasso", "rembrandt", "da vinci", "dali", "klimt", "vermeer",
    "studio ghibli", "ghibli", "miyazaki", "disney", "simpsons", "lego", "pixel art", "8-bit",
    "8 bit", "steampunk", "vaporwave", "synthwave", "art deco", "art nouveau", "impressionist",
    "impressionism", "impressionniste", "cubist", "cubism", "cubiste", "surrealist",
    "surrealism", "surrealiste", "stained glass", "vitrail", "claymation", "origami",
    "line art", "ink drawing", "ink wash", "sumi-e", "pastel", "gouache", "acrylic",
    "film noir", "noir", "black and white", "noir et blanc", "renaissance", "baroque",
    "gothic", "cartoon", "chibi", "graffiti", "mosaic", "mosaique", "isometric", "vector art",
    "flat design", "minimalist", "minimaliste", "fantasy art", "concept art", "tim burton",
    "wes anderson", "cinematic", "kawaii", "art brut", "expressionist", "pointillism",
    "pointillisme", "psychedelic", "psychedelique", "tattoo", "clay", "papercut",
    "paper cut", "embroidery", "needlepoint", "marble statue", "bronze statue", "neon sign",
    "blueprint", "cartoonish", "caricature", "pixar-like", "2d animation", "hand-drawn",
    "hand drawn", "dessine a la main",
)


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text.strip().lower())


_ALIAS_KEYS = {_key(k): v for k, v in EXTRA_ALIASES.items()}
_PRESET_KEYS = {_key(label): p.name for p in style_presets.STYLES.values()
                for label in (p.name, p.title)}
_ARTICLES = re.compile(r"^(?:(?:(?:a|an|the|une|un|le|la|les|des|du|de|some|my|ma|mon|your|of|"
                       r"in|en|au|a\s+la|comme|like|as|real|true|classic|classique|proper|nice|"
                       r"beautiful|cool|kind\s+of|sort\s+of|d'une|d'un)\s+)|l'|d')+")
_TRAILING_FILLER = re.compile(r"(?:\s+(?:style|styled|look|looking|effect|filter|version|"
                              r"aesthetic|vibe|rendition|please|pls|stp|svp|s'il te plait|"
                              r"s'il vous plait|now|maintenant|too|aussi|instead|plutot|theme|"
                              r"mode|way|manner)\b)+$")
_TRAILING_NOUN = re.compile(r"(?:\s+(?:painting|character|characters|scene|personnage|portrait|"
                            r"image|photo|picture|drawing|dessin|art|artwork|illustration)\b)+$")


def style_value(text: str) -> str | None:
    """A preset name for `text` ("Oil Painting", "à l'aquarelle", "a comic book") if one
    matches, else the cleaned free text ("van gogh"); None for empty filler."""
    core = fold(text).strip(" ,.;:!?\"'")
    core = _ARTICLES.sub("", core).strip()
    core = _TRAILING_FILLER.sub("", core).strip()
    candidates = [core, _TRAILING_NOUN.sub("", core).strip()]
    for cand in candidates:
        if not cand:
            continue
        preset = _ALIAS_KEYS.get(_key(cand))
        if preset:
            return preset
        try:
            return style_presets.get_style(cand).name
        except ValueError:
            pass
    core = re.sub(r"^(?:style|the style of|le style de)\s+", "", core).strip()
    if not core or core in _FILLER_STYLE_WORDS or len(core) > 60:
        return None
    return _compound_preset(core) or core


# Words that only qualify a preset's name ("soft watercolor", "vieille photo des années 70").
_STYLE_MODIFIERS = frozenset(
    "old vieux vieille vieil ancien ancienne soft doux douce leger legere subtle light strong "
    "heavy fort forte classic classique real vrai vraie nice beau belle joli jolie beautiful "
    "effect effet style look filter filtre des annees de d' du la le a an the of 60s 70s 80s "
    "60 70 80 sixties seventies eighties years faded delave delavee photo photograph picture "
    "image painting drawing art old-timey oldtimey old-fashioned old-school".split())
_MAX_ALIAS_WORDS = 3


def _compound_preset(core: str) -> str | None:
    """The one preset several names in `core` all stand for, when the other words only
    qualify it: "vieille photo retro" -> vintage-photo, "soft watercolor" -> watercolor."""
    words = core.replace("'", "' ").split()
    if len(words) < 2 or len(words) > 8:
        return None
    found: set[str] = set()
    i = 0
    while i < len(words):
        for size in range(min(_MAX_ALIAS_WORDS, len(words) - i), 0, -1):
            key = _key(" ".join(words[i:i + size]))
            preset = _ALIAS_KEYS.get(key) or _PRESET_KEYS.get(key)
            if preset:
                found.add(preset)
                i += size
                break
        else:
            if words[i] not in _STYLE_MODIFIERS:
                return None
            i += 1
    return found.pop() if len(found) == 1 else None


_FILLER_STYLE_WORDS = {"please", "pls", "it", "this", "that", "me", "same", "different",
                       "other", "another", "new", "my", "your", "a", "the", "une", "un",
                       "transfer", "a different", "another one", "any", "some", "quel",
                       "quels", "which", "what", "cool", "nice", "good", "best", "que", "ce",
                       "ca", "cette", "le", "la", "les", "his", "her", "their", "our", "its"}

# Generic words that name a style only in an explicit phrase ("minimalist style"), never alone.
_EXPLICIT_ONLY = {"minimalist", "minimaliste", "cinematic", "fantasy art", "concept art", "pastel",
                  "noir", "gothic", "kawaii", "clay", "tattoo", "mosaic", "mosaique", "isometric",
                  "cartoon", "cartoonish", "renaissance", "baroque", "flat design", "vector art",
                  "acrylic", "gouache", "embroidery", "blueprint", "caricature", "psychedelic",
                  "psychedelique", "black and white", "noir et blanc", "neon sign", "graffiti",
                  "lego", "origami", "pointillism", "pointillisme", "papercut",
                  "paper cut", "needlepoint", "marble statue", "bronze statue", "2d animation",
                  "chibi", "art brut", "line art", "ink drawing", "ink wash", "8 bit",
                  "expressionist", "surreal"}
STYLE_TERMS: tuple[str, ...] = tuple(sorted(
    set(BARE_STYLE_TERMS) | (set(FREE_STYLES) - _EXPLICIT_ONLY), key=len, reverse=True))
STYLE_TERMS_RE = "|".join(re.escape(t).replace(r"\ ", r"[\s-]") for t in STYLE_TERMS)
_BARE_RE = re.compile(rf"(?<![\w-])(?:{STYLE_TERMS_RE})(?![\w-])")

_X = r"(?P<x>[\w'\- ]{2,40}?)"
_EXPLICIT_STYLE = [
    re.compile(rf"\bin\s+the\s+(?:style|manner)\s+of\s+{_X}(?=$|[,.;!?]|\s+(?:and|then|but|"
               rf"please|with|without|no|for|on|at|in|et|puis)\b)"),
    re.compile(rf"\b(?:dans\s+le\s+style|a\s+la\s+maniere|a\s+la\s+facon)\s+(?:de\s+|d'|du\s+|"
               rf"des\s+)?{_X}(?=$|[,.;!?]|\s+(?:and|then|et|puis|avec|sans|pour|s'il)\b)"),
    re.compile(rf"\b(?:fa[cç]on|inspired\s+by|inspire\s+de|inspiree\s+de)\s+{_X}"
               rf"(?=$|[,.;!?]|\s+(?:and|then|et|puis|avec|sans|pour|s'il)\b)"),
    re.compile(rf"\b(?:in|en|with)\s+(?:an?\s+|une?\s+)?{_X}[\s-]+(?:style|look|aesthetic)\b"),
    re.compile(rf"(?:\b(?:en|au)\s+)?(?<![\w-])style\s+(?:de\s+|d'|du\s+)?{_X}(?=$|[,.;!?]|\s+(?:and|then|"
               rf"et|puis|avec|sans|pour|please|s'il|stp|svp|maintenant|now)\b)"),
    re.compile(rf"(?:^|[\s,])(?:an?\s+)?{_X}[\s-]+(?P<kind>style|look(?!\s+like)|aesthetic|"
               rf"effect|filter|vibe|version|rendition)\b"),
    re.compile(rf"\b(?P<kind>version|effet|filtre|ambiance|rendu|aspect|look)\s+(?:en\s+|de\s+|d')?"
               rf"{_X}(?=$|[,.;!?]|\s+(?:et|puis|avec|sans|pour|sur|a|au|aux|s'il|stp|svp|"
               rf"please)\b)"),
]
_VERBISH = re.compile(r"^(?:make|turn|convert|transform|render|give|apply|use|add|put|change|"
                      r"it|this|that|me|him|her|them|my|fais|mets|rends|passe|transforme|"
                      r"applique\w*|donne\w*|convertis|genere\w*|cree\w*|dessine\w*|puis|then|"
                      r"and|et|now|maintenant)\b")
_FUNCTION_WORDS = {"en", "un", "une", "le", "la", "les", "a", "an", "the", "in", "de", "du", "des",
                   "d'", "l'", "of", "to", "my", "ma", "mon", "its", "this", "that", "cette", "ce",
                   "some", "with", "avec", "par", "by", "as", "comme", "into", "dans"}


@dataclass(frozen=True)
class StyleMention:
    value: str
    span: Span
    explicit: bool  # an explicit "style" phrase, not just a style word in a description


_LEAD_IN_X = re.compile(
    r"^(?:.*\s)?(?:an?|the|une?|des|le|la|les|some|this|that|my|our|your|ce|cet|cette|mon|ma|"
    r"mes|votre|notre)\s+(?=\S)")
_VERB_IN_X = re.compile(
    r"^(?:(?:please|pls|just|now|then|and|et|puis|maintenant|can\s+you|could\s+you)\s+)*"
    r"(?:make|turn|convert|transform|render|give|apply|use|add|put|change|draw|sketch|paint|"
    r"generate|create|design|imagine|illustrate|depict|picture|visuali[sz]e|do|show|get|"
    r"fais|mets|rends|passe|transforme|dessine\w*|peins|genere\w*|cree\w*|imagine\w*|"
    r"realise\w*|montre\w*)\w*(?:[\s-]+(?:me|us|moi|nous|it|this|that|them|la|le|les))?"
    r"\s+")
_FREE_SET = frozenset(FREE_STYLES)
_X_BEFORE_KEYWORD = (3, 5)  # indices in _EXPLICIT_STYLE


def _trim_x(x: str) -> int:
    """Offset in X ("sketch a blueprint", "draw a pixel art") where the style words start:
    after a leading verb and the last article, so a verb is never part of a style."""
    offset = 0
    verb = _VERB_IN_X.match(x)
    if verb:
        offset = verb.end()
    article = _LEAD_IN_X.match(x[offset:])
    if article:
        offset += article.end()
    return offset


def _known_style(value: str) -> bool:
    return (value in style_presets.STYLES or value in _FREE_SET
            or _BARE_RE.fullmatch(value) is not None)


def find_styles(folded: str, claimed: list[Span] | None = None, *,
                language: str | None = None) -> list[StyleMention]:
    """Style mentions in order of position. Explicit phrases come first where they overlap,
    and among overlapping explicit phrases a known style wins ("draw a pixel art style
    spaceship": "pixel art", not "spaceship")."""
    claimed = list(claimed or [])
    candidates: list[tuple[bool, int, Span, StyleMention]] = []
    for order, pattern in enumerate(_EXPLICIT_STYLE):
        for match in pattern.finditer(folded):
            span = match.span()
            if _overlaps(span, claimed):
                continue
            x_start = match.start("x")
            x = match.group("x")
            # X before its keyword ("a blueprint-style drawing", "in a noir style") may have
            # picked up a verb and an article: the style starts after them
            offset = _trim_x(x) if order in _X_BEFORE_KEYWORD else 0
            if offset and x[offset:].strip():
                x, x_start = x[offset:], x_start + offset
                if span[0] < x_start and match.start("x") <= span[0] + 1:
                    span = (x_start, span[1])  # the verb/article stay outside the style
            # "X style" may have picked up the preceding words ("apply a pop art"): prefer a
            # known style term inside X.
            inner = _BARE_RE.search(x)
            kind = match.groupdict().get("kind")
            words = x.split()
            if inner is None and (len(words) > 3 or _VERBISH.match(x.strip())
                                  or kind not in (None, "style", "aesthetic", "effet", "filtre")
                                  or not words or words[-1] in _FUNCTION_WORDS):
                continue
            value = style_value(inner.group(0)) if inner else style_value(x)
            if value is None:
                continue
            mention_span = span
            if inner is not None and order in _X_BEFORE_KEYWORD:
                mention_span = (max(span[0], x_start + inner.start()), span[1])
            elif inner is not None:  # "style japonais ukiyo-e, ..." ends at the known term
                mention_span = (span[0], x_start + inner.end())
            # Neither known: in English "an ultra-realistic style apple" is "X style"; in
            # French "un robot style rétro" is "style X"
            rank = order + 1.5 if order == 4 and language == "en" and not re.match(
                r"(?:en|au)\s", match.group(0)) else order
            candidates.append((not _known_style(value), rank, span,
                               StyleMention(value, mention_span, True)))
    found: list[StyleMention] = []
    taken: list[Span] = []  # full matches (a mention's span may be narrower)
    for _unknown, _order, span, mention in sorted(candidates, key=lambda c: c[:2]):
        if _overlaps(span, taken):
            continue
        taken.append(span)
        found.append(mention)
    for match in _BARE_RE.finditer(folded):
        span = match.span()
        if _overlaps(span, claimed) or _overlaps(span, taken):
            continue
        value = style_value(match.group(0))
        if value:
            found.append(StyleMention(value, span, False))
    return sorted(found, key=lambda m: m.span[0])


# --- negative terms ------------------------------------------------------------------------

_NEG_INTRO = re.compile(
    r"(?:(?<![\w'])no(?!\s+(?:need|problem|worries|way|longer|more\s+than|matter|idea|thanks)\b)"
    r"|\bwithout|\bw/o|\bavoid(?:ing)?|\bexclud(?:e|ing)|\bminus|\bsans|\bpas\s+de|\bpas\s+d'"
    r"|\baucune?|\bevite[rz]?|\bne\s+(?:mets|mettez|ajoute|ajoutez|montre|montrez)\s+pas\s+"
    r"(?:de\s+|d')|\bdo\s+not\s+(?:add|include|show|put|draw|want|use)|\bdon'?t\s+(?:add|"
    r"include|show|put|draw|use|want)|\bje\s+ne\s+veux\s+pas\s+(?:de\s+|d')|\bmake\s+sure\s+(?:there\s+(?:is|are)|to\s+have)\s+no"
    r"|\bnot\s+(?:include|including)|\bfree\s+of)\b\s*"
    r"|\bnegative(?:\s+prompt)?\s*[:=]\s*|\bprompt\s+negatif\s*[:=]\s*")
_LIST_INTRO = re.compile(r"negati")  # "negative: a, b, c" lists terms up to the sentence end
_LIST_STOP = re.compile(r"[.;!?\n]")
_NEG_DET = re.compile(r"^(?:(?:(?:any|the|a|an|les|des|de|la|le|du|some|more|visible|other)"
                      r"\s+)|l'|d')+")
_NEG_STOP = re.compile(
    r"[,.;!?:\n]|\b(?:and\s+then|then|puis|ensuite|but|mais|please|pls|stp|svp|s'il|for|in|on|"
    r"at|with|to|from|pour|dans|sur|avec|that|which|who|qui|que|so|because|car|parce|while|"
    r"when|just|only|juste|seulement|make|generate|create|draw|upscale|remove|add|change|"
    r"turn|put|genere|cree|dessine|enleve|supprime|ajoute|agrandis|also|aussi|at\s+all|du\s+tout"
    r"|in\s+the|anywhere|nulle\s+part)\b")
_NEG_SPLIT = re.compile(r"\s*(?:\band\b|\bor\b|\bnor\b|\bet\b|\bou\b|\bni\b|&|/)\s*")
_NEG_LIST_SPLIT = re.compile(r"\s*(?:,|\band\b|\bor\b|\bet\b|\bou\b|&|/)\s*")
# First words that make "without X" a constraint on the edit, not a negative prompt term.
_NOT_TERMS = re.compile(
    r"^(?:changing|altering|modifying|touching|losing|removing|upscaling|cropping|resizing|"
    r"affecting|moving|keeping|making|editing|adding|changer|modifier|toucher|perdre|enlever|"
    r"supprimer|retirer|agrandir|recadrer|bouger|deformer|changement|problem|problems|need|"
    r"worries|doubt|way|more|less|longer|idea|thanks|merci|probleme|souci|besoin|rush|hurry|"
    r"matter|it|this|that|them|me|him|her|ca|cela|background|backgrounds|bg|fond|arriere|"
    r"arriere-plan|quality|loss)\b")
_MAX_TERM_WORDS = 5


def find_negatives(folded: str, original: str, out: Extracted, claimed: list[Span]) -> None:
    """Negative prompt terms ("no people, no buildings", "without glasses", "avoid X",
    "sans texte", "pas de reflets"): spans not already claimed by an intent cue."""
    for intro in _NEG_INTRO.finditer(folded):
        if _overlaps(intro.span(), claimed):
            continue
        rest = folded[intro.end():]
        det = _NEG_DET.match(rest)
        offset = intro.end() + (det.end() if det else 0)
        listing = bool(_LIST_INTRO.match(intro.group(0)))
        stop = (_LIST_STOP if listing else _NEG_STOP).search(folded, offset)
        end = stop.start() if stop else len(folded)
        # never run into a claimed span (an intent cue)
        for s, _e in sorted(claimed):
            if offset <= s < end:
                end = s
        if end <= offset:
            continue
        terms_found = []
        pos = offset
        splitter = _NEG_LIST_SPLIT if listing else _NEG_SPLIT
        for part in splitter.split(folded[offset:end]):
            idx = folded.find(part, pos, end) if part else -1
            if idx < 0:
                continue
            pos = idx + len(part)
            clean = _NEG_DET.sub("", part).strip()
            lead = len(part) - len(part.lstrip()) + (len(part.strip()) - len(clean))
            if not clean or _NOT_TERMS.match(clean) or len(clean.split()) > _MAX_TERM_WORDS:
                continue
            if not re.search(r"[a-z]", clean):
                continue
            start = idx + lead
            term = squash(original[start:start + len(clean)])
            if term:
                terms_found.append(term)
        if terms_found:
            lead_in = re.search(r"\b(?:with|avec|and|et)\s+$", folded[:intro.start()])
            for term in terms_found:
                if term.lower() not in (t.lower() for t in out.negative_terms):
                    out.negative_terms.append(term)
            span = (lead_in.start() if lead_in else intro.start(), end)
            out.negative_spans.append(span)
            out.add_span("negative", span)


# --- faces ---------------------------------------------------------------------------------

_ORDINALS = {"first": 0, "1st": 0, "premier": 0, "premiere": 0, "left": 0, "leftmost": 0,
             "gauche": 0, "second": 1, "2nd": 1, "deuxieme": 1, "seconde": 1, "third": 2,
             "3rd": 2, "troisieme": 2, "middle": None}
_FACE_INDEX_RE = re.compile(
    r"\b(?P<o>first|1st|second|2nd|third|3rd|leftmost|premiere?|deuxieme|seconde|troisieme)\s+"
    r"(?:face|person|guy|girl|man|woman|kid|child|one|visage|personne)\b(?!\s+(?:photo|image|"
    r"picture|pic))"
    r"|\b(?:face|person|guy|girl|man|woman|one|visage|personne)\s+(?:on|to|at|a)\s+(?:the\s+|)"
    r"(?P<side>left|gauche)\b"
    r"|\b(?:face|person|guy|girl|man|woman|visage|personne)\s+(?:number|numero|#|n°)\s*"
    r"(?P<num>\d)\b")
_ALL_FACES_RE = re.compile(r"\b(?:all|every|each)\s+(?:the\s+)?(?:faces?|persons?|people)\b|"
                           r"\beveryone'?s?\b|\btous\s+les\s+visages\b|\bchaque\s+visage\b")


def find_faces(folded: str, out: Extracted) -> None:
    if _ALL_FACES_RE.search(folded):
        out.all_faces = True
    match = _FACE_INDEX_RE.search(folded)
    if match:
        if match.group("o"):
            out.target_face_index = _ORDINALS.get(match.group("o"))
        elif match.group("side"):
            out.target_face_index = 0
        elif match.group("num"):
            out.target_face_index = max(0, int(match.group("num")) - 1)


def extract(folded: str, original: str, *, cue_spans: list[Span] | None = None) -> Extracted:
    """All parameters of a message. `cue_spans`: intent-cue spans the negative-term extractor
    must not read ("don't remove the background" is a negated step, not a negative prompt)."""
    out = Extracted()
    find_size(folded, out)
    find_seed(folded, out)
    find_count(folded, out, original)
    find_scale(folded, out)
    find_faces(folded, out)
    find_negatives(folded, original, out, list(cue_spans or []) + out.claimed())
    return out
