"""Video requests in chat: "make a video of …" (text-to-video) and "animate this image"
(image-to-video), in English and French. Rules, checked before the image router's cascade:
a message that asks for a video/clip/animation is never an image operation. Pure Python.

`detect_video(message, images)` returns a `VideoIntent` (the kind and the subject to use as
the prompt) or None. The labelled examples below are what the tests hold the rules to.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

Kind = Literal["text_to_video", "image_to_video"]

_VIDEO = r"(?:video|vid|clip|movie|film|animation|animated\s+clip|footage|gif anime|videos)"
_MAKE = (r"(?:make|create|generate|render|produce|shoot|give\s+me|i\s+(?:want|need|would\s+like)"
         r"|can\s+you\s+(?:make|create|generate)|fais|faites|fait|cree|creer|creez|genere|generer"
         r"|generez|produis|realise|je\s+veux|j'aimerais|je\s+voudrais|donne-moi|tourne)")
TEXT_TO_VIDEO = re.compile(
    rf"\b{_MAKE}\b(?:(?!\b(?:of|de|picture|image|photo|illustration|drawing|dessin)\b)"
    rf"[^.]){{0,30}}?\b(?:an?|une|un|la|le|des|short|little|petite?|courte?|"
    rf"\d+\s*s(?:ec\w*)?)?"
    rf"\s*(?:(?!of\b|de\b|d'|picture|image|photo|illustration|drawing|dessin)\w+\s+){{0,2}}?"
    rf"{_VIDEO}\b(?:\s+(?:of|about|showing|with|where|de|d'|du|des|sur|"
    rf"montrant|avec|ou))?\s*(?P<subject>.*)$")
VIDEO_NOUN_FIRST = re.compile(rf"^(?:an?|une|un)?\s*{_VIDEO}\s+(?:of|about|de|d'|du|sur)\s+"
                              rf"(?P<subject>.+)$")
IMAGE_TO_VIDEO = re.compile(
    r"\b(?:animate|animer|anime|animez|bring\s+(?:(?:this|it|that)(?:\s+\w+)?|the\s+\w+|my\s+\w+)\s+to\s+life|"
    r"make\s+(?:(?:this|it|that)(?:\s+\w+)?|the\s+\w+|my\s+\w+)\s+(?:move|come\s+alive|alive)|"
    r"fais\s+(?:bouger|vivre)|donne\s+vie\s+a|turn\s+(?:(?:this|it|that)(?:\s+\w+)?|the\s+\w+|my\s+\w+)\s+into\s+"
    r"(?:a|an)\s+" + _VIDEO + r"|transforme\s+(?:cette|cette\s+\w+|l'\w+|la\s+\w+|ma\s+\w+)\s+"
    r"en\s+" + _VIDEO + r")\b(?P<subject>.*)$")

# (message, has an image, expected kind or None)
EXAMPLES: tuple[tuple[str, bool, Kind | None], ...] = (
    ("make a video of a cat playing piano", False, "text_to_video"),
    ("create a short clip of waves crashing on rocks", False, "text_to_video"),
    ("generate a 4 second video of a rocket launch", False, "text_to_video"),
    ("can you make an animation of a dancing robot", False, "text_to_video"),
    ("I want a video about a city at night in the rain", False, "text_to_video"),
    ("a video of fireworks over Paris", False, "text_to_video"),
    ("fais une vidéo d'un chat qui joue du piano", False, "text_to_video"),
    ("crée un clip de vagues qui se brisent", False, "text_to_video"),
    ("génère une courte vidéo d'une fusée qui décolle", False, "text_to_video"),
    ("je voudrais une vidéo de la tour Eiffel au coucher du soleil", False, "text_to_video"),
    ("animate this image", True, "image_to_video"),
    ("animate this photo, make the clouds drift", True, "image_to_video"),
    ("bring this picture to life", True, "image_to_video"),
    ("make it move", True, "image_to_video"),
    ("turn this photo into a video", True, "image_to_video"),
    ("anime cette image", True, "image_to_video"),
    ("anime cette photo avec des nuages qui bougent", True, "image_to_video"),
    ("fais bouger cette image", True, "image_to_video"),
    ("transforme cette photo en vidéo", True, "image_to_video"),
    ("make a video of this", True, "image_to_video"),
    # not video: images and edits stay with the image router
    ("make an image of a cat playing piano", False, None),
    ("remove the background", True, None),
    ("upscale this video thumbnail", True, None),
    ("create a picture of a movie theater", False, None),
    ("fais une image d'un chat", False, None),
    ("enlève le fond de cette photo", True, None),
)


# "animate [this photo], <what should happen>": the object named first is not the prompt
_OBJECT = re.compile(r"^\s*(?:this|that|the|my|cette|cet|ce|ma|mon|l'|la|le)?\s*"
                     r"(?:image|photo|picture|pic|illustration|drawing|dessin)?\s*,?\s*")


@dataclass(frozen=True)
class VideoIntent:
    kind: Kind
    prompt: str  # the subject to render (the whole message when no subject is found)


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", text.replace("’", "'")).strip(" .!?")


def detect_video(message: str, images: int = 0) -> VideoIntent | None:
    """A video request, or None. With an image attached, any video request animates it."""
    text = _norm(message)
    if not text:
        return None
    found = IMAGE_TO_VIDEO.search(text)
    if found:
        subject = _OBJECT.sub("", found.group("subject")).strip(" ,.")
        return VideoIntent("image_to_video" if images else "text_to_video",
                           subject or message.strip())
    if re.search(r"\bthumbnail|miniature", text):
        return None
    found = TEXT_TO_VIDEO.search(text) or VIDEO_NOUN_FIRST.search(text)
    if found:
        subject = found.group("subject").strip(" ,.")
        if images and (not subject or subject in ("this", "it", "ca", "cela", "ceci",
                                                  "cette image", "cette photo")):
            return VideoIntent("image_to_video", message.strip())
        return VideoIntent("image_to_video" if images else "text_to_video",
                           subject or message.strip())
    return None
