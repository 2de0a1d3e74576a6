"""Text helpers shared by the rules, parameter extraction and prompt handling.

`fold` lower-cases, strips accents and unifies apostrophes/dashes *without changing the length*
of the (NFC) text, so a regex match on the folded text has the same span in the original:
rules match on folded text and cut prompts out of the original one (accents and case kept).
"""

from __future__ import annotations

import re
import unicodedata

_PUNCT_MAP = str.maketrans({
    "\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'",
    "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-",
    "\u00d7": "x",  # multiplication sign: 1024×768
    "\u00a0": " ", "\u202f": " ",
    "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"',
})


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _fold_char(ch: str) -> str:
    decomposed = unicodedata.normalize("NFD", ch)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    return base if len(base) == 1 else ch


def fold(text: str) -> str:
    """Lower-case, accent-free, ASCII apostrophes; same length as `nfc(text)`."""
    text = nfc(text).translate(_PUNCT_MAP)
    if text.isascii():  # nothing to strip: ASCII's lower() keeps every length (most messages)
        return text.lower()
    out = "".join(_fold_char(ch) for ch in text.lower())
    # str.lower can change lengths for a few characters (e.g. 'İ'): keep positions aligned.
    return out if len(out) == len(text) else "".join(
        _fold_char(ch.lower()) if len(ch.lower()) == 1 else ch for ch in text)


NUMBER_WORDS: dict[str, int] = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "a couple of": 2, "a pair of": 2, "couple of": 2,
    "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "sept": 7,
    "huit": 8, "neuf": 9, "dix": 10,
}
NUMBER_RE = (r"(?:\d{1,3}|one|two|three|four|five|six|seven|eight|nine|ten|a couple of|"
             r"a pair of|deux|trois|quatre|cinq|sept|huit|neuf|dix)")


def parse_number(word: str) -> int | None:
    word = word.strip()
    if word.isdigit():
        return int(word)
    return NUMBER_WORDS.get(word)


_FR_MARKERS = re.compile(
    r"\b(?:le|la|les|des|du|une|un|et|est|avec|sans|pour|dans|sur|cette|ce|ces|mon|ma|mes|"
    r"moi|fais|fait|mets|enleve|supprime|retire|agrandis|genere|cree|dessine|image|photo|fond|"
    r"puis|ensuite|je|tu|vous|peux|pourrais|voudrais|veux|merci|bonjour|salut|s'il|plait|"
    r"quels?|quelles?|comment|maintenant|aquarelle|visage|visages|detoure\w*|rends|transforme|"
    r"en|pas|de|d'|l'|qu'|c'est|ca|juste|seulement|arriere-plan|passe|nos|leur|au|aux)\b")
_EN_MARKERS = re.compile(
    r"\b(?:the|a|an|and|is|with|without|for|in|on|this|that|these|my|me|make|remove|"
    r"generate|create|draw|upscale|please|then|it|of|to|background|face|faces|swap|image|"
    r"picture|photo|what|how|can|you|your|i|i'd|i'm|hi|hello|thanks|now|just|only|don't|"
    r"style|look|like|into|its|their|our|some|bigger|add|change|put)\b")


def detect_language(folded: str) -> str:
    """'fr' or 'en' from function-word counts (ties and unknowns: 'en')."""
    fr = len(_FR_MARKERS.findall(folded))
    en = len(_EN_MARKERS.findall(folded))
    # Words both languages share count for both; accents are a strong French signal.
    return "fr" if fr > en else "en"


def squash(text: str) -> str:
    """Collapse whitespace, drop dangling separators at the ends."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    return text.strip(" ,;:-.!?\"'")


def blank_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with the characters in `spans` replaced by spaces (positions kept)."""
    chars = list(text)
    for start, end in spans:
        for i in range(max(0, start), min(len(chars), end)):
            chars[i] = " "
    return "".join(chars)


STOPWORDS = frozenset("""
a an the of and or to in on at for with without by from into onto as is are be it this that
these those my your his her its our their me you i we they he she them us some any please
can could would will should do does did not no just only very really also then now so but
make made get give want need like would'd i'd i'm let's lets one ones image images picture
pictures photo photos pic pics
le la les un une des du de d l et ou a au aux en dans sur pour avec sans par ce cette ces mon
ma mes ton ta tes son sa ses notre nos votre vos leur leurs je tu il elle nous vous ils elles
moi toi lui y qui que qu est sont etre fais faire fait peux pourrais veux voudrais s il plait
stp svp puis ensuite juste seulement
""".split())


# Quoted text ("…", “…”, «…», '…'): kept verbatim in prompts (a logo's or a sign's words) and
# never read as instructions or parameters. Matched on folded text (curly quotes and
# guillemets are '"' there); a single quote opens only after a non-word character, so
# apostrophes (it's, l'orage) are not quotes.
_QUOTED = re.compile(r"\"[^\"\n]{1,300}\"|(?<![\w'])'(?=[^\s'])[^'\n]{0,300}?[^\s']'(?![\w'])")


def quoted_spans(folded: str) -> list[tuple[int, int]]:
    """Spans of quoted passages, quotes included."""
    return [m.span() for m in _QUOTED.finditer(folded)]


def mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with the *inside* of each span blanked (the quote marks stay), positions kept."""
    chars = list(text)
    for start, end in spans:
        for i in range(start + 1, end - 1):
            chars[i] = " "
    return "".join(chars)


def squash_keeping(text: str, keep: list[tuple[int, int]]) -> str:
    """`squash`, except that the spans in `keep` (quoted passages) come out exactly as they
    are: never re-spaced, never stripped at the ends."""
    if not keep:
        return squash(text)
    parts, pos = [], 0
    kept: list[str] = []
    for start, end in sorted(keep):
        if start < pos or end > len(text):
            continue
        parts.append(text[pos:start])
        parts.append(f"\x00{len(kept)}\x00")
        kept.append(text[start:end])
        pos = end
    parts.append(text[pos:])
    out = squash("".join(parts))
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], out)
