"""Augmentations of spectrogram batches that keep a person's gait: circular shifts along time (the width axis).

Vertical flips are never used: they reverse the Doppler axis, i.e. walking towards the radar becomes walking away.
"""

from __future__ import annotations

import torch


def circular_time_shift(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Roll each image by its own random amount along the width (time) axis.

    Args:
        images: ``[B, C, H, W]``.
        generator: the random source (on the CPU); None draws from torch's global random state on the images'
            device (what the training loops use, so Accelerate's checkpoints restore the stream).

    Returns:
        ``[B, C, H, W]`` with ``out[b, :, :, x] = images[b, :, :, (x - s_b) % W]``, ``s_b`` uniform in ``[0, W)``.
    """
    b, c, h, w = images.shape
    device = images.device if generator is None else torch.device("cpu")
    shifts = torch.randint(0, w, (b, 1), generator=generator, device=device)  # [B, 1]
    index = (torch.arange(w, device=device)[None, :] - shifts) % w  # [B, W]
    return images.gather(3, index[:, None, None, :].expand(b, c, h, w).to(images.device))
