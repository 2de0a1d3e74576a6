"""The upscale family on the tiny zoo model: offline build, spandrel detection, sizes, tiling,
RGBA, determinism, input checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from models import zoo
from models.upscale import (
    UpscaleLimits,
    UpscaleModel,
    check_inputs,
    import_spandrel,
    rrdbnet_state_dict,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def upscale_zoo(tmp_path_factory) -> Path:
    root = os.environ.get("PHOTOSTUDIO_ZOO_DIR") or tmp_path_factory.mktemp("zoo")
    return zoo.ensure("tiny-esrgan", root)


@pytest.fixture(scope="module")
def tiny(upscale_zoo) -> UpscaleModel:
    return UpscaleModel.load(str(upscale_zoo), name="tiny-esrgan", tiny=True)


@pytest.fixture(scope="module")
def x4_only(upscale_zoo) -> UpscaleModel:
    return UpscaleModel.load(str(upscale_zoo / "tiny-esrgan-x4.pth"), name="tiny-x4", tiny=True)


def _image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A photo-like test image: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1),
                     (xx + yy) * 127 / max(h + w - 2, 1)], axis=-1)
    noisy = base + rng.normal(0, 20, size=(h, w, 3))
    img = np.clip(noisy, 0, 255).astype(np.uint8)
    if channels == 4:
        alpha = np.clip(xx * 255 / max(w - 1, 1), 0, 255).astype(np.uint8)
        img = np.dstack([img, alpha])
    return img


# -- building and loading -------------------------------------------------------------------

def test_tiny_esrgan_is_saved_like_real_esrgan_and_detected_by_spandrel(upscale_zoo):
    import torch

    spandrel = import_spandrel()
    assert sorted(p.name for p in upscale_zoo.glob("*.pth")) == [
        "tiny-esrgan-x2.pth", "tiny-esrgan-x4.pth"]
    for scale, in_ch in ((4, 3), (2, 12)):
        file = upscale_zoo / f"tiny-esrgan-x{scale}.pth"
        raw = torch.load(file, weights_only=True)
        assert list(raw) == ["params_ema"]  # the layout of RealESRGAN_x{2,4}plus.pth
        assert raw["params_ema"]["conv_first.weight"].shape[1] == in_ch
        assert "body.0.rdb3.conv5.weight" in raw["params_ema"]
        net = spandrel.ModelLoader().load_from_file(file)
        assert net.architecture.id == "ESRGAN"
        assert (net.scale, net.input_channels, net.output_channels) == (scale, 3, 3)


def test_builds_are_seeded_and_cached(tmp_path):
    import torch

    a = zoo.ensure("tiny-esrgan", tmp_path / "a")
    b = zoo.ensure("tiny-esrgan", tmp_path / "b")
    assert zoo.ensure("tiny-esrgan", tmp_path / "a") == a
    for name in ("tiny-esrgan-x2.pth", "tiny-esrgan-x4.pth"):
        sa = torch.load(a / name, weights_only=True)["params_ema"]
        sb = torch.load(b / name, weights_only=True)["params_ema"]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_full_size_real_esrgan_layout_is_detected(tmp_path):
    """A file shaped like RealESRGAN_x4plus.pth (64 features, 23 blocks) loads as such."""
    import torch

    torch.save({"params_ema": rrdbnet_state_dict(num_feat=64, num_block=23)},
               tmp_path / "RealESRGAN_x4plus.pth")
    model = UpscaleModel.load(str(tmp_path / "RealESRGAN_x4plus.pth"), name="realesrgan-x4")
    assert model.scales == (2, 4)
    assert "64nf" in model.info.extra["networks"]["x4"]
    assert "23nb" in model.info.extra["networks"]["x4"]


def test_info(tiny):
    info = tiny.info
    assert (info.family, info.tiny, info.device, info.dtype) == ("upscale", True, "cpu",
                                                                  "float32")
    assert not info.fallback
    assert set(info.extra["networks"]) == {"x2", "x4"}
    assert tiny.scales == (2, 4)


def test_importing_the_family_does_not_import_torch():
    code = ("import sys, models.upscale, deployments.upscale; "
            "assert 'torch' not in sys.modules and 'spandrel' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# -- sizes, scales, alpha -------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("h,w", [(32, 48), (37, 53), (1, 5)])
def test_output_is_exactly_scale_times_the_input(tiny, scale, h, w):
    res = tiny.upscale(_image(h, w), scale=scale)
    assert res.image.shape == (h * scale, w * scale, 3)
    assert res.image.dtype == np.uint8
    assert (res.scale, res.model_scale, res.model) == (scale, scale, "tiny-esrgan")


def test_output_is_not_degenerate(tiny):
    """Random weights, but a real network: outputs vary with the input and aren't clamped."""
    out = tiny.upscale(_image(40, 40), scale=4).image
    other = tiny.upscale(_image(40, 40, seed=1), scale=4).image
    assert out.std() > 5
    assert (out == 0).mean() < 0.5 and (out == 255).mean() < 0.5
    assert not np.array_equal(out, other)


