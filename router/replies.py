"""What the chat answers, in the language of the user's message (English or French): the
help text, suggestions, action labels and the messages they send, the sentence that comes
with an image, the progress message, and the "other reading" of a follow-up.

Every suggestion and action message is a chat message the router plans as intended in its
language (tests/router/test_replies.py). Pure data and small functions; no Ray.
"""

from __future__ import annotations

from typing import Any

LANGUAGES = ("en", "fr")

HELP = {
    "en": (
        "I can create images from a description (\"a cat wearing a crown, watercolor\"), "
        "remove the background of a photo, swap a face from one photo onto another, upscale "
        "an image 2× or 4×, restyle it (watercolor, anime, oil painting, ukiyo-e, cyberpunk, "
        "comic…), or edit it from an instruction. Attach images to the message when a step "
        "needs them, and chain steps: \"generate a red sneaker and remove the background\". "
        "Follow-ups work on the last image: \"make it bigger\", \"now in watercolor\"."),
    "fr": (
        "Je peux créer des images à partir d'une description (« un chat avec une couronne, "
        "aquarelle »), détourer une photo, mettre le visage d'une photo sur une autre, "
        "agrandir une image 2× ou 4×, la transformer dans un style (aquarelle, anime, peinture "
        "à l'huile, ukiyo-e, cyberpunk, BD…) ou la modifier d'après une consigne. Joignez les "
        "images au message quand une étape en a besoin, et enchaînez les étapes : « génère "
        "une basket rouge puis enlève le fond ». Les suites s'appliquent à la dernière image : "
        "« agrandis-la », « maintenant en aquarelle »."),
}

# Suggestions under a text answer (help, greetings, questions) and under an image.
SUGGESTIONS = {
    "en": {"text": ["create a cat wearing a crown", "remove the background",
                    "swap my face onto the knight, then upscale"],
           "image": ["make it bigger", "now in watercolor", "remove the background"]},
    "fr": {"text": ["crée un chat qui porte une couronne", "enlève le fond",
                    "mets mon visage sur le chevalier, puis agrandis-la"],
           "image": ["agrandis-la", "maintenant en aquarelle", "enlève le fond"]},
}

# The actions under an image: (id, label, the chat message it sends).
IMAGE_ACTIONS = {
    "en": [("upscale", "Upscale 2×", "make it bigger"),
           ("remove_background", "Remove background", "remove the background"),
           ("watercolor", "Watercolor", "now in watercolor")],
    "fr": [("upscale", "Agrandir 2×", "agrandis-la"),
           ("remove_background", "Détourer", "enlève le fond"),
           ("watercolor", "Aquarelle", "maintenant en aquarelle")],
}
DOWNLOAD = {"en": "Download", "fr": "Télécharger"}

DONE = {
    "en": {"image_generation": "generated", "image_edit": "edited",
           "face_swap": "face-swapped", "background_removal": "cut out",
           "upscale": "upscaled", "style_transfer": "restyled"},
    "fr": {"image_generation": "générée", "image_edit": "modifiée",
           "face_swap": "visage échangé", "background_removal": "détourée",
           "upscale": "agrandie", "style_transfer": "transformée"},
}
_THEN = {"en": ", then ", "fr": ", puis "}
_IMAGE_READY = {"en": "Here is your image ({done}).", "fr": "Voici votre image ({done})."}
_PROCESSING = {
    "en": "Working on it ({steps} step(s)); follow /v1/jobs/{job_id}/events for progress.",
    "fr": "C'est en cours ({steps} étape(s)) ; suivez /v1/jobs/{job_id}/events pour la "
          "progression.",
}
# The other reading of a follow-up edit ("the same dog but wearing a scarf"): a new image.
_GENERATE_NEW = {
    "en": ("Generate a new one instead", "generate a new image of {prompt}"),
    "fr": ("En générer une nouvelle à la place", "génère une nouvelle image : {prompt}"),
}


def lang(language: str | None) -> str:
    return language if language in LANGUAGES else "en"


def help_text(language: str | None) -> str:
    return HELP[lang(language)]


def suggestions(kind: str, language: str | None) -> list[str]:
    return list(SUGGESTIONS[lang(language)][kind])


def image_actions(language: str | None) -> list[dict[str, Any]]:
    """The chat actions under an image (without the download link, which needs its URL)."""
    return [{"id": id_, "label": label, "type": "chat", "data": {"message": message}}
            for id_, label, message in IMAGE_ACTIONS[lang(language)]]


def download_label(language: str | None) -> str:
    return DOWNLOAD[lang(language)]


def image_ready(intents: list[str], language: str | None) -> str:
    language = lang(language)
    done = _THEN[language].join(DONE[language][i] for i in intents if i in DONE[language])
    return _IMAGE_READY[language].format(done=done)


def processing(steps: int, job_id: str, language: str | None) -> str:
    return _PROCESSING[lang(language)].format(steps=steps, job_id=job_id)


def generate_new(prompt: str, language: str | None) -> tuple[str, str]:
    """(label, message) of the action that asks for a fresh generation of `prompt`."""
    label, message = _GENERATE_NEW[lang(language)]
    return label, message.format(prompt=prompt)


_ANALYSIS_FACES = {"en": ("no face", "1 face", "{n} faces"),
                   "fr": ("aucun visage", "1 visage", "{n} visages")}
_ANALYSIS_ANSWER = {"en": "Answer: {answer}.", "fr": "Réponse : {answer}."}
_ANALYSIS_SIZE = {"en": "{w}x{h} image", "fr": "image {w}x{h}"}
_ANALYSIS_COLOURS = {"en": "main colours", "fr": "couleurs principales"}


def image_description(analysis: dict, language: str = "en") -> str:
    """The chat's answer to "what is in this picture?": the caption, the answer to the
    question if one was asked, faces, size and main colours — in the message's language."""
    faces = analysis["faces"]["count"]
    none, one, many = _ANALYSIS_FACES[language]
    parts = []
    if analysis.get("caption"):
        caption = analysis["caption"]
        parts.append(caption[:1].upper() + caption[1:].rstrip(".") + ".")
    if analysis.get("answer"):
        parts.append(_ANALYSIS_ANSWER[language].format(answer=analysis["answer"].rstrip(".")))
    colours = ", ".join(c["hex"] for c in analysis["colors"][:3])
    facts = [_ANALYSIS_SIZE[language].format(w=analysis["width"], h=analysis["height"]),
             none if faces == 0 else one if faces == 1 else many.format(n=faces)]
    if colours:
        facts.append(f"{_ANALYSIS_COLOURS[language]} {colours}")
    parts.append("; ".join(facts)[:1].upper() + "; ".join(facts)[1:] + ".")
    return " ".join(parts)
