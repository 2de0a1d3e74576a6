"""The prompt the router hands to the generator (issue #23): subject nouns and their modifiers
kept, conversational wrappers dropped, no verb ever taken as a style, counts and sizes in
params and out of the prompt, quoted text verbatim; follow-ups on the session's image are
edits that offer the other reading. Rules only (no embedding model): these are deterministic.
"""

from __future__ import annotations

import pytest

from router.cascade import Cascade
from router.eval import term_in

G, E, F, B, U, S, Q = ("image_generation", "image_edit", "face_swap", "background_removal",
                       "upscale", "style_transfer", "general")
SESSION = {"last_image_id": "img_1", "last_prompt": "a golden retriever in a park",
           "last_intent": G}


@pytest.fixture(scope="module")
def cascade():
    return Cascade()


def plan(cascade, message, images=0, context=None):
    return cascade.plan_fast(message, images, context)


# --- the cases ---------------------------------------------------------------------

def test_counted_subject_stays_in_the_prompt(cascade):
    p = plan(cascade, "generate 2 logos for a bakery called Rise and Shine")
    assert p.intents == [G] and p.stage == "rules"
    assert p.steps[0].params == {"prompt": "logo for a bakery called Rise and Shine", "n": 2}


def test_show_me_what_it_could_look_like_is_the_subject_alone(cascade):
    p = plan(cascade, "Show me what an underwater hotel room could look like")
    assert p.intents == [G] and p.stage == "rules"
    assert p.steps[0].params == {"prompt": "an underwater hotel room"}


def test_a_verb_is_never_a_style(cascade):
    p = plan(cascade, "sketch a blueprint-style drawing of a windmill")
    assert p.intents == [G]
    assert p.steps[0].params == {"prompt": "a drawing of a windmill", "style": "blueprint"}


@pytest.mark.parametrize("message,prompt", [
    ("make another one like this but in winter", "a golden retriever in a park, in winter"),
    ("the same dog but wearing a scarf", "dog wearing a scarf"),
    ("now in black and white", "a golden retriever in a park, in black and white"),
])
def test_follow_ups_on_the_session_image_are_edits_of_it(cascade, message, prompt):
    p = plan(cascade, message, context=SESSION)
    assert p.intents == [E] and p.stage == "rules"
    assert p.steps[0].params == {"prompt": prompt}
    assert [(i.role, i.source, i.image_id) for i in p.steps[0].inputs] == [
        ("image", "session", "img_1")]
    (alt,) = p.alternatives
    assert (alt.id, alt.label) == ("generate_new", "Generate a new one instead")
    assert alt.message == f"generate a new image of {prompt}"
    # the other reading, sent as a message in the same session, is a new generation
    again = plan(cascade, alt.message, context=SESSION)
    assert again.intents == [G] and again.steps[0].params == {"prompt": prompt}
    assert not again.alternatives


# --- follow-ups: when they are not edits ------------------------------------------------------

@pytest.mark.parametrize("message,intents,prompt", [
    ("another one", [G], "a golden retriever in a park"),  # same prompt, new sample
    ("now draw a penguin on an iceberg", [G], "a penguin on an iceberg"),
    ("something totally different: a koi pond", [G], "a koi pond"),
    ("generate a new image of a desert at noon", [G], "a desert at noon"),
    ("the same but bigger", [U], None),  # the change names another operation
    ("now in watercolor", [S], None),
    ("the same but in winter, then upscale it", [E, U], "a golden retriever in a park, "
                                                       "in winter"),
    ("la même chose mais en hiver", [E], "a golden retriever in a park, en hiver"),
    ("refais-la mais la nuit", [E], "a golden retriever in a park, la nuit"),
])
def test_follow_up_readings(cascade, message, intents, prompt):
    p = plan(cascade, message, context=SESSION)
    assert p.intents == intents
    assert p.steps[0].params.get("prompt") == prompt
    assert bool(p.alternatives) == (intents[0] == E)


def test_what_would_it_look_like_about_an_image_is_not_a_new_generation(cascade):
    assert plan(cascade, "how would the dog look with a hat?", images=1).intents != [G]
    assert plan(cascade, "how would the dog look with a hat?", context=SESSION).intents != [G]
    assert plan(cascade, "what would a cat look like as a knight",
                context=SESSION).steps[0].params == {"prompt": "a cat as a knight"}


