"""Quantizer benchmark: the same VQModel backbone, steps, batch and seed with different vector quantizers.

Variants (``--variants``):
  stock     diffusers' VectorQuantizer (what VQModel ships with)
  vqp       vector-quantize-pytorch VectorQuantize: EMA decay 0.8, k-means init, dead-code threshold 2
  vqp-cos8  the same with codebook_dim=8 and cosine similarity (LlamaGen-style)
  ours      vqvae_transformer's EMAVectorQuantizer with the CPU preset's settings

Trained on the simulated default data (31 users, 64 px, stratified 80/20 split), measured on the validation
split: codebook_usage, normalized_entropy, top_code_share (share of tokens held by the most used code), PSNR,
SSIM, seconds per step. The peer is a benchmark-only dependency: ``pip install -r requirements-bench.txt``.

    python -m benchmarks.bench_quantizer                     # the CPU preset's steps and learning rate, batch 32
    python -m benchmarks.bench_quantizer --steps 40 --variants stock ours   # quick look
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import VQModel
from diffusers.optimization import get_scheduler
from torch import nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from vqvae_transformer.data import load_training_data, stratified_split
from vqvae_transformer.models.quantizer import EMAVectorQuantizer, code_statistics
from vqvae_transformer.training.presets import CPU_PRESET
from vqvae_transformer.data.augment import circular_time_shift
from vqvae_transformer.training.train_vqvae import reconstruction_loss

VARIANTS = ("stock", "vqp", "vqp-cos8", "ours")


def ours_settings(**overrides) -> dict:
    """Our quantizer's settings: the CPU preset's, with ``overrides`` (None values ignored)."""
    p = CPU_PRESET
    settings = dict(beta=p["commitment_beta"], decay=p["ema_decay"], codebook_dim=p["codebook_dim"],
                    use_l2_norm=p["use_l2_norm"], dead_code_threshold=p["dead_code_threshold"],
                    restart_sampling=p["restart_sampling"])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


class QuantizerAdapter(nn.Module):
    """Uniform ``[B, C, H, W] -> (z_q [B, C, H, W], loss, indices [B, H, W])`` over the three implementations."""

    def __init__(self, kind: str, dim: int, codebook_size: int, ours: dict | None = None):
        super().__init__()
        self.kind = kind
        if kind == "stock":
            from diffusers.models.autoencoders.vae import VectorQuantizer

            self.impl = VectorQuantizer(codebook_size, dim, beta=0.25, sane_index_shape=True)
        elif kind.startswith("vqp"):
            from vector_quantize_pytorch import VectorQuantize

            extra = dict(codebook_dim=8, use_cosine_sim=True) if kind == "vqp-cos8" else {}
            self.impl = VectorQuantize(dim=dim, codebook_size=codebook_size, decay=0.8, kmeans_init=True,
                                       threshold_ema_dead_code=2, commitment_weight=0.25, accept_image_fmap=True,
                                       **extra)
        elif kind == "ours":
            self.impl = EMAVectorQuantizer(codebook_size, dim, **(ours or ours_settings()))
        else:
            raise ValueError(f"unknown variant {kind!r}; choose from {VARIANTS}")

    def forward(self, h: torch.Tensor):
        if self.kind.startswith("vqp"):
            z_q, indices, loss = self.impl(h)
            return z_q, loss.sum(), indices
        z_q, loss, (_, _, indices) = self.impl(h)
        return z_q, loss, indices


class BenchAutoencoder(nn.Module):
    """A diffusers VQModel's encoder/decoder around an interchangeable quantizer."""

    def __init__(self, kind: str, codebook_size: int, seed: int, ours: dict | None = None):
        super().__init__()
        torch.manual_seed(seed)  # identical backbone initialisation for every variant
        p = CPU_PRESET
        n = len(p["block_out_channels"])
        self.backbone = VQModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * n,
                                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=p["block_out_channels"],
                                layers_per_block=1, latent_channels=p["latent_channels"],
                                num_vq_embeddings=codebook_size, norm_num_groups=min(32, *p["block_out_channels"]))
        torch.manual_seed(seed + 1)
        self.quantizer = QuantizerAdapter(kind, p["latent_channels"], codebook_size, ours)

    def forward(self, x: torch.Tensor):
        h = self.backbone.quant_conv(self.backbone.encoder(x))  # (B, C, h, w)
        z_q, loss, indices = self.quantizer(h)
        recon = self.backbone.decoder(self.backbone.post_quant_conv(z_q))
        return recon, loss, indices


