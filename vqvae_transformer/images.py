"""Tensors to PIL images, and the labelled one-row-per-user grid (``grid.png``, ``sample_grid.png``).

A base module (torch, torchvision, PIL and diffusers' image processor only; no matplotlib, so importing the pipeline
never changes a notebook's plotting backend).
"""

from __future__ import annotations

from typing import Sequence

import PIL.Image
import PIL.ImageDraw
import torch
from diffusers.image_processor import VaeImageProcessor
from torchvision.utils import make_grid

GRID_COLUMNS = 8  # samples per user shown in a grid


def tensor_to_pil(pixels: torch.Tensor) -> list[PIL.Image.Image]:
    """``[N, C, R, R]`` floats in [0, 1] -> PIL images, mode ``"L"`` for C = 1 and ``"RGB"`` for C = 3."""
    if pixels.dim() != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"expected [N, 1 or 3, R, R] pixels, got {tuple(pixels.shape)}")
    return VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(pixels))  # via (N, R, R, C) floats


def make_user_grid(pixels: torch.Tensor, user_ids: Sequence[int], per_user: int,
                   columns: int = GRID_COLUMNS) -> PIL.Image.Image:
    """One row per user, the first ``columns`` samples of each, with ``ID_<k>`` written left of each row.

    Args:
        pixels: ``[N, C, R, R]`` in [0, 1], user-major (``per_user`` consecutive images per user).
        user_ids: the public id of each row (``N / per_user`` entries).
        per_user: images per user in ``pixels``.
        columns: at most this many samples per row.

    Returns:
        A PIL image, mode ``"L"`` for 1 channel and ``"RGB"`` for 3.
    """
    cols = min(per_user, columns)
    rows = pixels.reshape(len(user_ids), per_user, *pixels.shape[1:])[:, :cols]  # (U, cols, C, R, R)
    grid = make_grid(rows.flatten(0, 1), nrow=cols, padding=2, pad_value=1.0)  # (C', H, W), C' = 3 for C = 1
    grid = grid[:1] if pixels.shape[1] == 1 else grid  # make_grid repeats a single channel to three
    body = tensor_to_pil(grid[None])[0]
    white, black = (255, 0) if body.mode == "L" else ((255, 255, 255), (0, 0, 0))
    label_width = 48  # room for "ID_<k>" in PIL's default font
    canvas = PIL.Image.new(body.mode, (body.width + label_width, body.height), color=white)
    canvas.paste(body, (label_width, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    cell = pixels.shape[-1] + 2  # image side + padding
    for row, user_id in enumerate(user_ids):
        draw.text((2, row * cell + 2 + max(cell // 2 - 6, 0)), f"ID_{user_id}", fill=black)
    return canvas