def test_without_an_image_a_follow_up_phrase_is_not_an_edit(cascade):
    p = plan(cascade, "the same dog but wearing a scarf")
    assert E not in p.intents and not p.alternatives


# --- wrappers, counts, sizes, quotes, styles --------------------------------------------------

@pytest.mark.parametrize("message,prompt", [
    ("can you please make a poster for a rock concert in Berlin",
     "a poster for a rock concert in Berlin"),
    ("I need an image of a vegan burger with fries", "a vegan burger with fries"),
    ("I'd love to see a hedgehog wearing a tiny raincoat", "a hedgehog wearing a tiny raincoat"),
    ("hi! could you draw a koala surfing a wave?", "a koala surfing a wave"),
    ("would you mind sketching a vintage bicycle", "a vintage bicycle"),
    ("How would a medieval castle made of ice look?", "a medieval castle made of ice"),
    ("what would a cat look like as a knight", "a cat as a knight"),
    ("Picture this: a library inside a giant seashell", "a library inside a giant seashell"),
    ("i want a wallpaper of a neon jungle at night", "a wallpaper of a neon jungle at night"),
    ("montre-moi à quoi ressemblerait un jardin sur Mars", "un jardin sur Mars"),
    ("il me faudrait une bannière pour un blog de randonnée",
     "une bannière pour un blog de randonnée"),
    ("peux-tu me dessiner un phare sous l'orage ?", "un phare sous l'orage"),
    ("je cherche une image de forêt tropicale avec une cascade",
     "forêt tropicale avec une cascade"),
])
def test_conversational_wrappers_are_dropped(cascade, message, prompt):
    p = plan(cascade, message)
    assert p.intents == [G]
    assert p.steps[0].params["prompt"] == prompt


@pytest.mark.parametrize("message,n,prompt", [
    ("give me 6 icon ideas for a fitness app", 6, "icon for a fitness app"),
    ("design 3 icons for a weather app", 3, "icon for a weather app"),
    ("two stickers of a grumpy cactus", 2, "sticker of a grumpy cactus"),
    ("generate 3 images of two cats playing chess", 3, "two cats playing chess"),
    ("I need 5 variations of a minimalist mountain logo", 5, "a minimalist mountain logo"),
    ("crée trois affiches pour une fête de village", 3, "affiche pour une fête de village"),
    ("génère 3 visuels pour une campagne de pub", 3, "visuel pour une campagne de pub"),
])
def test_counts_go_to_params_and_the_counted_subject_stays(cascade, message, n, prompt):
    p = plan(cascade, message)
    assert p.steps[0].params["n"] == n and p.steps[0].params["prompt"] == prompt


def test_sizes_seeds_and_negatives_stay_out_of_the_prompt(cascade):
    p = plan(cascade, "a lighthouse in the fog, 1280x720, seed=5, no boats")
    assert p.steps[0].params == {"prompt": "a lighthouse in the fog", "width": 1280,
                                 "height": 720, "seed": 5, "negative_prompt": "boats"}


@pytest.mark.parametrize("message,quoted", [
    ('create a logo for a coffee truck called "Bean There"', '"Bean There"'),
    ("a wooden sign that says 'Gone Fishing!'", "'Gone Fishing!'"),
    ("Design a birthday card that says 'Happy 30th, Sam!'", "'Happy 30th, Sam!'"),
    ("fais-moi un panneau qui dit « Attention  chat méchant »", "« Attention  chat méchant »"),
])
def test_quoted_text_is_kept_verbatim(cascade, message, quoted):
    p = plan(cascade, message)
    assert p.intents == [G]
    assert p.steps[0].params["prompt"].endswith(quoted)


def test_quoted_words_are_not_instructions(cascade):
    p = plan(cascade, 'design a t-shirt with the words "remove the background" on it')
    assert p.intents == [G]
    assert p.steps[0].params["prompt"] == 'a t-shirt with the words "remove the background"'
    # a prompt merely put in quotes is a prompt, not text to write
    p = plan(cascade, 'generate "a cat on a mat"')
    assert p.steps[0].params["prompt"] == "a cat on a mat"