def evaluate(model: BenchAutoencoder, images: torch.Tensor, codebook_size: int, batch: int = 64) -> dict:
    model.eval()
    psnr, ssim = PeakSignalNoiseRatio(data_range=1.0), StructuralSimilarityIndexMeasure(data_range=1.0)
    counts = torch.zeros(codebook_size, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            recon, _, indices = model(x)
            counts += torch.bincount(indices.reshape(-1), minlength=codebook_size)
            unit = lambda t: ((t + 1) / 2).clamp(0, 1)  # noqa: E731
            psnr.update(unit(recon), unit(x))
            ssim.update(unit(recon), unit(x))
    model.train()
    return {**code_statistics(counts), "psnr": float(psnr.compute()), "ssim": float(ssim.compute())}


def train_variant(kind: str, train: torch.Tensor, val: torch.Tensor, args) -> dict:
    ours = ours_settings(decay=args.ours_decay, dead_code_threshold=args.ours_threshold,
                         restart_sampling=args.ours_sampling, codebook_dim=args.ours_codebook_dim,
                         use_l2_norm=args.ours_l2_norm)
    model = BenchAutoencoder(kind, args.codebook_size, args.seed, ours).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    # The training recipe of train_vqvae: linear warm-up over 5 % of the steps, then cosine decay.
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=max(1, args.steps // 20),
                              num_training_steps=args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    start = time.time()
    for _ in range(args.steps):
        idx = torch.randint(0, len(train), (args.batch_size,), generator=generator)
        x = circular_time_shift(train[idx])
        recon, qloss, _ = model(x)
        loss = reconstruction_loss(recon, x, "l1+l2") + qloss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    seconds = time.time() - start
    label = kind if kind != "ours" else (f"ours(d={ours['decay']},t={ours['dead_code_threshold']},"
                                         f"{ours['restart_sampling'][0]},c={ours['codebook_dim']},"
                                         f"l2={int(ours['use_l2_norm'])})")
    return {"variant": label, **evaluate(model, val, args.codebook_size), "sec_per_step": seconds / args.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=CPU_PRESET["vqvae_steps"],
                        help="optimiser steps per variant (default: the CPU preset's)")
    parser.add_argument("--batch_size", type=int, default=CPU_PRESET["vqvae_batch_size"],
                        help="batch size per variant (default: the CPU preset's)")
    parser.add_argument("--codebook_size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=CPU_PRESET["vqvae_learning_rate"],
                        help="peak learning rate (default: the CPU preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_users", type=int, default=31)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--ours_decay", type=float, default=None, help="override the preset's EMA decay")
    parser.add_argument("--ours_threshold", type=float, default=None, help="override the dead-code threshold")
    parser.add_argument("--ours_codebook_dim", type=int, default=None, help="override the lookup dimension")
    parser.add_argument("--ours_l2_norm", action=argparse.BooleanOptionalAction, default=None,
                        help="override the preset's l2-normalised lookup (--no-ours_l2_norm: Euclidean)")
    parser.add_argument("--ours_sampling", choices=("error", "uniform"), default=None,
                        help="override how dead codes are re-seeded")
    args = parser.parse_args()

    data = load_training_data(resolution=CPU_PRESET["resolution"], num_users=args.num_users,
                              samples_per_user=CPU_PRESET["samples_per_user"], seed=0)
    train_idx, val_idx = stratified_split(data.labels, 0.2, 0)
    train, val = data.images[train_idx], data.images[val_idx]
    print(f"data: {data.num_users} users, {len(train)} train / {len(val)} validation images at {data.resolution} px; "
          f"{args.steps} steps of batch {args.batch_size}, K={args.codebook_size}, seed {args.seed}, "
          f"torch threads {torch.get_num_threads()}")
    rows = []
    for kind in args.variants:
        rows.append(train_variant(kind, train, val, args))
        r = rows[-1]
        print(f"  {kind}: usage {r['codebook_usage']:.3f}, PSNR {r['psnr']:.2f} dB ({r['sec_per_step']:.2f} s/step)",
              flush=True)
    header = f"{'variant':<30} {'usage':>7} {'norm_ent':>8} {'top_share':>9} {'psnr_dB':>8} {'ssim':>6} {'s/step':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['variant']:<30} {r['codebook_usage']:>7.3f} {r['normalized_entropy']:>8.3f} "
              f"{r['top_code_share']:>9.4f} {r['psnr']:>8.2f} {r['ssim']:>6.3f} {r['sec_per_step']:>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
