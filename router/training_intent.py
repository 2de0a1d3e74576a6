"""Training requests in chat: "train a style from my dataset X" (EN and FR). Rules, checked
before the image router's cascade, like video requests (router/video_intent.py). Pure Python.

`detect_training(message)` returns a `TrainingIntent` (the dataset as the user named it, and
the adapter name asked for, if any) or None. The labelled examples below are what the tests
hold the rules to.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_TRAIN = (r"(?:train|fine[- ]?tune|finetune|learn|teach|build|make|create|entraine|entrainer|"
          r"entrainez|entraines|apprends|apprendre|cree|creer|creez|fais|faire)")
_WHAT = (r"(?:style|lora|loras|adapter|model|modele|adaptateur|look|aesthetic|esthetique|"
         r"concept|subject|sujet|personnage|character)")
_DATASET = (r"(?:dataset|data\s*set|jeu\s+de\s+donnees|jeu\s+d'images|collection|"
            r"training\s+set|image\s+set)")
_FROM = (r"(?:from|on|with|using|off|out\s+of|a\s+partir\s+de|a\s+partir\s+du|depuis|sur|"
         r"avec|du|de)")
TRAINING = re.compile(
    rf"\b{_TRAIN}\b(?:\s+(?:me|moi|nous))?\s+(?:an?|une?|le|la|my|mon|ma|a\s+new|un\s+nouveau|"
    rf"une\s+nouvelle|new|nouveau|nouvelle)?\s*(?:\w+\s+)?{_WHAT}\b.*?\b{_FROM}\s+"
    rf"(?:(?:my|mon|ma|the|le|la|our|notre)\s+)?{_DATASET}\s*(?:named|called|nomme|appele|:)?"
    rf"\s*(?P<dataset>\"[^\"]+\"|'[^']+'|[\w.-][\w.'-]*(?:\s+[\w.-][\w.'-]*){{0,3}})")
_NAME = re.compile(r"\b(?:call\s+it|name\s+it|named|called|appelle[- ]le|nomme[- ]le|"
                   r"appele|nomme)\s+(?P<name>\"[^\"]+\"|'[^']+'|[\w.-]+)\s*$")

# (message, expected dataset or None)
EXAMPLES: tuple[tuple[str, str | None], ...] = (
    ("train a style from my dataset watercolors", "watercolors"),
    ("train a lora on the dataset 'my cats'", "my cats"),
    ("please fine-tune a style model using my dataset beach-photos", "beach-photos"),
    ("can you train a new LoRA with dataset ds_123abc", "ds_123abc"),
    ("train a style from my dataset sketches, call it inky", "sketches"),
    ("entraîne un style à partir de mon dataset aquarelles", "aquarelles"),
    ("entraine un lora sur le jeu de données \"mes chats\"", "mes chats"),
    ("crée un modèle avec mon dataset portraits", "portraits"),
    ("apprends un style depuis ma collection croquis", "croquis"),
    # not trainings
    ("make an image of a train station", None),
    ("generate a watercolor style portrait of my dog", None),
    ("apply the style of this painting", None),
    ("fais une image d'un train", None),
)


@dataclass(frozen=True)
class TrainingIntent:
    dataset: str  # as the user named it (a dataset's name or id)
    name: str | None = None  # the adapter name asked for ("call it …")
    french: bool = False


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", text.replace("’", "'")).strip(" .!?")


def _unquote(text: str) -> str:
    return text.strip().strip("\"'").strip()


_STOP = re.compile(r"\s*(?:,|;|\band\b|\bet\b|\bcall\b|\bname\b|\bappelle\b|\bnomme\b|"
                   r"\bplease\b|\bstp\b|\bsvp\b|\bwith\b|\bavec\b).*$")


def detect_training(message: str) -> TrainingIntent | None:
    """A request to train a LoRA from a dataset, or None."""
    text = _norm(message)
    found = TRAINING.search(text)
    if not found:
        return None
    raw = found.group("dataset")
    dataset = _unquote(raw) if raw[:1] in "\"'" else _STOP.sub("", raw).strip()
    if not dataset:
        return None
    # the dataset's name as typed (accents and case kept): the same span of the original
    original = re.search(re.escape(dataset).replace(r"\ ", r"\s+"), _plain(message),
                         re.IGNORECASE)
    name = _NAME.search(text)
    french = bool(re.search(r"\b(?:entraine|apprends|cree|creer|mon|ma|jeu|depuis|"
                            r"a partir)\b", text))
    return TrainingIntent(
        dataset=message[original.start():original.end()] if original else dataset,
        name=_unquote(name.group("name")) if name else None, french=french)


def _plain(text: str) -> str:
    """`text` with accents stripped character by character (same length as `text`)."""
    return "".join(unicodedata.normalize("NFKD", c)[0] if c else c for c in text) \
        .replace("’", "'")