@pytest.mark.parametrize("message,style,prompt", [
    ("draw a pixel art style spaceship", "pixel art", "a spaceship"),
    ("paint a comic-style hero landing on a rooftop", "comic", "a hero landing on a rooftop"),
    ("render an isometric-style tiny office", "isometric", "a tiny office"),
    ("imagine un robot qui fait la cuisine, style manga", "anime",
     "un robot qui fait la cuisine"),
    ("Fais-moi une illustration d'un dragon en style aquarelle", "watercolor", "un dragon"),
    ("a family picnic in a park, watercolor style", "watercolor", "a family picnic in a park"),
])
def test_style_phrases_leave_the_prompt_and_never_take_the_verb(cascade, message, style,
                                                                 prompt):
    p = plan(cascade, message)
    assert p.intents == [G]
    assert p.steps[0].params["style"] == style and p.steps[0].params["prompt"] == prompt


def test_a_description_then_an_operation_generates_first(cascade):
    p = plan(cascade, "a red sports car in the desert, then make it anime style")
    assert p.intents == [G, S]
    assert p.steps[0].params["prompt"] == "a red sports car in the desert"
    assert p.steps[1].inputs[0].source == "previous_step"
    # an image the user means to attach is not generated
    assert plan(cascade, "my dog photo, then remove the background").intents == [B]


@pytest.mark.parametrize("message,images,intents,params", [
    ("turn this photo into a Ghibli-style painting", 1, [S], {"style": "ghibli"}),
    ("turn this photo black and white", 1, [E], {"prompt": "turn this photo black and white"}),
    ("a t-shirt print of a skull, no background clutter", 0, [G],
     {"prompt": "a t-shirt print of a skull, no background clutter"}),
    ("get rid of everything behind her", 1, [B], {}),
    ("swap the second face with mine", 2, [F], {"target_face_index": 1}),
    ("crée une icône de fusée et supprime l'arrière-plan", 0, [G, B],
     {"prompt": "une icône de fusée"}),
    ("fais-en un tableau à l'huile", 1, [S], {"style": "oil-painting"}),
    ("generate 3 cartes postales de Bretagne", 0, [G],
     {"prompt": "carte postale de Bretagne", "n": 3}),
])
def test_phrasings_the_blind_set_found(cascade, message, images, intents, params):
    """Misses of the blind set's runs, fixed in general form (see the README)."""
    p = plan(cascade, message, images)
    assert p.intents == intents
    assert p.steps[0].params == params


def test_term_matching_is_case_accent_insensitive_at_word_boundaries():
    assert term_in("Canapé", "un chat sur un canape")
    assert term_in("rise and  shine", "a bakery called Rise and Shine")
    assert not term_in("logo", "two logos")
    assert term_in('"Bean There"', 'called "Bean There"')
    assert not term_in("but", "a butterfly")


def test_rules_decided_messages_stay_under_a_millisecond(cascade):
    """Issue #23's budget: the cascade's p50 for messages the rules decide stays < 1 ms (the
    best of three rounds over the blind set, so a busy machine does not decide it)."""
    import statistics
    import time
    from pathlib import Path

    from router.eval import load_cases

    cases = load_cases(Path(__file__).resolve().parents[1] / "data" / "router_blind.jsonl")
    medians = []
    for _ in range(3):
        times = []
        for case in cases:
            started = time.perf_counter()
            p = cascade.plan_fast(case["message"], case["images"], case.get("context"))
            elapsed = time.perf_counter() - started
            if p.stage == "rules" and p.confidence >= 0.8:
                times.append(elapsed)
        assert len(times) >= 0.9 * len(cases)  # most messages are decided by the rules
        medians.append(statistics.median(times))
    assert min(medians) < 0.001, medians


# --- the second blind set's classes of misses (issue #23), in general form ------------------
# (rules alone decide these: at or above the threshold where the cascade asks no one else)
RULES_DECIDE = 0.8


@pytest.mark.parametrize("message,prompt", [
    ("gimme a pic of a walrus playing the banjo", "a walrus playing the banjo"),
    ("lemme see a castle built from old books", "a castle built from old books"),
    ("can u make a llama in a tuxedo pls", "a llama in a tuxedo"),
    ("i wanna see a greenhouse on the moon lol", "a greenhouse on the moon"),
    ("cud u whip me up a pic of a sushi train", "a sushi train"),
    ("hook me up w/ a poster of a roller derby", "a poster of a roller derby"),
    ("gimme sum art of a jellyfish city", "a jellyfish city"),
])
def test_slang_wrappers_are_dropped(cascade, message, prompt):
    p = plan(cascade, message)
    assert p.intents == [G] and p.stage == "rules" and p.confidence >= RULES_DECIDE
    assert p.steps[0].params == {"prompt": prompt}


