"""Stage 1 (rules): intents on many phrasings, English and French; negation; multi-step order;
follow-ups with session context; missing images; where each step's inputs come from."""

from __future__ import annotations

import pytest

from router.cascade import Cascade
from router.rules import RULES_THRESHOLD, analyze
from router.schemas import SessionContext

G, E, F, B, U, S, Q = ("image_generation", "image_edit", "face_swap", "background_removal",
                       "upscale", "style_transfer", "general")
RULES = Cascade()  # rules only: no embeddings, no LLM
CTX = SessionContext(last_image_id="img_last", last_prompt="a green parrot on a branch",
                     last_intent="image_generation", last_style="anime")


def plan(message: str, images: int = 0, context: SessionContext | None = None):
    return RULES.plan_fast(message, images, context)


@pytest.mark.parametrize("message,images,expected", [
    # generation
    ("generate a lion wearing sunglasses", 0, [G]),
    ("Create a logo for a surf school", 0, [G]),
    ("draw me a hedgehog playing chess", 0, [G]),
    ("could you paint a harbour at dusk?", 0, [G]),
    ("show me a robot chef cooking pancakes", 0, [G]),
    ("I'd like an image of a treehouse in autumn", 0, [G]),
    ("give me 3 pictures of a desert oasis", 0, [G]),
    ("a steampunk owl, highly detailed", 0, [G]),
    ("génère un phare sous l'orage", 0, [G]),
    ("dessine-moi une baleine dans les nuages", 0, [G]),
    ("je voudrais une photo d'un café parisien", 0, [G]),
    ("crée deux images d'un voilier", 0, [G]),
    # edit
    ("add a scarf to the snowman", 1, [E]),
    ("remove the lamp post on the right", 1, [E]),
    ("replace the dog with a fox", 1, [E]),
    ("change the wall colour to green", 1, [E]),
    ("make her jacket red", 1, [E]),
    ("blend these pictures into one", 2, [E]),
    ("ajoute des nuages dans le ciel", 1, [E]),
    ("enlève le panneau à droite", 1, [E]),
    ("remplace la voiture par un vélo", 1, [E]),
    # face swap
    ("swap the two faces", 2, [F]),
    ("put my face on the pilot", 2, [F]),
    ("face-swap me into this painting", 2, [F]),
    ("échange les visages", 2, [F]),
    ("mets mon visage sur le tableau", 2, [F]),
    # background removal
    ("remove the background please", 1, [B]),
    ("cut out the cat", 1, [B]),
    ("make the backdrop transparent", 1, [B]),
    ("get rid of the bg", 1, [B]),
    ("enlève l'arrière-plan", 1, [B]),
    ("détoure le vase", 1, [B]),
    ("supprime le fond de la photo", 1, [B]),
    # upscale
    ("upscale it", 1, [U]),
    ("enlarge this picture 2x", 1, [U]),
    ("increase the resolution of this", 1, [U]),
    ("make it larger", 1, [U]),
    ("agrandis la photo", 1, [U]),
    ("augmente la résolution", 1, [U]),
    # style transfer
    ("make it look like a comic", 1, [S]),
    ("turn this into a watercolour", 1, [S]),
    ("convert my portrait to anime", 1, [S]),
    ("apply a ukiyo-e style", 1, [S]),
    ("transforme la photo en peinture à l'huile", 1, [S]),
    ("style bande dessinée", 1, [S]),
    # general
    ("hello!", 0, [Q]),
    ("what formats do you accept?", 0, [Q]),
    ("how do I upscale an image?", 0, [Q]),
    ("merci !", 0, [Q]),
    ("comment tu fonctionnes ?", 0, [Q]),
])
def test_single_intents(message, images, expected):
    result = plan(message, images)
    assert result.intents == expected, (message, result.model_dump())
    assert result.stage == "rules"


@pytest.mark.parametrize("message,images,expected", [
    ("generate a red sneaker and remove the background", 0, [G, B]),
    ("upscale this, then cut it out", 1, [U, B]),
    ("remove the background and then upscale it", 1, [B, U]),
    ("draw a koala, then make it 2x bigger", 0, [G, U]),
    ("swap our faces, then make it look like a comic", 2, [F, S]),
    ("génère un château puis enlève le fond", 0, [G, B]),
    ("détoure l'image puis agrandis-la", 1, [B, U]),
    ("make it anime, remove the background, then upscale it", 1, [S, B, U]),
])
def test_multi_step_in_order(message, images, expected):
    assert plan(message, images).intents == expected


