"""LoRA training on a Stable Diffusion base model (diffusers + peft): nothing about Ray or HTTP.

The loop of diffusers' ``train_text_to_image_lora.py``, cut to what a style/subject LoRA
needs: a peft `LoraConfig` on the base UNet's attention projections (the text encoder, VAE
and base UNet weights frozen), noise-prediction MSE loss at random timesteps, AdamW on the
LoRA weights only. Mixed precision on GPU (bf16 where supported, else fp16 with a gradient
scaler); fp32 on CPU.

Determinism: everything random in step `n` (which images, timesteps, noise, latents) comes
from a generator seeded with ``(seed, n)``, so a run resumed from a checkpoint at step `k`
takes the same steps after `k` as the run that was interrupted.

- `LoraTrainer(base_location, config, examples)`: `step()` → loss, `checkpoint()` /
  `restore(bytes)`, `sample(prompt)` → image, `adapter_bytes()` → the ``.safetensors`` file
  (diffusers' `save_lora_weights` format: the one the Generator loads).
- `check_config(config, ...)`: hyper-parameter checks whose messages name the field.
"""

from __future__ import annotations

import io
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
MAX_RANK = 256


@dataclass(frozen=True)
class TrainingConfig:
    steps: int
    rank: int = 8
    alpha: float | None = None  # default: = rank (scale 1)
    learning_rate: float = 1e-4
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    mixed_precision: str = "auto"  # auto (bf16/fp16 on GPU, none on CPU) | no | fp16 | bf16
    sample_steps: int = 20  # denoising steps of each checkpoint's sample image
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class Example:
    image: np.ndarray  # HxWx3 uint8
    caption: str


def check_config(config: TrainingConfig, *, max_steps: int, max_batch_size: int = 64,
                 min_resolution: int = 32, max_resolution: int = 1024) -> None:
    """`InputError` naming the field for a hyper-parameter the loop cannot run with."""
    def bad(param: str, message: str) -> None:
        raise InputError(message, param=param)

    if not isinstance(config.rank, int) or not 1 <= config.rank <= MAX_RANK:
        bad("rank", f"rank must be an integer from 1 to {MAX_RANK}, got {config.rank!r}")
    if config.alpha is not None and not (math.isfinite(config.alpha) and config.alpha > 0):
        bad("alpha", f"alpha must be a number > 0, got {config.alpha!r}")
    if not (math.isfinite(config.learning_rate) and 0 < config.learning_rate <= 1):
        bad("learning_rate", "learning_rate must be > 0 and at most 1, got "
            f"{config.learning_rate!r}")
    if not isinstance(config.steps, int) or not 1 <= config.steps <= max_steps:
        bad("steps", f"steps must be from 1 to {max_steps} (this gateway's limit), got "
            f"{config.steps!r}")
    if not isinstance(config.batch_size, int) or not 1 <= config.batch_size <= max_batch_size:
        bad("batch_size", f"batch_size must be from 1 to {max_batch_size}, got "
            f"{config.batch_size!r}")
    if not isinstance(config.resolution, int) or config.resolution % 8 \
            or not min_resolution <= config.resolution <= max_resolution:
        bad("resolution", f"resolution must be a multiple of 8 from {min_resolution} to "
            f"{max_resolution}, got {config.resolution!r}")
    if config.mixed_precision not in ("auto", "no", "fp16", "bf16"):
        bad("mixed_precision", "mixed_precision must be auto, no, fp16 or bf16")


