"""Stable Diffusion on one GPU: a naive diffusers loop vs. our generator path (issue #8, part 6).

Builds full-size SD 1.5- and SDXL-architecture pipelines from configs with seeded random
weights (compute cost does not depend on weight values; no download, no model hub), saves
them to a scratch folder (fp16 on CUDA) and measures text2img images/s and per-image latency
at 512x512 (SD 1.5) / 1024x1024 (SDXL), 25 steps, classifier-free guidance on, VAE decode
included, for these variants:

- ``naive``: what a first diffusers script does: ``StableDiffusion(XL)Pipeline`` in fp32,
  diffusers' classic attention (``set_default_attn_processor``, i.e. no SDPA -- the baseline
  of diffusers' own "accelerate inference" tutorial), one ``pipe(prompt)`` per image, batch 1.
- ``ours``: the code the Generator deployment runs: ``models.diffusion.DiffusionModel.load``
  (fp16 + SDPA ``AttnProcessor2_0`` + channels_last on CUDA) and ``DiffusionModel.generate``
  with B single-image requests, as ``@serve.batch`` hands them over (batch sizes 1/4/8).
- ``previews``: ``ours`` at batch 1 with 4 TAESD step previews (``AutoencoderTiny``, decoded
  inline in the denoising loop as the streaming endpoint does): the cost of previews on the
  critical path.
- ``tuned``: ``ours`` + ``fuse_qkv_projections`` + ``torch.compile(fullgraph=True)`` of the
  UNet and of ``vae.decode`` (mode ``--compile-mode``, default max-autotune-no-cudagraphs),
  the inductor flags of diffusers' tutorial, ``--dtype`` fp16/bf16; warm-up (compilation)
  excluded from the timings. SDXL: VAE kept in half precision (``force_upcast`` off, as with
  the fp16-fixed SDXL VAE), where ``ours`` upcasts it to fp32 for each decode.
- ``cudagraphs``: ``tuned`` with ``mode="reduce-overhead"`` (CUDA graphs), batch 1 only.

Reports images/s, per-image latency at batch 1, the ratios optimised/naive, peak GPU memory
(``torch.cuda.max_memory_allocated``), and our batch-1 latency next to published figures.
Prints a markdown table and writes JSON (rewritten after every measurement, so a run cut off
by a time limit keeps what it measured) to ``--out``.

This script needs torch, diffusers and transformers, and imports ``models.diffusion`` (which
imports neither Ray nor ``graphs/``), so it runs on a GPU machine without Ray. Usage::

    python bench/sd_gpu.py --model sd15                       # CUDA: all variants
    python bench/sd_gpu.py --model sdxl --only naive,ours     # a subset
    python bench/sd_gpu.py --toy                              # CPU, tiny widths, < 1 min

``--toy`` scales every width down (tiny channels, 1 block per level) and runs the same code
paths on CPU at 64x64, 2 steps, compiling with the ``eager`` backend (dynamo tracing with
``fullgraph=True``, no code generation).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# models/__init__ makes `import torchvision` (pulled in by transformers) survive a CPU torch
# with a CUDA torchvision wheel (common/torchvision_compat.py). It imports neither Ray nor graphs/.
import models  # noqa: E402,F401

SEED = 0
PROMPT = "a photo of an astronaut riding a horse on mars, highly detailed, sharp focus"
VARIANTS = ("naive", "ours", "previews", "tuned", "cudagraphs")
MODELS = ("sd15", "sdxl")
PREVIEWS = 4
VOCAB_SIZE = 49408  # CLIP's BPE vocabulary (ViT-L/14 and OpenCLIP ViT-bigG alike)

# --- full-size configs (values of the released models' config.json files) ------------------

SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
    act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
)
SD_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, act_fn="silu", sample_size=512, scaling_factor=0.18215,
)
CLIP_L_TEXT: dict[str, Any] = dict(  # openai/clip-vit-large-patch14 text tower (SD 1.x)
    vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, projection_dim=768,
    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled text + 6 x 256 time ids
    norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
SDXL_VAE: dict[str, Any] = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025,
                            "force_upcast": True}
SDXL_TEXT_2: dict[str, Any] = dict(  # OpenCLIP ViT-bigG/14 text tower, with projection
    vocab_size=VOCAB_SIZE, hidden_size=1280, intermediate_size=5120, projection_dim=1280,
    num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
    hidden_act="gelu", layer_norm_eps=1e-5,
)
TAESD: dict[str, Any] = dict(  # madebyollin/taesd (and taesdxl: same architecture)
    encoder_block_out_channels=(64, 64, 64, 64), decoder_block_out_channels=(64, 64, 64, 64),
    num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1), latent_channels=4,
)

# --- toy configs: every width scaled down, one block per level, same structure ------------

TOY_TEXT = dict(hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
                num_attention_heads=4)
TOY_VAE = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8)
TOY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                norm_num_groups=32)
TOY_SD15_UNET = dict(TOY_UNET, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32)
TOY_SDXL_UNET = dict(
    TOY_UNET, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4), cross_attention_dim=64, addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,
)
TOY_TAESD = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                 num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))

# Published batch-1 latencies (seconds per image), to put ours next to. `variant` is our
# closest setup.
PUBLISHED: list[dict[str, Any]] = [
    dict(model="sdxl", size=1024, steps=30, gpu="A100 80GB (400 W)", setup="fp32, no SDPA",
         latency_s=7.36, variant="naive", source="diffusers tutorial 'Accelerate inference "
         "of text-to-image diffusion models'"),
    dict(model="sdxl", size=1024, steps=30, gpu="A100 80GB (400 W)", setup="bf16 + SDPA",
         latency_s=3.31, variant="ours", source="same"),
    dict(model="sdxl", size=1024, steps=30, gpu="A100 80GB (400 W)",
         setup="bf16 + SDPA + compile max-autotune + fused QKV", latency_s=2.52,
         variant="tuned", source="same"),
    dict(model="sdxl", size=1024, steps=50, gpu="A100 80GB SXM", setup="fp16 + SDPA (torch 2.1)",
         latency_s=5.93, variant="ours", source="fal-ai/stable-diffusion-benchmarks README"),
    dict(model="sdxl", size=1024, steps=50, gpu="A100 80GB SXM",
         setup="fp16 + SDPA + compile + channels_last", latency_s=5.13, variant="tuned",
         source="same"),
    dict(model="sd15", size=512, steps=50, gpu="A100 80GB SXM", setup="fp16 + SDPA (torch 2.1)",
         latency_s=1.59, variant="ours", source="fal-ai/stable-diffusion-benchmarks README"),
    dict(model="sd15", size=512, steps=50, gpu="A100 80GB SXM",
         setup="fp16 + SDPA + compile + channels_last", latency_s=1.07, variant="tuned",
         source="same"),
]


@dataclass(frozen=True)
class Arch:
    """One pipeline architecture at one scale."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    text_2: dict[str, Any] | None  # SDXL's second text encoder (with projection)
    taesd: dict[str, Any]
    size: int  # default image side (pixels)

    @property
    def xl(self) -> bool:
        return self.text_2 is not None


