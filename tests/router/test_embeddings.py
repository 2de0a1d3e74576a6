"""The real embedding stage (all-MiniLM-L6-v2, offline) and the labelled evaluation sets.

The acceptance bar: ≥ 0.95 exact intent-sequence accuracy on tests/data/router_eval.jsonl with
rules + embeddings and no LLM. router_dev.jsonl and router_holdout.jsonl are further labelled
sets written separately. The holdout messages were written in two blind batches after the
rules existed, to measure unseen phrasings: first runs scored 0.970 (99 messages) and 0.966
(58 messages) before the misses were fixed in general form (no message copied into a rule).
router_blind.jsonl (issue #23) also checks the prompts handed to the generator
(prompt_contains / prompt_excludes); it was written before the extractor ran on it, and its
bar is higher: intent ≥ 0.97, params ≥ 0.98, prompts ≥ 0.95 (first score and history in the
README, "Chat router").
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router.cascade import Cascade
from router.embeddings import EmbeddingClassifier, SentenceEncoder
from router.eval import evaluate, load_cases
from router.exemplars import EXEMPLARS, labelled
from router.schemas import INTENTS
from router.text import fold

DATA = Path(__file__).resolve().parents[1] / "data"
# router_blind2.jsonl is kept as a record of its one scoring (README), not checked here: one
# of its messages is word for word an embedding exemplar
SETS = ["router_eval.jsonl", "router_dev.jsonl", "router_holdout.jsonl", "router_blind.jsonl",
        "router_blind3.jsonl"]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.load()


@pytest.fixture(scope="module")
def classifier(encoder):
    return EmbeddingClassifier(encoder)


def _key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", fold(text)))


def test_exemplars_cover_every_intent_in_both_languages():
    assert set(EXEMPLARS) == set(INTENTS)
    for intent, texts in EXEMPLARS.items():
        assert len(texts) >= 25, intent
        assert len({_key(t) for t in texts}) == len(texts), f"duplicate exemplar in {intent}"
        french = [t for t in texts if re.search(r"[éèàçê]|\b(?:le|la|les|une?|des|moi)\b", t)]
        assert len(french) >= 6, intent


def test_no_evaluation_message_is_an_exemplar():
    exemplars = {_key(t) for t, _ in labelled()}
    for name in SETS:
        for case in load_cases(DATA / name):
            assert _key(case["message"]) not in exemplars, (name, case["message"])


def test_model_embeds_offline(classifier, encoder):
    vector = classifier.embed("remove the background")
    assert vector.shape == (384,) and abs(float((vector ** 2).sum()) - 1.0) < 1e-4
    assert classifier.dim == 384 and encoder.name


@pytest.mark.parametrize("text,intent", [
    ("could you please get rid of everything behind the person", "background_removal"),
    ("this picture is tiny, make it much bigger", "upscale"),
    ("swap my face with the guy in the other picture", "face_swap"),
    ("repaint this photo as a watercolour", "style_transfer"),
    ("a dreamy lighthouse on a cliff at sunset", "image_generation"),
    ("thanks, that's all for today", "general"),
])
def test_classifier_on_clear_clauses(classifier, text, intent):
    prediction = classifier.classify(text)
    assert prediction.intent == intent, prediction
    assert prediction.margin > 0 and 0 < prediction.confidence <= 0.97
    assert prediction.neighbors[0][1] == intent


def test_exemplar_embeddings_are_cached(encoder, tmp_path):
    class Counting:
        name = encoder.name

        def __init__(self):
            self.texts = 0

        def encode(self, texts):
            self.texts += len(texts)
            return encoder.encode(texts)

    first = Counting()
    EmbeddingClassifier(first, cache_dir=tmp_path)
    assert first.texts == len(labelled()) and list(tmp_path.glob("exemplars-*.npy"))
    second = Counting()
    cached = EmbeddingClassifier(second, cache_dir=tmp_path)
    assert second.texts == 0
    assert cached.classify("upscale this photo").intent == "upscale"


@pytest.mark.parametrize("name", SETS)
def test_labelled_set_accuracy_without_llm(classifier, name, capsys):
    scores = evaluate(Cascade(classifier=classifier), load_cases(DATA / name),
                      errors_only=True)
    printed = capsys.readouterr().out.strip().splitlines()
    assert scores["cases"] >= (150 if name in ("router_eval.jsonl", "router_blind.jsonl",
                                               "router_blind3.jsonl") else 90)
    assert scores["intent_accuracy"] >= 0.95, printed
    assert scores["params_accuracy"] >= 0.9, printed
    assert scores["prompt_accuracy"] >= 0.95, printed
    assert printed[-1].startswith("intent_accuracy=")
    if name in ("router_blind.jsonl", "router_blind3.jsonl"):  # issue #23's bar, no LLM
        assert scores["prompt_checks"] >= 200
        assert scores["intent_accuracy"] >= 0.97, printed
        assert scores["params_accuracy"] >= 0.98, printed
