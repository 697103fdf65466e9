"""Colormap-aware images: recover the scalar behind a colour-mapped spectrogram, and colour it back.

Most published micro-Doppler datasets are saved as false-colour images: one intensity per pixel mapped
through a colormap (jet above all). Modelled as three independent channels, such an image asks the first stage
to learn the colormap's curve; modelled as the scalar it encodes, it is a one-channel spectrogram like the
embedded default data.

* :func:`detect_colormap` samples pixels and measures their distance to each known colormap's curve
  (:data:`CANDIDATES`, matplotlib's); the closest one is accepted when its median and mean distances stay
  under :data:`MAX_MEDIAN_ERROR` / :data:`MAX_MEAN_ERROR` (in 0-255 RGB units: JPEG's chroma subsampling moves
  edge pixels well off the curve, so the tail is reported, not judged), it fits :data:`MIN_MARGIN` times
  better than the runner-up, and the pixels cover at least :data:`MIN_SPAN` of the curve (a near-gray photo sits
  on one short stretch of cividis; a spectrogram spans the map).
* :func:`rgb_to_scalar` inverts a colormap by the nearest of its :data:`LUT_SIZE` curve points (a k-d tree
  queried once per distinct colour of the image, so a 256 px image takes milliseconds); :func:`scalar_to_rgb`
  applies it, interpolating linearly between curve points.

The choice and the detection error are logged and recorded in ``data_info.json`` (``"colormap"``); the model
folder's pipeline config keeps the name so generated images are written back in the same colormap.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UserInputError

# Colormaps a spectrogram is commonly saved with (matplotlib names). Gray maps are not listed: a gray image is
# already one channel. MATLAB's parula is not in matplotlib; its images stay three-channel.
CANDIDATES = ("jet", "turbo", "viridis", "plasma", "inferno", "magma", "cividis", "hot")
COLORMAP_CHOICES = ("auto", "none") + CANDIDATES
# Off by default: on the users'-shape data (seed 0, CPU-preset stage 1, 400-step prior) the one-channel scalar
# reconstructed far better (recon. domain FID 2.0 vs 8.0) but the judge recognised the real validation images less
# (0.79 vs 0.95) and the samples much less (gan-test 0.08 vs 0.22, CAS 0.13 vs 0.34) than with RGB.
DEFAULT_COLORMAP = "none"
# Acceptance of a detected colormap: distances of the sampled pixels to the curve, in 0-255 RGB units.
# Measured on 32 images of the users'-shape data (jet, half JPEG q90 with 4:2:0 chroma, half palette PNG):
# median 3.3, mean 8.8, p95 42, the runner-up (plasma) mean 46; uniform noise: mean 77.
MAX_MEDIAN_ERROR = 8.0
MAX_MEAN_ERROR = 16.0
MIN_MARGIN = 3.0
MIN_SPAN = 0.3  # 5th-95th percentile of the pixels' positions along the curve
LUT_SIZE = 256  # curve points: matplotlib's own resolution of these maps (cmap.N)


@dataclass(frozen=True)
class ColormapFit:
    """How well sampled pixels lie on one colormap (distances in 0-255 RGB units)."""

    name: str
    median_error: float
    mean_error: float
    p95_error: float
    num_pixels: int
    span: float = 1.0  # 5th-95th percentile range of the pixels' positions along the curve, in [0, 1]
    runner_up_mean_error: float = float("inf")

    @property
    def accepted(self) -> bool:
        """Whether the pixels lie on this colormap closely enough to be modelled as its scalar."""
        return (self.median_error <= MAX_MEDIAN_ERROR and self.mean_error <= MAX_MEAN_ERROR
                and self.runner_up_mean_error >= MIN_MARGIN * self.mean_error and self.span >= MIN_SPAN)

    def to_dict(self) -> dict:
        """JSON-ready record (``data_info.json``)."""
        return {**asdict(self), "accepted": self.accepted}


def check_colormap_name(name: str) -> str:
    """Return ``name`` if it is ``auto``, ``none`` or a known colormap; else raise a one-line UserInputError."""
    if name not in COLORMAP_CHOICES:
        raise UserInputError(f"--colormap {name!r} is not supported; use one of {', '.join(COLORMAP_CHOICES)}")
    return name


@functools.lru_cache(maxsize=None)
def colormap_lut(name: str) -> np.ndarray:
    """``(LUT_SIZE, 3)`` float32 RGB in [0, 1] of matplotlib colormap ``name`` at evenly spaced scalars."""
    import matplotlib  # local import: only colour data needs it

    cmap = matplotlib.colormaps[name]
    return np.asarray(cmap(np.linspace(0.0, 1.0, LUT_SIZE))[:, :3], dtype=np.float32)


@functools.lru_cache(maxsize=None)
def _curve_tree(name: str):
    """A k-d tree over colormap ``name``'s curve points in 0-255 RGB units."""
    from scipy.spatial import cKDTree

    return cKDTree(colormap_lut(name) * 255.0)


