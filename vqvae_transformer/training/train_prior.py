"""Stage 2: train the user-conditioned GPT-2 prior over the first stage's token grids, on Accelerate.

The token grids of the training and validation splits are encoded once (the first stage is frozen) and kept in
memory; with ``--prior_time_shifts S`` each training image is also encoded at S random circular time shifts, so the
prior sees S + 1 token grids per recording. The bar shows loss; every ``--eval_steps`` the validation
loss/perplexity is measured, a grid of samples (rows = users) decoded through stage 1 is written to
``OUTPUT_DIR/figures/prior_samples.png`` (with the small-data rule's more frequent evaluations: still only every
``--eval_steps`` steps and at the last), and the weights of the best validation loss so far are kept in
``OUTPUT_DIR/checkpoints/prior/best``: the saved prior is the best one, not the last (early stopping by selection).

On small data (fewer than ``SMALL_DATA_IMAGES_PER_USER`` training images per user) the settings that the preset
filled follow :data:`~vqvae_transformer.training.presets.SMALL_DATA_PRIOR`; the first lines of the stage say what
was chosen and why.

Run on its own (after stage 1 saved ``OUTPUT_DIR/vqvae``)::

    python -m vqvae_transformer.training.train_prior --output_dir outputs/vqvae_transformer
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger

from ..atomic import write_json_atomic
from ..data.augment import circular_time_shift
from ..figures import save_curves, save_labelled_grid
from ..layout import FIGURES_FOLDER, PRIOR_FOLDER, VQVAE_FOLDER
from ..models.fingerprint import stage1_fingerprint, write_fingerprint
from ..models.pipeline import VQVAETransformerPipeline
from ..models.prior import build_prior, build_prior_config, make_prior_batch, vocabulary_from_config
from ..models.reconstruction import encode_tokens
from .loop import LoopConfig, make_accelerator, run_finished, run_training, with_evaluation
from .presets import small_data_prior_settings
from .train_vqvae import save_pretrained_atomic

logger = get_logger(__name__)

SAMPLE_USERS = 8
SAMPLES_PER_USER = 6
BEST_FOLDER = "best"
BEST_FILE = "best.json"


def encode_training_tokens(first_stage, images: torch.Tensor, labels: torch.Tensor, time_shifts: int,
                           seed: int) -> tuple[torch.LongTensor, torch.Tensor]:
    """Token grids of ``images`` and of ``time_shifts`` randomly time-shifted copies of each, with their labels.

    Args:
        first_stage: the frozen first stage.
        images: ``[N, C, R, R]`` in [-1, 1].
        labels: ``[N]``.
        time_shifts: extra encodings per image (0: the plain grids only).
        seed: seed of the shifts (the same seed gives the same grids).

    Returns:
        ``(tokens [N * (S + 1), h, w], labels [N * (S + 1)])``: the plain grids first, then each shifted round.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens, all_labels = [encode_tokens(first_stage, images)], [labels]
    for _ in range(time_shifts):
        tokens.append(encode_tokens(first_stage, circular_time_shift(images, generator)))
        all_labels.append(labels)
    return torch.cat(tokens), torch.cat(all_labels)


