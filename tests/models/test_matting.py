"""The matting family on the tiny U²-Net zoo model: I/O, loading paths, outputs, checks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from common.errors import InputError
from models import zoo
from models.matting import (
    MattingModel,
    MattingRequest,
    check_inputs,
    locate_rembg_model,
    rembg_models,
)
from models.registry import catalogue, get_spec


@pytest.fixture(scope="module")
def tiny_dir(zoo_dir):
    return zoo.ensure("tiny-u2net", zoo_dir)


@pytest.fixture(scope="module")
def tiny(zoo_dir, tiny_dir) -> MattingModel:
    return MattingModel.from_name("tiny-u2net", zoo_dir=str(zoo_dir))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (64, 48), (33, 90), (20, 20), (100, 37)]
    out = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    yy, xx = np.mgrid[0:80, 0:80]
    disc = ((yy - 40) ** 2 + (xx - 40) ** 2 < 20**2)[..., None]
    out.append(np.where(disc, [220, 40, 40], [30, 90, 200]).astype(np.uint8))
    return out


def test_tiny_model_has_u2net_io(tiny_dir):
    import onnx

    files = sorted(p.name for p in tiny_dir.glob("*.onnx"))
    assert files == ["tiny-u2net.onnx"]
    graph = onnx.load(str(tiny_dir / "tiny-u2net.onnx")).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(i.name, dims(i)) for i in graph.input] == [("input.1", ["batch_size", 3, 320, 320])]
    assert [dims(o) for o in graph.output] == [["batch_size", 1, 320, 320]] * 4


def test_build_is_seeded(tmp_path, tiny_dir):
    import onnx
    from onnx import numpy_helper

    def weights(folder):
        graph = onnx.load(str(folder / "tiny-u2net.onnx")).graph
        return {t.name: numpy_helper.to_array(t) for t in graph.initializer}

    a, b = weights(tiny_dir), weights(zoo.ensure("tiny-u2net", tmp_path))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_info(tiny, tiny_dir):
    info = tiny.info
    assert (info.name, info.family, info.tiny, info.fallback) == ("tiny-u2net", "matting", True,
                                                                 False)
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert info.source == str(tiny_dir / "tiny-u2net.onnx")
    assert info.extra["session"] == "u2net_custom"
    assert tiny.batchable


def test_output_modes(tiny, images):
    img = images[0]
    h, w = img.shape[:2]
    [cutout] = tiny.remove([img])
    [mask] = tiny.remove([img], output="mask")
    [solid] = tiny.remove([img], output="solid", bg_color=(0, 255, 0))
    assert (cutout.image.shape, cutout.image.dtype, cutout.mode) == ((h, w, 4), np.uint8, "RGBA")
    assert (mask.image.shape, mask.image.dtype, mask.mode) == ((h, w), np.uint8, "L")
    assert (solid.image.shape, solid.image.dtype, solid.mode) == ((h, w, 3), np.uint8, "RGB")
    m = mask.image
    assert m.max() - m.min() > 100  # rembg stretches the prediction to 0..255 before resizing
    assert np.array_equal(cutout.image[..., 3], m)  # the mask is the cutout's alpha
    a = m[..., None] / 255.0
    # rembg's naive cutout: colour composited over transparent black, weighted by the mask
    assert np.abs(cutout.image[..., :3] - img * a).max() <= 1
    # solid: the cutout alpha-composited over the background colour
    assert np.abs(solid.image - (cutout.image[..., :3] * a + [0, 255, 0] * (1 - a))).max() <= 1
    [white] = tiny.remove([img], output="solid")  # default background: white
    assert np.abs(white.image - (cutout.image[..., :3] * a + 255 * (1 - a))).max() <= 1


def test_rgba_input_keeps_its_transparency(tiny, images):
    rgba = np.dstack([images[1], np.full(images[1].shape[:2], 128, np.uint8)])
    [cutout] = tiny.remove([rgba])
    [mask] = tiny.remove([rgba], output="mask")
    assert cutout.image.shape == rgba.shape
    expected = mask.image.astype(int) * 128 / 255
    assert np.abs(cutout.image[..., 3] - expected).max() <= 1


def test_same_output_as_rembg_itself(tiny, tiny_dir, images, monkeypatch):
    """rembg's own new_session("u2net_custom") + remove() on the same file gives our output."""
    from rembg import new_session, remove

    monkeypatch.setenv("REMBG_HOME", str(tiny_dir))
    session = new_session("u2net_custom", model_path=str(tiny_dir / "tiny-u2net.onnx"))
    for img in images[:3]:
        [ours] = tiny.remove([img])
        assert np.array_equal(ours.image, remove(img, session=session))