def get_arch(name: str, *, toy: bool = False) -> Arch:
    """Full-size (or toy) SD 1.5 / SDXL architecture."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    if name == "sd15":
        arch = Arch("sd15", dict(SD15_UNET), dict(SD_VAE), dict(CLIP_L_TEXT), None, dict(TAESD),
                    512)
        if toy:
            return Arch("sd15", {**arch.unet, **TOY_SD15_UNET}, {**arch.vae, **TOY_VAE},
                        {**arch.text, **TOY_TEXT}, None, {**arch.taesd, **TOY_TAESD}, 64)
        return arch
    arch = Arch("sdxl", dict(SDXL_UNET), dict(SDXL_VAE), dict(CLIP_L_TEXT), dict(SDXL_TEXT_2),
                dict(TAESD), 1024)
    if toy:
        return Arch("sdxl", {**arch.unet, **TOY_SDXL_UNET}, {**arch.vae, **TOY_VAE},
                    {**arch.text, **TOY_TEXT}, {**arch.text_2, **TOY_TEXT},
                    {**arch.taesd, **TOY_TAESD}, 64)
    return arch


# --- building random-weight pipelines --------------------------------------------------------

def clip_tokenizer(vocab_size: int = VOCAB_SIZE, pad_token: str = "<|endoftext|>"):
    """A CLIP BPE tokenizer built in code (like models/zoo.py's tiny one) with CLIP's vocabulary
    size and special-token ids (<|startoftext|> 49406, <|endoftext|> 49407): lower-case
    letters, digits and punctuation, a few merges, the rest filler tokens. Prompts are padded
    to 77 tokens either way, so the text encoders' cost is that of the real tokenizer."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars += [str(d) for d in range(10)] + list(".,!?'-:;()&/")
    vocab: dict[str, int] = {}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    for ch in chars:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = []
    for pair in ("t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n", "e r</w>", "o n</w>"):
        left, right = pair.split(" ")
        merges.append((left, right))
        vocab.setdefault(left + right, len(vocab))
    filler = 0
    while len(vocab) < vocab_size - 2:
        vocab[f"<|filler{filler}|>"] = len(vocab)
        filler += 1
    vocab["<|startoftext|>"] = vocab_size - 2
    vocab["<|endoftext|>"] = vocab_size - 1
    # transformers 5 takes the vocabulary and merges directly (vocab_file=/merges_file= are
    # ignored there: the tokenizer would know only its special tokens).
    return CLIPTokenizer(vocab=vocab, merges=merges,
                         pad_token=pad_token, model_max_length=77)


def _text_config(values: dict[str, Any]):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**values, bos_token_id=VOCAB_SIZE - 2, eos_token_id=VOCAB_SIZE - 1,
                          pad_token_id=VOCAB_SIZE - 1)