def test_x2_from_an_x4_only_model_is_the_area_downscale_of_x4(x4_only):
    img = _image(30, 44)
    assert x4_only.scales == (2, 4)
    res2 = x4_only.upscale(img, scale=2)
    assert res2.image.shape == (60, 88, 3)
    assert res2.model_scale == 4
    x4 = x4_only.upscale(img, scale=4).image.astype(np.float64)
    box = x4.reshape(60, 2, 88, 2, 3).mean(axis=(1, 3))
    assert np.abs(box - res2.image).max() <= 1.0  # rounding of the x4 output only


def test_an_x2_only_model_refuses_x4(upscale_zoo):
    model = UpscaleModel.load(str(upscale_zoo / "tiny-esrgan-x2.pth"), name="tiny-x2", tiny=True)
    assert model.scales == (2,)
    with pytest.raises(ValueError, match=r"scale must be one of 2, got 4"):
        model.upscale(_image(8, 8), scale=4)


@pytest.mark.parametrize("scale", [2, 4])
def test_rgba_keeps_alpha_resized_and_rgb_through_the_model(tiny, scale):
    from PIL import Image

    rgba = _image(24, 40, channels=4)
    res = tiny.upscale(rgba, scale=scale)
    assert res.image.shape == (24 * scale, 40 * scale, 4)
    rgb_alone = tiny.upscale(np.ascontiguousarray(rgba[..., :3]), scale=scale).image
    assert np.array_equal(res.image[..., :3], rgb_alone)
    expected_alpha = np.asarray(Image.fromarray(rgba[..., 3]).resize(
        (40 * scale, 24 * scale), Image.Resampling.BICUBIC))
    assert np.array_equal(res.image[..., 3], expected_alpha)
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert (tiny.upscale(opaque, scale=scale).image[..., 3] == 255).all()


# -- tiling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_output_matches_untiled(tiny, scale):
    img = _image(70, 90, seed=3)
    whole = tiny.upscale(img, scale=scale, tile=None)
    tiled = tiny.upscale(img, scale=scale, tile=32, tile_overlap=24)
    assert whole.tiles == 1
    assert tiled.tiles == 3 * 3
    diff = np.abs(whole.image.astype(np.int16) - tiled.image)
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_tile_and_overlap_are_aligned_for_the_pixel_unshuffle_model(tiny):
    """Odd tile/overlap sizes are rounded up to the x2 model's 4-pixel grid."""
    img = _image(41, 45, seed=4)
    whole = tiny.upscale(img, scale=2, tile=None).image
    odd = tiny.upscale(img, scale=2, tile=17, tile_overlap=23)
    assert odd.tiles == 3 * 3  # tile 17 -> 20
    assert np.abs(whole.astype(np.int16) - odd.image).max() <= 1


def test_default_tile_leaves_small_images_whole(tiny):
    assert tiny.upscale(_image(64, 64), scale=4).tiles == 1
    assert tiny.upscale(_image(300, 20), scale=2).tiles == 2


# -- determinism ----------------------------------------------------------------------------

def test_same_input_same_output_across_loads(tiny, upscale_zoo):
    img = _image(33, 29, seed=5)
    first = tiny.upscale(img, scale=4).image
    assert np.array_equal(first, tiny.upscale(img, scale=4).image)
    reloaded = UpscaleModel.load(str(upscale_zoo), name="tiny-esrgan", tiny=True)
    assert np.array_equal(first, reloaded.upscale(img, scale=4).image)


