"""LoRA files for the registration tests, built the way the zoo builds its tiny LoRAs (peft
on a seeded UNet, saved by diffusers' `save_lora_weights`): one for tiny-sd, one for a UNet of
another shape (a "wrong base"), and a pickle."""

from __future__ import annotations

import io
from pathlib import Path

from models.lora import LORA_FILE


def tiny_lora(zoo_dir: Path, folder: Path, *, seed: int) -> bytes:
    """A rank-4 LoRA for tiny-sd (models.zoo.build_tiny_lora into `folder`)."""
    from models import zoo

    folder.mkdir(parents=True, exist_ok=True)
    zoo.build_tiny_lora(folder, seed=seed, zoo_dir=zoo_dir)
    return (folder / LORA_FILE).read_bytes()


def other_unet_lora(folder: Path, *, seed: int = 7) -> bytes:
    """A LoRA made for a UNet whose cross-attention width is 48 (tiny-sd's is 32): the same
    layer names, other shapes: it cannot load onto tiny-sd."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    import models  # noqa: F401  (the torchvision guard peft needs)
    from models.zoo import UNET_LORA_TARGETS

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=48,
        norm_num_groups=32)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=list(UNET_LORA_TARGETS)))
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet), weight_name=LORA_FILE,
        safe_serialization=True)
    return (folder / LORA_FILE).read_bytes()


def pickle_lora() -> bytes:
    """What `torch.save` writes for a state dict (a zip holding a pickle)."""
    import torch

    buf = io.BytesIO()
    torch.save({"unet.x.lora_A.weight": torch.zeros(4, 4)}, buf)
    return buf.getvalue()


def not_a_lora() -> bytes:
    """A valid safetensors file without a single LoRA matrix."""
    import torch
    from safetensors.torch import save

    return save({"weights.layer": torch.zeros(4, 4)})