def test_deterministic(tiny, zoo_dir, images):
    first = [r.image for r in tiny.remove(images, output="mask")]
    again = [r.image for r in tiny.remove(images, output="mask")]
    reloaded = MattingModel.from_name("tiny-u2net", zoo_dir=str(zoo_dir))
    fresh = [r.image for r in reloaded.remove(images, output="mask")]
    for a, b, c in zip(first, again, fresh, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_batch_equals_one_by_one(tiny, images):
    runs: list[int] = []
    batched = tiny.remove(images, output="cutout", max_batch_images=4, on_batch=runs.append)
    assert runs == [4, 2]  # six images: one ONNX run of 4, one of 2
    assert [r.batch_size for r in batched] == [4, 4, 4, 4, 2, 2]
    for img, res in zip(images, batched, strict=True):
        [single] = tiny.remove([img])
        assert single.batch_size == 1
        assert res.image.shape == single.image.shape
        # Same tensors in, same post-processing; a batched conv may round differently.
        assert np.abs(res.image.astype(int) - single.image.astype(int)).max() <= 1
    assert tiny.max_batch_images == 1  # the CPU default: batching does not pay there
    unbatched = tiny.remove(images, on_batch=runs.append)
    assert runs[2:] == [1] * len(images)
    assert all(r.batch_size == 1 for r in unbatched)


def test_run_mixes_options_in_one_onnx_run(tiny, images):
    runs: list[int] = []
    reqs = [MattingRequest(image=images[0], output="mask"),
            MattingRequest(image=images[1], output="solid", bg_color=(1, 2, 3)),
            MattingRequest(image=images[2], output="cutout", post_process_mask=True)]
    out = tiny.run(reqs, max_batch_images=8, on_batch=runs.append)
    assert runs == [3]
    assert [r.output for r in out] == ["mask", "solid", "cutout"]
    assert set(np.unique(out[2].image[..., 3])) <= {0, 255}  # post-processed mask is binary


def test_alpha_matting(tiny, images):
    [res] = tiny.remove([images[5]], alpha_matting=True, alpha_matting_erode_size=2)
    assert res.image.shape == (80, 80, 4) and res.image.dtype == np.uint8


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ([[1, 2, 3]], r"image must be a numpy array \(HxWx3 RGB or HxWx4 RGBA, uint8\), got list"),
        (np.zeros((8, 8, 3), np.float32), r"image must have dtype uint8 \(0-255\), got float32"),
        (np.zeros((8, 8), np.uint8), r"image must have shape HxWx3 \(RGB\) or HxWx4 \(RGBA\)"),
        (np.zeros((8, 8, 2), np.uint8), r"got \(8, 8, 2\)"),
        (np.zeros((0, 5, 3), np.uint8), r"between 1 and 4096 pixels, got 5x0 \(empty image\)"),
        (np.zeros((1, 4097, 3), np.uint8), r"between 1 and 4096 pixels, got 4097x1"),
    ],
)
def test_bad_images(tiny, image, message):
    with pytest.raises(InputError, match=message.replace("image must", r"images\[0\] must")
                       .replace("image height", r"images\[0\] height")) as info:
        tiny.remove([image])
    assert info.value.param == "images[0]"
    with pytest.raises(InputError, match=message) as info:
        check_inputs(MattingRequest(image=image))
    assert info.value.param == "image"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output": "png"}, r"output must be one of cutout, mask, solid; got 'png'"),
        ({"bg_color": (1, 2, 3)}, r"bg_color is only used with output 'solid', not 'cutout'"),
        ({"output": "solid", "bg_color": (1, 2)}, r"bg_color must be three integers 0-255"),
        ({"output": "solid", "bg_color": (1, 2, 256)}, r"bg_color must be three integers"),
        ({"alpha_matting": "yes"}, r"alpha_matting must be true or false, got 'yes'"),
        ({"output": "mask", "alpha_matting": True},
         r"alpha_matting only applies to output 'cutout' or 'solid', not 'mask'"),
        ({"alpha_matting": True, "alpha_matting_foreground_threshold": 300},
         r"alpha_matting_foreground_threshold must be between 1 and 255, got 300"),
        ({"alpha_matting": True, "alpha_matting_background_threshold": 250},
         r"alpha_matting_background_threshold must be below alpha_matting_foreground_thre"),
        ({"alpha_matting": True, "alpha_matting_erode_size": 1.5},
         r"alpha_matting_erode_size must be an integer between 0 and 64, got 1.5"),
    ],
)
def test_bad_options(tiny, kwargs, message):
    with pytest.raises(InputError, match=message) as info:
        tiny.remove([np.zeros((8, 8, 3), np.uint8)], **kwargs)
    assert info.value.param == message.split()[0]  # every message here starts with its field


def test_alpha_matting_size_cap():
    big = np.broadcast_to(np.zeros(3, np.uint8), (2049, 2048, 3))  # no memory behind it
    check_inputs(MattingRequest(image=big))
    with pytest.raises(ValueError, match=r"alpha_matting works on images of at most 4,194,304 "
                                         r"pixels \(e.g. 2048x2048\), got 2048x2049"):
        check_inputs(MattingRequest(image=big, alpha_matting=True))


