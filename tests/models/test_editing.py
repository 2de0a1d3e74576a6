"""Edit ops on synthetic images: sizes, pixel effects, alpha, ordering, parameter errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydantic import ValidationError

from common.errors import InputError
from models.editing import (
    MAX_OPS,
    BlurOp,
    BrightnessOp,
    ContrastOp,
    CropOp,
    EditRequest,
    FlipOp,
    GrayscaleOp,
    Region,
    ResizeOp,
    RotateOp,
    SaturationOp,
    apply_ops,
    check_ops,
    param_path,
    parse_edit_request,
    rotated_size,
)

H, W = 40, 60


def gradient(channels: int = 3, h: int = H, w: int = W) -> np.ndarray:
    """A deterministic colourful image (no flat areas, so blur and colour ops show)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, channels), np.uint8)
    img[..., 0] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(h - 1, 1)).astype(np.uint8)
    img[..., 2] = ((xx * 7 + yy * 13) % 256).astype(np.uint8)
    if channels == 4:
        img[..., 3] = ((xx + yy) * 3 % 200 + 55).astype(np.uint8)  # varied, never 0
    return img


def with_marker(channels: int = 3) -> np.ndarray:
    img = np.zeros((H, W, channels), np.uint8)
    if channels == 4:
        img[..., 3] = 255
    img[2, 3, :3] = (255, 0, 0)  # red pixel near the top-left corner
    return img


# -- geometry -------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [3, 4])
def test_crop_size_and_content(channels):
    img = gradient(channels)
    out = apply_ops(img, [CropOp(x=10, y=5, width=20, height=15)])
    assert out.shape == (15, 20, channels)
    np.testing.assert_array_equal(out, img[5:20, 10:30])


@pytest.mark.parametrize(("op", "size"), [
    (ResizeOp(width=30, height=10), (30, 10)),
    (ResizeOp(width=30), (30, 20)),          # aspect kept: 60x40 -> 30x20
    (ResizeOp(height=80), (120, 80)),
    (ResizeOp(width=7, resample="nearest"), (7, 5)),
])
def test_resize_sizes(op, size):
    out = apply_ops(gradient(4), [op])
    assert (out.shape[1], out.shape[0]) == size
    assert out.shape[2] == 4
    assert check_ops((W, H), [op]) == size


def test_resize_nearest_upscale_repeats_pixels():
    img = gradient(3)
    out = apply_ops(img, [ResizeOp(width=W * 2, height=H * 2, resample="nearest")])
    np.testing.assert_array_equal(out[::2, ::2], img)


@pytest.mark.parametrize("channels", [3, 4])
def test_rotate_expand_sizes(channels):
    img = gradient(channels)
    for degrees, size in ((90, (H, W)), (-90, (H, W)), (180, (W, H)), (360, (W, H))):
        out = apply_ops(img, [RotateOp(degrees=degrees)])
        assert (out.shape[1], out.shape[0]) == size, degrees
    out = apply_ops(img, [RotateOp(degrees=45)])
    side = (W + H) / np.sqrt(2)
    assert abs(out.shape[1] - side) <= 2 and abs(out.shape[0] - side) <= 2
    out = apply_ops(img, [RotateOp(degrees=45, expand=False)])
    assert out.shape == img.shape


def test_rotate_90_is_exact_and_counter_clockwise():
    img = with_marker()
    out = apply_ops(img, [RotateOp(degrees=90)])
    # counter-clockwise: the top-left corner goes to the bottom-left
    assert out.shape == (W, H, 3)
    assert tuple(out[W - 1 - 3, 2]) == (255, 0, 0)
    np.testing.assert_array_equal(out, np.rot90(img))


def test_rotated_size_matches_pillow():
    from PIL import Image

    rng = np.random.default_rng(0)
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(1, 200, 2))
        degrees = float(rng.choice([rng.uniform(-720, 720), rng.integers(-8, 9) * 45]))
        expected = Image.new("L", (w, h)).rotate(degrees, expand=True).size
        assert rotated_size((w, h), degrees) == expected, (w, h, degrees)


