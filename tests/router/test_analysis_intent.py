"""'What is in this picture?' / 'décris-la' plan an image_analysis step on the image at hand;
without an image they stay chat; generic descriptions are told apart from real questions."""

from __future__ import annotations

import pytest

from router.cascade import Cascade
from router.rules import DESCRIBE_ONLY
from router.schemas import SessionContext
from router.text import fold

ASKS = ["what is in this picture?", "describe it", "Describe this photo please",
        "what do you see?", "how many people are in this photo?", "is there a dog in this "
        "picture?", "Décris cette photo", "qu'est-ce qu'il y a sur cette image ?", "décris-la",
        "c'est quoi sur cette photo", "combien de personnes sur cette photo ?"]

FRENCH = ASKS[6:]


@pytest.fixture(scope="module")
def cascade():
    return Cascade(rules_threshold=0.8, llm_threshold=0.5)


@pytest.mark.parametrize("message", ASKS)
def test_asking_about_an_uploaded_image_is_an_analysis_of_it(cascade, message):
    plan = cascade.plan_if_rules_decide(message, 1, SessionContext(), embeddings=False,
                                        llm=False)
    assert plan is not None and [s.intent for s in plan.steps] == ["image_analysis"]
    assert [(i.role, i.source, i.index) for i in plan.steps[0].inputs] == [("image", "upload", 0)]
    assert plan.language == ("fr" if message in FRENCH else "en")


def test_the_session_image_is_analysed_when_nothing_is_uploaded(cascade):
    plan = cascade.plan_if_rules_decide("describe it", 0, SessionContext(
        last_image_id="img_1"), embeddings=False, llm=False)
    assert [(i.source, i.image_id) for i in plan.steps[0].inputs] == [("session", "img_1")]


def test_without_any_image_it_is_not_an_analysis(cascade):
    plan = cascade.plan_if_rules_decide("what is in this picture?", 0, SessionContext(),
                                        embeddings=False, llm=False)
    assert plan is None or "image_analysis" not in [s.intent for s in plan.steps] \
        or plan.missing_inputs


def test_other_intents_are_unchanged(cascade):
    for message, intent in (("remove the background", "background_removal"),
                            ("upscale it", "upscale")):
        plan = cascade.plan_if_rules_decide(message, 1, SessionContext(), embeddings=False,
                                            llm=False)
        assert [s.intent for s in plan.steps] == [intent]


@pytest.mark.parametrize("message,generic", [
    ("what is in this picture?", True), ("describe it", True), ("décris-la", True),
    ("Décris cette photo", True), ("how many people are in this photo?", False),
    ("is there a dog in this picture?", False)])
def test_generic_descriptions_are_told_from_questions(message, generic):
    assert bool(DESCRIBE_ONLY.search(fold(message))) is generic
