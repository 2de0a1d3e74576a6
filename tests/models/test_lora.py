"""LoRA adapters on the tiny SD pipeline: tiny zoo LoRAs (peft, safetensors) change the
image, weight 0 is the base image, two at once, the A1111 prompt syntax, bad files refused."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from graphs.errors import ApiError
from graphs.generation import resolve_loras
from models import zoo
from models.diffusion import DiffusionModel, GenerationRequest
from models.lora import (
    LoraRef,
    adapter_set_id,
    extract_prompt_loras,
    parse_adapter_set_id,
    read_lora_file,
)

WARM, COOL, INK = "tiny-lora-warm", "tiny-lora-cool", "tiny-lora-ink"
INFO = {"name": "tiny-sd"}


@pytest.fixture(scope="module")
def model(zoo_dir) -> DiffusionModel:
    m = DiffusionModel.from_name("tiny-sd", zoo_dir=str(zoo_dir))
    for name in (WARM, COOL):
        m.load_adapter(name, str(zoo.ensure(name, zoo_dir)))
    return m


def image(model, loras=(), prompt="a red cat on a sofa"):
    req = GenerationRequest(prompt=prompt, width=64, height=64, steps=2, seed=7,
                            loras=tuple(loras))
    return model.generate([req])[0].images[0].astype(np.int16)


def test_a_lora_changes_the_image_and_weight_zero_is_the_base(model):
    base = image(model)
    styled = image(model, [LoraRef(WARM, 1.0)])
    assert np.abs(styled - base).mean() > 2.0  # mean |Δ| per channel, 0-255
    assert np.array_equal(image(model, [LoraRef(WARM, 0.0)]), base)
    assert np.array_equal(image(model), base)  # adapters off again: the base image
    half = image(model, [LoraRef(WARM, 0.5)])
    assert 0 < np.abs(half - base).mean() < np.abs(styled - base).mean()


def test_two_loras_at_once(model):
    warm = image(model, [LoraRef(WARM, 1.0)])
    cool = image(model, [LoraRef(COOL, 0.8)])
    both = image(model, [LoraRef(WARM, 1.0), LoraRef(COOL, 0.8)])
    assert np.abs(both - warm).mean() > 1.0 and np.abs(both - cool).mean() > 1.0
    # the set is a set: order does not matter
    assert np.array_equal(both, image(model, [LoraRef(COOL, 0.8), LoraRef(WARM, 1.0)]))


def test_the_prompt_syntax_gives_the_same_image_as_the_loras_field(model):
    tagged = resolve_loras(f"a red cat on a sofa <lora:{WARM}:0.7>", None, INFO)
    field = resolve_loras("a red cat on a sofa", [{"name": WARM, "weight": 0.7}], INFO)
    assert tagged == field == ("a red cat on a sofa", (LoraRef(WARM, 0.7),))
    prompt, loras = tagged
    assert np.array_equal(image(model, loras, prompt), image(model, field[1], field[0]))
    # no weight: the catalogue's default_weight (tiny-lora-cool: 0.8)
    assert resolve_loras(f"<lora:{COOL}> a cat", None, INFO) == ("a cat", (LoraRef(COOL, 0.8),))


def test_prompt_tags_parse_and_adapter_set_ids_are_canonical():
    assert extract_prompt_loras("a <lora:x:1.5>, b <lora:y>") == ("a , b", [("x", 1.5),
                                                                           ("y", None)])
    assert extract_prompt_loras("no tags") == ("no tags", [])
    ident = adapter_set_id([LoraRef("b", 0.5), LoraRef("a", 1.0)])
    assert ident == "a:1,b:0.5" and parse_adapter_set_id(ident) == (LoraRef("a", 1.0),
                                                                    LoraRef("b", 0.5))


def test_unknown_names_list_close_matches_and_limits_hold():
    with pytest.raises(ApiError, match=r"unknown LoRA adapter 'tiny-lora-wrm'.*did you mean "
                       r"tiny-lora-warm") as err:
        resolve_loras("a cat", [{"name": "tiny-lora-wrm", "weight": 1}], INFO)
    assert (err.value.status, err.value.param) == (400, "loras")
    with pytest.raises(ApiError, match="unknown LoRA adapter 'tiny-lora-warm' for base model "
                       "'sd15'"):  # a LoRA for another base is unknown there
        resolve_loras("a cat", [{"name": WARM}], {"name": "sd15"})
    with pytest.raises(ApiError, match="given twice"):
        resolve_loras(f"a cat <lora:{WARM}:1>", [{"name": WARM}], INFO)
    with pytest.raises(ApiError, match="only <lora"):
        resolve_loras(f"<lora:{WARM}:1>", None, INFO)
    with pytest.raises(InputError, match="at most 5"):
        from models.lora import check_loras
        check_loras([LoraRef(f"l{i}") for i in range(6)])


def _wrong_base_lora(path):
    """A real LoRA file, for a UNet whose cross-attention is 64 wide (tiny-sd's is 32)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
                                in_channels=4, out_channels=4, cross_attention_dim=64,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_k", "to_v"]))
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=get_peft_model_state_dict(
        unet), weight_name="other.safetensors")
    return path / "other.safetensors"


