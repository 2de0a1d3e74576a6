"""The SD family on the tiny zoo model: offline build, reload, sizes, determinism, checks."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from models import zoo
from models.diffusion import DiffusionModel, GenerationRequest, check_inputs
from models.registry import SizeLimits, get_spec


@pytest.fixture(scope="module")
def tiny(zoo_dir) -> DiffusionModel:
    return DiffusionModel.from_spec(get_spec("tiny-sd"), zoo_dir=str(zoo_dir))


def test_tiny_sd_builds_offline_and_reloads_with_from_pretrained(tmp_path):
    path = zoo.ensure("tiny-sd", tmp_path)
    assert (path / "model_index.json").exists()
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (path / "tokenizer").is_dir()  # built in code, saved like a real one
    again = zoo.ensure("tiny-sd", tmp_path)  # cached: not rebuilt
    assert again == path
    model = DiffusionModel.load(str(path), name="tiny-sd", tiny=True,
                                limits=get_spec("tiny-sd").limits)
    out = model.generate([GenerationRequest(prompt="a cat", width=64, height=48, steps=2,
                                            seed=0)])
    assert out[0].images[0].shape == (48, 64, 3)


def test_builds_are_seeded(tmp_path):
    from safetensors.numpy import load_file

    weights = "unet/diffusion_pytorch_model.safetensors"
    a = load_file(zoo.ensure("tiny-sd", tmp_path / "a") / weights)
    b = load_file(zoo.ensure("tiny-sd", tmp_path / "b") / weights)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("width,height,n", [(64, 64, 1), (96, 32, 3)])
def test_generates_requested_size_and_count(tiny, width, height, n):
    [res] = tiny.generate([GenerationRequest(prompt="a lighthouse", n=n, width=width,
                                             height=height, steps=2, seed=7)])
    assert len(res.images) == n
    assert all(img.shape == (height, width, 3) and img.dtype == np.uint8 for img in res.images)
    assert res.seeds == [7 + k for k in range(n)]
    assert res.batch_size == n


def test_same_seed_same_image_other_seed_other_image(tiny):
    def gen(seed):
        return tiny.generate([GenerationRequest(prompt="a cat", width=64, height=64, steps=2,
                                                seed=seed)])[0].images[0]

    assert np.array_equal(gen(11), gen(11))
    assert not np.array_equal(gen(11), gen(12))


def test_batched_requests_match_separate_runs(tiny):
    reqs = [GenerationRequest(prompt=p, width=64, height=64, steps=2, seed=s)
            for p, s in (("a cat", 1), ("a dog", 2))]
    batches: list[int] = []
    together = tiny.generate(reqs, on_batch=batches.append)
    assert batches == [2]  # one pipeline call for two compatible requests
    alone = [tiny.generate([r])[0] for r in reqs]
    for t, a in zip(together, alone, strict=True):
        diff = np.abs(t.images[0].astype(int) - a.images[0].astype(int))
        assert diff.max() <= 2  # float rounding across batch sizes only


def test_incompatible_requests_run_in_separate_calls(tiny):
    batches: list[int] = []
    out = tiny.generate([
        GenerationRequest(prompt="a", width=64, height=64, steps=2, seed=1),
        GenerationRequest(prompt="b", width=32, height=64, steps=2, seed=1),
    ], on_batch=batches.append)
    assert sorted(batches) == [1, 1]
    assert out[1].images[0].shape == (64, 32, 3)


def test_img2img_and_inpaint_share_the_weights(tiny):
    base = tiny.generate([GenerationRequest(prompt="x", width=64, height=64, steps=2,
                                            seed=3)])[0].images[0]
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    i2i = tiny.generate([GenerationRequest(prompt="x", mode="img2img", image=base, width=64,
                                           height=64, steps=2, seed=3, strength=0.5)])
    inp = tiny.generate([GenerationRequest(prompt="x", mode="inpaint", image=base, mask=mask,
                                           width=64, height=64, steps=2, seed=3)])
    assert i2i[0].images[0].shape == inp[0].images[0].shape == (64, 64, 3)
    t2i = tiny._pipe("text2img")
    assert tiny._pipe("img2img").unet is t2i.unet and tiny._pipe("inpaint").vae is t2i.vae


LIMITS = SizeLimits(32, 512, 64, 64, max_steps=50)


@pytest.mark.parametrize("changes,field,allowed", [
    ({"width": 13}, "width", "multiple of 8 between 32 and 512"),
    ({"height": 1024}, "height", "multiple of 8 between 32 and 512"),
    ({"steps": 0}, "steps", "between 1 and 50"),
    ({"steps": 51}, "steps", "between 1 and 50"),
    ({"guidance_scale": -1.0}, "guidance_scale", "between 0 and 30"),
    ({"guidance_scale": 31.0}, "guidance_scale", "between 0 and 30"),
    ({"n": 0}, "n", "between 1 and 10"),
    ({"n": 11}, "n", "between 1 and 10"),
    ({"prompt": "  "}, "prompt", "non-empty"),
    ({"seed": -5}, "seed", "between 0 and"),
    ({"mode": "img2img"}, "image", "is required for img2img"),
    ({"mode": "img2img", "image": np.zeros((64, 64, 3), np.uint8), "strength": 0.0},
     "strength", "in (0, 1]"),
    ({"mode": "inpaint", "image": np.zeros((64, 64, 3), np.uint8)}, "mask",
     "is required for inpaint"),
])
def test_bad_inputs_name_the_field_and_range(changes, field, allowed):
    req = GenerationRequest(prompt="ok", width=64, height=64, steps=2)
    for k, v in changes.items():
        setattr(req, k, v)
    with pytest.raises(InputError) as err:
        check_inputs(req, LIMITS)
    assert str(err.value).startswith(field)
    assert allowed in str(err.value)
    assert err.value.param == field  # the field travels in the error, not parsed from text


def test_generate_checks_inputs_before_running(tiny):
    with pytest.raises(ValueError, match="width"):
        tiny.generate([GenerationRequest(prompt="x", width=13, height=64, steps=2)])


def test_registry_rejects_unknown_names_listing_known_ones():
    with pytest.raises(ValueError, match="available: .*tiny-sd"):
        get_spec("nope")
    assert get_spec("tiny-sd", kind="base").family == "diffusion"
    with pytest.raises(ValueError, match="is a base model, not matting"):
        get_spec("tiny-sd", kind="matting")
    with pytest.raises(ValueError, match="did you mean tiny-sd"):
        get_spec("tiny-sdd")


def test_local_profile_falls_back_loudly_production_never(zoo_dir, caplog, tmp_path):
    spec = get_spec("sd15", kind="base", source="nobody/does-not-exist")
    with caplog.at_level("ERROR"):
        model = DiffusionModel.from_spec(spec, zoo_dir=str(zoo_dir), allow_fallback=True)
    assert model.info.name == "tiny-sd" and model.info.tiny and model.info.fallback
    assert "does-not-exist" in model.info.fallback_reason
    assert "FALLING BACK TO TINY MODEL" in caplog.text
    with pytest.raises(RuntimeError, match="never falls back"):
        DiffusionModel.from_spec(spec, zoo_dir=str(zoo_dir), allow_fallback=False)


def test_loads_real_weights_from_a_local_folder(zoo_dir, tmp_path):
    """A local folder in the real diffusers layout (here: the tiny one copied) loads as-is."""
    import shutil

    folder = tmp_path / "my-sd"
    shutil.copytree(zoo.ensure("tiny-sd", zoo_dir), folder)
    spec = get_spec("sd15", kind="base", source=str(folder))
    model = DiffusionModel.from_spec(spec, zoo_dir=str(zoo_dir), allow_fallback=False)
    assert model.info.name == "sd15" and not model.info.fallback
    assert model.info.source == str(folder)


def test_the_prompt_matters(tiny):
    """The tiny tokenizer knows real tokens, so different prompts condition differently."""
    tokenizer = tiny._pipe("text2img").tokenizer
    assert len(tokenizer) > 60
    assert tokenizer("a cat").input_ids != tokenizer("a dog").input_ids

    def gen(prompt):
        return tiny.generate([GenerationRequest(prompt=prompt, width=64, height=64, steps=2,
                                                seed=1)])[0].images[0]

    assert not np.array_equal(gen("a cat"), gen("a dog on the moon"))


def test_outdated_zoo_builds_are_rebuilt(tmp_path):
    path = zoo.ensure("tiny-taesd", tmp_path)
    (path / ".complete").write_text("1")  # built by an older builder
    (path / "stale-file").write_text("x")
    again = zoo.ensure("tiny-taesd", tmp_path)
    assert again == path and not (path / "stale-file").exists()
    assert (path / ".complete").read_text() == zoo.ZOO_VERSION


# -- cancellation -----------------------------------------------------------------------------


def _events(n: int):
    import threading

    return [threading.Event() for _ in range(n)]


def test_one_cancel_event_stops_at_the_next_step_and_raises(tiny):
    import threading

    from models.diffusion import GenerationCancelled

    cancel = threading.Event()
    stops = []

    def on_step(step, total):
        if step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled) as info:
        tiny.generate([GenerationRequest(prompt="x", width=64, height=64, steps=20, seed=0)],
                      cancel=cancel, on_step=on_step,
                      on_cancelled=lambda *a: stops.append(a))
    assert (info.value.step, info.value.total) == (3, 20)  # seen at the step after it was set
    assert stops == [(3, 20, 1)]


def test_batch_request_cancelled_before_its_call_is_dropped_the_rest_unchanged(tiny):
    reqs = [GenerationRequest(prompt=p, width=64, height=64, steps=2, seed=s)
            for p, s in (("a cat", 1), ("a dog", 2), ("a fox", 3))]
    cancels = _events(3)
    cancels[1].set()
    stops, calls = [], []
    out = tiny.generate(reqs, cancel=cancels, on_cancelled=lambda *a: stops.append(a),
                        on_batch=calls.append)
    assert out[1] is None and out[0] is not None and out[2] is not None  # aligned
    assert calls == [2]  # one pipeline call of the two live images
    assert stops == [(0, 2, 1)]
    alone = tiny.generate([reqs[2]])[0]
    assert np.abs(out[2].images[0].astype(int) - alone.images[0].astype(int)).max() <= 2


def test_batch_call_stops_only_when_all_its_requests_are_gone(tiny):
    reqs = [GenerationRequest(prompt="x", width=64, height=64, steps=12, seed=s)
            for s in (1, 2)]
    # One of two leaves mid-call: the call runs to the end for the other.
    cancels = _events(2)
    stops = []
    out = tiny.generate(reqs, cancel=cancels, on_cancelled=lambda *a: stops.append(a),
                        on_step=lambda step, total: step == 3 and cancels[0].set())
    assert out[1] is not None and len(out[1].images) == 1 and stops == []
    # Both leave: the call stops at the next step; nothing raised, both results None.
    cancels = _events(2)

    def both_leave(step, total):
        if step == 3:
            cancels[0].set()
        if step == 5:
            cancels[1].set()

    out = tiny.generate(reqs, cancel=cancels, on_cancelled=lambda *a: stops.append(a),
                        on_step=both_leave)
    assert out == [None, None]
    assert stops == [(6, 12, 2)]


@pytest.mark.parametrize("steps,strength", [(1, 0.6), (2, 0.3), (3, 0.1), (1, 1.0)])
def test_img2img_runs_at_least_one_step_however_few_steps(tiny, steps, strength):
    """steps * strength < 1 would leave diffusers no timestep (its ValueError was a 500 found by
    the fuzz test: 1 step, a style preset's strength)."""
    base = np.full((64, 64, 3), 128, np.uint8)
    req = GenerationRequest(prompt="x", mode="img2img", image=base, width=64, height=64,
                            steps=steps, strength=strength, seed=1)
    assert req.effective_steps == 1 or steps * strength >= 1
    (out,) = tiny.generate([req])
    assert out.images[0].shape == (64, 64, 3)


def test_a_request_larger_than_a_batch_runs_in_parts_with_the_same_images(tiny):
    """n=10 with batches of 4 images: three pipeline calls (4+4+2), and the images and seeds of
    one call of 10 (issue #13, 3: n 9 or 10 used to fail on the generator's batch size)."""
    req = GenerationRequest(prompt="a fox", n=10, width=64, height=64, steps=2, seed=41)
    calls: list[int] = []
    [split] = tiny.generate([req], max_batch_images=4, on_batch=calls.append)
    [whole] = tiny.generate([req], max_batch_images=16)
    assert calls == [4, 4, 2]
    assert split.seeds == whole.seeds == [41 + k for k in range(10)]
    assert len(split.images) == 10
    for a, b in zip(split.images, whole.images, strict=True):  # batch size: float rounding
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_parts_keep_other_requests_and_cancellation_aligned(tiny):
    import threading

    big = GenerationRequest(prompt="a fox", n=5, width=64, height=64, steps=2, seed=1)
    small = GenerationRequest(prompt="a cat", n=1, width=64, height=64, steps=2, seed=2)
    gone = threading.Event()
    gone.set()  # the small request's caller left before its call
    out = tiny.generate([big, small], max_batch_images=2, cancel=[threading.Event(), gone])
    assert len(out[0].images) == 5 and out[0].seeds == [1, 2, 3, 4, 5]
    assert out[1] is None
