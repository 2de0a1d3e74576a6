"""Super-resolution family on spandrel: ESRGAN / Real-ESRGAN and the other SR architectures
spandrel detects from a bare state-dict file (``.pth``, ``.safetensors``).

Weights: one model file, or a folder of them (one per native scale, e.g. the tiny zoo's
``tiny-esrgan-x2.pth`` + ``tiny-esrgan-x4.pth``, or ``RealESRGAN_x2plus.pth`` +
``RealESRGAN_x4plus.pth``). A requested scale the weights don't have natively is served by a
larger native model followed by an exact box (area) downscale, as Real-ESRGAN's ``--outscale``
does: x2 from an x4 network averages each 2x2 block of the x4 output.

Large inputs are processed in overlapping tiles (Real-ESRGAN's ``tile``/``tile_pad`` scheme):
each tile is run with ``tile_overlap`` pixels of context on every side and only its centre is
kept, so model memory is bounded by the tile size, and the output matches the untiled output
wherever the overlap covers the network's receptive field. RGBA: the RGB channels go through
the network, the alpha channel is resized with bicubic interpolation (a matte is smooth, and
SR networks are trained on photos, not on masks).

GPU: fp16 when the architecture supports it; CPU: fp32. Torch and spandrel are imported
lazily, so the request types and `check_inputs` can be used without pulling in torch.

spandrel on CPU torch: spandrel imports torchvision (for two architectures we don't use), and
the PyPI torchvision wheels are CUDA builds whose ``_C`` extension links ``libtorch_cuda.so``.
With the CPU torch build, ``_C`` doesn't load and ``import torchvision`` then crashes in its own
``_meta_registrations`` ("operator torchvision::nms does not exist", pytorch/vision#9085).
`common/torchvision_compat.py` handles that for every family (transformers breaks the same way).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.errors import InputError
from common.torchvision_compat import import_torchvision
from models.base import LoadedInfo, ModelFamily, check_image
from models.registry import ModelSpec, resolve
from models.zoo import SEED

logger = logging.getLogger(__name__)

ALLOWED_SCALES = (2, 4)
DEFAULT_TILE = 256
DEFAULT_TILE_OVERLAP = 32
MIN_TILE = 16
MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")

# Tiny zoo model: Real-ESRGAN's RRDBNet layout, a few features and one block (seeded).
TINY_FEATURES = 8
TINY_BLOCKS = 1
TINY_GROWTH = 32  # ESRGAN's growth channels; spandrel's RRDBNet fixes them at 32


@dataclass(frozen=True)
class UpscaleLimits:
    """Input size limits (pixels) of the upscaler."""

    min_side: int = 1
    max_side: int = 4096
    max_output_pixels: int = 8192 * 8192


@dataclass
class UpscaleRequest:
    """One image (HxWx3 RGB or HxWx4 RGBA uint8) and the factor to enlarge it by."""

    image: np.ndarray
    scale: int = 4


@dataclass
class UpscaleResult:
    image: np.ndarray  # (H*scale, W*scale, C) uint8, C as in the input
    scale: int
    model: str = ""
    model_scale: int = 0  # native scale of the network that ran (4 for x2 served by x4)
    tiles: int = 1
    timings: dict[str, float] = field(default_factory=dict)


def check_inputs(
    image: Any,
    scale: Any,
    *,
    limits: UpscaleLimits | None = None,
    scales: tuple[int, ...] = ALLOWED_SCALES,
) -> None:
    """Raise `InputError` (a `ValueError`) naming the field (`param`) and what is allowed."""
    limits = limits or UpscaleLimits()
    allowed = ", ".join(str(s) for s in scales)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale not in scales:
        raise InputError(f"scale must be one of {allowed}, got {scale!r}", param="scale")
    check_image(image, min_side=limits.min_side, max_side=limits.max_side)
    h, w = image.shape[:2]
    if h * w * scale * scale > limits.max_output_pixels:
        raise InputError(
            f"image is too large to upscale x{scale}: output would be {w * scale}x{h * scale} "
            f"pixels, at most {limits.max_output_pixels} pixels are allowed; send a smaller "
            "image or a smaller scale", param="image",
        )


def check_tiling(tile: Any, tile_overlap: Any) -> None:
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int)
                             or tile < MIN_TILE):
        raise ValueError(f"tile must be None (no tiling) or an int >= {MIN_TILE}, got {tile!r}")
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or tile_overlap < 0:
        raise ValueError(f"tile_overlap must be an int >= 0, got {tile_overlap!r}")


# -- spandrel import ------------------------------------------------------------------------

def import_spandrel():
    """`import spandrel`, with torchvision's CPU-torch import crash handled
    (common/torchvision_compat.py)."""
    try:
        import_torchvision()
    except ModuleNotFoundError:
        pass  # spandrel raises its own, clearer error below
    import spandrel

    return spandrel


# -- tiny model -----------------------------------------------------------------------------

def rrdbnet_state_dict(*, in_ch: int = 3, num_feat: int = TINY_FEATURES,
                      num_block: int = TINY_BLOCKS, seed: int = 0) -> dict[str, Any]:
    """A Real-ESRGAN RRDBNet state dict (basicsr key names) with seeded random weights.

    Keys and shapes are those of ``RealESRGAN_x4plus.pth`` (``in_ch=3``) and
    ``RealESRGAN_x2plus.pth`` (``in_ch=12``: the x2 model pixel-unshuffles its input by 2 and
    runs the x4 body); the released files have ``num_feat=64, num_block=23``.
    Initialisation follows basicsr: default conv init, RDB convs scaled by 0.1 (so the
    residual trunk starts close to identity); the last bias is shifted by 0.5 so the random
    network's outputs sit mid-range instead of being clamped to black.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)

    def conv(out_ch: int, in_ch_: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        fan_in = in_ch_ * 9
        bound = 1.0 / math.sqrt(fan_in)  # torch's Conv2d default (kaiming_uniform, a=sqrt(5))
        weight = (torch.rand(out_ch, in_ch_, 3, 3, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(out_ch, generator=generator) * 2 - 1) * bound
        return weight * scale, bias * scale

    nf, gc = num_feat, TINY_GROWTH
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {"conv_first": conv(nf, in_ch)}
    for b in range(num_block):
        for r in (1, 2, 3):
            for k in range(1, 6):
                out_ch = gc if k < 5 else nf
                layers[f"body.{b}.rdb{r}.conv{k}"] = conv(out_ch, nf + (k - 1) * gc, 0.1)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layers[name] = conv(nf, nf)
    weight, bias = conv(3, nf)
    layers["conv_last"] = (weight, bias + 0.5)  # centre outputs in [0, 1]: fewer clamped pixels
    state: dict[str, Any] = {}
    for name, (weight, bias) in layers.items():
        state[f"{name}.weight"] = weight.contiguous()
        state[f"{name}.bias"] = bias.contiguous()
    return state


def build_tiny_esrgan(path: Path) -> None:
    """Tiny Real-ESRGAN pair: ``tiny-esrgan-x4.pth`` and ``tiny-esrgan-x2.pth`` (x2plus layout).

    `TINY_FEATURES` features and `TINY_BLOCKS` RRDB block (~0.23 M parameters each), saved
    like the official release files: ``torch.save({"params_ema": state_dict}, ...)``.
    """
    import torch

    path = Path(path)
    for scale, in_ch, seed in ((4, 3, SEED), (2, 12, SEED + 1)):
        state = rrdbnet_state_dict(in_ch=in_ch, seed=seed)
        torch.save({"params_ema": state}, path / f"tiny-esrgan-x{scale}.pth")


# -- the family -----------------------------------------------------------------------------

def _model_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.iterdir()
                       if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
        if files:
            return files
        raise FileNotFoundError(
            f"no model file ({', '.join(MODEL_SUFFIXES)}) in folder {str(source)!r}"
        )
    raise FileNotFoundError(f"upscaler weights not found: {str(source)!r}")


class UpscaleModel(ModelFamily):
    family = "upscale"
    kind = "upscaler"

    def __init__(self, networks: dict[int, Any], *, info: LoadedInfo,
                 limits: UpscaleLimits | None = None):
        self._networks = dict(sorted(networks.items()))  # native scale -> spandrel descriptor
        self._info = info
        self.limits = limits or UpscaleLimits()

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str, *, name: str, device: str | None = None, tiny: bool = False,
             fallback_reason: str | None = None,
             limits: UpscaleLimits | None = None) -> UpscaleModel:
        """Load a model file, or every model file in a folder (one per native scale)."""
        import torch

        spandrel = import_spandrel()
        files = _model_files(Path(source).expanduser())
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loader = spandrel.ModelLoader(device=device)
        started = time.perf_counter()
        networks: dict[int, Any] = {}
        archs: dict[int, str] = {}
        for file in files:
            try:
                net = loader.load_from_file(file)
            except spandrel.UnsupportedModelError as exc:
                raise ValueError(f"{file}: not a model architecture spandrel knows") from exc
            if (not isinstance(net, spandrel.ImageModelDescriptor) or net.purpose != "SR"
                    or net.input_channels != 3 or net.output_channels != 3):
                raise ValueError(
                    f"{file}: a {net.architecture.name} {net.purpose} model with "
                    f"{net.input_channels}->{net.output_channels} channels; need an RGB "
                    "super-resolution model"
                )
            if net.scale not in ALLOWED_SCALES:
                raise ValueError(
                    f"{file}: native scale x{net.scale}; supported native scales are "
                    f"{', '.join(str(s) for s in ALLOWED_SCALES)}"
                )
            if net.scale in networks:
                raise ValueError(f"{source}: two x{net.scale} models; keep one per scale")
            if device.startswith("cuda") and net.supports_half:
                net.half()
            net.eval()
            networks[net.scale] = net
            archs[net.scale] = f"{net.architecture.name} ({', '.join(net.tags)}) {file.name}"
        dtype = next(iter(networks.values())).dtype
        logger.info("loaded upscaler %s from %s on %s/%s in %.2fs: %s", name, source, device,
                    dtype, time.perf_counter() - started, archs)
        info = LoadedInfo(
            name=name, family=cls.family, source=str(source), tiny=tiny, device=device,
            dtype=str(dtype).removeprefix("torch."), fallback_reason=fallback_reason,
            extra={"networks": {f"x{s}": a for s, a in sorted(archs.items())}},
        )
        return cls(networks, info=info, limits=limits)

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, zoo_dir: str | None = None,
                  allow_fallback: bool = False, device: str | None = None,
                  **kwargs: Any) -> UpscaleModel:
        """Resolve a catalogue spec (tiny zoo model, or a .pth/.safetensors file or folder of
        them) and load it; the registry's fallback policy applies (`models.registry.resolve`).
        """
        resolved = resolve(spec, zoo_dir=zoo_dir, allow_fallback=allow_fallback,
                           load_check=lambda location: _model_files(Path(location)))
        return cls.load(resolved.location, name=resolved.spec.name, tiny=resolved.spec.tiny,
                        device=device, fallback_reason=resolved.fallback_reason, **kwargs)

    @property
    def info(self) -> LoadedInfo:
        return self._info

    @property
    def scales(self) -> tuple[int, ...]:
        """Scales this model serves: native ones, and smaller ones by downscaling."""
        return tuple(s for s in ALLOWED_SCALES
                     if any(n >= s and n % s == 0 for n in self._networks))

    def _network_for(self, scale: int) -> tuple[int, Any]:
        native = min(n for n in self._networks if n >= scale and n % scale == 0)
        return native, self._networks[native]

    # -- inference ------------------------------------------------------------------------
    def run(self, image: np.ndarray, **kwargs: Any) -> UpscaleResult:
        return self.upscale(image, **kwargs)

    def upscale(self, image: np.ndarray, *, scale: int = 4, tile: int | None = DEFAULT_TILE,
                tile_overlap: int = DEFAULT_TILE_OVERLAP) -> UpscaleResult:
        """Enlarge `image` (HxWx3 RGB or HxWx4 RGBA uint8) exactly `scale` times.

        `tile`: side of the square input tiles (None: the whole image at once), rounded up to
        the network's alignment (4); `tile_overlap`: context pixels added on each side of a
        tile (also rounded up to 4). Model memory grows with `tile`, not with the image.
        """
        check_inputs(image, scale, limits=self.limits, scales=self.scales)
        check_tiling(tile, tile_overlap)
        scale = int(scale)
        started = time.perf_counter()
        native, net = self._network_for(scale)
        rgb = np.ascontiguousarray(image[..., :3])
        out, tiles = self._upscale_rgb(rgb, net, native, scale, tile, tile_overlap)
        if image.shape[2] == 4:
            h, w = image.shape[:2]
            alpha = Image.fromarray(np.ascontiguousarray(image[..., 3]), mode="L")
            alpha = alpha.resize((w * scale, h * scale), Image.Resampling.BICUBIC)
            out = np.dstack([out, np.asarray(alpha)])
        return UpscaleResult(image=out, scale=scale, model=self._info.name, model_scale=native,
                             tiles=tiles, timings={"inference_s": time.perf_counter() - started})

    def _upscale_rgb(self, rgb: np.ndarray, net: Any, native: int, scale: int,
                     tile: int | None, overlap: int) -> tuple[np.ndarray, int]:
        import torch
        import torch.nn.functional as F

        h, w = rgb.shape[:2]
        device, dtype = net.device, net.dtype
        # Tile origins stay on the grid of the network's input alignment (pixel-unshuffle
        # factor, window size), so every tile sees the same pixel grouping as the whole image.
        align = math.lcm(4, net.size_requirements.multiple_of)
        if tile is None:
            tile = max(h, w)
        else:
            tile = -(-tile // align) * align
            overlap = -(-overlap // align) * align
        out = np.empty((h * scale, w * scale, 3), dtype=np.uint8)
        down = native // scale
        count = 0
        with torch.inference_mode():
            for y0 in range(0, h, tile):
                for x0 in range(0, w, tile):
                    y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                    py0, px0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
                    py1, px1 = min(y1 + overlap, h), min(x1 + overlap, w)
                    x = torch.from_numpy(rgb[py0:py1, px0:px1]).to(device)
                    x = x.permute(2, 0, 1).unsqueeze(0).to(dtype).div_(255.0)
                    y = net(x).float()
                    if down > 1:
                        y = F.avg_pool2d(y, down)  # exact area downscale x{native} -> x{scale}
                    oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
                    y = y[0, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
                    y = y.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
                    out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = (
                        y.permute(1, 2, 0).cpu().numpy()
                    )
                    count += 1
        return out, count