@pytest.mark.parametrize("message,style,prompt", [
    ("a pencil sketch of a fisherman mending nets", "pencil-sketch",
     "a pencil sketch of a fisherman mending nets"),
    ("an oil painting of a bakery at dawn", "oil-painting", "an oil painting of a bakery at dawn"),
    ("a watercolor painting of a heron", "watercolor", "a watercolor painting of a heron"),
    ("a charcoal drawing of a boxer", "pencil-sketch", "a charcoal drawing of a boxer"),
    ("une aquarelle d'un pont de pierre", "watercolor", "une aquarelle d'un pont de pierre"),
    ("un croquis au crayon d'une gare", "pencil-sketch", "un croquis au crayon d'une gare"),
    # a verb before it: the verb goes, the medium stays (and "sketch" is not a second verb)
    ("draw a pencil sketch of a tugboat", "pencil-sketch", "a pencil sketch of a tugboat"),
    ("watercolor painting: two swans on a lake", "watercolor",
     "watercolor painting: two swans on a lake"),
])
def test_a_style_named_as_the_medium_is_the_generation_style(cascade, message, style, prompt):
    p = plan(cascade, message)
    assert p.intents == [G] and p.stage == "rules" and p.confidence >= RULES_DECIDE
    assert p.steps[0].params == {"prompt": prompt, "style": style}


def test_a_medium_phrase_about_an_attached_photo_is_not_a_generation(cascade):
    assert plan(cascade, "a pencil sketch of this photo", 1).intents == [S]
    assert plan(cascade, "a watercolor painting of my dog", 1).intents != [G]


@pytest.mark.parametrize("message,style,subject", [
    ("pixar style character of a forgetful wizard", "pixar-3d", "forgetful wizard"),
    ("give me a pixar style character of a tired lighthouse keeper", "pixar-3d",
     "tired lighthouse keeper"),
    ("make me an anime version of a beekeeper", "anime", "beekeeper"),
    ("turn a walrus into a pixar character", "pixar-3d", "walrus"),
    ("give me a ghibli style landscape", "ghibli", "landscape"),
    ("un personnage style pixar d'un vieux pêcheur", "pixar-3d", "vieux pêcheur"),
])
def test_a_style_preset_without_any_image_is_a_generation_in_that_style(cascade, message, style,
                                                                         subject):
    for context in (None, SESSION):  # only the session's image: still a new subject
        p = plan(cascade, message, context=context)
        assert p.intents == [G] and p.stage == "rules" and p.confidence >= RULES_DECIDE
        assert p.steps[0].params["style"] == style
        assert term_in(subject, p.steps[0].params["prompt"])
        assert p.steps[0].params["prompt"].split()[0] not in ("give", "make", "turn")


def test_a_restyle_of_an_image_stays_a_restyle(cascade):
    # no image yet: the restyle waits for one (not a generation of "it")
    p = plan(cascade, "make it pixar style")
    assert p.intents == [S] and [m.role for m in p.missing_inputs] == ["image"]
    for message in ("make it pixar style", "as a pixar character", "in anime style now"):
        p = plan(cascade, message, context=SESSION)
        assert p.intents == [S] and p.steps[0].inputs[0].source == "session"


@pytest.mark.parametrize("message,images,intent,params", [
    ("upsacle this x4", 1, U, {"scale": 4}),
    ("uspcale it by 2", 1, U, {"scale": 2}),
    ("upsclae x3", 0, U, {"scale": 3}),
    ("remov the bg", 1, B, {}),
    ("remvoe the bakground pls", 1, B, {}),
    ("delet the backgroud", 1, B, {}),
    ("swap fcaes", 2, F, {}),
    ("suprime le fond stp", 1, B, {}),
    ("agrnadis la photo x2", 1, U, {"scale": 2}),
])
def test_typos_in_operation_words_with_a_clear_parameter(cascade, message, images, intent,
                                                          params):
    p = plan(cascade, message, images)
    assert p.intents == [intent] and p.stage == "rules" and p.confidence >= RULES_DECIDE
    assert p.steps[0].params == params


