"""Tiny model zoo: seeded, offline builders for every model family we serve.

Each builder creates a tiny random-weight model from a config (no download), saves it in
the same on-disk format as the real weights, and the family then loads it through its
ordinary `from_pretrained`/file path. Models are built once per cache folder; a build goes
to a temporary folder that is renamed into place, so concurrent replicas never see a
half-written model.

Cache folder: ``$PHOTOSTUDIO_ZOO_DIR`` or ``~/.cache/photostudio/zoo``. torch, diffusers and
transformers are imported inside the builders: importing the zoo (the registry does) is cheap.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

SEED = 0
_COMPLETE = ".complete"
# Bump when a builder changes what it builds: caches built by an older version are rebuilt.
ZOO_VERSION = "2"


def default_zoo_dir() -> Path:
    return Path(
        os.environ.get("PHOTOSTUDIO_ZOO_DIR") or Path.home() / ".cache" / "photostudio" / "zoo"
    )


# --- Stable Diffusion --------------------------------------------------------------------

def _tiny_clip_tokenizer():
    """A CLIP BPE tokenizer built in code: byte-level characters plus a few merges."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars += [str(d) for d in range(10)] + list(".,!?'-:;()&/")
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    for ch in chars:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = []
    for pair in ("t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n", "e r</w>", "o n</w>"):
        left, right = pair.split(" ")
        merges.append((left, right))
        vocab.setdefault(left + right, len(vocab))
    # transformers 5 takes the vocabulary and merges directly (vocab_file=/merges_file= are
    # ignored there: the tokenizer would know only its special tokens).
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>",
                         model_max_length=77)


def build_tiny_sd(path: Path) -> None:
    """Tiny SD-1.x-architecture pipeline (UNet, VAE, CLIP text encoder, tokenizer)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
    )
    tokenizer = _tiny_clip_tokenizer()
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=max(1000, len(tokenizer)),
            max_position_embeddings=77,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)


def build_tiny_taesd(path: Path) -> None:
    """Tiny TAESD-architecture latent decoder (AutoencoderTiny) for step previews of tiny-sd.

    Two blocks: it upsamples latents 2x, like tiny-sd's two-block VAE (real TAESD: 4 blocks,
    8x, like SD's VAE)."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(SEED)
    AutoencoderTiny(
        encoder_block_out_channels=(16, 16),
        decoder_block_out_channels=(16, 16),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    ).save_pretrained(path, safe_serialization=True)


# --- tiny LoRA adapters (peft on tiny-sd) ---------------------------------------------------

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


TEXT_ENCODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def build_tiny_lora(path: Path, *, seed: int, rank: int = 4, base: str = "tiny-sd",
                    zoo_dir: str | os.PathLike | None = None,
                    text_encoder: bool = False) -> None:
    """A LoRA for tiny-sd with random (non-zero) A and B matrices: `peft.LoraConfig(
    init_lora_weights=False)` on the tiny UNet (and, with `text_encoder`, on the CLIP text
    encoder's attention), saved as safetensors by diffusers' `save_lora_weights` — the same
    file format (and load path) as real LoRAs.

    `zoo_dir`: where tiny-sd is (tests build LoRAs of their own into a temporary folder).
    The text encoder's adapter is injected with peft's own `inject_adapter_in_model`:
    transformers' `add_adapter` (5.25) insists on peft >= 0.22, newer than PyPI's newest
    (0.21.2); diffusers loads such files with peft 0.21 fine (README "LoRA adapters")."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from models.lora import LORA_FILE

    # the base from the zoo (default: the folder this LoRA is built in, i.e. the zoo's own);
    # models/__init__ guards torchvision for peft
    base_dir = ensure(base, zoo_dir or path.parent)
    unet = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                target_modules=list(UNET_LORA_TARGETS)))
    layers = {"unet_lora_layers": get_peft_model_state_dict(unet)}
    if text_encoder:
        from transformers import CLIPTextModel

        encoder = CLIPTextModel.from_pretrained(base_dir / "text_encoder")
        torch.manual_seed(seed + 1)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                           target_modules=list(TEXT_ENCODER_LORA_TARGETS)),
                                encoder)
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(encoder)
    StableDiffusionPipeline.save_lora_weights(path, **layers, weight_name=LORA_FILE,
                                              safe_serialization=True)


def build_tiny_lora_warm(path: Path) -> None:
    build_tiny_lora(path, seed=101)


def build_tiny_lora_cool(path: Path) -> None:
    build_tiny_lora(path, seed=202)


def build_tiny_lora_ink(path: Path) -> None:
    build_tiny_lora(path, seed=303)


def build_tiny_lora_duo(path: Path) -> None:
    build_tiny_lora(path, seed=404, text_encoder=True)


# --- building ---------------------------------------------------------------------------------
# Which builder makes which tiny model is catalogue data (ModelSpec.builder in
# models/registry.py), which registers them here when imported. The zoo never imports the
# registry by name (the registry imports the zoo: one-way), so `ensure` loads it through
# importlib when nothing has registered yet. Builders are imported lazily, so building one
# family never imports another's dependencies.

_BUILDERS: dict[str, str] = {}  # tiny model name -> "module:function"


def register_builder(name: str, target: str) -> None:
    _BUILDERS[name] = target


def tiny_names() -> list[str]:
    """Names of every tiny model the catalogue can build."""
    if not _BUILDERS:
        importlib.import_module("models.registry")
    return list(_BUILDERS)


def _builder(name: str) -> Callable[[Path], None]:
    if name not in tiny_names():
        raise ValueError(f"unknown tiny model {name!r}; available: {', '.join(tiny_names())}")
    module, func = _BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def ensure(name: str, zoo_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder of tiny model `name`, building it first if needed."""
    builder = _builder(name)
    root = Path(zoo_dir) if zoo_dir else default_zoo_dir()
    target = root / name
    if _is_current(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        logger.info("building tiny model %r in %s", name, target)
        builder(tmp)
        (tmp / _COMPLETE).write_text(ZOO_VERSION)
        if target.exists() and not _is_current(target):
            # Incomplete (a crashed build) or built by an older builder: replace it.
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_current(target):  # lost a race to a concurrent build of the old kind
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_current(folder: Path) -> bool:
    marker = folder / _COMPLETE
    return marker.exists() and marker.read_text().strip() == ZOO_VERSION


def build_all(zoo_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    return {name: ensure(name, zoo_dir) for name in tiny_names()}


def is_built(name: str, zoo_dir: str | os.PathLike | None = None) -> bool:
    """Whether tiny model `name` is built and current (`ensure` would not build it)."""
    return _is_current((Path(zoo_dir) if zoo_dir else default_zoo_dir()) / name)
