"""GPU-fraction packing check (issue #8, part 7): does each GPU deployment fit its share?

For each GPU deployment of ``serve_config.yaml`` (Generator, Upscaler, Matting, FaceSwap, and
the router's LLM at its planned 0.2 while the file doesn't list it yet), one worker process
loads the model at production settings from configs with seeded random weights, runs the
requests that set its memory peak, and reports the process's GPU memory. The fractions are
then checked on a 24 GB and an 80 GB GPU (and on the GPU at hand): a deployment fits when
``num_gpus x usable memory >= footprint x (1 + headroom)``.

What is measured, per deployment (production settings):

- Generator: SD 1.5-architecture pipeline (random weights, bench/sd_gpu.py's full-size
  configs) loaded by ``models.diffusion.DiffusionModel.load`` (fp16, SDPA, channels_last)
  with its TAESD preview decoder; requests: a full batch (``max_batch_size`` from the file)
  at 512x512, one image at the largest side (1024), and the largest single request the API
  admits (n=10 at 1024x1024: one request is never split across pipeline calls).
- Upscaler: Real-ESRGAN x4plus + x2plus layouts (RRDBNet, 64 features, 23 blocks; state
  dicts from ``models.upscale.rrdbnet_state_dict``) loaded by ``UpscaleModel.load`` through
  spandrel (fp16 on CUDA), 1024x1024 inputs at x4 and x2 with the deployment's 256 px tiles.
- Matting: rembg runs U²-Net in ONNX Runtime, whose CUDA provider (onnxruntime-gpu) is not on
  the device machine; measured instead with a PyTorch U²-Net of the published architecture
  (44 M parameters, fp32) at 320x320, batch 8 (``DEFAULT_MAX_BATCH_IMAGES['cuda']``): a proxy.
  ONNX Runtime's default arena grows in powers of two, so its footprint can be higher.
- FaceSwap: insightface (ONNX Runtime) with buffalo_l + inswapper_128: an estimate from the
  published file sizes on GPU; with ``--toy`` the tiny seeded set runs through
  ``models.faceswap.FaceSwapModel`` on CPU.
- LLM (share: ``args.llm_num_gpus``, vLLM's placement group; 0.2 as planned if absent):
  Qwen2.5-1.5B-Instruct architecture (bf16, random weights, transformers) with a
  prefill of ``llm_max_model_len`` tokens, the peak of vLLM's profiling run; plus the KV cache
  of one full-length sequence and an allowance for vLLM's CUDA graphs (estimates). vLLM
  itself pre-allocates exactly ``gpu_memory_utilization`` = its fraction.

GPU footprint = device memory in use by the worker process (``total - free`` after the
requests, the caching allocator still holding its peak pool; CUDA context included; the
GPU must be otherwise idle), also broken down into torch's peak allocated/reserved. With
``--toy`` (CPU, tiny configs) the same workers run and report peak RSS growth instead: that
checks the code paths, not the numbers. Prints a markdown table and writes JSON to ``--out``.

    python bench/gpu_packing.py                 # CUDA machine
    python bench/gpu_packing.py --toy           # CPU, tiny configs, < 1 min

Needs torch, diffusers, transformers, pyyaml, numpy; spandrel for the Upscaler (else that
row is an estimate); insightface + onnxruntime only for the toy FaceSwap run. No Ray.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEPLOYMENTS = ("Generator", "Upscaler", "Matting", "FaceSwap", "LLM", "Video", "Vision")
# Usable memory (GiB) of the GPUs the packing is planned for: what torch reports as total on
# common cards (24 GB: A10G 22.0, L4 22.2, RTX 4090 23.6; 80 GB: A100 79.2, H100 79.6). Take
# the lower values.
GPU_CAPACITY_GIB = {"24 GB": 22.0, "80 GB": 79.2}
DEFAULT_HEADROOM = 0.10
RESULT_PREFIX = "PACKING-RESULT "

# Qwen2.5-1.5B-Instruct config.json (the router LLM the packing plans for).
QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                  num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
                  tie_word_embeddings=True)
TOY_QWEN = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                tie_word_embeddings=True)
LLM_MAX_MODEL_LEN = 4096  # deployments/llm.py default, unless args.llm_max_model_len says
VLLM_CUDA_GRAPH_GIB = 0.5  # estimate: vLLM's captured decode graphs for a 1.5B model

# insightface buffalo_l + inswapper_128 published ONNX file sizes (MB).
FACESWAP_FILES_MB = {"det_10g.onnx": 16.9, "w600k_r50.onnx": 174.4, "inswapper_128.onnx": 554.3}
# U²-Net RSU stages: (height, in, mid, out); encoder then decoder (the published u2net).
U2NET_ENCODER = [(7, 3, 32, 64), (6, 64, 32, 128), (5, 128, 64, 256), (4, 256, 128, 512),
                 (-4, 512, 256, 512), (-4, 512, 256, 512)]  # -4: RSU-4F (dilated, no pooling)
U2NET_DECODER = [(-4, 1024, 256, 512), (4, 1024, 128, 256), (5, 512, 64, 128),
                 (6, 256, 32, 64), (7, 128, 16, 64)]


# --- serve_config.yaml -------------------------------------------------------------------------

def planned_llm_fraction() -> float:
    """deployments/llm.py's DEFAULT_NUM_GPUS, read as text (that module imports Ray)."""
    path = REPO / "deployments" / "llm.py"
    if path.exists():
        match = re.search(r"^DEFAULT_NUM_GPUS\s*=\s*([0-9.]+)", path.read_text(), re.M)
        if match:
            return float(match.group(1))
    return 0.2