def square_crop(image: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop to a square and resize to `resolution` (RGB uint8 in, float32 -1..1 out,
    CHW)."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side, :3]))
    img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return arr.transpose(2, 0, 1)


class LoraTrainer:
    def __init__(self, base_location: str | Path, config: TrainingConfig,
                 examples: list[Example], *, device: str | None = None,
                 pipeline=None):
        """`pipeline`: an already loaded base pipeline (the bench's SD1.5-architecture one);
        default: `StableDiffusionPipeline.from_pretrained(base_location)`."""
        import torch
        from diffusers import DDPMScheduler, StableDiffusionPipeline
        from peft import LoraConfig

        if not examples:
            raise InputError("the dataset has no images", param="dataset_id")
        self.config = config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        precision = config.mixed_precision
        if precision == "auto":
            precision = "no" if self.device.type != "cuda" else (
                "bf16" if torch.cuda.is_bf16_supported() else "fp16")
        self.precision = precision
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16,
                             "bf16": torch.bfloat16}[precision]
        pipe = pipeline or StableDiffusionPipeline.from_pretrained(
            str(base_location), safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
            if self.weight_dtype == torch.float32:
                module.to(self.device)
            else:
                module.to(self.device, dtype=self.weight_dtype)
        unet = pipe.unet
        torch.manual_seed(config.seed)  # the LoRA A matrices' initialisation
        unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha or config.rank,
                                    init_lora_weights="gaussian",
                                    target_modules=list(UNET_LORA_TARGETS)))
        self.params = [p for p in unet.parameters() if p.requires_grad]
        for p in self.params:  # trained in fp32 whatever the base weights' precision
            p.data = p.data.float()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate,
                                           weight_decay=1e-2)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.step_count = 0
        # the frozen parts' outputs, once: latent distributions and caption embeddings
        self._cache(examples)
        unet.train()

    def _cache(self, examples: list[Example]) -> None:
        import torch

        pipe, res = self.pipe, self.config.resolution
        self.scaling = float(getattr(pipe.vae.config, "scaling_factor", 0.18215))
        means, stds, embeds = [], [], {}
        with torch.no_grad():
            for ex in examples:
                pixels = torch.from_numpy(square_crop(ex.image, res))[None].to(
                    self.device, dtype=self.weight_dtype)
                dist = pipe.vae.encode(pixels).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
                if ex.caption not in embeds:
                    ids = pipe.tokenizer(ex.caption, padding="max_length", truncation=True,
                                         max_length=pipe.tokenizer.model_max_length,
                                         return_tensors="pt").input_ids.to(self.device)
                    embeds[ex.caption] = pipe.text_encoder(ids)[0].float()
        self.means = torch.cat(means)
        self.stds = torch.cat(stds)
        self.embeds = torch.cat([embeds[ex.caption] for ex in examples])

    def _generator(self, step: int):
        import torch

        return torch.Generator("cpu").manual_seed(self.config.seed * 1_000_003 + step)

    def step(self) -> float:
        """One optimisation step; its loss (the batch's noise-prediction MSE)."""
        import torch
        import torch.nn.functional as F

        gen = self._generator(self.step_count)
        n, bs = len(self.means), self.config.batch_size
        idx = torch.randperm(n, generator=gen)[:bs] if bs <= n else \
            torch.randint(0, n, (bs,), generator=gen)
        mean, std = self.means[idx], self.stds[idx]
        latents = (mean + std * torch.randn(mean.shape, generator=gen).to(self.device)) \
            * self.scaling
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bs,),
                                  generator=gen).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with torch.autocast(self.device.type, dtype=self.weight_dtype,
                            enabled=self.precision != "no"):
            pred = self.pipe.unet(noisy.to(self.weight_dtype), timesteps,
                                  self.embeds[idx].to(self.weight_dtype)).sample
        loss = F.mse_loss(pred.float(), target.float())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
            self.optimizer.step()
        self.step_count += 1
        return float(loss.detach())

    # -- checkpoints ------------------------------------------------------------------------
    def _lora_state(self) -> dict:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().float().cpu()
                for k, v in get_peft_model_state_dict(self.pipe.unet).items()}

    def checkpoint(self) -> bytes:
        """The LoRA weights, the optimizer's state and the step (torch.save of tensors and
        plain values only: `restore` loads it with ``weights_only=True``)."""
        import torch

        buf = io.BytesIO()
        torch.save({"step": self.step_count, "lora": self._lora_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler is not None else {}},
                   buf)
        return buf.getvalue()

    def restore(self, data: bytes) -> int:
        """Continue from a `checkpoint()`; returns its step."""
        import torch
        from peft.utils import set_peft_model_state_dict

        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        set_peft_model_state_dict(self.pipe.unet, state["lora"])
        for p in self.params:
            p.data = p.data.float()
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step_count = int(state["step"])
        return self.step_count

    def adapter_bytes(self) -> bytes:
        """The trained adapter as a ``.safetensors`` LoRA file (diffusers' format)."""
        from diffusers import StableDiffusionPipeline

        from models.lora import LORA_FILE

        with tempfile.TemporaryDirectory() as tmp:
            StableDiffusionPipeline.save_lora_weights(
                tmp, unet_lora_layers=self._lora_state(), weight_name=LORA_FILE,
                safe_serialization=True)
            return (Path(tmp) / LORA_FILE).read_bytes()

    def sample(self, prompt: str, *, seed: int | None = None, size: int | None = None
               ) -> np.ndarray:
        """An image made with the adapter as trained so far (HxWx3 uint8)."""
        import torch

        size = size or self.config.resolution
        self.pipe.unet.eval()
        try:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=self.weight_dtype,
                                                 enabled=self.precision != "no"):
                out = self.pipe(prompt, height=size, width=size,
                                num_inference_steps=self.config.sample_steps,
                                generator=torch.Generator("cpu").manual_seed(
                                    self.config.seed if seed is None else seed),
                                output_type="np")
        finally:
            self.pipe.unet.train()
        return (np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8)


def train(trainer: LoraTrainer, *, on_step=None) -> list[float]:
    """Run `trainer` to its configured steps (the bench's in-process loop); `on_step(step,
    loss)` after each. Returns the losses."""
    losses = []
    started = time.perf_counter()
    while trainer.step_count < trainer.config.steps:
        loss = trainer.step()
        losses.append(loss)
        if on_step is not None:
            on_step(trainer.step_count, loss)
    trainer.seconds = time.perf_counter() - started
    return losses