@pytest.mark.parametrize("message,expected", [
    ("upscale it after removing the background", [B, U]),
    ("before upscaling, remove the background", [B, U]),
    ("upscale it, but first remove the background", [B, U]),
])
def test_order_words_reorder_steps(message, expected):
    assert plan(message, 1).intents == expected


def test_reordered_steps_keep_their_own_text():
    result = plan("upscale it after changing the sky to a sunset", 1)
    assert result.intents == [E, U]
    assert result.steps[0].params == {"prompt": "changing the sky to a sunset"}
    assert (result.steps[1].inputs[0].source, result.steps[1].inputs[0].index) == (
        "previous_step", 0)


@pytest.mark.parametrize("message,images,expected", [
    ("don't remove the background, just upscale", 1, [U]),
    ("do not upscale, only cut it out", 1, [B]),
    ("no need to remove the background, make it watercolor", 1, [S]),
    ("remove the background without upscaling", 1, [B]),
    ("keep the background and make it bigger", 1, [U]),
    ("ne supprime pas le fond, agrandis l'image", 1, [U]),
    ("pas besoin d'agrandir, détoure-la", 1, [B]),
    ("I don't want a cartoon, make it a pencil sketch", 1, [S]),
])
def test_negated_operations_are_not_steps(message, images, expected):
    assert plan(message, images).intents == expected


@pytest.mark.parametrize("message,images,expected", [
    ("remove the person in the background", 1, [E]),  # object removal, not matting
    ("change the background to a forest", 1, [E]),  # background replacement is an edit
    ("make the dog bigger", 1, [E]),  # an object, not the image
    ("generate a high-resolution photo of a cat", 0, [G]),  # quality words, not an upscale
    ("generate a 4k wallpaper of mountains", 0, [G]),
    ("a portrait of a cat wearing a crown", 0, [G]),  # subject, not an orientation
    ("how do I remove a background?", 0, [Q]),  # a question about it, not a request
    ("generate a logo with a transparent background", 0, [G, B]),
])
def test_tricky_phrasings(message, images, expected):
    assert plan(message, images).intents == expected


@pytest.mark.parametrize("message,images,expected,style", [
    # requests phrased as questions are requests; questions about how things work are not
    ("is it possible to remove the background?", 1, [B], None),
    ("would it be possible to upscale this?", 1, [U], None),
    ("est-il possible d'enlever le fond ?", 1, [B], None),
    ("est-ce que tu peux détourer cette photo ?", 1, [B], None),
    ("est-ce que tu peux m'expliquer le détourage ?", 0, [Q], None),
    ("can you tell me how upscaling works?", 0, [Q], None),
    # gerunds, art-form nouns, "a X version of me"
    ("what about making it anime?", 1, [S], "anime"),
    ("could you turn it into a sketch?", 1, [S], "pencil-sketch"),
    ("make a cartoon version of me", 1, [S], "cartoon"),
    ("making the sky pink", 1, [E], None),
    ("change my face with his", 2, [F], None),
    ("bg remove", 1, [B], None),
    ("can u make it hd", 1, [U], None),
])
def test_other_phrasings(message, images, expected, style):
    result = plan(message, images)
    assert result.intents == expected
    assert result.steps[0].params.get("style") == style


def test_follow_ups_use_the_session_image():
    bigger = plan("make it bigger", 0, CTX)
    assert bigger.intents == [U]
    assert bigger.steps[0].inputs[0].source == "session"
    assert bigger.steps[0].inputs[0].image_id == "img_last"
    assert not bigger.missing_inputs and bigger.clarification is None

    restyle = plan("now in watercolor", 0, CTX)
    assert restyle.intents == [S] and restyle.steps[0].params["style"] == "watercolor"
    assert restyle.steps[0].inputs[0].source == "session"

    again = plan("another one", 0, CTX)
    assert again.intents == [G]
    assert again.steps[0].params["prompt"] == "a green parrot on a branch"
    assert again.steps[0].params["style"] == "anime"

    fr = plan("maintenant détoure-la", 0, CTX)
    assert fr.intents == [B] and fr.language == "fr"


def test_an_upload_wins_over_the_session_image():
    result = plan("upscale it", 1, CTX)
    assert result.steps[0].inputs[0].model_dump() == {
        "role": "image", "source": "upload", "index": 0, "image_id": None}


@pytest.mark.parametrize("message,intent,role,text", [
    ("upscale this photo", U, "image", "Please attach the image you want me to upscale."),
    ("remove the background", B, "image",
     "Please attach the image you want me to remove the background from."),
    ("swap faces", F, "source_face", "Please attach a photo of the face you want to use."),
    ("agrandis cette image", U, "image", "Merci de joindre l'image à agrandir."),
])
def test_missing_image_asks_for_it(message, intent, role, text):
    result = plan(message, 0)
    assert result.intents == [intent]
    assert result.missing_inputs[0].model_dump() == {"step": 0, "role": role, "intent": intent}
    assert result.steps[0].missing and result.clarification == text


