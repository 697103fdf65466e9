"""Figures of a validation report: per-user accuracy bars, confusion matrices, real-vs-generated rows and the
generated images closest to a training image."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data import SpectrogramData
from ..figures import plt, save_figure, save_labelled_grid, to_unit
from ..layout import FIGURES_FOLDER

SAMPLES_PER_ROW = 4  # real and generated images per user in the sample figure
MAX_SAMPLE_ROWS = 32
NEIGHBOUR_PAIRS = 8


def write_figures(folder: Path, report: dict, extras: dict, data: SpectrogramData) -> dict[str, str]:
    """Per-user accuracy bars, confusion matrices, real-vs-generated rows, nearest-neighbour pairs.

    Returns:
        ``{figure name: path relative to the report folder}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "per_user_accuracy": _accuracy_bars(folder / "per_user_accuracy.png", report["per_user"]),
        "confusion_matrix": _confusion_figure(folder / "confusion_matrix.png", extras, data.user_ids),
        "samples": _samples_figure(folder / "real_vs_generated.png", extras, data.user_ids),
        "nearest_neighbours": _neighbour_figure(folder / "nearest_neighbours.png", extras),
    }
    return {name: f"{FIGURES_FOLDER}/{path.name}" for name, path in written.items() if path is not None}


def _accuracy_bars(path: Path, per_user: dict) -> Path:
    ids = list(per_user)
    x = torch.arange(len(ids)).float()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(ids) + 1.5), 3))
    for offset, key, label in ((-0.27, "real_test_accuracy", "real (judge)"),
                               (0.0, "gan_test_accuracy", "generated (judge)"),
                               (0.27, "cas_accuracy", "real (CAS classifier)")):
        heights = [per_user[i][key] if per_user[i][key] is not None else 0.0 for i in ids]
        ax.bar((x + offset).tolist(), heights, width=0.27, label=label)
    ax.set_xticks(x.tolist(), ids, fontsize=7)
    ax.set_xlabel("user id")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return save_figure(fig, path)


def _confusion_figure(path: Path, extras: dict, user_ids: Sequence[int]) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, key, title in ((axes[0], "confusion_generated", "generated images (row: intended user)"),
                           (axes[1], "confusion_real", "real validation images (row: true user)")):
        matrix = extras[key].float()
        rows = matrix.sum(1, keepdim=True).clamp(min=1)
        image = ax.imshow((matrix / rows).numpy(), cmap="Blues", vmin=0, vmax=1)
        ticks = list(range(len(user_ids)))
        step = max(1, len(ticks) // 16)
        ax.set_xticks(ticks[::step], [str(u) for u in user_ids][::step], fontsize=6)
        ax.set_yticks(ticks[::step], [str(u) for u in user_ids][::step], fontsize=6)
        ax.set_xlabel("judge's prediction")
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=axes, fraction=0.03, label="share of the row")
    return save_figure(fig, path)


def _samples_figure(path: Path, extras: dict, user_ids: Sequence[int]) -> Path | None:
    return real_vs_generated_figure(path, extras["val_images"], extras["val_labels"], extras["gen_images"],
                                    extras["gen_labels"], user_ids)


def real_vs_generated_figure(path: Path, real_images: torch.Tensor, real_labels: torch.Tensor,
                             gen_images: torch.Tensor, gen_labels: torch.Tensor, user_ids: Sequence[int],
                             max_rows: int = MAX_SAMPLE_ROWS) -> Path | None:
    """One row per generated user (at most ``max_rows``): real images on the left, generated on the right.

    Images are ``[N, C, R, R]`` in [-1, 1]; labels index ``user_ids``. Returns None when nothing was generated.
    """
    labels = sorted(set(gen_labels.tolist()))[:max_rows]
    if not labels:
        return None
    rows, names = [], []
    for label in labels:
        real = real_images[real_labels == label][:SAMPLES_PER_ROW]
        fake = gen_images[gen_labels == label][:SAMPLES_PER_ROW]
        rows += [_pad(to_unit(real)), _pad(to_unit(fake))]
        names.append(f"ID_{user_ids[label]}")
    grid = torch.cat(rows)  # [rows * 2 * SAMPLES_PER_ROW, C, R, R]
    return save_labelled_grid(grid, names, 2 * SAMPLES_PER_ROW, path,
                              title=f"left {SAMPLES_PER_ROW}: real validation, right {SAMPLES_PER_ROW}: generated")


def _pad(images: torch.Tensor) -> torch.Tensor:
    """Pad ``[n, C, R, R]`` in [0, 1] with white images to ``SAMPLES_PER_ROW``."""
    missing = SAMPLES_PER_ROW - images.shape[0]
    if missing <= 0:
        return images
    return torch.cat([images, torch.ones(missing, *images.shape[1:])])


def _neighbour_figure(path: Path, extras: dict) -> Path | None:
    memo = extras["memorization"]
    if memo.distances.numel() == 0:
        return None
    order = torch.argsort(memo.distances)[:NEIGHBOUR_PAIRS]  # closest generated images first
    generated = to_unit(extras["gen_images"][order])
    neighbours = to_unit(extras["train_images"][memo.neighbours[order]])
    distances = ", ".join(f"{d:.2f}" for d in memo.distances[order].tolist())
    return save_labelled_grid(torch.cat([generated, neighbours]), ["generated", "nearest train"], order.numel(),
                              path, title=f"closest generated images; distances {distances} "
                                          f"(threshold {memo.threshold:.2f})")