# -- input checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [3, 1, 8, 0, "4", 2.0, True, None])
def test_bad_scale_names_the_allowed_values(tiny, scale):
    with pytest.raises(InputError, match=r"scale must be one of 2, 4, got") as info:
        tiny.upscale(_image(8, 8), scale=scale)
    assert info.value.param == "scale"


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((8, 8), np.uint8), r"HxWx3 \(RGB\) or HxWx4 \(RGBA\), got \(8, 8\)"),
        (np.zeros((8, 8, 2), np.uint8), r"HxWx3 \(RGB\) or HxWx4 \(RGBA\), got \(8, 8, 2\)"),
        (np.zeros((1, 8, 8, 3), np.uint8), r"HxWx3 \(RGB\) or HxWx4 \(RGBA\)"),
        (np.zeros((8, 8, 3), np.float32), r"image must have dtype uint8 \(0-255\), got float32"),
        (np.zeros((8, 8, 3), np.uint16), r"image must have dtype uint8"),
        ([[[0, 0, 0]]], r"image must be a numpy array .* got list"),
        (np.zeros((0, 8, 3), np.uint8), r"image sides must be between 1 and 4096 pixels"),
    ],
)
def test_bad_image_is_a_value_error(tiny, image, match):
    with pytest.raises(InputError, match=match) as info:  # an InputError is a ValueError
        tiny.upscale(image, scale=2)
    assert info.value.param == "image"


def test_size_limits():
    limits = UpscaleLimits(max_side=64, max_output_pixels=128 * 128)
    check_inputs(_image(32, 32), 4, limits=limits)
    with pytest.raises(InputError, match=r"between 1 and 64 pixels, got 65x10") as info:
        check_inputs(_image(10, 65), 2, limits=limits)
    assert info.value.param == "image"
    with pytest.raises(InputError, match=r"output would be 256x160 pixels, at most 16384") as info:
        check_inputs(_image(40, 64), 4, limits=limits)
    assert info.value.param == "image"


@pytest.mark.parametrize("tile,overlap,match", [
    (0, 8, r"tile must be None \(no tiling\) or an int >= 16, got 0"),
    (8, 8, r"tile must be None .* got 8"),
    (64.0, 8, r"tile must be None .* got 64.0"),
    (64, -1, r"tile_overlap must be an int >= 0, got -1"),
])
def test_bad_tiling_is_a_value_error(tiny, tile, overlap, match):
    with pytest.raises(ValueError, match=match):
        tiny.upscale(_image(8, 8), scale=2, tile=tile, tile_overlap=overlap)


# -- files and names ------------------------------------------------------------------------

def test_files_that_are_not_sr_models_are_refused(tmp_path):
    import torch

    torch.save({"foo.weight": torch.zeros(3, 3)}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match=r"junk.pth: not a model architecture spandrel knows"):
        UpscaleModel.load(str(tmp_path / "junk.pth"), name="junk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no model file"):
        UpscaleModel.load(str(tmp_path / "empty"), name="x")
    with pytest.raises(FileNotFoundError, match=r"weights not found"):
        UpscaleModel.load(str(tmp_path / "missing.pth"), name="x")


def test_two_models_of_one_scale_are_ambiguous(upscale_zoo, tmp_path):
    import shutil

    shutil.copy(upscale_zoo / "tiny-esrgan-x4.pth", tmp_path / "a-x4.pth")
    shutil.copy(upscale_zoo / "tiny-esrgan-x4.pth", tmp_path / "b-x4.pth")
    with pytest.raises(ValueError, match=r"two x4 models"):
        UpscaleModel.load(str(tmp_path), name="dup")


def test_from_name(upscale_zoo, tmp_path):
    zoo_root = str(upscale_zoo.parent)
    assert UpscaleModel.from_name("tiny-esrgan", zoo_dir=zoo_root).info.tiny
    real = UpscaleModel.from_name("realesrgan-x4",
                                  source=str(upscale_zoo / "tiny-esrgan-x4.pth"))
    assert (real.info.name, real.info.tiny, real.scales) == ("realesrgan-x4", False, (2, 4))
    with pytest.raises(RuntimeError, match=r"could not load weights for model 'realesrgan-x4'"
                       ".*never falls back"):
        UpscaleModel.from_name("realesrgan-x4", source=str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"model 'tiny-sd' is a base model, not upscaler"):
        UpscaleModel.from_name("tiny-sd")
    with pytest.raises(ValueError, match=r"unknown upscaler model 'realesrgan-x3'; did you "
                       "mean realesrgan-x4"):
        UpscaleModel.from_name("realesrgan-x3")
    missing = str(tmp_path / "RealESRGAN_x4plus.pth")
    with pytest.raises(RuntimeError, match=r"could not load weights for model"):
        UpscaleModel.from_name("realesrgan-x4", source=missing)
    fallback = UpscaleModel.from_name("realesrgan-x4", source=missing, zoo_dir=zoo_root,
                                      allow_fallback=True)
    assert fallback.info.tiny and fallback.info.fallback
    assert "RealESRGAN_x4plus.pth" in fallback.info.fallback_reason