def test_chained_steps_read_the_previous_output():
    result = plan("generate a red sneaker, remove the background, then upscale it 4x")
    assert result.intents == [G, B, U]
    assert result.steps[0].inputs == []
    assert [(i.source, i.index) for i in result.steps[1].inputs] == [("previous_step", 0)]
    assert [(i.source, i.index) for i in result.steps[2].inputs] == [("previous_step", 1)]
    assert not result.missing_inputs


def test_face_swap_inputs():
    two = plan("swap the faces", 2)
    assert [(i.role, i.source, i.index) for i in two.steps[0].inputs] == [
        ("source_face", "upload", 0), ("target", "upload", 1)]
    # one upload + a generated target
    gen = plan("generate a knight in armour, then put my face on it", 1)
    assert gen.intents == [G, F]
    assert [(i.role, i.source, i.index) for i in gen.steps[1].inputs] == [
        ("source_face", "upload", 0), ("target", "previous_step", 0)]
    # one upload + the session image as the target
    follow = plan("put my face on it", 1, CTX)
    assert [(i.role, i.source) for i in follow.steps[0].inputs] == [
        ("source_face", "upload"), ("target", "session")]
    # one upload, nothing else: the target is missing
    alone = plan("swap my face onto the person on the left", 1)
    assert [m.role for m in alone.missing_inputs] == ["target"]
    assert alone.steps[0].params["target_face_index"] == 0


def test_ordinal_references_pick_uploads():
    result = plan("upscale the first image and remove the background of the second", 2)
    assert result.intents == [U, B]
    assert (result.steps[0].inputs[0].source, result.steps[0].inputs[0].index) == ("upload", 0)
    assert (result.steps[1].inputs[0].source, result.steps[1].inputs[0].index) == ("upload", 1)


def test_composites_read_every_upload():
    result = plan("merge these three photos into one", 3)
    assert result.intents == [E]
    assert [(i.role, i.index) for i in result.steps[0].inputs] == [
        ("image", 0), ("reference", 1), ("reference", 2)]


def test_generation_prompt_is_cleaned_of_instructions_and_parameters():
    result = plan("please create 4 images of a cabin by a frozen lake, 1024x768, seed 99, "
                  "no people, in watercolor style")
    step = result.steps[0]
    assert step.params == {"prompt": "a cabin by a frozen lake", "style": "watercolor",
                           "negative_prompt": "people", "seed": 99, "width": 1024,
                           "height": 768, "n": 4}


def test_edit_prompt_keeps_the_instruction():
    result = plan("can you please change the sky to a purple sunset", 1)
    assert result.steps[0].params["prompt"] == "change the sky to a purple sunset"


def test_language_is_detected():
    assert plan("enlève le fond de cette image", 1).language == "fr"
    assert plan("remove the background of this image", 1).language == "en"


def test_rules_confidence_reflects_certainty():
    sure = analyze("remove the background", 1)
    assert sure.confidence >= RULES_THRESHOLD and not sure.uncovered
    unsure = analyze("a quiet street", 0)  # a bare description: generation, weakly
    assert unsure.intents == [G] and unsure.confidence < RULES_THRESHOLD
    unexplained = analyze("upscale it, then florp the colours", 1)
    assert unexplained.intents == [U] and unexplained.uncovered
    assert unexplained.confidence < RULES_THRESHOLD


def test_empty_message_asks_what_to_do():
    result = plan("   ", 1)
    assert result.intents == [Q]
    assert result.clarification == "What would you like me to do with this image?"


@pytest.mark.parametrize("kwargs,match", [
    ({"message": None}, "message must be a string"),
    ({"message": "x" * 10_001}, "limit is 10000 characters"),
    ({"message": "hi", "images": -1}, "images must be an integer from 0 to 10"),
    ({"message": "hi", "images": True}, "images must be an integer"),
    ({"message": "hi", "context": "img_1"}, "context must be a SessionContext"),
])
def test_invalid_arguments_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RULES.plan_fast(**kwargs)


def test_context_accepts_a_dict_and_rejects_unknown_keys():
    assert RULES.plan_fast("bigger please", 0, {"last_image_id": "a1"}).intents == [U]
    with pytest.raises(ValueError, match="last_imgae"):
        RULES.plan_fast("bigger", 0, {"last_imgae": "a1"})
