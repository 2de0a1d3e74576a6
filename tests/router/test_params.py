"""Parameter extraction: size, count, seed, scale, style, negative terms, faces (EN + FR)."""

from __future__ import annotations

import pytest

from router.params import LANDSCAPE, PORTRAIT, SQUARE, extract, find_styles, style_value
from router.text import fold, nfc


def params(message: str):
    text = nfc(message)
    return extract(fold(text), text)


@pytest.mark.parametrize("message,size", [
    ("a castle, 1024x768", (1024, 768)),
    ("a castle at 1920 x 1080 px", (1920, 1080)),
    ("a castle 640×480", (640, 480)),
    ("a castle 512 by 512", (512, 512)),
    ("un château en 800 par 600", (800, 600)),
    ("a castle, square", SQUARE),
    ("a castle in square format", SQUARE),
    ("un château, format carré", SQUARE),
    ("a castle, portrait format", PORTRAIT),
    ("a castle in portrait orientation", PORTRAIT),
    ("un château au format portrait", PORTRAIT),
    ("a castle in landscape", LANDSCAPE),
    ("un château, format paysage", LANDSCAPE),
    ("a castle, 16:9", (1024, 576)),
    ("a castle with a 9:16 aspect ratio", (576, 1024)),
    ("a castle 4:3", (1024, 768)),
])
def test_size(message, size):
    found = params(message)
    assert (found.width, found.height) == size


@pytest.mark.parametrize("message", [
    "a portrait of a queen",  # the subject
    "a landscape of rolling hills",
    "a square table in a kitchen",
    "a portrait photo of a man",
    "meet me at 10:30",  # not an aspect ratio
])
def test_no_size(message):
    found = params(message)
    assert (found.width, found.height) == (None, None)


@pytest.mark.parametrize("message,n", [
    ("3 images of a fox", 3),
    ("give me four variations", 4),
    ("two pictures of a car", 2),
    ("a couple of versions", 2),
    ("make 10 logos", 10),
    ("trois images d'un chat", 3),
    ("deux variantes d'une affiche", 2),
    ("cinq propositions de logo", 5),
    ("n=6 a fox", 6),
])
def test_count(message, n):
    assert params(message).n == n


@pytest.mark.parametrize("message", [
    "combine these two photos", "swap faces between the 2 images", "a photo of 3 dogs",
    "put both images side by side", "fusionne ces deux photos",
])
def test_no_count(message):
    assert params(message).n is None


@pytest.mark.parametrize("message,seed", [
    ("a fox, seed 42", 42), ("seed: 7", 7), ("with seed=123456", 123456),
    ("use 99 as the seed", 99), ("graine 2024", 2024), ("la graine 5", 5), ("seed #8", 8),
])
def test_seed(message, seed):
    assert params(message).seed == seed


@pytest.mark.parametrize("message,scale", [
    ("upscale 4x", 4), ("upscale it x2", 2), ("enlarge by a factor of 4", 4),
    ("make it 2 times bigger", 2), ("double the size", 2), ("quadruple it", 4),
    ("agrandis 2 fois", 2), ("agrandis par 4", 4), ("upscale × 4", 4), ("upscale it twice", 2),
])
def test_scale(message, scale):
    assert params(message).scale == scale


def test_scale_ignores_sizes():
    assert params("upscale to 2048x2048").scale is None


@pytest.mark.parametrize("message,terms", [
    ("a dragon, no people, no buildings", ["people", "buildings"]),
    ("a woman in a cafe, without glasses", ["glasses"]),
    ("avoid text and watermarks", ["text", "watermarks"]),
    ("a street, exclude cars or bikes", ["cars", "bikes"]),
    ("design a poster with no text for a concert", ["text"]),
    ("a beach but do not add any people", ["people"]),
    ("make sure there are no clouds", ["clouds"]),
    ("un logo, sans texte", ["texte"]),
    ("une voiture, pas de reflets", ["reflets"]),
    ("évite les personnes et les voitures", ["personnes", "voitures"]),
    ("aucun animal", ["animal"]),
    ("a kitchen, I don't want any people in it", ["people"]),
    ("une cuisine, je ne veux pas de fleurs", ["fleurs"]),
    ("a cat. negative: blur, lowres, extra fingers", ["blur", "lowres", "extra fingers"]),
])
def test_negative_terms(message, terms):
    assert params(message).negative_terms == terms


@pytest.mark.parametrize("message", [
    "no need to upscale", "remove it without changing the face", "no, the other one",
    "sans changer le visage", "no problem", "upscale without losing quality",
])
def test_not_negative_terms(message):
    assert params(message).negative_terms == []


def test_negative_terms_keep_the_original_spelling():
    assert params("un paysage, sans Églises").negative_terms == ["Églises"]


@pytest.mark.parametrize("text,value", [
    ("watercolor", "watercolor"), ("Watercolour", "watercolor"), ("aquarelle", "watercolor"),
    ("à l'aquarelle", "watercolor"), ("manga", "anime"), ("peinture à l'huile", "oil-painting"),
    ("Oil Painting", "oil-painting"), ("a comic book", "comic"), ("bande dessinée", "comic"),
    ("estampe japonaise", "ukiyo-e"), ("pop art", "pop-art"), ("low poly", "low-poly"),
    ("vintage film", "vintage-photo"), ("Van Gogh", "van gogh"), ("stained glass", "stained glass"),
    ("please", None),
])
def test_style_value(text, value):
    assert style_value(text) == value


@pytest.mark.parametrize("message,value,explicit", [
    ("in the style of Van Gogh", "van gogh", True),
    ("cyberpunk style please", "cyberpunk", True),
    ("style manga", "anime", True),
    ("dans le style de Monet", "monet", True),
    ("à la manière d'une estampe japonaise", "ukiyo-e", True),
    ("give it a vintage film look", "vintage-photo", True),
    ("version aquarelle", "watercolor", True),
    ("an anime girl with a sword", "anime", False),
    ("a watercolor painting of a fox", "watercolor", False),
])
def test_find_styles(message, value, explicit):
    mentions = find_styles(fold(message))
    assert (mentions[0].value, mentions[0].explicit) == (value, explicit)


@pytest.mark.parametrize("message", ["make it look nice", "apply a style", "a stylish hat"])
def test_no_style(message):
    assert find_styles(fold(message)) == []


@pytest.mark.parametrize("message,index,all_faces", [
    ("swap my face onto the second person", 1, False),
    ("put my face on the person on the left", 0, False),
    ("replace the first face", 0, False),
    ("mets mon visage sur la deuxième personne", 1, False),
    ("swap all the faces", None, True),
    ("swap everyone's face with mine", None, True),
])
def test_faces(message, index, all_faces):
    found = params(message)
    assert (found.target_face_index, found.all_faces) == (index, all_faces)
