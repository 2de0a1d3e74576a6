"""The chat's reply texts (router/replies.py): one per language, and every message a
suggestion or an action sends is understood as meant, in its own language."""

from __future__ import annotations

import pytest

from router import replies
from router.cascade import Cascade

SESSION = {"last_image_id": "img_1", "last_prompt": "a red fox in the snow",
           "last_intent": "image_generation"}
EXPECTED = {  # what each suggestion / action message must be planned as
    "create a cat wearing a crown": ["image_generation"],
    "crée un chat qui porte une couronne": ["image_generation"],
    "remove the background": ["background_removal"],
    "enlève le fond": ["background_removal"],
    "swap my face onto the knight, then upscale": ["face_swap", "upscale"],
    "mets mon visage sur le chevalier, puis agrandis-la": ["face_swap", "upscale"],
    "make it bigger": ["upscale"],
    "agrandis-la": ["upscale"],
    "now in watercolor": ["style_transfer"],
    "maintenant en aquarelle": ["style_transfer"],
}


@pytest.mark.parametrize("language", replies.LANGUAGES)
def test_every_message_a_reply_offers_is_planned_as_meant_in_its_language(language):
    cascade = Cascade()
    messages = [(m, "text") for m in replies.suggestions("text", language)]
    messages += [(m, "image") for m in replies.suggestions("image", language)]
    messages += [(a["data"]["message"], "image") for a in replies.image_actions(language)]
    for message, kind in messages:
        images = 2 if "face" in message or "visage" in message else 0
        plan = cascade.plan_fast(message, images, SESSION if kind == "image" else None)
        assert plan.intents == EXPECTED[message], message
        assert plan.language == language, message
        assert plan.stage == "rules" and plan.confidence >= 0.8, message


def test_texts_per_language_and_english_for_anything_else():
    assert replies.help_text("fr").startswith("Je peux créer des images")
    assert replies.help_text("de") == replies.help_text("en") == replies.HELP["en"]
    assert replies.image_ready(["image_generation", "background_removal"], "fr") == \
        "Voici votre image (générée, puis détourée)."
    assert replies.image_ready(["upscale"], "en") == "Here is your image (upscaled)."
    assert replies.processing(2, "job_1", "fr") == (
        "C'est en cours (2 étape(s)) ; suivez /v1/jobs/job_1/events pour la progression.")
    assert replies.generate_new("un chat", "fr") == ("En générer une nouvelle à la place",
                                                     "génère une nouvelle image : un chat")
    for language in replies.LANGUAGES:  # every intent has a label in every language
        assert set(replies.DONE[language]) == set(replies.DONE["en"])
        assert [a["id"] for a in replies.image_actions(language)] == [
            "upscale", "remove_background", "watercolor"]