def build_pipeline(arch: Arch, *, device: str = "cpu"):
    """The text2img pipeline of `arch` with seeded random weights, built on `device`
    (in fp32). SD 1.5 ships a PNDM scheduler; both use Euler here: one UNet call per step."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    with torch.device(device):
        unet = UNet2DConditionModel(**arch.unet)
        vae = AutoencoderKL(**arch.vae)
        text_encoder = CLIPTextModel(_text_config(arch.text))
        text_encoder_2 = (CLIPTextModelWithProjection(_text_config(arch.text_2))
                          if arch.xl else None)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", num_train_timesteps=1000,
                                       timestep_spacing="leading", steps_offset=1)
    if arch.xl:
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token="!"),
            unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def save_weights(arch: Arch, folder: Path, *, device: str) -> dict[str, float]:
    """Build `arch` with random weights and save it like a hub snapshot (half precision on
    CUDA, to halve the disk traffic; every variant casts to its own dtype on load), plus a
    TAESD in ``folder/taesd``. Returns parameter counts (millions) per component."""
    import torch
    from diffusers import AutoencoderTiny

    pipe = build_pipeline(arch, device=device)
    counts = {name: sum(p.numel() for p in module.parameters()) / 1e6
              for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    if device.startswith("cuda"):
        pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe
    torch.manual_seed(SEED)
    with torch.device(device):
        taesd = AutoencoderTiny(**arch.taesd)
    counts["taesd"] = sum(p.numel() for p in taesd.parameters()) / 1e6
    taesd.save_pretrained(folder / "taesd", safe_serialization=True)
    return counts


# --- measuring -------------------------------------------------------------------------------

@dataclass
class Row:
    model: str
    variant: str
    batch: int
    dtype: str
    attention: str
    compiled: str
    status: str = "ok"
    calls: int = 0
    warmup_s: float | None = None
    latency_s: float | None = None  # median seconds per pipeline call (a batch of images)
    per_image_s: float | None = None
    images_per_s: float | None = None
    peak_mem_gb: float | None = None  # torch.cuda.max_memory_allocated during timed calls
    reserved_gb: float | None = None  # torch.cuda.max_memory_reserved
    notes: str = ""
    times_s: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, ns: argparse.Namespace, device: str, out: Path):
        self.ns = ns
        self.device = device
        self.cuda = device.startswith("cuda")
        self.out = out
        self.results: dict[str, Any] = {
            "script": "bench/sd_gpu.py",
            "toy": ns.toy,
            "machine": machine_info(device),
            "settings": {k: v for k, v in vars(ns).items() if k not in ("out", "weights_dir")},
            "models": {},
        }

    # -- bookkeeping ----------------------------------------------------------------------
    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        os.replace(tmp, self.out)

    def model_result(self, name: str) -> dict[str, Any]:
        return self.results["models"].setdefault(name, {"rows": []})

    def add(self, row: Row) -> None:
        self.model_result(row.model)["rows"].append(asdict(row))
        self.save()
        print(f"  {row.variant:<10} batch {row.batch}: " + (
            f"{row.images_per_s:.3f} images/s, {row.latency_s:.3f} s/call, "
            f"warm-up {row.warmup_s:.1f} s, peak {fmt(row.peak_mem_gb, '.2f')} GB"
            if row.status == "ok" else row.status), flush=True)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def free(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        import torch._dynamo

        torch._dynamo.reset()

    def measure(self, row: Row, call: Callable[[], Any], *, warmups: int, deadline: float) -> Row:
        """Warm up (not timed: compilation, cuDNN autotuning, CUDA graph capture), then time
        up to --repeats calls, stopping early (after one) past the variant's deadline."""
        import torch

        started = time.perf_counter()
        for _ in range(warmups):
            call()
        self.sync()
        row.warmup_s = time.perf_counter() - started
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        while len(row.times_s) < self.ns.repeats and (
                not row.times_s or time.perf_counter() < deadline):
            t = time.perf_counter()
            call()
            self.sync()
            row.times_s.append(time.perf_counter() - t)
        row.calls = len(row.times_s)
        row.latency_s = statistics.median(row.times_s)
        row.per_image_s = row.latency_s / row.batch
        row.images_per_s = row.batch / row.latency_s
        if self.cuda:
            row.peak_mem_gb = torch.cuda.max_memory_allocated() / 2**30
            row.reserved_gb = torch.cuda.max_memory_reserved() / 2**30
        return row

    # -- variants -------------------------------------------------------------------------
    def run_model(self, name: str) -> None:
        arch = get_arch(name, toy=self.ns.toy)
        size = self.ns.size or arch.size
        res = self.model_result(name)
        res.update(size=size, steps=self.ns.steps, architecture=_arch_summary(arch))
        scratch = Path(self.ns.weights_dir) / name if self.ns.weights_dir else Path(
            tempfile.mkdtemp(prefix=f"sd_gpu_{name}_"))
        try:
            if not (scratch / "model_index.json").exists():
                print(f"# {name}: building random weights in {scratch} ...", flush=True)
                t = time.perf_counter()
                scratch.mkdir(parents=True, exist_ok=True)
                res["params_m"] = save_weights(arch, scratch, device=self.device)
                res["build_s"] = time.perf_counter() - t
                self.free()
                self.save()
            for variant in self.ns.only:
                try:
                    getattr(self, f"variant_{variant}")(name, arch, scratch, size)
                except Exception as exc:  # keep the other variants' numbers
                    traceback.print_exc()
                    self.add(Row(name, variant, 0, "–", "–", "–", status=_failed(exc)))
                self.free()
        finally:
            if not self.ns.weights_dir:
                shutil.rmtree(scratch, ignore_errors=True)
        res["summary"] = summarise(res["rows"])
        res["published"] = published_next_to(name, res["rows"], self.ns.steps, size)
        self.save()

    def batch_order(self) -> list[int]:
        """Batch 1 (latency), then the largest (throughput), then the rest."""
        sizes = sorted(set(self.ns.batch_sizes))
        return sorted(sizes, key=lambda b: (b != 1, b != sizes[-1], b))

    def variant_naive(self, name: str, arch: Arch, folder: Path, size: int) -> None:
        import torch
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        cls = StableDiffusionXLPipeline if arch.xl else StableDiffusionPipeline
        kwargs = {} if arch.xl else {"safety_checker": None, "requires_safety_checker": False}
        pipe = cls.from_pretrained(folder, dtype=torch.float32, **kwargs).to(self.device)
        pipe.unet.set_default_attn_processor()  # the classic (non-SDPA) attention
        pipe.vae.set_default_attn_processor()
        pipe.set_progress_bar_config(disable=True)
        row = Row(name, "naive", 1, _dtype(pipe.unet), _attn(pipe.unet), "no",
                  notes="pipe(prompt) per image, PIL output")

        def call():
            generator = torch.Generator(self.device).manual_seed(SEED)
            return pipe(PROMPT, num_inference_steps=self.ns.steps, height=size, width=size,
                        generator=generator).images[0]

        deadline = time.perf_counter() + self.ns.max_seconds
        self.add(self.measure(row, call, warmups=1, deadline=deadline))

    def _load_ours(self, name: str, folder: Path):
        from models.diffusion import DiffusionModel
        from models.registry import SizeLimits

        limits = SizeLimits(min_side=32, max_side=2048, default_width=512, default_height=512)
        return DiffusionModel.load(str(folder), name=name, device=self.device, limits=limits)

    def _generate_call(self, model, name: str, size: int, batch: int, **kwargs) -> Callable:
        from models.diffusion import GenerationRequest

        def call():
            # B single-image requests, as @serve.batch hands them to the model.
            requests = [GenerationRequest(prompt=PROMPT, width=size, height=size,
                                          steps=self.ns.steps, seed=SEED + i)
                        for i in range(batch)]
            results = model.generate(requests, max_batch_images=batch, **kwargs)
            assert sum(len(r.images) for r in results) == batch
            return results

        return call

    def _ours_batches(self, name: str, variant: str, model, size: int, *, dtype: str,
                      attention: str, compiled: str, batches: list[int], warmups: int,
                      notes: str = "") -> None:
        started = time.perf_counter()
        deadline = started + self.ns.max_seconds
        for batch in batches:
            row = Row(name, variant, batch, dtype, attention, compiled, notes=notes)
            if time.perf_counter() > deadline:
                row.status = f"skipped: past --max-seconds {self.ns.max_seconds:g}"
                self.add(row)
                continue
            try:
                self.add(self.measure(row, self._generate_call(model, name, size, batch),
                                      warmups=warmups, deadline=deadline))
            except Exception as exc:  # e.g. out of memory at a large batch: keep the others
                traceback.print_exc()
                row.status = _failed(exc)
                self.add(row)
                self.free()

    def variant_ours(self, name: str, arch: Arch, folder: Path, size: int) -> None:
        model = self._load_ours(name, folder)
        pipe = model._pipes["text2img"]
        self._ours_batches(name, "ours", model, size, dtype=_dtype(pipe.unet),
                           attention=_attn(pipe.unet), compiled="no",
                           batches=self.batch_order(), warmups=1,
                           notes="DiffusionModel.load + generate (the Generator's code)")

    def variant_previews(self, name: str, arch: Arch, folder: Path, size: int) -> None:
        model = self._load_ours(name, folder)
        if not model.load_preview_decoder(str(folder / "taesd")):
            raise RuntimeError("could not load the TAESD preview decoder")
        pipe = model._pipes["text2img"]
        shown: list[int] = []
        row = Row(name, "previews", 1, _dtype(pipe.unet), _attn(pipe.unet), "no",
                  notes=f"ours + {PREVIEWS} TAESD previews decoded inline")
        call = self._generate_call(model, name, size, 1, previews=PREVIEWS,
                                   on_preview=lambda index, images: shown.append(len(images)))
        deadline = time.perf_counter() + self.ns.max_seconds
        self.add(self.measure(row, call, warmups=1, deadline=deadline))
        if not shown:
            raise RuntimeError("no preview was decoded")

    def _tuned(self, name: str, arch: Arch, folder: Path, size: int, *, variant: str,
               mode: str, batches: list[int]) -> None:
        import torch

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[self.ns.dtype]
        model = self._load_ours(name, folder)
        pipe = model._pipes["text2img"]
        if self.cuda:
            pipe.to(dtype)
        notes = ["ours + fused QKV"]
        pipe.fuse_qkv_projections()  # UNet and VAE; sets FusedAttnProcessor2_0 (SDPA)
        if arch.xl and self.cuda and pipe.vae.config.force_upcast:
            pipe.vae.register_to_config(force_upcast=False)
            notes.append("VAE decode in half precision (no fp32 upcast)")
        if self.cuda:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        backend = self.ns.compile_backend
        if backend == "inductor":
            configure_inductor(mode)
        # dynamic=False: one specialised graph per batch size (no automatic dynamic shapes
        # after the second size, which would give batch 4 a slower, shape-generic graph).
        options = {"backend": backend, "fullgraph": True, "dynamic": False}
        if backend == "inductor":
            options["mode"] = mode
        pipe.unet.compile(**options)
        pipe.vae.decode = torch.compile(pipe.vae.decode, **options)
        compiled = f"{backend}:{mode}" if backend == "inductor" else backend
        notes.append("torch.compile UNet + vae.decode, fullgraph")
        warmups = 3 if mode == "reduce-overhead" else 1  # CUDA graph trees record on call 2-3
        self._ours_batches(name, variant, model, size, dtype=_dtype(pipe.unet),
                           attention=_attn(pipe.unet), compiled=compiled, batches=batches,
                           warmups=warmups, notes="; ".join(notes))

    def variant_tuned(self, name: str, arch: Arch, folder: Path, size: int) -> None:
        self._tuned(name, arch, folder, size, variant="tuned", mode=self.ns.compile_mode,
                    batches=self.batch_order())

    def variant_cudagraphs(self, name: str, arch: Arch, folder: Path, size: int) -> None:
        self._tuned(name, arch, folder, size, variant="cudagraphs", mode="reduce-overhead",
                    batches=[1])