@pytest.mark.parametrize("images_arg", [[], np.zeros((8, 8, 3), np.uint8), None])
def test_images_must_be_a_non_empty_list(tiny, images_arg):
    with pytest.raises(ValueError, match=r"images must be a non-empty list"):
        tiny.remove(images_arg)


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown matting model 'u3net'; did you mean u2net"
                                         r".*available: .*"
                                         r"birefnet-general.*tiny-u2net.*u2net"):
        MattingModel.from_name("u3net")
    assert {"tiny-u2net", "u2net", "isnet-general-use", "birefnet-general"} <= {
        spec.name for spec in catalogue("matting")}
    assert "u2net" in rembg_models() and "tiny-u2net" not in rembg_models()


def test_missing_named_model_says_how_to_get_it(tmp_path):
    home = tmp_path / "rembg-home"
    with pytest.raises(OSError, match=r"rembg model 'u2net' is not on this machine .*"
                                      r"models/u2net/u2net.onnx.*`rembg d u2net`"):
        locate_rembg_model("u2net", home=home)
    with pytest.raises(RuntimeError, match=r"never falls back"):
        MattingModel.from_name("u2net", home=home)
    assert not home.exists()  # nothing was downloaded or created


def test_missing_named_model_may_fall_back_to_tiny_loudly(tmp_path, zoo_dir, caplog):
    model = MattingModel.from_name("isnet-general-use", home=tmp_path, zoo_dir=str(zoo_dir),
                                   allow_fallback=True)
    assert model.info.name == "tiny-u2net" and model.info.tiny
    assert "isnet-general-use" in model.info.fallback_reason
    assert "FALLING BACK TO TINY MODEL" in caplog.text


def test_named_model_loads_from_the_rembg_home(tmp_path, tiny, tiny_dir, images):
    """A named model is a file in rembg's layout (as `rembg d` writes it); same loader."""
    home = tmp_path / "home"
    (home / "models" / "u2netp").mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-u2net.onnx", home / "models" / "u2netp" / "u2netp.onnx")
    model = MattingModel.from_name("u2netp", home=home)
    assert (model.info.name, model.info.tiny, model.info.extra["session"]) == (
        "u2netp", False, "u2netp")
    assert model.info.source == str(home / "models" / "u2netp" / "u2netp.onnx")
    mask = model.remove([images[0]], output="mask")[0].image
    assert np.array_equal(mask, tiny.remove([images[0]], output="mask")[0].image)


def test_model_path_overrides_the_named_weights(tmp_path, tiny_dir, images):
    path = tmp_path / "my-u2net.onnx"
    shutil.copy(tiny_dir / "tiny-u2net.onnx", path)
    model = MattingModel.from_name("u2net", source=str(path))
    assert model.info.source == str(path) and model.info.extra["session"] == "u2net"
    assert model.remove([images[0]], output="mask")[0].image.shape == images[0].shape[:2]
    assert get_spec("u2net", kind="matting", source=str(path)).source == str(path)
    shutil.copy(path, tmp_path / "other.onnx")
    with pytest.raises(RuntimeError, match=r"must hold exactly one .onnx file"):
        MattingModel.from_name("u2net", source=str(tmp_path))
    with pytest.raises(RuntimeError, match=r"no model file at"):
        MattingModel.from_name("u2net", source=str(tmp_path / "missing.onnx"))


def test_auto_graph_optimization_keeps_the_level_that_ran_faster(tiny):
    """`auto` (the default) on CPU times onnxruntime's `all` and `extended` on the model's
    input at load and keeps the one that took less CPU; the choice is in the info."""
    extra = tiny.info.extra
    timed = extra["graph_optimization_ms"]
    assert set(timed) == {"all", "extended"} and all(ms > 0 for ms in timed.values())
    assert extra["graph_optimization"] == min(timed, key=timed.__getitem__)
    options = tiny._session.inner_session.get_session_options()
    import onnxruntime as ort

    level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
             "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    assert options.graph_optimization_level == level[extra["graph_optimization"]]


@pytest.mark.parametrize("level", ["all", "extended", "basic", "disabled"])
def test_every_graph_optimization_level_gives_the_same_masks(zoo_dir, tiny, images, level):
    model = MattingModel.from_name("tiny-u2net", zoo_dir=str(zoo_dir), graph_optimization=level)
    assert model.info.extra["graph_optimization"] == level
    assert model.info.extra["graph_optimization_ms"] == {}  # a level given: nothing timed
    for ours, theirs in zip(model.remove(images, output="mask"),
                            tiny.remove(images, output="mask"), strict=True):
        assert np.abs(ours.image.astype(int) - theirs.image.astype(int)).max() <= 1


def test_unknown_graph_optimization_level_is_refused(zoo_dir):
    with pytest.raises(ValueError, match="graph_optimization must be one of auto, all"):
        MattingModel.from_name("tiny-u2net", zoo_dir=str(zoo_dir), graph_optimization="fast")
