"""The vision-language family (BLIP) on its tiny zoo model, and the pixel statistics of image
analysis (exact on synthetic images)."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from models.analysis import colour_name, pixel_stats
from models.vision import MAX_QUESTION_CHARS, VisionLanguageModel


@pytest.fixture(scope="module")
def vlm(zoo_dir):
    return VisionLanguageModel.from_name("tiny-blip", zoo_dir=zoo_dir)


def test_tiny_blip_loads_through_from_pretrained_and_captions(vlm, zoo_dir):
    from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering

    folder = zoo_dir / "tiny-blip"
    assert (folder / "caption" / "config.json").exists() and (folder / "vqa").is_dir()
    assert isinstance(vlm._caption, BlipForConditionalGeneration)
    assert isinstance(vlm._vqa, BlipForQuestionAnswering)
    assert vlm.info.tiny and vlm.info.family == "vision" and vlm.answers_questions
    image = np.zeros((40, 60, 4), np.uint8)
    image[..., 0] = 200
    image[..., 3] = 255
    first = vlm.run(image)
    again = vlm.run(image)
    assert isinstance(first.caption, str) and first.caption  # random words, but words
    assert first.caption == again.caption  # greedy decoding: deterministic
    assert first.answer is None
    answered = vlm.run(image, question="what is in the picture?")
    assert isinstance(answered.answer, str) and answered.caption == first.caption
    assert {"caption_s", "answer_s"} <= set(answered.timings)


def test_captions_of_a_batch_are_each_images_own_caption(vlm):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
              for h, w in ((40, 60), (64, 64), (30, 90))]
    images.append(np.dstack([images[0], np.full((40, 60), 255, np.uint8)]))  # RGBA
    batch = vlm.captions(images)
    assert batch.captions == [vlm.run(im).caption for im in images]
    assert batch.captions[0] == batch.captions[3]  # the alpha channel is not looked at
    assert batch.model == "tiny-blip" and batch.timings["caption_s"] > 0
    short = vlm.captions(images[:1], max_new_tokens=2).captions[0]
    assert len(short.split()) <= 2
    with pytest.raises(InputError) as err:
        vlm.captions([])
    assert err.value.param == "images"
    with pytest.raises(InputError) as err:
        vlm.captions([images[0], np.zeros((8, 8), np.uint8)])
    assert err.value.param == "images[1]"


def test_bad_questions_and_images_are_input_errors(vlm):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match=f"at most {MAX_QUESTION_CHARS}"):
        vlm.run(image, question="x" * (MAX_QUESTION_CHARS + 1))
    with pytest.raises(InputError, match="must be a string"):
        vlm.run(image, question=3)
    with pytest.raises(InputError, match="HxWx3"):
        vlm.run(np.zeros((8, 8), np.uint8))


def test_unknown_or_wrong_family_names():
    with pytest.raises(ValueError, match="unknown vision model 'blip-huge'; did you mean "
                       "blip-base"):
        VisionLanguageModel.from_name("blip-huge")
    with pytest.raises(ValueError, match="is a base model, not vision"):
        VisionLanguageModel.from_name("tiny-sd")


def test_missing_real_weights_fail_or_fall_back_loudly(zoo_dir, tmp_path):
    with pytest.raises(RuntimeError, match="never falls back"):
        VisionLanguageModel.from_name("blip-base", source=str(tmp_path), zoo_dir=zoo_dir)
    model = VisionLanguageModel.from_name("blip-base", source=str(tmp_path), zoo_dir=zoo_dir,
                                          allow_fallback=True)
    assert model.info.name == "tiny-blip" and model.info.fallback


def test_colours_and_shares_are_exact_on_flat_synthetic_images():
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, :60] = (255, 0, 0)  # 60 %
    image[:, 60:90] = (0, 128, 255)  # 30 %
    image[:, 90:] = (250, 250, 250)  # 10 %
    stats = pixel_stats(image)
    assert [(c.hex, c.share) for c in stats.colours] == [
        ("#ff0000", 0.6), ("#0080ff", 0.3), ("#fafafa", 0.1)]
    assert [c.name for c in stats.colours] == ["red", "blue", "white"]
    assert (stats.width, stats.height, stats.has_alpha, stats.transparent_share) == \
        (100, 40, False, 0.0)


def test_transparent_pixels_are_left_out_of_the_colours():
    image = np.zeros((10, 10, 4), np.uint8)
    image[:5] = (0, 200, 0, 255)  # opaque green half
    image[5:, :, :3] = (255, 0, 255)  # fully transparent: its colour does not count
    stats = pixel_stats(image, k=3)
    assert stats.has_alpha and stats.transparent_share == 0.5
    assert [(c.hex, c.share) for c in stats.colours] == [("#00c800", 1.0)]
    opaque = image.copy()
    opaque[..., 3] = 255
    assert not pixel_stats(opaque).has_alpha


def test_colour_names():
    assert colour_name((0, 0, 0)) == "black" and colour_name((250, 220, 30)) == "yellow"
    with pytest.raises(ValueError, match="k must be"):
        pixel_stats(np.zeros((2, 2, 3), np.uint8), k=0)
