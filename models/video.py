"""Video family on diffusers: LTX-Video text-to-video and image-to-video on one set of weights.

`LTXPipeline` (text → video) and `LTXImageToVideoPipeline` (first frame + text → video) share
their modules, so a replica holds one copy of the weights. GPU: bf16 (fp16 where bf16 is not
supported) with PyTorch SDPA attention (diffusers' default processor for LTX) and VAE
tiling/slicing so decoding 121 frames of 768x512 stays within a bounded amount of memory;
CPU: fp32.

Also here: the frame → file encoding (H.264 MP4 yuv420p through imageio + imageio-ffmpeg, whose
wheel ships the ffmpeg binary), the poster frame and an animated preview, and the tiny seeded
LTX-architecture model of the zoo (`build_tiny_ltx`). torch/diffusers/imageio are imported
lazily: the ingress imports the request type and `check_inputs` without them.
"""

from __future__ import annotations

import io
import logging
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError
from models import zoo
from models.base import (
    LoadedInfo,
    ModelFamily,
    check_image,
    check_pipeline_location,
    torch_device_dtype,
)
from models.registry import ModelSpec, VideoLimits, resolve

logger = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 20.0
CAMERA_MOVES = {
    # applied as prompt conditioning (LTX has no camera control input): the phrase is appended
    "static": "static camera, no camera movement",
    "pan-left": "the camera pans slowly to the left",
    "pan-right": "the camera pans slowly to the right",
    "tilt-up": "the camera tilts up",
    "tilt-down": "the camera tilts down",
    "zoom-in": "the camera slowly zooms in",
    "zoom-out": "the camera slowly zooms out",
    "dolly-in": "dolly shot, the camera moves forward towards the subject",
    "dolly-out": "dolly shot, the camera moves backward away from the subject",
}


@dataclass
class VideoRequest:
    """One clip. `image` (HxWx3 uint8): image-to-video from that first frame."""

    prompt: str
    negative_prompt: str | None = None
    width: int = 768
    height: int = 512
    num_frames: int = 121
    fps: int = 24
    steps: int = 30
    guidance_scale: float = 3.0
    seed: int | None = None
    image: np.ndarray | None = None

    @property
    def mode(self) -> str:
        return "image2video" if self.image is not None else "text2video"

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


@dataclass
class VideoResult:
    frames: np.ndarray  # (num_frames, height, width, 3) uint8
    seed: int
    fps: int
    model: str
    timings: dict[str, float] = field(default_factory=dict)


class VideoCancelled(RuntimeError):
    """The caller went away (or cancelled the job): denoising stopped at the next step."""

    def __init__(self, message: str, *, step: int = 0, total: int = 0):
        super().__init__(message)
        self.step = step
        self.total = total


def frames_for(seconds: float, fps: int, *, multiple: int = 8) -> int:
    """The frame count of the form multiple*k+1 nearest to `seconds` at `fps` (at least
    multiple+1)."""
    k = max(1, round((seconds * fps - 1) / multiple))
    return multiple * k + 1


def condition_prompt(prompt: str, *, camera: str | None = None,
                     motion: float | None = None) -> str:
    """`camera` and `motion` as prompt conditioning: LTX has no camera or motion input, so a
    phrase describing them is appended to the prompt (documented as such in README.md)."""
    parts = [prompt.strip()]
    if camera is not None:
        if camera not in CAMERA_MOVES:
            raise InputError(f"camera must be one of {', '.join(CAMERA_MOVES)}, got {camera!r}",
                             param="camera")
        parts.append(CAMERA_MOVES[camera])
    if motion is not None:
        if not 0.0 <= motion <= 1.0:
            raise InputError(f"motion must be between 0 and 1, got {motion}", param="motion")
        parts.append("almost still, subtle motion" if motion < 0.25 else
                     "gentle motion" if motion < 0.5 else
                     "lively motion" if motion < 0.75 else "fast, dynamic motion")
    return ", ".join(parts)


