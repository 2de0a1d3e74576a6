"""The video family with the tiny seeded LTX-architecture model (loaded through from_pretrained
like real weights): text-to-video, image-to-video, determinism, input checks, encoding."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest

from common.errors import InputError
from models.registry import get_spec
from models.video import (
    VideoModel,
    VideoRequest,
    check_inputs,
    condition_prompt,
    decode_video,
    encode_video,
    frames_for,
)


@pytest.fixture(scope="module")
def model(zoo_dir):
    return VideoModel.from_spec(get_spec("tiny-ltx"), zoo_dir=zoo_dir)


def _req(**kw) -> VideoRequest:
    base = dict(prompt="a cat walking", width=64, height=32, num_frames=17, fps=8, steps=2,
                seed=3)
    return VideoRequest(**{**base, **kw})


def test_text_to_video_frame_count_and_size(model):
    result = model.generate(_req())
    assert result.frames.shape == (17, 32, 64, 3)
    assert result.frames.dtype == np.uint8
    assert result.fps == 8 and result.seed == 3 and result.model == "tiny-ltx"
    assert model.info.tiny and model.info.family == "video"


def test_image_to_video_frame_count_and_size(model):
    first = np.zeros((40, 80, 3), np.uint8)  # resized to the requested size
    first[:, :40] = 255
    result = model.generate(_req(image=first, num_frames=9))
    assert result.frames.shape == (9, 32, 64, 3)


def test_same_seed_same_frames_other_seed_differs(model):
    a = model.generate(_req(seed=11)).frames
    b = model.generate(_req(seed=11)).frames
    c = model.generate(_req(seed=12)).frames
    np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_progress_per_step_and_cancel_at_next_step(model):
    steps = []
    model.generate(_req(steps=3), on_step=lambda s, t: steps.append((s, t)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    cancel = threading.Event()
    seen = []

    def on_step(step, total):
        seen.append(step)
        cancel.set()

    from models.video import VideoCancelled

    with pytest.raises(VideoCancelled) as info:
        model.generate(_req(steps=5), on_step=on_step, cancel=cancel)
    assert seen == [1] and info.value.step == 2 and info.value.total == 5


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"num_frames": 16}, "num_frames", "8k+1"),
    ({"num_frames": 1}, "num_frames", "8k+1"),
    ({"num_frames": 81}, "num_frames", "65"),  # over the tiny model's max_frames
    ({"width": 48}, "width", "multiple of 32"),
    ({"height": 512}, "height", "between 32 and 128"),
    ({"fps": 7}, "fps", "between 8 and 30"),
    ({"fps": 31}, "fps", "between 8 and 30"),
    ({"num_frames": 57, "fps": 6}, "fps", "between 8"),
    ({"steps": 0}, "steps", "between 1 and 20"),
    ({"prompt": " "}, "prompt", "non-empty"),
    ({"seed": -1}, "seed", "between 0"),
    ({"image": np.zeros((8, 8), np.uint8)}, "input_reference", "HxWx3"),
])
def test_bad_inputs_raise_value_error_naming_the_field(model, change, field, words):
    with pytest.raises(ValueError, match=field) as info:
        model.generate(_req(**change))
    assert isinstance(info.value, InputError) and info.value.param == field
    assert words in str(info.value)


def test_check_inputs_accepts_the_real_models_defaults():
    spec = get_spec("ltx-video")
    check_inputs(VideoRequest(prompt="x", width=768, height=512, num_frames=121, fps=24),
                 spec.limits)
    with pytest.raises(InputError, match="seconds must be at most 10") as info:
        check_inputs(VideoRequest(prompt="x", width=768, height=512, num_frames=257, fps=24),
                     spec.limits)
    assert info.value.param == "seconds"
    assert frames_for(5, 24) == 121 and frames_for(4, 8) == 33 and frames_for(0.1, 8) == 9


def test_camera_and_motion_are_prompt_conditioning():
    text = condition_prompt("a fox", camera="pan-left", motion=0.9)
    assert text.startswith("a fox, ") and "pans slowly to the left" in text and "fast" in text
    with pytest.raises(InputError, match="camera must be one of"):
        condition_prompt("a fox", camera="barrel-roll")
    with pytest.raises(InputError, match="motion must be between 0 and 1"):
        condition_prompt("a fox", motion=1.5)


def test_encode_mp4_h264_decodes_back_with_poster_and_preview(tmp_path):
    import imageio_ffmpeg
    from PIL import Image

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (17, 32, 64, 3), dtype=np.uint8)
    encoded = encode_video(frames, 8, preview="webp")
    assert encoded.mp4[4:8] == b"ftyp" and encoded.codec == "h264"
    assert encoded.seconds == pytest.approx(17 / 8)
    (tmp_path / "c.mp4").write_bytes(encoded.mp4)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "c.mp4"))
    meta = next(reader)
    reader.close()
    assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p")
    back, fps = decode_video(encoded.mp4)
    assert back.shape == frames.shape and fps == pytest.approx(8)
    poster = Image.open(io.BytesIO(encoded.poster))
    assert poster.format == "PNG" and poster.size == (64, 32)
    preview = Image.open(io.BytesIO(encoded.preview))
    assert preview.format == "WEBP" and preview.n_frames == 17
