"""Pixel statistics of an image, for image analysis: dominant colours, transparency, and the
plain-word names tags use. Pure numpy (no model): it runs in the ingress's image pool.

Dominant colours: the opaque pixels (alpha > 0) are binned on a 16-level grid per channel
(4,096 bins); the `k` fullest bins are reported with their pixels' mean colour and their share
of the opaque pixels. An image made of flat colours therefore gets its exact colours and exact
shares (what the tests check on synthetic images); a photo gets the centres of its largest
colour groups. Large images are sampled on a regular grid to at most `MAX_SAMPLES` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.base import check_image

MAX_SAMPLES = 1 << 20
LEVELS = 16  # per channel
MIN_SHARE = 0.01

# Names for tags and descriptions: the nearest of these (RGB distance) names a colour.
COLOUR_NAMES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)), ("white", (255, 255, 255)), ("gray", (128, 128, 128)),
    ("red", (220, 30, 30)), ("orange", (245, 140, 20)), ("yellow", (245, 225, 40)),
    ("green", (40, 170, 60)), ("cyan", (40, 200, 220)), ("blue", (30, 70, 210)),
    ("purple", (130, 50, 170)), ("pink", (240, 130, 180)), ("brown", (130, 80, 40)),
)


@dataclass(frozen=True)
class Colour:
    rgb: tuple[int, int, int]
    share: float  # of the opaque pixels, 0..1

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)

    @property
    def name(self) -> str:
        return colour_name(self.rgb)


@dataclass(frozen=True)
class PixelStats:
    width: int
    height: int
    has_alpha: bool  # an alpha channel that is not fully opaque somewhere
    transparent_share: float  # pixels with alpha < 255
    colours: list[Colour]


def colour_name(rgb: tuple[int, int, int]) -> str:
    value = np.asarray(rgb, dtype=np.float64)
    return min(COLOUR_NAMES, key=lambda item: float(np.sum((value - item[1]) ** 2)))[0]


def pixel_stats(image: np.ndarray, *, k: int = 5) -> PixelStats:
    """Dominant colours and transparency of an HxWx3 / HxWx4 uint8 image."""
    check_image(image)
    if not isinstance(k, int) or not 1 <= k <= 16:
        raise ValueError(f"k must be an integer from 1 to 16, got {k!r}")
    height, width = image.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(height * width / MAX_SAMPLES))))
    sample = image[::step, ::step]
    rgb = sample[..., :3].reshape(-1, 3)
    if image.shape[2] == 4:
        alpha = sample[..., 3].reshape(-1)
        transparent = float(np.mean(alpha < 255))
        rgb = rgb[alpha > 0]
    else:
        transparent = 0.0
    colours: list[Colour] = []
    if len(rgb):
        bins = (rgb // (256 // LEVELS)).astype(np.int64)
        index = (bins[:, 0] * LEVELS + bins[:, 1]) * LEVELS + bins[:, 2]
        counts = np.bincount(index, minlength=LEVELS ** 3)
        sums = np.stack([np.bincount(index, weights=rgb[:, c], minlength=LEVELS ** 3)
                         for c in range(3)], axis=1)
        total = len(rgb)
        for b in np.argsort(-counts, kind="stable")[:k]:
            share = counts[b] / total
            if counts[b] == 0 or share < MIN_SHARE:
                break
            mean = tuple(int(v) for v in np.rint(sums[b] / counts[b]))
            colours.append(Colour(rgb=mean, share=round(float(share), 4)))
    return PixelStats(width=width, height=height, has_alpha=transparent > 0,
                      transparent_share=round(transparent, 4), colours=colours)
