"""Chat training requests (router/training_intent.py), EN and FR."""

from __future__ import annotations

import pytest

from router.training_intent import EXAMPLES, detect_training


@pytest.mark.parametrize(("message", "dataset"), EXAMPLES)
def test_examples(message, dataset):
    found = detect_training(message)
    assert (found.dataset if found else None) == dataset


def test_adapter_name_language_and_original_spelling():
    found = detect_training("train a style from my dataset Sketches, call it inky")
    assert (found.dataset, found.name, found.french) == ("Sketches", "inky", False)
    fr = detect_training("Entraîne un style à partir de mon dataset Aquarelles d'été")
    assert fr.french and fr.dataset == "Aquarelles d'été"
