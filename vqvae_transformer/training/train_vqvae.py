"""Stage 1: train the tokenizer (first stage + EMA quantizer) on Accelerate.

Loss = reconstruction (L1/L2) + commitment (+ KL for the ``kl`` backbone) (+ pretrained LPIPS when available)
(+ a patch discriminator's adversarial term with ``--adversarial_weight``, :mod:`.adversarial`).
The tqdm bar shows loss, PSNR, codebook usage (cumulative over the epoch, from the indices) and perplexity; every
``--eval_steps`` the validation split is measured and figures are written to ``OUTPUT_DIR/figures/``.

Run on its own::

    python -m vqvae_transformer.training.train_vqvae --output_dir outputs/tokenizer [--data_dir DATA]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger

from ..data.augment import circular_time_shift
from ..errors import UserInputError
from ..figures import save_curves, save_reconstruction_grid, save_usage_histogram
from ..layout import FIGURES_FOLDER, VQVAE_FOLDER
from ..models.fingerprint import invalidate_dependents
from ..models.first_stage import build_first_stage
from ..perceptual import LPIPSUnavailableError, load_pretrained_lpips, lpips_status
from ..models.reconstruction import code_counts, encode_tokens, reconstruct, tokenizer_metrics
from .adversarial import AdversarialTerm, decoder_last_layer
from .loop import LoopConfig, make_accelerator, run_finished, run_training, with_evaluation

logger = get_logger(__name__)

MAX_EVAL_IMAGES = 512


def build_vqvae(args: argparse.Namespace, channels: int, resolution: int):
    """A fresh first stage from finalized flags (see :mod:`.args`)."""
    return build_first_stage(
        args.first_stage, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(args.block_out_channels), latent_channels=args.latent_channels,
        sample_size=resolution, num_vq_embeddings=args.codebook_size,
        codebook_dim=args.codebook_dim, use_l2_norm=args.use_l2_norm,
        ema_decay=args.ema_decay, dead_code_threshold=args.dead_code_threshold,
        restart_sampling=args.restart_sampling,
        commitment_beta=args.commitment_beta,
    )


def resolve_lpips(mode: str, device: torch.device | None = None) -> torch.nn.Module | None:
    """Pretrained LPIPS for ``--lpips on|auto``; ``auto`` warns once and returns None when weights are missing."""
    if mode == "off":
        return None
    if mode == "auto":
        available, reason = lpips_status()
        if not available:
            logger.warning(f"training without the LPIPS loss: {reason}", main_process_only=True)
            return None
    try:
        module = load_pretrained_lpips()
    except LPIPSUnavailableError as err:
        raise UserInputError(f"--lpips on, but pretrained LPIPS cannot be loaded: {err}") from err
    return module.to(device) if device is not None else module


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``l1``, ``l2`` or ``l1+l2`` between two image batches."""
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "l2":
        return F.mse_loss(recon, target)
    return F.l1_loss(recon, target) + F.mse_loss(recon, target)


