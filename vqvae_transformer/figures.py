"""Figures written during training and analysis (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` to ``path`` through a temporary file, then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> [0, 1], clamped."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def image_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """``[N, C, H, W]`` in [0, 1] -> ``[H', W', C]`` (or ``[H', W']`` for one channel) numpy grid."""
    grid = make_grid(images.detach().cpu(), nrow=nrow, padding=1, pad_value=1.0)  # (3, H', W')
    array = grid.permute(1, 2, 0).numpy()
    return array[..., 0] if images.shape[1] == 1 else array


def save_reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path,
                             title: str = "") -> Path:
    """Top row originals, bottom row reconstructions (both ``[N, C, H, W]`` in [-1, 1])."""
    n = min(8, originals.shape[0])
    both = torch.cat([to_unit(originals[:n]), to_unit(reconstructions[:n])])
    fig, ax = plt.subplots(figsize=(1.3 * n, 3))
    ax.imshow(image_grid(both, nrow=n), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title or "top: original, bottom: reconstruction", fontsize=9)
    return save_figure(fig, path)


def save_usage_histogram(counts: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Code counts sorted by frequency (log scale), with the usage fraction in the title."""
    counts = counts.detach().cpu().double()
    ordered = torch.sort(counts, descending=True).values.numpy()
    used = int((counts > 0).sum())
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(np.arange(len(ordered)), ordered + 1e-9, width=1.0, color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("count")
    ax.set_title(title or f"codebook usage {used}/{len(ordered)} = {used / len(ordered):.1%}", fontsize=9)
    return save_figure(fig, path)


def save_curves(history: Sequence[dict], keys: Sequence[str], path: str | Path) -> Path | None:
    """One panel per key present in ``history`` (list of ``{"step": ..., key: value}``)."""
    keys = [k for k in keys if any(k in row for row in history)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        rows = [row for row in history if key in row]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    return save_figure(fig, path)


def save_labelled_grid(images: torch.Tensor, row_labels: Sequence[str], ncol: int, path: str | Path,
                       title: str = "") -> Path:
    """Rows of ``ncol`` images (``[rows*ncol, C, H, W]`` in [0, 1]) with a label per row."""
    rows = len(row_labels)
    fig, ax = plt.subplots(figsize=(0.9 * ncol + 0.8, 0.9 * rows + 0.4))
    ax.imshow(image_grid(images, nrow=ncol), cmap="gray", vmin=0, vmax=1)
    height = images.shape[2] + 1
    ax.set_yticks([height * (i + 0.5) for i in range(rows)], list(row_labels), fontsize=7)
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