def read_fractions(config: Path) -> dict[str, dict[str, Any]]:
    """Deployment name -> {"num_gpus", "source", "args"} for the GPU deployments."""
    import yaml

    data = yaml.safe_load(config.read_text())
    found: dict[str, dict[str, Any]] = {}
    for app in data.get("applications", []):
        args = app.get("args") or {}
        for dep in app.get("deployments", []):
            gpus = (dep.get("ray_actor_options") or {}).get("num_gpus", 0) or 0
            if dep.get("name") in DEPLOYMENTS and gpus > 0:
                found[dep["name"]] = {"num_gpus": float(gpus), "source": config.name,
                                      "args": args}
        # vLLM's share sits on its placement group, set by the builder's args (the LLM
        # adapter deployment itself has num_gpus 0).
        if "LLM" not in found and args.get("llm_num_gpus"):
            found["LLM"] = {"num_gpus": float(args["llm_num_gpus"]),
                            "source": f"{config.name} args.llm_num_gpus", "args": args}
    if "LLM" not in found:
        found["LLM"] = {"num_gpus": planned_llm_fraction(),
                        "source": "planned (deployments/llm.py DEFAULT_NUM_GPUS; not yet in "
                                  f"{config.name})", "args": {}}
    return found


# --- measuring inside a worker -----------------------------------------------------------------

def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _reset_peak_rss() -> bool:
    try:  # Linux: writing 5 resets VmHWM (the peak RSS) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return _peak_rss_gib()


