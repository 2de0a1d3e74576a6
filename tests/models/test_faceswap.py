"""The face swap family on the tiny insightface set: offline build, loading through
FaceAnalysis, detection of drawn "faces", swap geometry, determinism and every error.

The tiny detector finds warm-coloured disks (see `build_tiny_insightface`), so a test draws
faces with `cv2.circle` and knows where they are.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from common.errors import InputError
from models import zoo
from models.faceswap import (
    SWAPPER_FILE,
    TINY_NAME,
    TINY_PACK,
    FaceSwapModel,
    FaceSwapRequest,
    NoFaceError,
    find_weights,
)
from models.registry import get_spec
from tests.deployments import INFO_KEYS

SKIN = (224, 172, 105)
GRAY = 128


def draw(width: int, height: int, disks=(), colour=SKIN, background=GRAY) -> np.ndarray:
    """An RGB image with a filled disk (x, y, r) per face."""
    import cv2

    img = np.full((height, width, 3), background, dtype=np.uint8)
    for x, y, r in disks:
        cv2.circle(img, (x, y), r, colour, -1)
    return img


@pytest.fixture(scope="session")
def faceswap_zoo(tmp_path_factory):
    root = os.environ.get("PHOTOSTUDIO_ZOO_DIR") or tmp_path_factory.mktemp("zoo")
    return zoo.ensure(TINY_NAME, root)


@pytest.fixture(scope="module")
def model(faceswap_zoo) -> FaceSwapModel:
    return FaceSwapModel.load(str(faceswap_zoo), name=TINY_NAME, tiny=True)


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return draw(160, 160, [(80, 80, 50)], colour=(230, 120, 90))


# --- the tiny set ---------------------------------------------------------------------------

def test_tiny_set_builds_offline_and_loads_through_face_analysis(faceswap_zoo):
    import onnx
    from insightface.app import FaceAnalysis
    from insightface.model_zoo import get_model
    from insightface.model_zoo.inswapper import INSwapper

    pack = faceswap_zoo / TINY_PACK
    assert sorted(p.name for p in pack.glob("*.onnx")) == ["det_tiny.onnx", "w_tiny.onnx"]
    assert find_weights(faceswap_zoo) == (pack, faceswap_zoo / SWAPPER_FILE)
    assert zoo.ensure(TINY_NAME, faceswap_zoo.parent) == faceswap_zoo  # cached, not rebuilt

    # A plain FaceAnalysis routes each file by its shape, as for buffalo_l.
    app = FaceAnalysis(name=str(pack), providers=["CPUExecutionProvider"])
    assert sorted(app.models) == ["detection", "recognition"]
    assert len(app.det_model.output_names) == 9 and app.det_model.use_kps
    assert app.models["recognition"].input_size == (112, 112)
    app.prepare(ctx_id=-1, det_size=(640, 640))
    faces = app.get(draw(200, 200, [(100, 100, 40)])[:, :, ::-1].copy())
    assert len(faces) == 1 and faces[0].embedding.shape == (512,)

    swapper = get_model(str(faceswap_zoo / SWAPPER_FILE), providers=["CPUExecutionProvider"])
    assert isinstance(swapper, INSwapper)
    assert [i.shape for i in swapper.session.get_inputs()] == [[1, 3, 128, 128], [1, 512]]
    last = onnx.load(str(faceswap_zoo / SWAPPER_FILE)).graph.initializer[-1]
    assert last.name == "emap" and list(last.dims) == [512, 512]
    assert swapper.emap.dtype == np.float32


def test_builds_are_seeded(tmp_path):
    import onnx
    from onnx import numpy_helper

    def weights(root):
        path = zoo.ensure(TINY_NAME, root)
        files = sorted(path.rglob("*.onnx"))
        return {
            (f.name, init.name): numpy_helper.to_array(init)
            for f in files for init in onnx.load(str(f)).graph.initializer
        }

    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


# --- detection ------------------------------------------------------------------------------

@pytest.mark.parametrize("background", [0, GRAY, 255, (40, 90, 200)])
def test_plain_images_have_no_face(model, background):
    img = np.empty((120, 160, 3), dtype=np.uint8)
    img[:] = background
    assert model.detect(img) == []


@pytest.mark.parametrize("disks", [
    [(160, 120, 40)],
    [(60, 60, 12)],
    [(70, 120, 30), (240, 100, 50)],
    [(40, 40, 20), (120, 40, 20), (200, 40, 20)],
])
def test_detects_each_drawn_face_with_box_and_keypoints(model, disks):
    faces = model.detect(draw(320, 240, disks))
    assert len(faces) == len(disks)
    for face, (x, y, r) in zip(faces, sorted(disks), strict=True):  # left to right
        x1, y1, x2, y2 = face.box
        assert abs((x1 + x2) / 2 - x) <= 2 and abs((y1 + y2) / 2 - y) <= 2
        assert abs((x2 - x1) / 2 - r) <= max(2, 0.05 * r)
        assert face.score > 0.5
        assert len(face.keypoints) == 5
        assert all(x1 <= kx <= x2 and y1 <= ky <= y2 for kx, ky in face.keypoints)
        (lx, ly), (rx, ry) = face.keypoints[:2]
        assert lx < rx and ly == pytest.approx(ry)  # eyes level, left eye left


# --- swapping -------------------------------------------------------------------------------

def test_output_is_rgb_and_the_size_of_the_target(model, source):
    target = draw(300, 200, [(150, 100, 45)])
    res = model.swap(source, target)
    assert res.image.shape == target.shape and res.image.dtype == np.uint8
    assert res.faces_swapped == 1 and res.swapped_indices == [0] and res.source_face_index == 0
    assert len(res.source_faces) == 1 and len(res.target_faces) == 1
    assert res.model == TINY_NAME

    rgba = np.dstack([target, np.full(target.shape[:2], 255, np.uint8)])
    assert model.swap(source, rgba).image.shape == target.shape  # alpha dropped


def test_swap_changes_pixels_only_around_the_face(model, source):
    x, y, r = 110, 120, 40
    target = draw(320, 240, [(x, y, r)])
    out = model.swap(source, target).image
    changed = np.any(out != target, axis=2)
    yy, xx = np.mgrid[: target.shape[0], : target.shape[1]]
    far = np.maximum(abs(xx - x), abs(yy - y)) > 2 * r
    near = np.hypot(xx - x, yy - y) < r / 2
    assert not changed[far].any()
    assert changed[near].mean() > 0.95


def test_swap_is_deterministic_and_depends_on_the_source(model, source):
    target = draw(256, 256, [(128, 128, 60)])
    a = model.swap(source, target).image
    b = model.swap(source.copy(), target.copy()).image
    assert np.array_equal(a, b)
    other = draw(160, 160, [(80, 80, 50)], colour=(250, 210, 60))
    assert not np.array_equal(a, model.swap(other, target).image)


def test_default_is_the_largest_target_face_and_index_picks_another(model, source):
    small, big = (60, 100, 25), (220, 110, 55)
    target = draw(320, 240, [small, big])

    res = model.swap(source, target)
    assert res.swapped_indices == [1] and res.faces_swapped == 1
    changed = np.any(res.image != target, axis=2)
    assert changed[big[1], big[0]] and not changed[small[1], small[0]]

    res = model.swap(source, target, target_face_index=0)
    assert res.swapped_indices == [0]
    changed = np.any(res.image != target, axis=2)
    assert changed[small[1], small[0]] and not changed[big[1], big[0]]


def test_all_faces_swaps_every_face(model, source):
    disks = [(70, 120, 35), (240, 110, 40)]
    target = draw(320, 240, disks)
    res = model.swap(source, target, all_faces=True)
    assert res.faces_swapped == 2 and res.swapped_indices == [0, 1]
    changed = np.any(res.image != target, axis=2)
    assert all(changed[y, x] for x, y, _ in disks)


def test_source_face_default_is_the_largest_and_index_is_honoured(model):
    two = draw(320, 200, [(70, 100, 30), (220, 100, 60)], colour=(230, 120, 90))
    target = draw(200, 200, [(100, 100, 50)])
    assert model.swap(two, target).source_face_index == 1
    first = model.swap(two, target, source_face_index=0)
    assert first.source_face_index == 0
    assert not np.array_equal(first.image, model.swap(two, target).image)


# --- errors ---------------------------------------------------------------------------------

def test_no_face_in_source(model):
    with pytest.raises(NoFaceError, match="source image") as info:
        model.swap(draw(100, 100), draw(200, 200, [(100, 100, 40)]))
    assert info.value.which == "source"
    assert isinstance(info.value, ValueError)


def test_no_face_in_target(model, source):
    with pytest.raises(NoFaceError, match="target image") as info:
        model.swap(source, draw(200, 200))
    assert info.value.which == "target"


def test_target_face_index_out_of_range(model, source):
    target = draw(320, 240, [(70, 120, 35), (240, 110, 40)])
    with pytest.raises(ValueError, match=r"target_face_index 2 .*2 faces found") as info:
        model.swap(source, target, target_face_index=2)
    assert not isinstance(info.value, NoFaceError)
    assert isinstance(info.value, InputError) and info.value.param == "target_face_index"
    with pytest.raises(InputError, match=r"source_face_index 1 .*1 face found") as info:
        model.swap(source, target, source_face_index=1)
    assert info.value.param == "source_face_index"


@pytest.mark.parametrize("field,value,message", [
    ("source", [[0, 0, 0]], "source must be a numpy array"),
    ("target", np.zeros((64, 64, 3), np.float32), "target must have dtype uint8"),
    ("target", np.zeros((64, 64), np.uint8), "target must have shape HxWx3"),
    ("source", np.zeros((64, 64, 2), np.uint8), "source must have shape"),
    ("target", np.zeros((8, 64, 3), np.uint8), "target sides must be between 16 and 4096"),
    ("target_face_index", -1, "target_face_index must be a non-negative integer"),
    ("target_face_index", True, "target_face_index must be a non-negative integer"),
    ("source_face_index", 1.5, "source_face_index must be a non-negative integer"),
    ("all_faces", "yes", "all_faces must be true or false"),
])
def test_bad_inputs_name_the_field(model, source, field, value, message):
    kwargs = dict(source=source, target=draw(100, 100, [(50, 50, 30)]))
    kwargs[field] = value
    req = FaceSwapRequest(**kwargs)
    with pytest.raises(InputError, match=message) as info:
        model.run(req)
    assert info.value.param == field


def test_index_and_all_faces_together_is_an_error(model, source):
    with pytest.raises(InputError, match="either target_face_index .* or all_faces") as info:
        model.swap(source, draw(100, 100, [(50, 50, 30)]), target_face_index=0, all_faces=True)
    assert info.value.param == "all_faces"


def test_missing_weights_name_the_expected_files_and_never_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        FaceSwapModel.load(str(tmp_path), name="inswapper")
    message = str(info.value)
    assert "inswapper_128.onnx" in message and "det_10g.onnx" in message
    assert "Nothing is downloaded" in message
    assert list(tmp_path.iterdir()) == []  # nothing fetched or created


def test_insightface_root_layout_is_found(tmp_path, faceswap_zoo):
    """A ``~/.insightface``-style root: models/buffalo_l/ and models/inswapper_128.onnx."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(faceswap_zoo / TINY_PACK, models / "buffalo_l")
    shutil.copy(faceswap_zoo / SWAPPER_FILE, models / SWAPPER_FILE)
    assert find_weights(tmp_path) == (models / "buffalo_l", models / SWAPPER_FILE)
    loaded = FaceSwapModel.load(str(tmp_path), name="copy")
    assert len(loaded.detect(draw(200, 200, [(100, 100, 40)]))) == 1


