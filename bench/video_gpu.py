"""LTX-Video on one GPU: seconds per clip of 768x512, 121 frames (5.04 s at 24 fps), bf16.

The LTX-Video architecture is built from its configs (diffusers' defaults for
`LTXVideoTransformer3DModel` and `AutoencoderKLLTXVideo` are the 2B / 0.9 release's shapes;
T5-v1.1-XXL's config for the text encoder) with random weights: no download, the same FLOPs and
memory as the real weights. It runs through the product's own `models.video.VideoModel`
(bf16, SDPA, VAE tiling and slicing), then `encode_video` (H.264 MP4), and prints seconds per
clip next to the LTX-Video paper's claim (5 s of 768x512 video rendered faster than real time
on an H100, i.e. < 5.04 s).

    python bench/video_gpu.py [--steps 50] [--frames 121] [--repeat 3] [--small-text-encoder]

Needs a CUDA GPU with ~30 GB free (T5-XXL bf16 is ~9.5 GB; --small-text-encoder uses a 2-layer
T5 of the same width instead, to time the video part alone). Imports neither Ray nor graphs/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402,F401  (torchvision guard: common/torchvision_compat.py)


def build(path: Path, *, small_text_encoder: bool) -> None:
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from models.video import _tiny_t5_tokenizer

    torch.manual_seed(0)
    with torch.device("cuda"):  # random init on the GPU: seconds, not minutes
        transformer = LTXVideoTransformer3DModel().to(torch.bfloat16)
        vae = AutoencoderKLLTXVideo().to(torch.bfloat16)
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240,
            num_layers=2 if small_text_encoder else 24, num_heads=64,
            feed_forward_proj="gated-gelu", is_encoder_decoder=False)).to(torch.bfloat16)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=False, base_shift=0.95, max_shift=2.05, shift=1.0)
    LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                tokenizer=_tiny_t5_tokenizer(), transformer=transformer).save_pretrained(
        path, safe_serialization=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small-text-encoder", action="store_true")
    ns = ap.parse_args()

    import torch

    from models.registry import VideoLimits
    from models.video import VideoModel, VideoRequest, encode_video

    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    with tempfile.TemporaryDirectory(prefix="ltx-bench-") as tmp:
        started = time.perf_counter()
        build(Path(tmp), small_text_encoder=ns.small_text_encoder)
        built_s = time.perf_counter() - started
        model = VideoModel.load(tmp, name="ltx-video (random weights)", device="cuda",
                                limits=VideoLimits(256, 1280, 768, 512))
    req = VideoRequest(prompt="a corgi running on a beach at sunset, cinematic",
                       width=ns.width, height=ns.height, num_frames=ns.frames, fps=ns.fps,
                       steps=ns.steps, seed=0)
    clip_s = (ns.frames - 1) / ns.fps
    print(f"# LTX-Video architecture, random weights, {torch.cuda.get_device_name()}, "
          f"{model.info.dtype}; built in {built_s:.0f}s")
    print(f"{ns.width}x{ns.height}, {ns.frames} frames ({clip_s:.2f} s at {ns.fps} fps), "
          f"{ns.steps} steps, VAE tiling+slicing, SDPA")
    model.generate(VideoRequest(**{**vars(req), "steps": 2}))  # warm-up (kernels, allocator)
    torch.cuda.reset_peak_memory_stats()
    print("| run | generate s | encode s | total s | x real time | peak GiB |")
    print("|---|---|---|---|---|---|")
    totals = []
    for run in range(ns.repeat):
        torch.cuda.synchronize()
        t = time.perf_counter()
        result = model.generate(req)
        torch.cuda.synchronize()
        gen_s = time.perf_counter() - t
        encoded = encode_video(result.frames, ns.fps)
        enc_s = encoded.timings["encode_s"]
        totals.append(gen_s + enc_s)
        print(f"| {run + 1} | {gen_s:.2f} | {enc_s:.2f} | {gen_s + enc_s:.2f} | "
              f"{clip_s / (gen_s + enc_s):.2f} | "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} |", flush=True)
    best = min(totals)
    print(f"\nbest {best:.2f} s per {clip_s:.2f} s clip: "
          f"{'faster' if best < clip_s else 'slower'} than real time "
          f"(paper: faster than real time on an H100 with its distilled/optimised settings; "
          f"{ns.steps} steps here)")


if __name__ == "__main__":
    main()
