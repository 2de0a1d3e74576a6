"""The chat's video rules (router/video_intent.py): "make a video of…" and "animate this
image", English and French; image requests are left to the image router."""

from __future__ import annotations

import pytest

from router.video_intent import EXAMPLES, detect_video


@pytest.mark.parametrize(("message", "has_image", "kind"), EXAMPLES)
def test_examples(message, has_image, kind):
    found = detect_video(message, images=1 if has_image else 0)
    assert (found.kind if found else None) == kind, (message, found)


def test_the_subject_becomes_the_prompt():
    assert detect_video("make a video of a cat playing piano").prompt == "a cat playing piano"
    assert detect_video("fais une vidéo d'un chat qui joue du piano").prompt \
        == "un chat qui joue du piano"
    assert detect_video("animate this photo, make the clouds drift", 1).prompt \
        == "make the clouds drift"