def configure_inductor(mode: str) -> None:
    """The inductor flags of diffusers' "accelerate inference" tutorial (coordinate-descent
    tuning only with max-autotune: it lengthens compilation)."""
    import torch._inductor.config as config

    config.conv_1x1_as_mm = True
    config.epilogue_fusion = False
    if mode.startswith("max-autotune"):
        config.coordinate_descent_tuning = True
        config.coordinate_descent_check_all_directions = True


def _failed(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"failed: {type(exc).__name__}: {first[:160]}"


def _dtype(module) -> str:
    return str(next(module.parameters()).dtype).removeprefix("torch.")


def _attn(unet) -> str:
    names = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    return "+".join(names)


def _arch_summary(arch: Arch) -> dict[str, Any]:
    unet = arch.unet
    return {"unet_channels": list(unet["block_out_channels"]),
            "cross_attention_dim": unet["cross_attention_dim"],
            "text_hidden": [arch.text["hidden_size"]]
            + ([arch.text_2["hidden_size"]] if arch.text_2 else []),
            "vae_channels": list(arch.vae["block_out_channels"])}


# --- summaries -------------------------------------------------------------------------------

def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios of the optimised variants to the naive loop: images/s (best batch) and latency
    at batch 1."""
    ok = [r for r in rows if r["status"] == "ok"]
    naive = next((r for r in ok if r["variant"] == "naive"), None)
    out: dict[str, Any] = {}
    for variant in ("ours", "tuned", "cudagraphs"):
        mine = [r for r in ok if r["variant"] == variant]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["images_per_s"])
        one = next((r for r in mine if r["batch"] == 1), None)
        entry = {"best_images_per_s": best["images_per_s"], "best_batch": best["batch"],
                 "latency_b1_s": one["latency_s"] if one else None}
        if naive:
            entry["throughput_ratio_vs_naive"] = best["images_per_s"] / naive["images_per_s"]
            if one:
                entry["latency_speedup_b1_vs_naive"] = naive["latency_s"] / one["latency_s"]
        out[variant] = entry
    if naive:
        out["naive"] = {"images_per_s": naive["images_per_s"], "latency_b1_s": naive["latency_s"]}
    previews = next((r for r in ok if r["variant"] == "previews"), None)
    ours_b1 = next((r for r in ok if r["variant"] == "ours" and r["batch"] == 1), None)
    if previews and ours_b1:
        out["previews"] = {"added_s_per_image": previews["latency_s"] - ours_b1["latency_s"],
                           "previews": PREVIEWS}
    return out


def published_next_to(model: str, rows: list[dict[str, Any]], steps: int, size: int
                      ) -> list[dict[str, Any]]:
    """Published figures for `model` with our closest variant's batch-1 latency, scaled
    linearly to their step count (an over-estimate: the text encoders and the VAE decode do
    not scale with steps)."""
    out = []
    for pub in PUBLISHED:
        if pub["model"] != model:
            continue
        ours = next((r for r in rows if r["status"] == "ok" and r["variant"] == pub["variant"]
                     and r["batch"] == 1), None)
        entry = dict(pub)
        entry["same_size"] = pub["size"] == size
        if ours:
            entry["our_latency_s"] = ours["latency_s"]
            entry["our_steps"] = steps
            entry["our_latency_scaled_s"] = ours["latency_s"] * pub["steps"] / steps
        out.append(entry)
    return out


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(results: dict[str, Any]) -> str:
    lines = []
    mach = results["machine"]
    for name, res in results["models"].items():
        lines.append(f"### {name} {res.get('size')}x{res.get('size')}, {res.get('steps')} steps"
                     f"{' (toy widths)' if results['toy'] else ''} — {mach['device_name']}, "
                     f"torch {mach['torch']}, diffusers {mach['diffusers']}, {mach['date']}")
        lines.append("")
        lines.append("| variant | batch | dtype | attention | compile | images/s | s/image "
                     "| s/call | peak GB | warm-up s | calls | status |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(res["rows"], key=lambda r: (VARIANTS.index(r["variant"]), r["batch"])):
            lines.append(
                f"| {r['variant']} | {r['batch']} | {r['dtype']} | {r['attention']} | "
                f"{r['compiled']} | {fmt(r['images_per_s'], '.3f')} | "
                f"{fmt(r['per_image_s'], '.3f')} | {fmt(r['latency_s'], '.3f')} | "
                f"{fmt(r['peak_mem_gb'], '.2f')} | {fmt(r['warmup_s'], '.1f')} | {r['calls']} | "
                f"{r['status']} |")
        summary = res.get("summary", {})
        ratios = [f"{v}: x{s['throughput_ratio_vs_naive']:.2f} images/s (batch "
                  f"{s['best_batch']})" + (f", x{s['latency_speedup_b1_vs_naive']:.2f} faster "
                                            "at batch 1" if "latency_speedup_b1_vs_naive" in s
                                            else "")
                  for v, s in summary.items() if "throughput_ratio_vs_naive" in s]
        if ratios:
            lines.append("")
            lines.append("Ratio vs naive — " + "; ".join(ratios) + ".")
        if "previews" in summary:
            p = summary["previews"]
            lines.append(f"{p['previews']} inline TAESD previews add "
                         f"{p['added_s_per_image'] * 1e3:.0f} ms per image at batch 1.")
        pubs = res.get("published") or []
        if pubs:
            lines.append("")
            lines.append("| published setup | GPU | size | steps | published s/image | "
                         "our variant | ours s/image | ours scaled to their steps |")
            lines.append("|---|---|---|---|---|---|---|---|")
            for p in pubs:
                lines.append(
                    f"| {p['setup']} | {p['gpu']} | {p['size']} | {p['steps']} | "
                    f"{p['latency_s']:.2f} | {p['variant']} | "
                    f"{fmt(p.get('our_latency_s'), '.2f')} | "
                    f"{fmt(p.get('our_latency_scaled_s'), '.2f')}"
                    f"{'' if p['same_size'] else ' (other size)'} |")
        lines.append("")
    return "\n".join(lines)


def machine_info(device: str) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    info: dict[str, Any] = {
        "host": platform.node(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d"),
        "device": device, "device_name": f"CPU ({os.cpu_count()} cores)",
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, gpu_memory_gb=props.total_memory / 2**30,
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return info


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sd15",
                    help=f"comma-separated, of {', '.join(MODELS)} (default sd15)")
    ap.add_argument("--only", default=",".join(VARIANTS),
                    help=f"comma-separated variants, of {', '.join(VARIANTS)} (default all)")
    ap.add_argument("--toy", action="store_true",
                    help="tiny widths on CPU (or GPU), 64x64, 2 steps: checks the code paths")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (25; toy 2)")
    ap.add_argument("--size", type=int, default=None,
                    help="image side (512 sd15, 1024 sdxl; toy 64)")
    ap.add_argument("--batch-sizes", default="1,4,8", help="for ours/tuned (default 1,4,8)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    ap.add_argument("--max-seconds", type=float, default=300.0,
                    help="per variant: no new batch size is started past this, and timing "
                         "stops after one call (compilation can't be interrupted)")
    ap.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16", help="tuned variants")
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                    choices=("default", "max-autotune-no-cudagraphs", "max-autotune",
                             "reduce-overhead"), help="torch.compile mode of 'tuned'")
    ap.add_argument("--compile-backend", choices=("inductor", "eager", "aot_eager"), default=None,
                    help="torch.compile backend (default inductor; eager with --toy)")
    ap.add_argument("--weights-dir", default=None,
                    help="keep the random weights here and reuse them (default: a temp folder, "
                         "deleted at the end)")
    ap.add_argument("--out", default=None,
                    help="JSON results (default bench/results/sd_gpu[-toy]-<models>.json)")
    ns = ap.parse_args(argv)
    ns.models = [m.strip() for m in ns.model.split(",") if m.strip()]
    ns.only = [v.strip() for v in ns.only.split(",") if v.strip()]
    for m in ns.models:
        if m not in MODELS:
            ap.error(f"--model must be among {', '.join(MODELS)}, got {m!r}")
    for v in ns.only:
        if v not in VARIANTS:
            ap.error(f"--only must be among {', '.join(VARIANTS)}, got {v!r}")
    try:
        ns.batch_sizes = [int(b) for b in ns.batch_sizes.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--batch-sizes must be comma-separated integers, got {ns.batch_sizes!r}")
    if not ns.batch_sizes or min(ns.batch_sizes) < 1:
        ap.error("--batch-sizes must be integers >= 1")
    if ns.steps is None:
        ns.steps = 2 if ns.toy else 25
    if ns.compile_backend is None:
        ns.compile_backend = "eager" if ns.toy else "inductor"
    if ns.repeats < 1:
        ap.error("--repeats must be >= 1")
    return ns


def quiet_libraries() -> None:
    """No download/loading progress bars or INFO chatter from diffusers/transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    import torch

    quiet_libraries()
    # Random weights in half precision overflow to NaN: converting those images to uint8
    # warns on every call. Speed does not depend on the values.
    warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
    if ns.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = ns.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if device == "cpu" and not ns.toy:
        print("error: no CUDA device. The full-size pipelines need a GPU (SD 1.5 in fp32 takes "
              "minutes per image on a CPU). Run with --toy to check this script on CPU at tiny "
              "widths, or on a CUDA machine without it.", file=sys.stderr)
        return 2
    if not device.startswith("cuda"):
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    tag = "-toy" if ns.toy else ""
    out = Path(ns.out) if ns.out else REPO / "bench" / "results" / (
        f"sd_gpu{tag}-{'-'.join(ns.models)}.json")
    bench = Bench(ns, device, out)
    print(f"# sd_gpu on {bench.results['machine']['device_name']}; models {ns.models}, "
          f"variants {ns.only}, {ns.steps} steps; JSON -> {out}", flush=True)
    for name in ns.models:
        bench.run_model(name)
    print()
    print(markdown(bench.results))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