def test_rotate_expand_corners_transparent_for_rgba_and_black_for_rgb():
    rgba = np.full((H, W, 4), 255, np.uint8)
    out = apply_ops(rgba, [RotateOp(degrees=30)])
    assert tuple(out[0, 0]) == (0, 0, 0, 0)
    assert out[out.shape[0] // 2, out.shape[1] // 2, 3] == 255
    rgb = np.full((H, W, 3), 255, np.uint8)
    out = apply_ops(rgb, [RotateOp(degrees=30)])
    assert tuple(out[0, 0]) == (0, 0, 0)


def test_rotate_fill_colour():
    rgba = np.full((H, W, 4), 255, np.uint8)
    out = apply_ops(rgba, [RotateOp(degrees=30, fill="#ff000080")])
    assert tuple(out[0, 0]) == (255, 0, 0, 128)  # straight (not premultiplied) colour
    out = apply_ops(rgba[..., :3].copy(), [RotateOp(degrees=30, fill="white")])
    assert tuple(out[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize("channels", [3, 4])
def test_flip_moves_marker(channels):
    img = with_marker(channels)
    out = apply_ops(img, [FlipOp(direction="horizontal")])
    assert tuple(out[2, W - 1 - 3, :3]) == (255, 0, 0)
    assert out[2, 3, 0] == 0
    out = apply_ops(img, [FlipOp(direction="vertical")])
    assert tuple(out[H - 1 - 2, 3, :3]) == (255, 0, 0)
    np.testing.assert_array_equal(out, img[::-1])


# -- colour ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [BrightnessOp, ContrastOp, SaturationOp])
@pytest.mark.parametrize("channels", [3, 4])
def test_factor_one_is_identity(cls, channels):
    img = gradient(channels)
    np.testing.assert_array_equal(apply_ops(img, [cls(factor=1.0)]), img)


def test_brightness_factor_direction():
    img = gradient(3)
    darker = apply_ops(img, [BrightnessOp(factor=0.5)])
    brighter = apply_ops(img, [BrightnessOp(factor=1.5)])
    assert darker.mean() < img.mean() < brighter.mean()
    assert apply_ops(img, [BrightnessOp(factor=0)]).max() == 0


def test_contrast_zero_is_flat_and_saturation_zero_is_grey():
    img = gradient(3)
    flat = apply_ops(img, [ContrastOp(factor=0)])
    assert np.ptp(flat) <= 1
    grey = apply_ops(img, [SaturationOp(factor=0)])
    assert np.ptp(grey.astype(int), axis=2).max() <= 1


@pytest.mark.parametrize("channels", [3, 4])
def test_grayscale_equal_channels(channels):
    img = gradient(channels)
    out = apply_ops(img, [GrayscaleOp()])
    assert out.shape == img.shape
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])
    rgb = img[..., :3].astype(int)
    expected = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114) / 1000
    assert np.abs(out[..., 0] - expected).max() <= 1


# -- blur -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [3, 4])
def test_blur_whole_image(channels):
    img = gradient(channels)
    out = apply_ops(img, [BlurOp(radius=3)])
    assert out.shape == img.shape
    assert not np.array_equal(out[..., :3], img[..., :3])


@pytest.mark.parametrize("channels", [3, 4])
def test_region_blur_changes_only_region(channels):
    img = gradient(channels)
    region = Region(x=10, y=8, width=25, height=20)
    out = apply_ops(img, [BlurOp(radius=2.5, region=region)])
    inside = np.zeros((H, W), bool)
    inside[8:28, 10:35] = True
    np.testing.assert_array_equal(out[~inside], img[~inside])
    assert np.abs(out[inside, :3].astype(int) - img[inside, :3]).sum() > 0
    # the region looks as it does in a blurred whole image (no hard seam at its border)
    whole = apply_ops(img, [BlurOp(radius=2.5)])
    np.testing.assert_array_equal(out[inside], whole[inside])