class Meter:
    """GPU: process memory on the device (total - free) and torch's peaks, per scenario.
    CPU: peak RSS growth over the RSS after imports."""

    def __init__(self, device: str):
        import torch

        self.device = device
        self.cuda = device.startswith("cuda")
        self.scenarios: list[dict[str, Any]] = []
        if self.cuda:
            torch.zeros(1, device=device)  # create the context
            self.context_gib = self._used()
            props = torch.cuda.get_device_properties(device)
            self.gpu = {"name": props.name, "total_gib": props.total_memory / 2**30}
        else:
            self.base_rss = _rss_gib()
        self.weights_gib: float | None = None

    def _used(self) -> float:
        import torch

        free, total = torch.cuda.mem_get_info(self.device)
        return (total - free) / 2**30

    def loaded(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.weights_gib = torch.cuda.memory_allocated(self.device) / 2**30
        else:
            self.weights_gib = _rss_gib() - self.base_rss

    def run(self, name: str, fn, *, typical: bool = False) -> dict[str, Any]:
        import gc

        import torch

        gc.collect()
        row: dict[str, Any] = {"scenario": name, "typical": typical}
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            row["peak_reset"] = _reset_peak_rss()
        started = time.perf_counter()
        try:
            fn()
            if self.cuda:
                torch.cuda.synchronize()
        except Exception as exc:  # OOM at the worst case is a finding, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        row["seconds"] = time.perf_counter() - started
        if self.cuda:
            row["peak_allocated_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
            row["footprint_gib"] = self._used()  # context + reserved pool + library workspaces
        else:
            row["footprint_gib"] = (_vm_hwm_gib() if row["peak_reset"] else _peak_rss_gib()
                                    ) - self.base_rss
        self.scenarios.append(row)
        return row

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"method": "measured: GPU process memory" if self.cuda
                else "measured: CPU peak RSS growth (toy)",
                "context_gib": getattr(self, "context_gib", None),
                "weights_gib": self.weights_gib, "scenarios": self.scenarios,
                "gpu": getattr(self, "gpu", None), **extra}


def worker_generator(ns: argparse.Namespace, device: str) -> dict[str, Any]:
    import numpy as np

    from bench.sd_gpu import get_arch, quiet_libraries, save_weights
    from models.diffusion import MAX_IMAGES_PER_REQUEST, DiffusionModel, GenerationRequest
    from models.registry import get_spec

    quiet_libraries()
    meter = Meter(device)
    limits = get_spec("sd15").limits
    arch = get_arch("sd15", toy=ns.toy)
    typical = 64 if ns.toy else limits.default_width
    largest = 128 if ns.toy else limits.max_side
    batch = int(ns.fractions["Generator"]["args"].get("max_batch_size", 8))
    with tempfile.TemporaryDirectory(prefix="packing_sd15_") as tmp:
        save_weights(arch, Path(tmp), device=device)
        import gc

        import torch

        gc.collect()
        if meter.cuda:
            torch.cuda.empty_cache()
        model = DiffusionModel.load(tmp, name="sd15", device=device)
        model.load_preview_decoder(str(Path(tmp) / "taesd"))
    meter.loaded()

    def gen(n_requests: int, n: int, side: int):
        # Batches come through @serve.batch (no previews); a single request may be a
        # streaming one, which decodes TAESD previews on the side.
        previews = 1 if n_requests == 1 else 0

        def call():
            reqs = [GenerationRequest(prompt="a cat in a crown", n=n, width=side, height=side,
                                      steps=ns.gen_steps, seed=i) for i in range(n_requests)]
            out = model.generate(reqs, max_batch_images=batch, previews=previews,
                                 on_preview=lambda i, images: None)
            assert all(isinstance(img, np.ndarray) for r in out for img in r.images)
        return call

    meter.run(f"batch {batch} x {typical}x{typical} (full @serve.batch)",
              gen(batch, 1, typical), typical=True)
    meter.run(f"1 x {largest}x{largest} (largest side)", gen(1, 1, largest))
    meter.run(f"n={MAX_IMAGES_PER_REQUEST} x {largest}x{largest} (largest single request)",
              gen(1, MAX_IMAGES_PER_REQUEST, largest))
    return meter.result(model=f"SD 1.5 architecture ({'toy widths' if ns.toy else 'full size'}) "
                        f"+ TAESD, {model.info.dtype}", settings={"max_batch_size": batch})


def worker_upscaler(ns: argparse.Namespace, device: str) -> dict[str, Any]:
    import numpy as np
    import torch

    from models.upscale import (
        DEFAULT_TILE,
        DEFAULT_TILE_OVERLAP,
        TINY_BLOCKS,
        TINY_FEATURES,
        UpscaleModel,
        rrdbnet_state_dict,
    )

    features, blocks = (TINY_FEATURES, TINY_BLOCKS) if ns.toy else (64, 23)
    side = 128 if ns.toy else 1024
    tile = 64 if ns.toy else DEFAULT_TILE
    meter = Meter(device)
    with tempfile.TemporaryDirectory(prefix="packing_esrgan_") as tmp:
        for scale, in_ch in ((4, 3), (2, 12)):
            state = rrdbnet_state_dict(in_ch=in_ch, num_feat=features, num_block=blocks,
                                       seed=scale)
            torch.save({"params_ema": state}, Path(tmp) / f"RealESRGAN_x{scale}plus.pth")
        model = UpscaleModel.load(tmp, name="realesrgan-x4", device=device)
    meter.loaded()
    image = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    for scale in (4, 2):
        meter.run(f"x{scale}, {side}x{side} input, tile {tile} (+{DEFAULT_TILE_OVERLAP} px)",
                  lambda s=scale: model.upscale(image, scale=s, tile=tile,
                                                tile_overlap=DEFAULT_TILE_OVERLAP),
                  typical=scale == 4)
    return meter.result(model=f"RRDBNet {features} features, {blocks} blocks, x4plus + x2plus "
                        f"via spandrel, {model.info.dtype}", settings={"tile": tile})


def u2net(width_div: int = 1):
    """The published U²-Net (RSU-7..RSU-4F encoder/decoder, 6 side outputs + fused), channels
    divided by `width_div`."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def ch(c: int) -> int:
        return c if c == 3 else max(4, c // width_div)

    class REBNConv(nn.Sequential):
        def __init__(self, cin: int, cout: int, dilation: int = 1):
            super().__init__(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class RSU(nn.Module):
        def __init__(self, height: int, cin: int, mid: int, cout: int):
            super().__init__()
            self.dilated = height < 0
            height = abs(height)
            self.conv_in = REBNConv(cin, cout)
            dil = (lambda i: 2 ** i) if self.dilated else (lambda i: 1)
            self.enc = nn.ModuleList([REBNConv(cout if i == 0 else mid, mid, dil(i))
                                      for i in range(height - 1)])
            self.bottom = REBNConv(mid, mid, 2 ** (height - 1) if self.dilated else 2)
            self.dec = nn.ModuleList([REBNConv(2 * mid, cout if i == 0 else mid, dil(i))
                                      for i in range(height - 1)])

        def forward(self, x):
            hx_in = self.conv_in(x)
            feats, h = [], hx_in
            for i, conv in enumerate(self.enc):
                if i > 0 and not self.dilated:
                    h = F.max_pool2d(h, 2, ceil_mode=True)
                h = conv(h)
                feats.append(h)
            h = self.bottom(h)
            for i in reversed(range(len(self.dec))):
                skip = feats[i]
                if h.shape[-2:] != skip.shape[-2:]:
                    h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear")
                h = self.dec[i](torch.cat([h, skip], 1))
            return h + hx_in

    class U2Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.ModuleList([RSU(h, ch(i), ch(m), ch(o))
                                          for h, i, m, o in U2NET_ENCODER])
            self.decoder = nn.ModuleList([RSU(h, ch(i), ch(m), ch(o))
                                          for h, i, m, o in U2NET_DECODER])
            sides = [ch(64), ch(64), ch(128), ch(256), ch(512), ch(512)]
            self.side = nn.ModuleList([nn.Conv2d(c, 1, 3, padding=1) for c in sides])
            self.fuse = nn.Conv2d(6, 1, 1)

        def forward(self, x):
            size = x.shape[-2:]
            enc, h = [], x
            for i, stage in enumerate(self.encoder):
                if i > 0:
                    h = F.max_pool2d(h, 2, ceil_mode=True)
                h = stage(h)
                enc.append(h)
            dec = [h]
            for i, stage in enumerate(self.decoder):
                skip = enc[-2 - i]
                h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear")
                h = stage(torch.cat([h, skip], 1))
                dec.append(h)
            outs = [F.interpolate(side(d), size=size, mode="bilinear")
                    for side, d in zip(self.side, reversed(dec), strict=True)]
            fused = self.fuse(torch.cat(outs, 1))
            return tuple(torch.sigmoid(o) for o in (fused, *outs))

    return U2Net()


def worker_matting(ns: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch

    meter = Meter(device)
    torch.manual_seed(0)
    with torch.device(device):
        model = u2net(8 if ns.toy else 1).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    meter.loaded()
    batch = 8  # models.matting.DEFAULT_MAX_BATCH_IMAGES["cuda"]

    def run(n: int):
        with torch.inference_mode():
            model(torch.rand(n, 3, 320, 320, device=device))

    meter.run(f"batch {batch} x 320x320 (one ONNX run of a full batch)", lambda: run(batch),
              typical=True)
    return meter.result(model=f"U²-Net architecture in PyTorch, {params:.1f} M parameters, "
                        "float32 (proxy for rembg's ONNX Runtime session)",
                        method_note="torch proxy: ONNX Runtime's CUDA arena may hold more")


def worker_faceswap(ns: argparse.Namespace, device: str) -> dict[str, Any]:
    if not ns.toy:
        weights = sum(FACESWAP_FILES_MB.values()) / 1024
        context, workspace, activations = 0.5, 0.5, 0.3
        total = weights + context + workspace + activations
        return {"method": "estimate", "context_gib": context, "weights_gib": weights,
                "scenarios": [{"scenario": "detect 640x640 + ArcFace 112 + swap 128",
                               "typical": True, "footprint_gib": total}],
                "model": "buffalo_l (det_10g, w600k_r50) + inswapper_128, ONNX Runtime fp32",
                "method_note": (f"ONNX files {sum(FACESWAP_FILES_MB.values()):.0f} MB + CUDA "
                                f"context {context} + cuDNN/arena workspace {workspace} + "
                                f"activations {activations} GiB; onnxruntime-gpu is not on "
                                "the device machine")}
    import numpy as np

    from models import zoo
    from models.faceswap import TINY_NAME, FaceSwapModel

    meter = Meter(device)
    model = FaceSwapModel.load(str(zoo.ensure(TINY_NAME)), name=TINY_NAME, device="cpu",
                               tiny=True)
    meter.loaded()

    def draw(disks):
        img = np.full((240, 320, 3), 128, dtype=np.uint8)
        yy, xx = np.mgrid[:240, :320]
        for x, y, r in disks:
            img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = (224, 172, 105)
        return img

    source, target = draw([(160, 120, 40)]), draw([(80, 120, 35), (240, 110, 40)])
    meter.run("swap: source 1 face -> target 2 faces", lambda: model.swap(
        source, target, all_faces=True), typical=True)
    return meter.result(model="tiny seeded SCRFD/ArcFace/INSwapper via insightface (toy)")


def worker_llm(ns: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bench.sd_gpu import quiet_libraries

    quiet_libraries()
    meter = Meter(device)
    values = TOY_QWEN if ns.toy else QWEN25_15B
    config = Qwen2Config(**values, attn_implementation="sdpa")
    dtype = torch.bfloat16 if meter.cuda else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16: no fp32 copy on the GPU
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    meter.loaded()
    args = ns.fractions["LLM"]["args"]
    tokens = 256 if ns.toy else int(args.get("llm_max_model_len") or LLM_MAX_MODEL_LEN)

    def prefill():
        ids = torch.randint(0, values["vocab_size"], (1, tokens), device=device)
        with torch.inference_mode():
            model(input_ids=ids, use_cache=True, logits_to_keep=1)

    meter.run(f"prefill {tokens} tokens (vLLM's profiling run, max_model_len)", prefill,
              typical=True)
    head_dim = values["hidden_size"] // values["num_attention_heads"]
    kv_gib = (2 * values["num_hidden_layers"] * values["num_key_value_heads"] * head_dim
              * (2 if meter.cuda else 4) * tokens) / 2**30
    graphs = VLLM_CUDA_GRAPH_GIB if meter.cuda else 0.0
    return meter.result(model=f"Qwen2.5-1.5B architecture ({params * 1e3:.4g} M parameters, "
                        f"{str(dtype).removeprefix('torch.')}) in transformers, proxy for vLLM",
                        extra_gib=kv_gib + graphs,
                        method_note=f"+ KV cache of one {tokens}-token sequence "
                        f"({kv_gib:.2f} GiB) + CUDA graphs allowance ({graphs} GiB)")


def worker_video(ns: argparse.Namespace, device: str) -> dict[str, Any]:
    """LTX-Video through the product's VideoModel: toy = tiny-ltx; full = the LTX-Video
    architecture (2B transformer, 0.9 VAE, T5-XXL) from configs with random weights
    (bench/video_gpu.py builds it), 768x512, 121 frames, VAE tiling + slicing, bf16."""
    import tempfile

    from models.registry import VideoLimits, get_spec
    from models.video import VideoModel, VideoRequest

    meter = Meter(device)
    if ns.toy:
        model = VideoModel.from_spec(get_spec("tiny-ltx"), device=device)
        req = VideoRequest(prompt="packing probe", width=64, height=64, num_frames=33, fps=8,
                           steps=2, seed=0)
        label = "tiny-ltx (toy)"
    else:
        from bench.video_gpu import build

        folder = Path(tempfile.mkdtemp(prefix="ltx-packing-"))
        build(folder, small_text_encoder=False)
        model = VideoModel.load(str(folder), name="ltx-video", device=device,
                                limits=VideoLimits(256, 1280, 768, 512))
        req = VideoRequest(prompt="packing probe", width=768, height=512, num_frames=121,
                           fps=24, steps=2, seed=0)
        label = "LTX-Video architecture (random weights), T5-XXL, bf16"
    meter.loaded()
    meter.run(f"{req.width}x{req.height}, {req.num_frames} frames, {req.steps} steps + VAE "
              "decode (tiled on GPU)", lambda: model.generate(req), typical=True)
    return meter.result(model=label)


def worker_vision(ns: argparse.Namespace, device: str) -> dict[str, Any]:
    """Image analysis: toy = tiny-blip through the product's VisionLanguageModel (caption +
    VQA); full = BLIP base's architecture (ViT-B/16 at 384 px + BERT-base text decoder, the
    caption and the VQA model, as `blip-base` deploys them) from configs with random weights,
    fp16 on a GPU: a caption and an answer per image."""
    import numpy as np
    import torch

    meter = Meter(device)
    image = np.random.default_rng(0).integers(0, 255, (384, 384, 3), dtype=np.uint8)
    if ns.toy:
        from models.vision import VisionLanguageModel

        model = VisionLanguageModel.from_name("tiny-blip", device=device)
        meter.loaded()
        meter.run("caption + answer one 384x384 image", lambda: model.run(
            image, question="what is in the picture?"), typical=True)
        return meter.result(model="tiny-blip (toy)")
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipForQuestionAnswering

    dtype = torch.float16 if meter.cuda else torch.float32
    torch.manual_seed(0)
    config = BlipConfig()  # the base sizes: ViT-B/16 (384 px) + BERT-base text model
    caption = BlipForConditionalGeneration(config).to(device, dtype).eval()
    vqa = BlipForQuestionAnswering(config).to(device, dtype).eval()
    meter.loaded()
    pixels = torch.randn(1, 3, 384, 384, device=device, dtype=dtype)
    question = torch.randint(1000, 2000, (1, 12), device=device)

    def both():
        with torch.inference_mode():
            caption.generate(pixel_values=pixels, max_new_tokens=30)
            vqa.generate(pixel_values=pixels, input_ids=question, max_new_tokens=10)

    meter.run("caption + answer one 384x384 image", both, typical=True)
    return meter.result(model="BLIP base architecture (random weights), caption + VQA, "
                        f"{str(dtype).removeprefix('torch.')}")


WORKERS = {"Generator": worker_generator, "Upscaler": worker_upscaler,
           "Matting": worker_matting, "FaceSwap": worker_faceswap, "LLM": worker_llm,
           "Video": worker_video, "Vision": worker_vision}


def run_worker(ns: argparse.Namespace) -> int:
    import torch

    import models  # noqa: F401  (torchvision guard: common/torchvision_compat.py)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if ns.device == "auto" \
        else ns.device
    if not device.startswith("cuda"):
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    ns.fractions = read_fractions(Path(ns.config))
    result = WORKERS[ns.worker](ns, device)
    result["device"] = device
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# --- the check ---------------------------------------------------------------------------------

def spandrel_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("spandrel") is not None


def need_gib(result: dict[str, Any], headroom: float) -> tuple[float, float]:
    """(worst footprint incl. estimated extras, need with headroom)."""
    footprints = [s["footprint_gib"] for s in result.get("scenarios", [])
                  if s.get("footprint_gib") is not None]
    worst = max(footprints) + result.get("extra_gib", 0.0) if footprints else math.nan
    return worst, worst * (1 + headroom)


def check(fractions: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]],
          capacities: dict[str, float], headroom: float) -> list[dict[str, Any]]:
    rows = []
    for name in DEPLOYMENTS:
        if name not in fractions:
            continue
        frac = fractions[name]["num_gpus"]
        res = results.get(name, {})
        scenarios = res.get("scenarios") or [{"scenario": "–", "error": res.get("error")}]
        extra = res.get("extra_gib", 0.0)
        for sc in scenarios:
            foot = sc.get("footprint_gib")
            row: dict[str, Any] = {
                "deployment": name, "num_gpus": frac, "source": fractions[name]["source"],
                "scenario": sc["scenario"], "typical": sc.get("typical", False),
                "method": res.get("method", "failed"),
                "footprint_gib": None if foot is None else foot + extra,
                "peak_allocated_gib": sc.get("peak_allocated_gib"),
                "error": sc.get("error") or res.get("error"), "fits": {},
            }
            for gpu, cap in capacities.items():
                share = frac * cap
                if row["footprint_gib"] is None or row["error"]:
                    verdict = "FAIL" if row["error"] and "memory" in row["error"].lower() \
                        else "n/a"
                else:
                    verdict = "PASS" if share >= row["footprint_gib"] * (1 + headroom) \
                        else "FAIL"
                row["fits"][gpu] = {"share_gib": share, "verdict": verdict}
            rows.append(row)
    return rows


def markdown(report: dict[str, Any]) -> str:
    caps = report["capacities_gib"]
    head = report["headroom"]
    toy = " (TOY: CPU RSS, tiny configs)" if report["toy"] else ""
    lines = [f"### GPU packing — {report['machine']}{toy}",
             "",
             f"A deployment fits when num_gpus x usable GiB >= footprint x {1 + head:.2f}. "
             f"Usable: {', '.join(f'{k} = {v:.1f} GiB' for k, v in caps.items())}.",
             "",
             "| deployment | num_gpus | request | method | footprint GiB | "
             + " | ".join(f"{gpu} share GiB | {gpu}" for gpu in caps) + " |",
             "|---|---|---|---|---|" + "---|---|" * len(caps)]
    for r in report["rows"]:
        foot = "–" if r["footprint_gib"] is None else f"{r['footprint_gib']:.2f}"
        if r["error"]:
            foot += f" ({r['error'][:60]})"
        cells = " | ".join(f"{r['fits'][g]['share_gib']:.1f} | **{r['fits'][g]['verdict']}**"
                           for g in caps)
        lines.append(f"| {r['deployment']} | {r['num_gpus']:g} | {r['scenario']}"
                     f"{' (typical)' if r['typical'] else ''} | {r['method']} | {foot} | "
                     f"{cells} |")
    total = sum(f["num_gpus"] for f in report["fractions"].values())
    lines += ["", f"Sum of fractions on one GPU: {total:g} (must be <= 1): "
              f"**{'PASS' if total <= 1 + 1e-9 else 'FAIL'}**."]
    for name, res in report["results"].items():
        bits = [res.get("model", "")]
        if res.get("weights_gib") is not None:
            bits.append(f"weights {res['weights_gib']:.2f} GiB")
        if res.get("context_gib") is not None:
            bits.append(f"CUDA context {res['context_gib']:.2f} GiB")
        if res.get("method_note"):
            bits.append(res["method_note"])
        if res.get("error"):
            bits.append(f"error: {res['error']}")
        lines.append(f"- {name}: " + "; ".join(b for b in bits if b))
    return "\n".join(lines)


def spawn(name: str, ns: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
           "--config", ns.config, "--device", ns.device, "--gen-steps", str(ns.gen_steps)]
    if ns.toy:
        cmd.append("--toy")
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ns.worker_timeout,
                              cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {ns.worker_timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result["worker_s"] = time.perf_counter() - started
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exited {proc.returncode}: {' / '.join(tail)[-300:]}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--toy", action="store_true", help="tiny configs; CPU RSS instead of GPU")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    ap.add_argument("--config", default=str(REPO / "serve_config.yaml"))
    ap.add_argument("--only", default=",".join(DEPLOYMENTS),
                    help=f"comma-separated, of {', '.join(DEPLOYMENTS)}")
    ap.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                    help="fraction added to each footprint (default 0.10)")
    ap.add_argument("--gen-steps", type=int, default=2,
                    help="Generator denoising steps (memory does not depend on them)")
    ap.add_argument("--worker-timeout", type=float, default=400.0)
    ap.add_argument("--out", default=None,
                    help="JSON (default bench/results/gpu_packing[-toy].json)")
    ap.add_argument("--worker", choices=DEPLOYMENTS, help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.worker:
        return run_worker(ns)
    only = [d.strip() for d in ns.only.split(",") if d.strip()]
    for d in only:
        if d not in DEPLOYMENTS:
            ap.error(f"--only must be among {', '.join(DEPLOYMENTS)}, got {d!r}")
    if ns.headroom < 0:
        ap.error("--headroom must be >= 0")

    import torch

    cuda = torch.cuda.is_available() and ns.device != "cpu"
    if not cuda and not ns.toy:
        print("error: no CUDA device: the packing check measures GPU memory. Run with --toy to "
              "check this script on CPU (tiny configs, RSS instead of GPU memory), or on a "
              "CUDA machine without it.", file=sys.stderr)
        return 2
    # No CUDA context in this process (each worker must be alone on the GPU): the workers
    # report the GPU's name and size.
    capacities = dict(GPU_CAPACITY_GIB)
    machine = f"{platform.node()} ({os.cpu_count()} cores), torch {torch.__version__}"
    fractions = read_fractions(Path(ns.config))
    results: dict[str, dict[str, Any]] = {}
    for name in only:
        if name == "Upscaler" and not spandrel_available():
            results[name] = {"error": "spandrel is not installed (carry its wheel)"}
            continue
        print(f"# {name} ...", flush=True)
        results[name] = spawn(name, ns)
        if results[name].get("error"):
            print(f"  {results[name]['error']}", flush=True)
    gpu = next((r["gpu"] for r in results.values() if r.get("gpu")), None)
    if gpu:
        capacities[f"this GPU ({gpu['name']})"] = gpu["total_gib"]
        machine = f"{gpu['name']}, " + machine
    machine += f", {time.strftime('%Y-%m-%d')}"
    rows = check({k: v for k, v in fractions.items() if k in only}, results, capacities,
                 ns.headroom)
    report = {"script": "bench/gpu_packing.py", "toy": ns.toy, "machine": machine,
              "headroom": ns.headroom, "capacities_gib": capacities,
              "fractions": {k: {"num_gpus": v["num_gpus"], "source": v["source"]}
                            for k, v in fractions.items()},
              "results": results, "rows": rows}
    out = Path(ns.out) if ns.out else REPO / "bench" / "results" / (
        f"gpu_packing{'-toy' if ns.toy else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print()
    print(markdown(report))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