def stage_settings(args: argparse.Namespace, cfg: LoopConfig, train_labels: torch.Tensor
                   ) -> tuple[argparse.Namespace, LoopConfig, str]:
    """Apply the small-data prior settings to what the preset filled (never to given flags).

    Returns:
        ``(args, cfg, reason)``: copies with the settings used, and the line that says why.
    """
    per_user = float(torch.bincount(train_labels).float().median()) if len(train_labels) else 0.0
    filled = set(getattr(args, "preset_filled", ()))
    given = {"prior_time_shifts", "prior_dropout", "prior_early_stopping", "prior_batch_size", "prior_steps"} - filled
    if "eval_steps" not in filled:
        given.add("prior_eval_steps")
    if getattr(args, "prior_epochs", None):  # the steps follow the epochs given
        given.add("prior_steps")
    settings, reason = small_data_prior_settings(per_user, given, getattr(args, "preset_name", None))
    args = argparse.Namespace(**vars(args))
    for key in ("prior_time_shifts", "prior_dropout", "prior_batch_size", "prior_steps"):
        if key in settings:
            setattr(args, key, settings[key])
    if "prior_batch_size" in settings or "prior_steps" in settings:
        steps = settings.get("prior_steps", cfg.max_train_steps)
        warmup = args.lr_warmup_steps if getattr(args, "lr_warmup_steps", None) is not None else max(1, steps // 20)
        cfg = dataclasses.replace(cfg, batch_size=settings.get("prior_batch_size", cfg.batch_size),
                                  max_train_steps=steps, lr_warmup_steps=warmup,
                                  tracker_config={**cfg.tracker_config, **settings})
    if settings.keys() & {"prior_eval_steps", "prior_batch_size", "prior_steps"}:
        eval_steps = settings.get("prior_eval_steps", cfg.eval_steps)
        cfg = dataclasses.replace(cfg, eval_steps=min(eval_steps, cfg.max_train_steps))
    args.prior_early_stopping = settings.get("prior_early_stopping", getattr(args, "prior_early_stopping", 0) or 0)
    cfg = dataclasses.replace(cfg, early_stopping_patience=args.prior_early_stopping)
    return args, cfg, reason


class BestWeights:
    """Keeps the prior of the lowest validation loss in ``checkpoint_dir/best`` (survives a resume)."""

    def __init__(self, checkpoint_dir: Path):
        self.folder = checkpoint_dir / BEST_FOLDER
        record = self.folder / BEST_FILE
        self.best = json.loads(record.read_text()) if record.is_file() else None

    def update(self, prior, step: int, loss: float) -> None:
        """Save ``prior`` when ``loss`` beats the best so far (main process only)."""
        if self.best is not None and loss >= self.best["val_loss"]:
            return
        save_pretrained_atomic(prior, self.folder)
        self.best = {"step": step, "val_loss": loss}
        write_json_atomic(self.folder / BEST_FILE, self.best)

    def restore(self, prior, last_step: int):
        """Load the best weights into ``prior`` when they are not the last step's; returns the best record."""
        if self.best is None or self.best["step"] == last_step:
            return self.best
        from safetensors.torch import load_file

        result = prior.load_state_dict(load_file(self.folder / "model.safetensors"), strict=False)
        missing = [k for k in result.missing_keys if k != "lm_head.weight"]  # tied to the embedding, not saved
        if missing or result.unexpected_keys:
            raise RuntimeError(f"best prior in {self.folder} does not match the model: missing {missing}, "
                               f"unexpected {result.unexpected_keys}")
        prior.tie_weights()
        return self.best


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


def figure_due(step: int, eval_steps: int, figure_steps: int, last_step: int) -> bool:
    """Whether the evaluation at ``step`` is the first one at or after a multiple of ``figure_steps`` (or the
    run's last step): evaluations every ``eval_steps`` steps draw figures only at that cadence."""
    return step >= last_step or step // figure_steps != max(step - eval_steps, 0) // figure_steps


def make_prior_eval(first_stage, val_tokens: torch.Tensor, val_labels: torch.Tensor, user_ids: list[int],
                    output_dir: Path, batch_size: int, seed: int, best: BestWeights | None = None,
                    resolution: int | None = None, colormap: str | None = None,
                    figure_cadence: tuple[int, int, int] | None = None):
    """Validation loss/perplexity, and at the figure cadence a sample grid and the user-token gain;
    ``(model, step, history) -> metrics``.

    With ``best``, the weights of the lowest validation loss so far are kept there. The sample grid is drawn
    through :class:`~vqvae_transformer.models.pipeline.VQVAETransformerPipeline` with its shipped sampling
    defaults (guidance, temperature), seeded with ``seed``, and coloured back in ``colormap`` for false-colour
    data: the figure shows what ``generate_main.py`` would write at that step.

    ``figure_cadence = (eval_steps, figure_steps, last_step)``: the grid, the curves and the user-token gain
    (a second pass over the validation grids) only where :func:`figure_due`; None: at every evaluation. The
    small-data rule evaluates every 100 steps to select the best weights; the grid and the gain cost more than
    the validation loss itself (about 6 s and 2.5 s against 2.5 s on 2 cores), so they keep ``--eval_steps``.
    """
    figures = output_dir / FIGURES_FOLDER

    def evaluate(prior, step: int, history: list[dict]) -> dict[str, float]:
        loss = validation_loss(prior, val_tokens, val_labels, batch_size)
        if best is not None:
            best.update(prior, step, loss)
        if figure_cadence is not None and not figure_due(step, *figure_cadence):
            return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        gain = validation_loss(prior, val_tokens, val_labels, batch_size, null_user=True) - loss
        shown = list(user_ids[:SAMPLE_USERS])
        pipe = VQVAETransformerPipeline(vqvae=first_stage, prior=prior, user_ids=list(user_ids),
                                        resolution=resolution, colormap=colormap)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(user_ids=shown, num_images_per_user=SAMPLES_PER_USER, output_type="pt",
                      generator=torch.Generator().manual_seed(seed)).images  # (U*S, C, R, R) in [0, 1], user-major
        save_labelled_grid(images, [f"ID_{u}" for u in shown], SAMPLES_PER_USER,
                           figures / "prior_samples.png", title=f"prior samples at step {step}")
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "user_token_gain": gain}
        save_curves(with_evaluation(history, metrics), ["loss", "val_loss"], figures / "prior_curves.png")
        return metrics

    return evaluate