def test_from_spec_builds_the_tiny_model(faceswap_zoo):
    spec = get_spec(TINY_NAME, kind="face")
    assert spec.family == "faceswap" and spec.tiny
    loaded = FaceSwapModel.from_spec(spec, zoo_dir=str(faceswap_zoo.parent))
    assert loaded.info.tiny and loaded.info.source == str(faceswap_zoo)
    assert loaded.info.device == "cpu" and loaded.info.fallback_reason is None


# --- the deployment class, called directly (no Ray) ----------------------------------------

def test_deployment_swaps_reports_and_probes(faceswap_zoo, source):
    from deployments.faceswap import FaceSwap

    dep = FaceSwap.func_or_class(zoo_dir=str(faceswap_zoo.parent))
    dep.check_health()
    info = dep.info()
    assert set(info) == INFO_KEYS
    assert info["family"] == "faceswap" and info["tiny"] and info["limits"] == {}

    target = draw(200, 200, [(100, 100, 50)])
    res = asyncio.run(dep.swap(FaceSwapRequest(source=source, target=target)))
    assert res.faces_swapped == 1 and res.image.shape == target.shape
    with pytest.raises(NoFaceError):
        asyncio.run(dep.swap(FaceSwapRequest(source=source, target=draw(64, 64))))
    assert dep.stats() == {"swaps": 1, "faces_swapped": 1,
                           "no_face": {"source": 0, "target": 1}, "detections": 0}


# --- real weights (optional) ----------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not os.environ.get("PHOTOSTUDIO_INSIGHTFACE_DIR"),
                    reason="set PHOTOSTUDIO_INSIGHTFACE_DIR to a folder with buffalo_l/ and "
                           "inswapper_128.onnx")
def test_real_weights_load_through_the_same_path():
    loaded = FaceSwapModel.load(os.environ["PHOTOSTUDIO_INSIGHTFACE_DIR"], name="inswapper")
    assert loaded.probe() >= 0
    assert loaded.detect(np.full((128, 128, 3), GRAY, np.uint8)) == []