def batch_psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of a batch, images in [-1, 1] mapped to [0, 1]."""
    mse = F.mse_loss(((recon.detach().float() + 1) / 2).clamp(0, 1), (target.float() + 1) / 2)
    return float(10 * torch.log10(1.0 / mse.clamp(min=1e-10)))


class VQVAEStep:
    """One stage-1 forward pass: ``(model, batch, accelerator) -> (loss, logs)`` for :func:`run_training`."""

    def __init__(self, recon_loss: str = "l1+l2", lpips: torch.nn.Module | None = None, lpips_weight: float = 0.1,
                 time_shift: bool = True, adversarial: AdversarialTerm | None = None):
        self.recon_loss = recon_loss
        self.lpips = lpips
        self.lpips_weight = lpips_weight
        self.time_shift = time_shift
        self.adversarial = adversarial
        self.global_step = 0  # optimiser steps already taken; run_training sets it before each batch

    def prepare(self, accelerator: Accelerator) -> None:
        """Called by :func:`run_training` once the tokenizer is prepared: the discriminator's turn."""
        if self.adversarial is not None:
            self.adversarial.prepare(accelerator)

    def __call__(self, model, batch, accelerator: Accelerator) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch[0]  # (B, C, R, R) in [-1, 1]
        if self.time_shift:
            images = circular_time_shift(images)
        out = model(images)
        recon = reconstruction_loss(out.sample, images, self.recon_loss)
        loss = recon + out.commit_loss + out.kl_loss
        logs = {"recon": float(recon.detach()), "psnr": batch_psnr(out.sample, images)}
        perceptual = None
        if self.lpips is not None:
            rgb = lambda x: x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # noqa: E731
            perceptual = self.lpips(rgb(out.sample.float()), rgb(images.float())).mean()
            loss = loss + self.lpips_weight * perceptual
            logs["lpips"] = float(perceptual.detach())
        unwrapped = accelerator.unwrap_model(model)
        if self.adversarial is not None and self.adversarial.active(self.global_step):
            logs.update(self.adversarial.discriminator_step(images, out.sample, accelerator))
            fidelity = recon if perceptual is None else recon + self.lpips_weight * perceptual
            last_layer = decoder_last_layer(unwrapped)
            term, adv_logs = self.adversarial.generator_term(fidelity, out.sample, last_layer, accelerator)
            loss = loss + term
            logs.update(adv_logs)
        quantizer = unwrapped.quantize
        usage = quantizer.usage_summary()
        logs.update(usage=usage["codebook_usage"], ppl=quantizer.last_stats.perplexity)
        return loss, logs


def make_vqvae_eval(val_images: torch.Tensor, output_dir: Path, batch_size: int):
    """Evaluation + figures on (up to 512 of) the validation images; ``(model, step, history) -> metrics``."""
    images = val_images[:MAX_EVAL_IMAGES]
    figures = output_dir / FIGURES_FOLDER

    def evaluate(model, step: int, history: list[dict]) -> dict[str, float]:
        metrics = tokenizer_metrics(model, images, batch_size)
        counts = code_counts(encode_tokens(model, images, batch_size), model.config.num_vq_embeddings)
        save_reconstruction_grid(images[:8], reconstruct(model, images[:8]), figures / "vqvae_reconstructions.png",
                                 title=f"step {step}: top original, bottom reconstruction "
                                       f"(val PSNR {metrics['psnr']:.1f} dB)")
        save_usage_histogram(counts, figures / "vqvae_codebook_usage.png")
        keep = ("psnr", "ssim", "codebook_usage", "codebook_perplexity", "normalized_entropy", "top_code_share")
        kept = {k: metrics[k] for k in keep}
        save_curves(with_evaluation(history, kept), ["loss", "psnr", "usage", "val_psnr", "val_codebook_usage"],
                    figures / "vqvae_curves.png")
        return kept

    return evaluate


