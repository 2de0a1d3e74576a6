"""The rules' prefilter (router/rules.py `required_literals`, `find_cues`): a pattern is not
run on a message that lacks every string its matches must contain, and that changes nothing."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from router import rules
from router.text import fold

DATA = Path(__file__).resolve().parents[1] / "data"


def _messages() -> list[str]:
    out = []
    for path in sorted(DATA.glob("router_*.jsonl")):
        out += [json.loads(line)["message"] for line in path.read_text().splitlines() if line]
    return out


@pytest.mark.parametrize(("regex", "needs"), [
    (r"\bkeep(?:ing)?\s+the\s+bg", {"keep"}),  # the sequence's longest literal
    (r"\b(?:remove|erase|cut\s+out)\b", {"remove", "erase", "cut"}),
    (r"(?:photo|image)s?\b|\bpic", {"photo", "image", "pic"}),
    (r"[ab]c?", {"a", "b"}),  # a character set of plain characters
    (r"[ab]x", {"x"}),  # as long as the set's, and one string instead of two
    (r"(?:face)+ swap", {" swap"}),
])
def test_required_literals_of_a_regex(regex, needs):
    assert rules.required_literals(re.compile(regex)) == needs


@pytest.mark.parametrize("regex", [
    r"\w+",  # a class: nothing required
    r"(?:photo)?\s*x?",  # optional parts
    r"(?=photo)\w+",  # a lookahead is not part of the match
    r"photo|\w+",  # one branch requires nothing
    r"(?i)photo",  # case-insensitive: the literal's case is not known
])
def test_regexes_that_require_nothing_are_always_run(regex):
    assert rules.required_literals(re.compile(regex)) is None


def test_every_pattern_has_a_prefilter():
    assert all(p.needs for p in rules.PATTERNS)


def test_every_match_in_the_corpus_contains_a_required_string():
    """Soundness on real messages: whatever a pattern matches holds one of its strings."""
    for message in _messages():
        folded = fold(message)
        for pattern in rules.PATTERNS:
            for match in pattern.regex.finditer(folded):
                assert any(n in match.group(0) for n in pattern.needs), (pattern.name, message)


def test_cues_and_analyses_are_the_same_without_the_prefilter(monkeypatch):
    messages = _messages()
    assert len(messages) > 500
    fast = [(rules.find_cues(fold(m)), rules.analyze(m)) for m in messages]
    monkeypatch.setattr(rules, "PATTERNS", tuple(
        dataclasses.replace(p, needs=None) for p in rules.PATTERNS))
    for message, (cues, analysis) in zip(messages, fast, strict=True):
        assert rules.find_cues(fold(message)) == cues, message
        assert rules.analyze(message) == analysis, message