def train_prior_stage(args: argparse.Namespace, cfg: LoopConfig, first_stage, train_images: torch.Tensor,
                      train_labels: torch.Tensor, val_images: torch.Tensor, val_labels: torch.Tensor,
                      user_ids: list[int], accelerator: Accelerator | None = None,
                      init_from: Path | None = None, colormap: str | None = None) -> tuple[object, dict]:
    """Encode the splits once, train (or resume) the prior, save it to ``OUTPUT_DIR/prior``.

    Args:
        args: finalized flags (prior sizes, user dropout).
        cfg: the loop settings of this stage.
        first_stage: the trained, frozen first stage.
        train_images, val_images: ``[N, C, R, R]`` in [-1, 1].
        train_labels, val_labels: ``[N]`` 0-based user labels.
        user_ids: public ids, ``user_ids[label]``.
        accelerator: shared accelerator.
        init_from: a saved prior whose body (all but the user tokens) to start from (``--init_from``,
            :mod:`.transfer`).
        colormap: the data's colormap (false-colour data modelled as one scalar channel), for the sample grids.

    Returns:
        ``(prior, summary)``; ``summary["finished"]`` is False when the run was cut short.
    """
    start = time.time()
    accelerator = accelerator or make_accelerator(cfg)
    figure_steps = cfg.eval_steps  # the small-data rule evaluates more often; figures keep --eval_steps
    args, cfg, reason = stage_settings(args, cfg, train_labels)
    logger.info(f"stage 2 settings: {reason}", main_process_only=True)
    first_stage = first_stage.to(accelerator.device).eval().requires_grad_(False)
    train_tokens, token_labels = encode_training_tokens(first_stage, train_images, train_labels,
                                                        args.prior_time_shifts or 0, cfg.seed)  # (N*(S+1), h, w)
    val_tokens = encode_tokens(first_stage, val_images)
    grid = tuple(train_tokens.shape[1:])
    logger.info(f"encoded {len(train_images)} train images ({len(train_tokens)} token grids with "
                f"{args.prior_time_shifts or 0} time shifts each) and {len(val_tokens)} validation images to "
                f"{grid[0]}x{grid[1]} token grids in {time.time() - start:.1f}s", main_process_only=True)
    config = build_prior_config(first_stage.config.num_vq_embeddings, len(user_ids), grid, n_layer=args.n_layer,
                                n_embd=args.n_embd, n_head=args.n_head, dropout=args.prior_dropout,
                                attention_dropout=getattr(args, "prior_attention_dropout", None),
                                user_ids=list(user_ids), token_order=args.token_order)
    fingerprint = stage1_fingerprint(cfg.output_dir / VQVAE_FOLDER)  # checked on resume, recorded in prior/
    cfg = dataclasses.replace(cfg, resume_settings={**cfg.resume_settings, "stage1_fingerprint": fingerprint})
    torch.manual_seed(cfg.seed)
    prior = build_prior(config)
    if init_from is not None:
        from .transfer import init_prior

        count = init_prior(prior, init_from)
        logger.info(f"stage 2 starts from {init_from} ({count} tensors; {len(user_ids)} new user tokens)",
                    main_process_only=True)
    step_fn = PriorStep(vocabulary_from_config(config), args.user_dropout)
    # Measured on the training images (--val_fraction 0), the lowest loss is always the last: keep no best then.
    held_out = not (val_images.shape == train_images.shape and torch.equal(val_images, train_images))
    best = BestWeights(cfg.checkpoint_dir) if held_out else None
    eval_fn = make_prior_eval(first_stage, val_tokens, val_labels, list(user_ids), cfg.output_dir, cfg.batch_size,
                              cfg.seed, best=best, resolution=int(val_images.shape[-1]), colormap=colormap,
                              figure_cadence=(cfg.eval_steps, figure_steps, cfg.max_train_steps))
    dataset = torch.utils.data.TensorDataset(train_tokens, token_labels)
    prior, history, finished = run_training(cfg, prior, dataset, step_fn, eval_fn, accelerator=accelerator)
    summary = {"finished": finished, "steps": history[-1]["step"] if history else 0,
               "seconds": round(time.time() - start, 1), "token_grid": list(grid), "history": history,
               "parameters": sum(p.numel() for p in prior.parameters()), "settings_reason": reason,
               "time_shifts": args.prior_time_shifts or 0, "dropout": args.prior_dropout,
               "attention_dropout": config.attn_pdrop, "early_stopping_patience": cfg.early_stopping_patience,
               "token_grids_per_epoch": len(train_tokens), "eval_steps": cfg.eval_steps}
    if finished and accelerator.is_main_process:  # one process measures and writes the model
        chosen = best.restore(prior, summary["steps"]) if best is not None else None
        if chosen is not None and chosen["step"] != summary["steps"]:
            prior.eval()
            loss = validation_loss(prior, val_tokens, val_labels, cfg.batch_size)
            gain = validation_loss(prior, val_tokens, val_labels, cfg.batch_size, null_user=True) - loss
            logger.info(f"keeping the prior of step {chosen['step']} (lowest validation loss {loss:.3f}) instead of "
                        f"the last step's", main_process_only=True)
        else:
            loss, gain = _final_validation(prior, history, val_tokens, val_labels, cfg.batch_size)
        summary.update(final_val_loss=loss, final_val_perplexity=math.exp(min(loss, 50.0)),
                       final_user_token_gain=gain, best_step=chosen["step"] if chosen else summary["steps"])
        save_pretrained_atomic(prior, cfg.output_dir / PRIOR_FOLDER)
        write_fingerprint(cfg.output_dir / PRIOR_FOLDER, fingerprint)
        logger.info(f"stage 2 done: validation loss {summary['final_val_loss']:.3f} (perplexity "
                    f"{summary['final_val_perplexity']:.1f}, user-token gain {summary['final_user_token_gain']:.4f} "
                    f"nats/code); saved to {cfg.output_dir / PRIOR_FOLDER}",
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
    """Whether stage 2 already finished in ``output_dir`` (its model exists and its newest checkpoint is the last
    step of its run)."""
    return (output_dir / PRIOR_FOLDER / "config.json").is_file() and run_finished(
        output_dir / "checkpoints" / PRIOR_FOLDER)


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

    setup_logging()
    args = build_parser().parse_args(argv)
    finalize_args(args)
    data, train_idx, val_idx = prepare_data(args)
    first_stage = load_first_stage(Path(args.output_dir) / VQVAE_FOLDER)
    cfg = loop_config(args, "prior", len(train_idx))
    measure_idx = val_idx or train_idx  # --val_fraction 0: measured on the training images
    _, summary = train_prior_stage(args, cfg, first_stage, data.images[train_idx], data.labels[train_idx],
                                   data.images[measure_idx], data.labels[measure_idx], data.user_ids,
                                   colormap=data.colormap)
    out = Path(args.output_dir) / "stage2_summary.json"
    if PartialState().is_main_process:
        out.write_text(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    from ..cli import run_cli

    sys.exit(run_cli(main))