def test_bad_files_are_refused_and_the_model_still_works(model, tmp_path):
    import torch

    pickle_file = tmp_path / "lora.bin"
    torch.save({"x": torch.zeros(2)}, pickle_file)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    truncated = tmp_path / "truncated.safetensors"
    good = zoo.ensure(INK) / "pytorch_lora_weights.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    cases = {pickle_file: "pickle", corrupt: "corrupt", truncated: "corrupt",
             _wrong_base_lora(tmp_path): "does not fit base model 'tiny-sd'"}
    for path, why in cases.items():
        with pytest.raises(ValueError, match=why):
            model.load_adapter("bad", str(path))
        assert "bad" not in model.adapters
    with pytest.raises(ValueError, match="pickle"):
        read_lora_file(pickle_file.rename(tmp_path / "renamed.safetensors"))
    base = image(model)
    assert np.array_equal(image(model), base)  # still serves, adapters intact
    assert {WARM, COOL} <= set(model.adapters)


def test_unloading_deletes_the_adapter(model, zoo_dir):
    model.load_adapter(INK, str(zoo.ensure(INK, zoo_dir)))
    assert INK in model.adapters
    model.unload_adapter(INK)
    assert INK not in model.adapters
    with pytest.raises(ValueError, match="not loaded: tiny-lora-ink"):
        model.activate((LoraRef(INK, 1.0),))


def test_check_adapter_accepts_a_lora_of_the_base_and_leaves_the_pipeline_as_it_was(
        model, zoo_dir, tmp_path):
    from models.lora import lora_layers, lora_rank, parse_lora_bytes
    from tests.lora_files import not_a_lora, other_unet_lora

    data = (zoo.ensure(INK, zoo_dir) / "pytorch_lora_weights.safetensors").read_bytes()
    state = parse_lora_bytes(data)
    assert lora_rank(state) == 4 and len(lora_layers(state)) == 48
    before = image(model, [LoraRef(WARM, 1.0)])
    loaded = set(model.adapters)
    assert model.check_adapter(state) == {"layers": 48, "rank": 4, "components": ["unet"]}
    with pytest.raises(ValueError, match="shapes differ .* size mismatch for"):
        model.check_adapter(parse_lora_bytes(other_unet_lora(tmp_path)))
    renamed = {k.replace("down_blocks.1", "down_blocks.7"): v for k, v in state.items()}
    with pytest.raises(ValueError, match="only 32 of its 48 layers"):
        model.check_adapter(renamed)
    with pytest.raises(ValueError, match="no LoRA matrices"):
        model.check_adapter(parse_lora_bytes(not_a_lora()))
    assert set(model.adapters) == loaded  # nothing left behind, nothing lost
    assert np.array_equal(image(model, [LoraRef(WARM, 1.0)]), before)


def test_lora_bytes_names_and_pickles_are_checked_before_loading():
    from models.lora import check_lora_filename, check_lora_name, parse_lora_bytes
    from tests.lora_files import pickle_lora

    for bad in ("style.pt", "a.ckpt", "b.bin", "c.pth", "d.pkl"):
        with pytest.raises(ValueError, match="pickle .* runs code"):
            check_lora_filename(bad)
    with pytest.raises(ValueError, match="only .safetensors"):
        check_lora_filename("x.onnx")
    with pytest.raises(ValueError, match="pickle"):
        parse_lora_bytes(pickle_lora())  # by content, whatever its name
    for junk, why in ((b"", "bad header"), (b"\xff" * 16, "bad header"),
                      (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", "corrupt")):
        with pytest.raises(ValueError, match=why):
            parse_lora_bytes(junk)
    assert check_lora_name("my-style_v2.1") == "my-style_v2.1"
    for bad in ("A", "Upper", "has space", "-lead", "x" * 65, "a/b", "<lora:x>"):
        with pytest.raises(ValueError, match="lowercase"):
            check_lora_name(bad)


def test_a_text_encoder_lora_loads_acts_and_weight_zero_is_the_base(model, zoo_dir):
    from models.lora import parse_lora_bytes

    duo = zoo.ensure("tiny-lora-duo", zoo_dir) / "pytorch_lora_weights.safetensors"
    state = parse_lora_bytes(duo.read_bytes())
    assert any(k.startswith("text_encoder.") for k in state)
    assert model.check_adapter(state)["components"] == ["text_encoder", "unet"]
    model.load_adapter("tiny-lora-duo", str(duo))
    try:
        base = image(model)
        assert np.abs(image(model, [LoraRef("tiny-lora-duo", 1.0)]) - base).mean() > 2.0
        assert np.array_equal(image(model, [LoraRef("tiny-lora-duo", 0.0)]), base)
        # its text-encoder half alone changes the prompt embedding: the encoder's LoRA layers
        # carry the adapter
        encoder = model._pipes["text2img"].text_encoder
        assert any("tiny-lora-duo" in getattr(m, "lora_A", {}) for m in encoder.modules())
    finally:
        model.unload_adapter("tiny-lora-duo")
    assert np.array_equal(image(model), base)