def test_typo_correction_needs_the_rest_to_fit():
    from router.typos import find_typos

    def fixed(text):
        return [(text[s:e], word) for s, e, word in find_typos(text)]

    assert fixed("upsacle x4") == [("upsacle", "upscale")]
    assert fixed("remov bg") == [("remov", "remove")]
    assert fixed("remvoe the bakground") == [("remvoe", "remove"), ("bakground", "background")]
    assert fixed("upsacle") == []  # nothing says what to upscale, or how much
    assert fixed("remov the cat") == []  # not before a background word
    assert fixed("a remote background") == []  # real words are not typos
    assert fixed("enliven the background") == []
    assert fixed("fcae") == [] and fixed("swap fcae") == [("fcae", "face")]
    assert fixed('a sign saying "remov bg"', ) != [] and find_typos(
        'a sign saying "remov bg"', [(14, 24)]) == []  # quoted text is left alone


@pytest.mark.parametrize("message,images", [
    ("are people allowed to swap faces with politicians here?", 0),
    ("is it legal to upscale someone else's photo?", 0),
    ("is background removal free?", 0),
    ("can you cut out the background of a video?", 0),
    ("could you do background removal for a whole batch?", 0),
    ("can you upscale PDFs?", 1),
    ("tu peux agrandir une vidéo ?", 0),
    ("a-t-on le droit d'échanger les visages de deux inconnus ?", 0),
    ("c'est légal de détourer une photo trouvée sur internet ?", 1),
])
def test_questions_about_the_service_are_general(cascade, message, images):
    assert plan(cascade, message, images).intents == [Q]


@pytest.mark.parametrize("message,images,intent", [
    ("can you remove the background from this photo?", 1, B),
    ("can you upscale this gif?", 1, U),  # an attached GIF is an image
    ("can you draw a legal pad on a desk?", 0, G),
])
def test_requests_phrased_as_questions_stay_requests(cascade, message, images, intent):
    assert plan(cascade, message, images).intents == [intent]


@pytest.mark.parametrize("message,change", [
    ("refais-la pareil mais avec des lanternes", "avec des lanternes"),
    ("refais-le exactement pareil mais sous la neige", "sous la neige"),
    ("refais-moi la même mais en hiver", "en hiver"),
    ("la même en plus sombre", "en plus sombre"),
    ("redo it the same but with a red umbrella", "with a red umbrella"),
    ("make it again but with a blue sky", "with a blue sky"),
])
def test_redo_it_the_same_but_is_one_edit_of_the_last_image(cascade, message, change):
    p = plan(cascade, message, context=SESSION)
    assert p.intents == [E] and p.stage == "rules"
    assert p.steps[0].params == {"prompt": f"a golden retriever in a park, {change}"}
    assert [(i.source, i.image_id) for i in p.steps[0].inputs] == [("session", "img_1")]


def test_redo_it_the_same_in_a_style_is_one_restyle(cascade):
    p = plan(cascade, "refais-la pareil mais en aquarelle", context=SESSION)
    assert p.intents == [S] and p.steps[0].params == {"style": "watercolor"}
    assert p.steps[0].inputs[0].source == "session"


@pytest.mark.parametrize("message,style", [
    ("donne à ma photo un effet vieux film", "vintage-photo"),
    ("donne à cette image un effet vieille photo rétro", "vintage-photo"),
    ("applique un filtre sépia sur cette image", "vintage-photo"),
    ("rends cette photo rétro", "vintage-photo"),
    ("mets un effet bande dessinée sur ma photo", "comic"),
    ("donne un rendu aquarelle à mon portrait", "watercolor"),
    ("mets-lui un filtre sépia", "vintage-photo"),
    ("give my photo an old-timey film look", "vintage-photo"),
])
def test_a_french_restyle_of_an_upload_is_a_style_transfer(cascade, message, style):
    p = plan(cascade, message, 1)
    assert p.intents == [S] and p.stage == "rules" and p.confidence >= RULES_DECIDE
    assert p.steps[0].params == {"style": style}
    assert [(i.source, i.index) for i in p.steps[0].inputs] == [("upload", 0)]


@pytest.mark.parametrize("text,value", [
    ("vieille photo rétro", "vintage-photo"), ("old vintage photo", "vintage-photo"),
    ("soft watercolor", "watercolor"), ("vieille photo des années 70", "vintage-photo"),
    ("van gogh", "van gogh"), ("neon noir", "neon noir"), ("watercolor and oil",
                                                          "watercolor and oil"),
])
def test_a_preset_named_with_qualifiers_is_the_preset(text, value):
    from router.params import style_value

    assert style_value(text) == value
