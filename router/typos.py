"""Small typos in the key operation words ("upsacle x4", "upscal 2x", "remov bg", "swap fcaes"),
corrected before the rules read a message, when the rest of the message fits the operation.

Only a handful of words are corrected, each within a small edit distance (insertions,
deletions, substitutions, swapped neighbours) and never into a word it already is. Verbs are
corrected only with the words that make the operation clear around them: an upscale verb next
to a factor ("x4", "2x", "by 3") or an image ("this", "my photo"); a removal verb before a
background word; "swap" and "face" next to each other. Long, unmistakable nouns
("bakground", "resoltion", "transparant") are corrected alone. Quoted text is never touched.

Pure Python, a few microseconds per message: tokens are matched by first letter and length
before any distance is computed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from router.text import STOPWORDS

Edit = tuple[int, int, str]  # (start, end, replacement) in the folded text


def osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance between `a` and `b` (insert, delete, substitute,
    swap two neighbours), or `limit + 1` as soon as it must exceed `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


@dataclass(frozen=True)
class Word:
    canonical: str  # what the typo becomes
    forms: tuple[str, ...]  # spellings compared with the token
    correct: re.Pattern[str]  # tokens already fine (never corrected)
    context: str  # "scale" | "background" | "face" | "swap" | "" (none needed)
    not_typos: frozenset[str] = frozenset()  # real words within the distance
    shortest: int = 0  # lengths of the shortest and longest forms
    longest: int = 0
    letters: frozenset[str] = frozenset()  # the letters of the forms


def _w(canonical: str, forms: tuple[str, ...], correct: str, context: str,
       not_typos: tuple[str, ...] = ()) -> Word:
    return Word(canonical, forms, re.compile(correct), context, frozenset(not_typos),
                min(map(len, forms)), max(map(len, forms)), frozenset("".join(forms)))


WORDS: tuple[Word, ...] = (
    _w("upscale", ("upscale", "upscaling", "upscaled", "upscal"), r"up-?scal\w*|upres\w*",
       "scale", ("upstage", "upstate", "upside", "upscaler")),
    _w("enlarge", ("enlarge", "enlarged"), r"enlarg\w*", "scale", ("enrage", "enlarger")),
    _w("agrandis", ("agrandis", "agrandir", "agrandi", "agrandit"), r"agrandi\w*", "scale"),
    _w("remove", ("remove",), r"remov(?:e|es|ed|ing|al)", "background",
       ("remote", "remover", "reprove", "revive", "move", "removal", "resolve", "revolve",
        "reload", "renew")),
    _w("delete", ("delete",), r"delet(?:e|es|ed|ing)", "background", ("delta", "deplete")),
    _w("erase", ("erase",), r"eras(?:e|es|ed|ing)", "background",
       ("ease", "eraser", "arise", "erose", "eras", "eased")),
    _w("supprime", ("supprime", "supprimer"), r"supprim\w*", "background"),
    _w("enleve", ("enleve", "enlever"), r"enlev\w*", "background", ("enliven", "enlist")),
    _w("background", ("background", "backgrounds"), r"back-?grounds?|backround|backgroud",
       "", ("backgrounder",)),
    _w("resolution", ("resolution",), r"resolutions?", "", ("revolution", "revolutions")),
    _w("transparent", ("transparent",), r"transparen\w*", "", ("transparency",)),
    _w("swap", ("swap",), r"swap\w*", "face", ("sway", "swan", "snap", "soap", "slap", "swat",
                                                 "swam", "spa", "wasp", "swab", "swag")),
    _w("face", ("face", "faces"), r"faces?", "swap",
       ("fact", "lace", "race", "pace", "fade", "fake", "fame", "face", "fare", "fate", "faze",
        "fave", "facet", "farce", "faced", "facts", "laces", "races", "fades", "fakes")),
)
_BY_LETTER: dict[str, list[Word]] = {}
for _word in WORDS:
    _BY_LETTER.setdefault(_word.canonical[0], []).append(_word)

_TOKEN = re.compile(r"[a-z]{3,}")
_SCALE_CONTEXT = re.compile(
    r"(?<![\w.])(?:\d{1,2}\s?x|x\s?\d{1,2})(?![\w])|\b(?:by|par|of)\s+(?:a\s+factor\s+of\s+)?"
    r"\d{1,2}\b|\b\d{1,2}\s*(?:times|fois)\b|\b(?:twice|double|triple|quadruple|hd|4k|8k)\b|"
    r"\b(?:it|this|that|them|my|the|your|our|his|her|image|photo|picture|pic|selfie|la|le|"
    r"les|cette|ce|ma|mon|l'image)\b")
_BACKGROUND_WORD = re.compile(r"(?:background|backgrounds|backround|backgroud|backdrop|bg|"
                              r"bgs|fond|fonds|arriere-plan|arriere)\b")
_FILLER = re.compile(r"(?:\s+(?:the|its|their|this|that|my|his|her|your|our|le|la|l'|son|ce|"
                     r"cet|mon|leur|du|de|all|of|just|please|pls))*\s+")


def _limit(token: str) -> int:
    return 1 if len(token) <= 6 else 2


@lru_cache(maxsize=8192)
def _candidate(token: str) -> Word | None:
    """The closest word `token` may be a typo of, if any."""
    best, best_distance = None, 99
    limit = _limit(token)
    for word in _BY_LETTER.get(token[0], ()):
        if not word.shortest - limit <= len(token) <= word.longest + limit:
            continue
        if len(set(token) - word.letters) > limit:  # each edit brings at most one new letter
            continue
        if token in word.not_typos or word.correct.fullmatch(token):
            continue
        distance = min(osa_distance(token, form, limit) for form in word.forms)
        if distance <= limit and distance < best_distance:
            best, best_distance = word, distance
    return best


def _fits(word: Word, folded: str, start: int, end: int, fixed: dict[int, str]) -> bool:
    if not word.context:
        return True
    if word.context == "scale":
        return bool(_SCALE_CONTEXT.search(folded))
    if word.context == "background":
        after = _FILLER.match(folded, end)
        pos = after.end() if after else end
        nxt = _TOKEN.match(folded, pos)
        return bool(_BACKGROUND_WORD.match(folded, pos)) or (
            nxt is not None and fixed.get(nxt.start()) == "background")
    # "swap" next to "face" and back: the neighbour word, as written or corrected
    other = "face" if word.context == "face" else "swap"
    before = re.search(r"([a-z]+)[\s-]*$", folded[max(0, start - 20):start])
    after = re.match(r"[\s-]*(?:(?:the|our|their|my|two|both|of)\s+)?([a-z]+)", folded[end:])
    for match, offset in ((before, max(0, start - 20)), (after, end)):
        if match is None:
            continue
        neighbour = match.group(1)
        pos = offset + match.start(1)
        if neighbour.startswith(other) or fixed.get(pos) == other:
            return True
    return False


def find_typos(folded: str, skip: list[tuple[int, int]] | None = None) -> list[Edit]:
    """Edits that correct operation-word typos in `folded` (folded text, see router.text)."""
    skip = skip or []
    found: list[tuple[int, int, Word]] = []
    for match in _TOKEN.finditer(folded):
        token = match.group(0)
        if token[0] not in _BY_LETTER or len(token) < 4 or token in STOPWORDS:
            continue
        if any(s <= match.start() < e for s, e in skip):
            continue
        word = _candidate(token)
        if word is not None:
            found.append((match.start(), match.end(), word))
    if not found:
        return []
    # nouns first: "remov bakground" fits once "bakground" is "background"
    fixed = {start: word.canonical for start, _end, word in found if not word.context}
    edits = [(s, e, w.canonical) for s, e, w in found if not w.context]
    for start, end, word in found:
        if word.context and _fits(word, folded, start, end, fixed):
            edits.append((start, end, word.canonical))
            fixed[start] = word.canonical
    # "fcae swpa": each needs the other corrected first; a second pass settles pairs
    for start, end, word in found:
        if word.context in ("face", "swap") and start not in {e[0] for e in edits} and \
                _fits(word, folded, start, end, fixed):
            edits.append((start, end, word.canonical))
    return sorted(edits)


def apply_edits(text: str, edits: list[Edit], *, keep_case: bool = False) -> str:
    """`text` with each (start, end, replacement) applied (positions are those before any
    edit). `keep_case`: a replaced word that started with a capital keeps one."""
    out, pos = [], 0
    for start, end, replacement in edits:
        out.append(text[pos:start])
        if keep_case and text[start:start + 1].isupper():
            replacement = replacement[:1].upper() + replacement[1:]
        out.append(replacement)
        pos = end
    out.append(text[pos:])
    return "".join(out)
