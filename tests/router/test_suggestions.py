"""Prompt suggestions (router/suggestions.py): prefix autocomplete, embedding neighbours from
the router's all-MiniLM-L6-v2 judged on a small labelled list, enhance, random."""

from __future__ import annotations

import numpy as np
import pytest

from router.embeddings import SentenceEncoder
from router.suggestions import CATEGORIES, SuggestionIndex

# query -> the category its nearest phrase should come from (no prefix of any phrase)
LABELLED = [
    ("sunrise warmth", "lighting"), ("glowing lamps at night", "lighting"),
    ("shot from far above", "camera"), ("blurry background", "camera"),
    ("sad and lonely", "mood"), ("scary atmosphere", "mood"),
    ("orange and turquoise", "colors"), ("grey scale", "colors"),
    ("kitten", "subjects"), ("skyscrapers", "subjects"),
    ("japanese animation", "styles"), ("painted with a brush on canvas", "styles"),
    ("extremely sharp and detailed", "quality"), ("ultra hd", "quality"),
]


@pytest.fixture(scope="module")
def index():
    return SuggestionIndex(SentenceEncoder.load())


def test_categories_of_seed_002():
    assert set(CATEGORIES) == {"subjects", "styles", "lighting", "camera", "quality", "mood",
                               "colors"}


def test_prefix_matches_come_first_phrase_starts_before_inner_words():
    plain = SuggestionIndex()
    texts = [s.text for s in plain.autocomplete("gold", 10)]
    assert texts[0] == "golden hour" and "golden and crimson" in texts
    assert all("gold" in t for t in texts)
    inner = [s.text for s in plain.autocomplete("light", 10)]
    assert "lighthouse" not in inner[0] and "a lighthouse on a cliff" in inner
    assert plain.autocomplete("zzzz", 5) == []  # no encoder: prefix only


def test_embedding_neighbours_are_relevant(index):
    hits = 0
    for query, category in LABELLED:
        found = index.autocomplete(query, 3)
        assert all(s.match == "semantic" for s in found)
        hits += found[0].category == category
    assert hits / len(LABELLED) >= 0.75, hits


def test_enhance_adds_what_the_prompt_lacks(index):
    out = index.enhance("a portrait of a sailor, 85mm lens")
    added = {a["category"] for a in out["added"]}
    assert added == {"quality", "lighting"}  # it has a camera term already
    assert out["prompt"].startswith("a portrait of a sailor, 85mm lens, ")


def test_random_is_seeded_and_filtered():
    plain = SuggestionIndex()
    assert [s.text for s in plain.random(4, seed=1)] == [s.text for s in plain.random(4, seed=1)]
    assert {s.category for s in plain.random(5, category="mood")} == {"mood"}


class CountingEncoder:
    """A stand-in encoder that counts what it embeds (the cache is what is under test)."""

    name = "counting"

    def __init__(self):
        self.texts: list[str] = []

    def encode(self, texts):
        self.texts += texts
        rng = [np.random.default_rng(sum(map(ord, t))).normal(size=8) for t in texts]
        return np.asarray([v / np.linalg.norm(v) for v in rng], dtype=np.float32)


def test_query_embeddings_are_cached_and_short_fragments_not_embedded():
    encoder = CountingEncoder()
    index = SuggestionIndex(encoder, cache_size=2)
    encoder.texts.clear()  # the vocabulary's own embeddings, made once
    first = index.autocomplete("sunrise warmth", 5)
    assert encoder.texts == ["sunrise warmth"]
    assert index.autocomplete("  Sunrise   WARMTH ", 5) == first  # one key: no second encode
    assert encoder.texts == ["sunrise warmth"] and index.embeddings.hits == 1
    # a one- or two-letter fragment: its prefix matches only, nothing embedded
    assert all(s.match == "prefix" for s in index.autocomplete("go", 10))
    assert encoder.texts == ["sunrise warmth"]
    # prefix matches that fill the limit: nothing embedded either
    assert [s.match for s in index.autocomplete("golden", 1)] == ["prefix"]
    assert encoder.texts == ["sunrise warmth"]
    # least recently used out
    index.autocomplete("kitten", 5)
    index.autocomplete("moody sky", 5)
    index.autocomplete("sunrise warmth", 5)
    assert encoder.texts == ["sunrise warmth", "kitten", "moody sky", "sunrise warmth"]
    assert index.embeddings.info()["size"] == 2