def test_region_blur_at_image_edge_matches_whole_blur():
    img = gradient(3)
    out = apply_ops(img, [BlurOp(radius=4, region=Region(x=0, y=0, width=W, height=10))])
    whole = apply_ops(img, [BlurOp(radius=4)])
    np.testing.assert_array_equal(out[:10], whole[:10])
    np.testing.assert_array_equal(out[10:], img[10:])


def test_rgba_blur_does_not_bleed_transparent_colour():
    img = np.zeros((H, W, 4), np.uint8)
    img[:, : W // 2] = (0, 255, 0, 0)        # transparent, but green underneath
    img[:, W // 2:] = (255, 0, 0, 255)       # opaque red
    out = apply_ops(img, [BlurOp(radius=5)])
    np.testing.assert_array_equal(out[..., 3], img[..., 3])
    assert out[:, W // 2:, 1].max() <= 1     # no green fringe on the visible side


# -- alpha, chains, inputs ------------------------------------------------------------------
def test_alpha_kept_through_every_op():
    img = gradient(4)
    colour_ops = [BrightnessOp(factor=1.7), ContrastOp(factor=0.3), SaturationOp(factor=2.5),
                  GrayscaleOp(), BlurOp(radius=2)]
    for op in colour_ops:
        out = apply_ops(img, [op])
        np.testing.assert_array_equal(out[..., 3], img[..., 3], err_msg=op.op)
    out = apply_ops(img, [CropOp(x=1, y=2, width=30, height=20)])
    np.testing.assert_array_equal(out[..., 3], img[2:22, 1:31, 3])
    out = apply_ops(img, [FlipOp(direction="horizontal")])
    np.testing.assert_array_equal(out[..., 3], img[:, ::-1, 3])
    out = apply_ops(img, [RotateOp(degrees=270)])
    np.testing.assert_array_equal(out[..., 3], np.rot90(img[..., 3], k=3))
    out = apply_ops(img, [ResizeOp(width=W * 2, height=H * 2, resample="nearest")])
    np.testing.assert_array_equal(out[::2, ::2, 3], img[..., 3])


def test_chain_applies_in_order():
    img = gradient(3)
    crop_then_resize = apply_ops(img, [CropOp(x=0, y=0, width=30, height=20),
                                       ResizeOp(width=60)])
    resize_then_crop = apply_ops(img, [ResizeOp(width=60),
                                       CropOp(x=0, y=0, width=30, height=20)])
    assert crop_then_resize.shape == (40, 60, 3)
    assert resize_then_crop.shape == (20, 30, 3)
    # crop bounds are checked against the image size at that step
    ops = [ResizeOp(width=20), CropOp(x=0, y=0, width=30, height=5)]
    with pytest.raises(ValueError, match=r"^ops\[1\]\.width must be at most 20"):
        apply_ops(img, ops)
    # flip then crop keeps the right-hand side of the original
    out = apply_ops(img, [FlipOp(direction="horizontal"), CropOp(x=0, y=0, width=10, height=H)])
    np.testing.assert_array_equal(out, img[:, ::-1][:, :10])
    assert check_ops((W, H), [RotateOp(degrees=90), CropOp(x=0, y=0, width=40, height=60),
                              ResizeOp(height=30)]) == (20, 30)


def test_input_not_modified_and_output_writable():
    img = gradient(4)
    before = img.copy()
    out = apply_ops(img, [BrightnessOp(factor=2), FlipOp(direction="vertical")])
    np.testing.assert_array_equal(img, before)
    out[0, 0] = 1  # writable, owns its memory
    assert out.dtype == np.uint8


def test_non_contiguous_input():
    img = gradient(3)[:, ::2]
    out = apply_ops(img, [CropOp(x=0, y=0, width=10, height=10)])
    np.testing.assert_array_equal(out, img[:10, :10])


def test_dict_ops_accepted():
    out = apply_ops(gradient(3), [{"op": "flip", "direction": "vertical"},
                                  {"op": "resize", "width": 30}])
    assert out.shape == (20, 30, 3)


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("ops", "param", "pattern"), [
    ([CropOp(x=60, y=0, width=1, height=1)], "ops[0].x", "must be less than the image width"),
    ([CropOp(x=50, y=0, width=20, height=1)], "ops[0].width", "must be at most 10"),
    ([CropOp(x=0, y=39, width=1, height=2)], "ops[0].height", "must be at most 1"),
    ([CropOp(x=0, y=40, width=1, height=1)], "ops[0].y", "must be less than the image height"),
    ([GrayscaleOp(), BlurOp(region=Region(x=0, y=0, width=61, height=5))],
     "ops[1].region.width", "must be at most 60"),
    ([ResizeOp(width=8000)], "ops[0].width", "must give an image of at most 8192"),
    ([ResizeOp(width=8192, height=8192)], "ops[0].width", "must give .* pixels in all"),
    ([ResizeOp(width=5000, height=5000), RotateOp(degrees=45)], "ops[1].expand",
     "would grow"),
])
def test_runtime_errors_name_the_parameter(ops, param, pattern):
    """The field travels in the error (`param`), and the message starts with it."""
    with pytest.raises(InputError, match=rf"^{re.escape(param)} {pattern}") as info:
        apply_ops(gradient(3), ops)
    assert info.value.param == param and info.value.status == 400


def test_max_pixels_is_configurable():
    with pytest.raises(InputError, match=r"^ops\[0\]\.height") as info:
        check_ops((W, H), [ResizeOp(height=100)], max_pixels=10_000)
    assert info.value.param == "ops[0].height"
    with pytest.raises(InputError, match="^image must be 1 to 8192 pixels per side") as info:
        check_ops((W, H), [GrayscaleOp()], max_pixels=100)
    assert info.value.param == "image"


def test_the_chain_budget_names_the_op_that_crosses_it():
    abusive = [{"op": "resize", "width": 4096, "height": 4096}] + [{"op": "blur",
                                                                    "radius": 100}] * 19
    with pytest.raises(InputError, match=r"^ops\[2\] takes the chain over") as info:
        check_ops((1, 1), abusive)
    assert info.value.param == "ops[2]"


@pytest.mark.parametrize("image", [
    np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.float32),
    [[0, 0, 0]], np.zeros((0, 4, 3), np.uint8),
])
def test_bad_image(image):
    with pytest.raises(ValueError, match="^image must be"):
        apply_ops(image, [GrayscaleOp()])


def test_bad_op_count():
    with pytest.raises(InputError, match=r"^ops must have 1 to 20 items, got 0") as info:
        apply_ops(gradient(3), [])
    assert info.value.param == "ops"
    with pytest.raises(InputError, match=r"^ops must have 1 to 20 items, got 21"):
        apply_ops(gradient(3), [GrayscaleOp()] * (MAX_OPS + 1))


@pytest.mark.parametrize(("make", "field"), [
    (lambda: CropOp(x=-1, y=0, width=1, height=1), "x"),
    (lambda: CropOp(x=0, y=0, width=0, height=1), "width"),
    (lambda: ResizeOp(), "give width, height or both"),
    (lambda: ResizeOp(width=9000), "width"),
    (lambda: ResizeOp(width=10, resample="cubic"), "resample"),
    (lambda: RotateOp(degrees=float("nan")), "degrees"),
    (lambda: RotateOp(degrees=10, fill="not-a-colour"), "fill"),
    (lambda: FlipOp(direction="diagonal"), "direction"),
    (lambda: BrightnessOp(factor=5.5), "factor"),
    (lambda: ContrastOp(factor=-0.1), "factor"),
    (lambda: SaturationOp(factor=float("inf")), "factor"),
    (lambda: BlurOp(radius=0.05), "radius"),
    (lambda: BlurOp(radius=101), "radius"),
    (lambda: GrayscaleOp(amount=1), "amount"),
    (lambda: BlurOp(region={"x": 0, "y": 0, "width": 1}), "height"),
])
def test_bad_params_are_validation_errors(make, field):
    with pytest.raises(ValidationError) as info:
        make()
    assert field in str(info.value)


def test_edit_request_schema():
    req = EditRequest.model_validate({"ops": [
        {"op": "crop", "x": 0, "y": 0, "width": 5, "height": 5},
        {"op": "blur", "radius": 2, "region": {"x": 0, "y": 0, "width": 2, "height": 2}},
        {"op": "grayscale"},
    ]})
    assert [type(op) for op in req.ops] == [CropOp, BlurOp, GrayscaleOp]
    with pytest.raises(ValidationError):
        EditRequest.model_validate({"ops": []})
    with pytest.raises(ValidationError):
        EditRequest.model_validate({"ops": [{"op": "grayscale"}], "format": "png"})
    schema = EditRequest.model_json_schema()
    assert "discriminator" in str(schema)


@pytest.mark.parametrize(("data", "param", "message"), [
    ('[{"op": "brightness", "factor": 1.2}, {"op": "contrast", "factor": 9}]', "ops[1].factor",
     "ops[1].factor: input should be less than or equal to 5, got 9"),
    ('[{"op": "resize"}]', "ops[0]", "ops[0]: give width, height or both"),
    ('[{"op": "sharpen"}]', "ops[0].op", "ops[0].op: must be one of crop, resize"),
    ('[{"x": 1}]', "ops[0].op", "ops[0].op: must be one of"),
    ('[{"op": "crop", "x": 0, "y": 0, "width": 5}]', "ops[0].height",
     "ops[0].height: is required"),
    ('[{"op": "grayscale", "strength": 1}]', "ops[0].strength",
     "ops[0].strength: unknown parameter"),
    ('[{"op": "blur", "region": {"x": 0, "y": 0, "width": 0, "height": 1}}]',
     "ops[0].region.width", "ops[0].region.width: input should be greater than or equal to 1"),
    ('[{"op": "flip", "direction": "up"}]', "ops[0].direction",
     "ops[0].direction: input should be 'horizontal'"),
    ('[{"op": "rotate", "degrees": 5, "fill": "nope"}]', "ops[0].fill",
     "ops[0].fill: not a colour"),
    ("[]", "ops", "ops: list should have at least 1 item"),
    ("not json", "ops", "ops must be a JSON list of edit ops"),
    ("5", "ops", "ops must be a list of edit ops"),
])
def test_parse_edit_request_errors(data, param, message):
    """pydantic's errors come out as InputErrors: the path as `param` and first in the text."""
    with pytest.raises(InputError) as info:
        parse_edit_request(data)
    assert str(info.value).startswith(message)
    assert info.value.param == param and info.value.status == 400


def test_too_deep_ops_json_names_the_field():
    with pytest.raises(InputError, match="nested deeper than 64") as info:
        parse_edit_request("[" * 65 + "]" * 65)
    assert (info.value.param, info.value.code) == ("ops", "json_too_deep")


def test_param_path():
    assert param_path(("ops", 2, "resize", "width")) == "ops[2].width"
    assert param_path(("ops", 0, "blur", "region", "x")) == "ops[0].region.x"
    assert param_path(("ops",)) == "ops"


def test_parse_edit_request_counts_other_errors():
    with pytest.raises(ValueError, match=r"^ops\[0\]\.x: is required \(and 3 more errors\)$"):
        parse_edit_request('[{"op": "crop"}]')


def test_parse_edit_request_forms():
    ops = [{"op": "flip", "direction": "horizontal"}]
    for data in (ops, {"ops": ops}, '[{"op": "flip", "direction": "horizontal"}]',
                 b'{"ops": [{"op": "flip", "direction": "horizontal"}]}'):
        assert parse_edit_request(data).ops == [FlipOp(direction="horizontal")]


def test_deterministic():
    img = gradient(4)
    ops = [RotateOp(degrees=17.5, fill="navy"), ResizeOp(width=33), ContrastOp(factor=1.3),
           BlurOp(radius=1.5, region=Region(x=2, y=2, width=10, height=10))]
    np.testing.assert_array_equal(apply_ops(img, ops), apply_ops(img, ops))
