"""Tokenizer measurements on a set of images: token grids, reconstruction PSNR/SSIM and codebook statistics."""

from __future__ import annotations

import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from .quantizer import code_statistics


@torch.no_grad()
def encode_tokens(model, images: torch.Tensor, batch_size: int = 64) -> torch.LongTensor:
    """Token grids ``[N, h, w]`` of ``images [N, C, R, R]`` in [-1, 1] (batched, on the model's device)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    chunks = [model.encode_to_tokens(images[i:i + batch_size].to(device, dtype)).cpu()
              for i in range(0, images.shape[0], batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Reconstructions ``[N, C, R, R]`` (float32, CPU) through tokens: encode -> indices -> decode."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = []
    for i in range(0, images.shape[0], batch_size):
        tokens = model.encode_to_tokens(images[i:i + batch_size].to(device, dtype))
        out.append(model.decode_tokens(tokens).float().cpu())
    return torch.cat(out)


def code_counts(tokens: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """``[K]`` histogram of code indices."""
    return torch.bincount(tokens.reshape(-1).cpu(), minlength=codebook_size)


@torch.no_grad()
def tokenizer_metrics(model, images: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """PSNR, SSIM (images mapped to [0, 1]) and codebook statistics of the tokens of ``images``.

    Returns:
        ``psnr``, ``ssim``, ``codebook_usage``, ``codebook_perplexity``, ``normalized_entropy``,
        ``top_code_share``, ``used_codes`` (see :func:`~vqvae_transformer.models.quantizer.code_statistics`).
    """
    return tokenizer_metrics_and_reconstructions(model, images, batch_size)[0]


@torch.no_grad()
def tokenizer_metrics_and_reconstructions(model, images: torch.Tensor,
                                          batch_size: int = 64) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`tokenizer_metrics` plus the reconstructions ``[N, C, R, R]`` (float32, CPU, in [-1, 1])."""
    # Computed by one process (training evaluates on the main process only): no cross-process sync, which
    # would wait forever for ranks that are not evaluating.
    psnr = PeakSignalNoiseRatio(data_range=1.0, sync_on_compute=False)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0, sync_on_compute=False)
    tokens = encode_tokens(model, images, batch_size)
    recons = []
    for i in range(0, images.shape[0], batch_size):
        recon = model.decode_tokens(tokens[i:i + batch_size].to(next(model.parameters()).device)).float().cpu()
        recons.append(recon.clamp(-1, 1))
        target = ((images[i:i + batch_size].float() + 1) / 2).clamp(0, 1)
        unit = ((recon + 1) / 2).clamp(0, 1)
        psnr.update(unit, target)
        ssim.update(unit, target)
    stats = code_statistics(code_counts(tokens, model.config.num_vq_embeddings))
    metrics = {"psnr": float(psnr.compute()), "ssim": float(ssim.compute()), **stats}
    return metrics, torch.cat(recons)