def save_pretrained_atomic(model, target: Path) -> Path:
    """``save_pretrained`` into a temporary sibling folder, then swap it into ``target``."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)
    return target


def train_vqvae_stage(args: argparse.Namespace, cfg: LoopConfig, train_images: torch.Tensor,
                      val_images: torch.Tensor, accelerator: Accelerator | None = None,
                      init_from: Path | None = None) -> tuple[object, dict]:
    """Train (or resume) stage 1 and save it to ``OUTPUT_DIR/vqvae``.

    Args:
        args: finalized flags (model and loss settings).
        cfg: the loop settings of this stage.
        train_images: ``[N, C, R, R]`` in [-1, 1].
        val_images: ``[M, C, R, R]`` held-out images for metrics and figures.
        accelerator: shared accelerator (train_main runs both stages in one).
        init_from: a saved first stage to start from (``--init_from``, :mod:`.transfer`) instead of random weights.

    Returns:
        ``(model, summary)``; ``summary["finished"]`` is False when the run was cut short.
    """
    start = time.time()
    accelerator = accelerator or make_accelerator(cfg)
    channels, resolution = train_images.shape[1], train_images.shape[-1]
    torch.manual_seed(cfg.seed)
    model = build_vqvae(args, channels, resolution)
    if init_from is not None:
        from .transfer import init_first_stage

        count = init_first_stage(model, init_from)
        logger.info(f"stage 1 starts from {init_from} ({count} tensors)", main_process_only=True)
    lpips = resolve_lpips(args.lpips, accelerator.device)
    adversarial = None
    if args.adversarial_weight > 0:
        first_step = round(args.adversarial_start * cfg.max_train_steps)
        adversarial = AdversarialTerm(channels, args.adversarial_weight, first_step, cfg.learning_rate, seed=cfg.seed)
        logger.info(f"stage 1 trains a patch discriminator from step {first_step} of {cfg.max_train_steps} (adaptive "
                    f"weight x {args.adversarial_weight})", main_process_only=True)
    step_fn = VQVAEStep(args.recon_loss, lpips, args.lpips_weight, args.time_shift, adversarial)
    eval_fn = make_vqvae_eval(val_images, cfg.output_dir, cfg.batch_size)
    dataset = torch.utils.data.TensorDataset(train_images)
    model, history, finished = run_training(
        cfg, model, dataset, step_fn, eval_fn,
        on_epoch_start=lambda m, epoch: m.quantize.reset_usage(), accelerator=accelerator,
    )
    summary = {"finished": finished, "steps": history[-1]["step"] if history else 0,
               "seconds": round(time.time() - start, 1), "history": history, "lpips_loss": lpips is not None}
    if finished and accelerator.is_main_process:  # one process measures and writes the model
        model.eval()
        summary["final"] = tokenizer_metrics(model, val_images, cfg.batch_size)
        invalidate_dependents(cfg.output_dir)  # the old prior/ and index belong to the old stage 1
        save_pretrained_atomic(model, cfg.output_dir / VQVAE_FOLDER)
        logger.info(f"stage 1 done: val PSNR {summary['final']['psnr']:.2f} dB, codebook usage "
                    f"{summary['final']['codebook_usage']:.1%}; saved to {cfg.output_dir / VQVAE_FOLDER}",
                    main_process_only=True)
    accelerator.wait_for_everyone()
    return model, summary


def stage_done(output_dir: Path) -> bool:
    """Whether stage 1 already finished in ``output_dir`` (its model exists and its newest checkpoint is the last
    step of its run: a killed re-train into a finished folder is continued, not mistaken for the old model)."""
    return (output_dir / VQVAE_FOLDER / "config.json").is_file() and run_finished(
        output_dir / "checkpoints" / VQVAE_FOLDER)


def build_parser() -> argparse.ArgumentParser:
    from .args import ArgumentParser, add_data_args, add_loop_args, add_vqvae_args

    parser = ArgumentParser(description="Train the stage-1 tokenizer (VQModel/AutoencoderKL + EMA quantizer).")
    add_data_args(parser)
    add_vqvae_args(parser)
    add_loop_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Stage 1 on its own: load data, split, train, save ``OUTPUT_DIR/vqvae`` and ``stage1_summary.json``."""
    from ..cli import setup_logging
    from .data_setup import prepare_data
    from .args import finalize_args, loop_config

    setup_logging()
    args = build_parser().parse_args(argv)
    finalize_args(args)
    data, train_idx, val_idx = prepare_data(args, reuse_split=bool(args.resume_from_checkpoint))
    cfg = loop_config(args, "vqvae", len(train_idx))
    _, summary = train_vqvae_stage(args, cfg, data.images[train_idx], data.images[val_idx or train_idx])
    out = Path(args.output_dir) / "stage1_summary.json"
    if PartialState().is_main_process:
        out.write_text(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    from ..cli import run_cli

    sys.exit(run_cli(main))