def fit_colormap(pixels: np.ndarray, name: str) -> ColormapFit:
    """Distances of ``pixels`` (``(P, 3)`` uint8 RGB) to colormap ``name``'s curve (nearest curve point)."""
    distance, index = _curve_tree(name).query(pixels.astype(np.float32))  # (P,), (P,)
    low, high = np.percentile(index, [5, 95]) / (LUT_SIZE - 1)
    return ColormapFit(name, float(np.median(distance)), float(distance.mean()), float(np.percentile(distance, 95)),
                       int(len(pixels)), float(high - low))


def detect_colormap(images: list[np.ndarray], max_pixels: int = 100_000, seed: int = 0) -> ColormapFit | None:
    """The known colormap the pixels of ``images`` lie on, or None.

    Args:
        images: ``(H, W, 3)`` uint8 RGB arrays (any sizes).
        max_pixels: pixels sampled in all (evenly across images).
        seed: sampling seed (the detection is deterministic).

    Returns:
        The best :class:`ColormapFit` if it is accepted, else None (the data keep three channels).
    """
    fits = rank_colormaps(images, max_pixels, seed)
    return fits[0] if fits and fits[0].accepted else None


def rank_colormaps(images: list[np.ndarray], max_pixels: int = 100_000, seed: int = 0) -> list[ColormapFit]:
    """Every candidate's fit to the sampled pixels, best (lowest mean error) first.

    Each fit records the next-best candidate's mean error (``runner_up_mean_error``), which acceptance uses.
    """
    if not images:
        return []
    rng = np.random.default_rng(seed)
    per_image = max(1, max_pixels // len(images))
    samples = []
    for image in images:
        flat = np.asarray(image, dtype=np.uint8).reshape(-1, 3)
        take = min(per_image, len(flat))
        samples.append(flat[rng.choice(len(flat), size=take, replace=False)])
    pixels = np.concatenate(samples)  # (P, 3)
    fits = sorted((fit_colormap(pixels, name) for name in CANDIDATES), key=lambda fit: fit.mean_error)
    runner_up = [fit.mean_error for fit in fits[1:]] + [float("inf")]
    return [dataclasses.replace(fit, runner_up_mean_error=nxt) for fit, nxt in zip(fits, runner_up)]


def rgb_to_scalar(rgb: np.ndarray, name: str) -> np.ndarray:
    """Invert colormap ``name``: ``(H, W, 3)`` uint8 RGB -> ``(H, W)`` float32 scalar in [0, 1]."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]  # (H, W)
    colours, inverse = np.unique(packed.ravel(), return_inverse=True)  # each distinct colour queried once
    points = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1).astype(np.float32)  # (U, 3)
    _, index = _curve_tree(name).query(points)  # (U,)
    return (index.astype(np.float32) / (LUT_SIZE - 1))[inverse].reshape(packed.shape)


def scalar_to_rgb(scalar: np.ndarray, name: str) -> np.ndarray:
    """Apply colormap ``name``: ``(...)`` float scalar in [0, 1] -> ``(..., 3)`` float32 RGB in [0, 1]."""
    lut = colormap_lut(name)
    position = np.clip(np.asarray(scalar, dtype=np.float32), 0.0, 1.0) * (LUT_SIZE - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, LUT_SIZE - 1)
    frac = (position - low)[..., None]
    return (lut[low] * (1.0 - frac) + lut[high] * frac).astype(np.float32)  # linear between LUT entries
