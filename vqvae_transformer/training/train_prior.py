"""Stage 2: train the user-conditioned GPT-2 prior over the first stage's token grids, on Accelerate.

The token grids of the training and validation splits are encoded once (the first stage is frozen) and kept in
memory. The bar shows loss; every ``--eval_steps`` the validation loss/perplexity is measured and a grid of samples
(rows = users) decoded through stage 1 is written to ``OUTPUT_DIR/figures/prior_samples.png``.

Run on its own (after stage 1 saved ``OUTPUT_DIR/vqvae``)::

    python -m vqvae_transformer.training.train_prior --output_dir outputs/vqvae_transformer
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger

from ..figures import save_curves, save_labelled_grid
from ..models.prior import build_prior, build_prior_config, make_prior_batch, sample_tokens, vocabulary_from_config
from ..validation.reconstruction import encode_tokens
from .loop import LoopConfig, list_checkpoints, make_accelerator, run_training
from .train_vqvae import FIGURE_DIR, save_pretrained_atomic

logger = get_logger(__name__)

PRIOR_SUBFOLDER = "prior"
SAMPLE_USERS = 8
SAMPLES_PER_USER = 6


class PriorStep:
    """One stage-2 forward pass: ``(model, batch, accelerator) -> (loss, logs)``; user dropout for guidance."""

    def __init__(self, vocab, user_dropout: float):
        self.vocab = vocab
        self.user_dropout = user_dropout

    def __call__(self, model, batch, accelerator: Accelerator) -> tuple[torch.Tensor, dict[str, float]]:
        tokens, labels = batch  # (B, h, w), (B,)
        inputs = make_prior_batch(tokens, labels, self.vocab, self.user_dropout)  # (B, T+1) each
        loss = model(**inputs).loss
        return loss, {"ppl": math.exp(min(float(loss.detach()), 50.0))}


@torch.no_grad()
def validation_loss(prior, tokens: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    null_user: bool = False) -> float:
    """Mean next-code cross-entropy on held-out token grids, with the real user tokens (or all null tokens).

    ``validation_loss(null_user=True) - validation_loss()`` is the *user-token gain*: how many nats per code the
    prior draws from knowing the user. Near 0, samples cannot carry the user's identity whatever the tokenizer keeps.
    """
    vocab = vocabulary_from_config(prior.config)
    total, count = 0.0, 0
    dropout = 1.0 if null_user else 0.0
    for i in range(0, tokens.shape[0], batch_size):
        inputs = make_prior_batch(tokens[i:i + batch_size], labels[i:i + batch_size], vocab, user_dropout=dropout)
        inputs = {k: v.to(prior.device) for k, v in inputs.items()}
        n = inputs["input_ids"].shape[0]
        total += float(prior(**inputs).loss) * n
        count += n
    return total / max(count, 1)


def make_prior_eval(first_stage, val_tokens: torch.Tensor, val_labels: torch.Tensor, user_ids: list[int],
                    output_dir: Path, batch_size: int, seed: int):
    """Validation loss/perplexity + a decoded sample grid; ``(model, step, history) -> metrics``."""
    figures = output_dir / FIGURE_DIR

    def evaluate(prior, step: int, history: list[dict]) -> dict[str, float]:
        loss = validation_loss(prior, val_tokens, val_labels, batch_size)
        gain = validation_loss(prior, val_tokens, val_labels, batch_size, null_user=True) - loss
        shown = list(range(min(SAMPLE_USERS, len(user_ids))))
        labels = torch.tensor([u for u in shown for _ in range(SAMPLES_PER_USER)])
        tokens = sample_tokens(prior, labels, seed=seed)  # (U*S, h, w)
        images = first_stage.decode_tokens(tokens.to(first_stage.device)).float().cpu()
        save_labelled_grid(((images + 1) / 2).clamp(0, 1), [f"ID_{user_ids[u]}" for u in shown], SAMPLES_PER_USER,
                           figures / "prior_samples.png", title=f"prior samples at step {step}")
        save_curves(history, ["loss", "val_loss"], figures / "prior_curves.png")
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "user_token_gain": gain}

    return evaluate


def train_prior_stage(args: argparse.Namespace, cfg: LoopConfig, first_stage, train_images: torch.Tensor,
                      train_labels: torch.Tensor, val_images: torch.Tensor, val_labels: torch.Tensor,
                      user_ids: list[int], accelerator: Accelerator | None = None) -> tuple[object, dict]:
    """Encode the splits once, train (or resume) the prior, save it to ``OUTPUT_DIR/prior``.

    Args:
        args: finalized flags (prior sizes, user dropout).
        cfg: the loop settings of this stage.
        first_stage: the trained, frozen first stage.
        train_images, val_images: ``[N, C, R, R]`` in [-1, 1].
        train_labels, val_labels: ``[N]`` 0-based user labels.
        user_ids: public ids, ``user_ids[label]``.
        accelerator: shared accelerator.

    Returns:
        ``(prior, summary)``; ``summary["finished"]`` is False when the run was cut short.
    """
    start = time.time()
    accelerator = accelerator or make_accelerator(cfg)
    first_stage = first_stage.to(accelerator.device).eval().requires_grad_(False)
    train_tokens = encode_tokens(first_stage, train_images)  # (N, h, w), encoded once
    val_tokens = encode_tokens(first_stage, val_images)
    grid = tuple(train_tokens.shape[1:])
    logger.info(f"encoded {len(train_tokens)} train and {len(val_tokens)} validation images to {grid[0]}x{grid[1]} "
                f"token grids in {time.time() - start:.1f}s", main_process_only=True)
    config = build_prior_config(first_stage.config.num_vq_embeddings, len(user_ids), grid, n_layer=args.n_layer,
                                n_embd=args.n_embd, n_head=args.n_head, dropout=args.prior_dropout,
                                user_ids=list(user_ids), token_order=args.token_order)
    torch.manual_seed(cfg.seed)
    prior = build_prior(config)
    step_fn = PriorStep(vocabulary_from_config(config), args.user_dropout)
    eval_fn = make_prior_eval(first_stage, val_tokens, val_labels, list(user_ids), cfg.output_dir, cfg.batch_size,
                              cfg.seed)
    dataset = torch.utils.data.TensorDataset(train_tokens, train_labels)
    prior, history, finished = run_training(cfg, prior, dataset, step_fn, eval_fn, accelerator=accelerator)
    summary = {"finished": finished, "steps": history[-1]["step"] if history else 0,
               "seconds": round(time.time() - start, 1), "token_grid": list(grid), "history": history,
               "parameters": sum(p.numel() for p in prior.parameters())}
    if finished and accelerator.is_main_process:  # one process measures and writes the model
        loss, gain = _final_validation(prior, history, val_tokens, val_labels, cfg.batch_size)
        summary.update(final_val_loss=loss, final_val_perplexity=math.exp(min(loss, 50.0)),
                       final_user_token_gain=gain)
        save_pretrained_atomic(prior, cfg.output_dir / PRIOR_SUBFOLDER)
        logger.info(f"stage 2 done: validation loss {summary['final_val_loss']:.3f} (perplexity "
                    f"{summary['final_val_perplexity']:.1f}, user-token gain {summary['final_user_token_gain']:.4f} "
                    f"nats/code); saved to {cfg.output_dir / PRIOR_SUBFOLDER}",
                    main_process_only=True)
    accelerator.wait_for_everyone()
    return prior, summary


def _final_validation(prior, history: list[dict], val_tokens: torch.Tensor, val_labels: torch.Tensor,
                      batch_size: int) -> tuple[float, float]:
    """``(validation loss, user-token gain)`` of the trained prior: the loop's evaluation at the last step when it
    ran (it always does at the end of a run), else measured now."""
    last = history[-1] if history else {}  # a finished run's last entry is its last step
    if "val_loss" in last and "val_user_token_gain" in last:
        return float(last["val_loss"]), float(last["val_user_token_gain"])
    prior.eval()
    loss = validation_loss(prior, val_tokens, val_labels, batch_size)
    return loss, validation_loss(prior, val_tokens, val_labels, batch_size, null_user=True) - loss


def stage_done(output_dir: Path) -> bool:
    """Whether stage 2 already finished in ``output_dir`` (its model and a checkpoint exist)."""
    return (output_dir / PRIOR_SUBFOLDER / "config.json").is_file() and bool(
        list_checkpoints(output_dir / "checkpoints" / PRIOR_SUBFOLDER))


def build_parser() -> argparse.ArgumentParser:
    from .args import ArgumentParser, add_data_args, add_loop_args, add_prior_args

    parser = ArgumentParser(description="Train the stage-2 GPT-2 prior on a trained stage-1 tokenizer.")
    add_data_args(parser)
    add_prior_args(parser)
    add_loop_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Stage 2 on its own: reload the data and split of OUTPUT_DIR, train, save ``OUTPUT_DIR/prior``."""
    from ..cli import setup_logging
    from ..models.first_stage import load_first_stage
    from .args import finalize_args, loop_config
    from .data_setup import prepare_data
    from .train_vqvae import VQVAE_SUBFOLDER

    setup_logging()
    args = build_parser().parse_args(argv)
    finalize_args(args)
    data, train_idx, val_idx = prepare_data(args)
    first_stage = load_first_stage(Path(args.output_dir) / VQVAE_SUBFOLDER)
    cfg = loop_config(args, "prior", len(train_idx))
    measure_idx = val_idx or train_idx  # --val_fraction 0: measured on the training images
    _, summary = train_prior_stage(args, cfg, first_stage, data.images[train_idx], data.labels[train_idx],
                                   data.images[measure_idx], data.labels[measure_idx], data.user_ids)
    out = Path(args.output_dir) / "stage2_summary.json"
    if PartialState().is_main_process:
        out.write_text(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    from ..cli import run_cli

    sys.exit(run_cli(main))