def check_inputs(req: VideoRequest, limits: VideoLimits) -> None:
    """Raise `InputError` (a `ValueError`) naming the field (as `param` and in the message) and
    the allowed range (diffusers-style)."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise InputError("prompt must be a non-empty string", param="prompt")
    for fname in ("width", "height"):
        value = getattr(req, fname)
        if not isinstance(value, int) or not limits.min_side <= value <= limits.max_side \
                or value % limits.multiple:
            raise InputError(f"{fname} must be a multiple of {limits.multiple} between "
                             f"{limits.min_side} and {limits.max_side}, got {value}",
                             param=fname)
    m = limits.frame_multiple
    if not isinstance(req.num_frames, int) or req.num_frames < m + 1 \
            or (req.num_frames - 1) % m or req.num_frames > limits.max_frames:
        raise InputError(f"num_frames must be of the form {m}k+1 (e.g. {m + 1}, {2 * m + 1}, "
                         f"121) between {m + 1} and {limits.max_frames}, got {req.num_frames}",
                         param="num_frames")
    if not isinstance(req.fps, int) or not limits.min_fps <= req.fps <= limits.max_fps:
        raise InputError(f"fps must be between {limits.min_fps} and {limits.max_fps}, "
                         f"got {req.fps}", param="fps")
    if (req.num_frames - 1) / req.fps > limits.max_seconds + 1e-9:  # 8k+1: one frame's slack
        raise InputError(f"seconds must be at most {limits.max_seconds:g} for this model, got "
                         f"{req.seconds:g} ({req.num_frames} frames at {req.fps} fps)",
                         param="seconds")
    if not isinstance(req.steps, int) or not 1 <= req.steps <= limits.max_steps:
        raise InputError(f"steps must be between 1 and {limits.max_steps}, got {req.steps}",
                         param="steps")
    if not 0.0 <= req.guidance_scale <= MAX_GUIDANCE:
        raise InputError(f"guidance_scale must be between 0 and {MAX_GUIDANCE}, "
                         f"got {req.guidance_scale}", param="guidance_scale")
    if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
        raise InputError(f"seed must be between 0 and {MAX_SEED}, got {req.seed}", param="seed")
    if req.image is not None:
        check_image(req.image, name="input_reference")


class VideoModel(ModelFamily):
    family = "video"

    def __init__(self, pipe: Any, *, info: LoadedInfo, limits: VideoLimits):
        self._pipes: dict[str, Any] = {"text2video": pipe}
        self._info = info
        self.limits = limits

    @classmethod
    def load(cls, source: str, *, name: str, device: str | None = None,
             limits: VideoLimits | None = None, tiny: bool = False,
             fallback_reason: str | None = None) -> VideoModel:
        from diffusers import LTXPipeline

        device, dtype = torch_device_dtype(device, bf16=True)
        started = time.perf_counter()
        pipe = LTXPipeline.from_pretrained(source, dtype=dtype).to(device)
        if device.startswith("cuda"):
            # bounded decode memory: the VAE decodes tiles (space) and one video at a time
            pipe.vae.enable_tiling()
            pipe.vae.enable_slicing()
        pipe.set_progress_bar_config(disable=True)
        logger.info("loaded %s from %s on %s/%s in %.2fs", name, source, device, dtype,
                    time.perf_counter() - started)
        info = LoadedInfo(name=name, family=cls.family, source=source, tiny=tiny, device=device,
                          dtype=str(dtype).removeprefix("torch."),
                          fallback_reason=fallback_reason)
        return cls(pipe, info=info, limits=limits or VideoLimits(256, 1280, 768, 512))

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, zoo_dir: str | None = None,
                  allow_fallback: bool = False, device: str | None = None) -> VideoModel:
        """Resolve a registry spec to weights (tiny zoo, local folder or hub id) and load."""
        resolved = resolve(spec, zoo_dir=zoo_dir, allow_fallback=allow_fallback,
                           load_check=check_pipeline_location)
        return cls.load(resolved.location, name=resolved.spec.name, device=device,
                        limits=resolved.spec.limits, tiny=resolved.spec.tiny,
                        fallback_reason=resolved.fallback_reason)

    @property
    def info(self) -> LoadedInfo:
        return self._info

    def _pipe(self, mode: str) -> Any:
        if mode not in self._pipes:
            from diffusers import LTXImageToVideoPipeline

            pipe = LTXImageToVideoPipeline.from_pipe(self._pipes["text2video"])  # same modules
            pipe.set_progress_bar_config(disable=True)
            self._pipes[mode] = pipe
        return self._pipes[mode]

    def run(self, request: VideoRequest, **kwargs: Any) -> VideoResult:
        return self.generate(request, **kwargs)

    def generate(self, req: VideoRequest, *,
                 on_step: Callable[[int, int], None] | None = None,
                 cancel: Any = None) -> VideoResult:
        """One clip. `on_step(step, total)` after each denoising step; `cancel` (anything with
        ``is_set()``): once set, denoising stops at the next step and `VideoCancelled` is
        raised."""
        import torch
        from PIL import Image

        check_inputs(req, self.limits)
        seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED)
        device = self._info.device
        generator = torch.Generator("cpu" if device == "mps" else device).manual_seed(seed)
        kwargs: dict[str, Any] = dict(
            prompt=req.prompt, negative_prompt=req.negative_prompt or "",
            width=req.width, height=req.height, num_frames=req.num_frames,
            frame_rate=req.fps, num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale, generator=generator, output_type="np")
        if req.image is not None:
            image = Image.fromarray(req.image[..., :3])
            if image.size != (req.width, req.height):
                image = image.resize((req.width, req.height), Image.Resampling.LANCZOS)
            kwargs["image"] = image
        stopped: list[int] = []
        if on_step is not None or cancel is not None:
            def _callback(pipe, step, timestep, callback_kwargs):
                if cancel is not None and cancel.is_set():
                    pipe._interrupt = True  # diffusers skips the remaining steps
                    stopped.append(step + 1)
                    return callback_kwargs
                if on_step is not None:
                    on_step(step + 1, req.steps)
                return callback_kwargs

            kwargs["callback_on_step_end"] = _callback
        started = time.perf_counter()
        with torch.inference_mode():
            out = self._pipe(req.mode)(**kwargs).frames
        elapsed = time.perf_counter() - started
        if stopped or (cancel is not None and cancel.is_set()):
            step = stopped[0] if stopped else req.steps
            raise VideoCancelled(f"video cancelled after {step} of {req.steps} steps",
                                 step=step, total=req.steps)
        frames = (np.clip(np.asarray(out[0], dtype=np.float32), 0, 1) * 255).round()
        return VideoResult(frames=frames.astype(np.uint8), seed=seed, fps=req.fps,
                           model=self._info.name, timings={"inference_s": elapsed})


# -- encoding ------------------------------------------------------------------------------

@dataclass
class EncodedVideo:
    """A clip as files: H.264 MP4 (yuv420p) + a PNG poster + an optional animated preview."""

    mp4: bytes
    poster: bytes
    preview: bytes | None
    preview_format: str | None
    width: int
    height: int
    fps: int
    frames: int
    codec: str = "h264"
    pixel_format: str = "yuv420p"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


def encode_video(frames: np.ndarray, fps: int, *, preview: str | None = None,
                 preview_side: int = 256, quality: int = 7) -> EncodedVideo:
    """Frames (N, H, W, 3) uint8 → MP4 (libx264, yuv420p, +faststart so a browser starts
    playing before the whole file is in), a PNG poster (the first frame) and, with `preview`
    ("webp" or "gif"), an animated preview at most `preview_side` pixels a side."""
    import imageio.v2 as iio
    from PIL import Image

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    started = time.perf_counter()
    n, height, width = frames.shape[:3]
    with tempfile.TemporaryDirectory(prefix="photostudio-video-") as tmp:
        path = Path(tmp) / "clip.mp4"
        # yuv420p needs even sides: ours are multiples of 32. macro_block_size=16 would pad
        # otherwise; 1 keeps the exact size (asserted by the tests).
        writer = iio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", quality=quality, macro_block_size=1,
                                output_params=["-movflags", "+faststart"])
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
        mp4 = path.read_bytes()
    encoded_s = time.perf_counter() - started
    buf = io.BytesIO()
    Image.fromarray(frames[0]).save(buf, format="PNG")
    poster = buf.getvalue()
    anim = None
    if preview is not None:
        if preview not in ("webp", "gif"):
            raise InputError(f"preview must be webp or gif, got {preview!r}", param="preview")
        scale = min(1.0, preview_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        images = [Image.fromarray(f).resize(size) for f in frames]
        buf = io.BytesIO()
        images[0].save(buf, format=preview.upper(), save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0)
        anim = buf.getvalue()
    return EncodedVideo(mp4=mp4, poster=poster, preview=anim, preview_format=preview,
                        width=width, height=height, fps=fps, frames=n,
                        timings={"encode_s": encoded_s,
                                 "poster_preview_s": time.perf_counter() - started - encoded_s})


def decode_video(data: bytes) -> tuple[np.ndarray, float]:
    """MP4 bytes → (frames (N, H, W, 3) uint8, fps). Used to upscale a stored video."""
    import imageio.v2 as iio

    with tempfile.TemporaryDirectory(prefix="photostudio-video-") as tmp:
        path = Path(tmp) / "in.mp4"
        path.write_bytes(data)
        reader = iio.get_reader(path, format="FFMPEG")
        try:
            fps = float(reader.get_meta_data().get("fps") or 24)
            frames = np.stack([np.asarray(f)[..., :3] for f in reader])
        finally:
            reader.close()
    return frames, fps


# -- the tiny model of the zoo -----------------------------------------------------------------

def _tiny_t5_tokenizer():
    """A T5 (unigram) tokenizer built in code: specials, single characters and a few words, in
    both the word-initial (▁) and inner forms. transformers 5 takes the (piece, score) list."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    chars += list(".,!?'-:;()&/")
    pieces += [(ch, -5.0) for ch in chars] + [("▁" + ch, -4.0) for ch in chars]
    for word in ("the", "a", "of", "and", "in", "cat", "dog", "video", "camera", "slowly"):
        pieces.append(("▁" + word, -1.0))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=128)


def build_tiny_ltx(path: Path) -> None:
    """Tiny LTX-Video-architecture pipeline (transformer, causal video VAE, T5 encoder,
    tokenizer, flow-matching scheduler), seeded; saved like real weights. Sizes in the spirit
    of diffusers' own LTX pipeline tests: one transformer layer, 8 latent channels, a VAE with
    4x spatial and 4x temporal compression (real LTX: 32x and 8x; our limits keep the real
    8k+1 / multiple-of-32 rules, which satisfy both)."""
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(zoo.SEED)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
        attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32)
    torch.manual_seed(zoo.SEED)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8,
        block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False)
    tokenizer = _tiny_t5_tokenizer()
    torch.manual_seed(zoo.SEED)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler()
    pipe = LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                       tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(path, safe_serialization=True)
