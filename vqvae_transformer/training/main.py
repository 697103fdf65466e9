"""``train_main.py``: stage 1, then stage 2, then the saved pipeline, summary, model card and (optionally) a push.

Resuming (``--resume_from_checkpoint latest``) skips a stage that already finished and continues an interrupted
one from its last checkpoint, reusing the saved split. A reused stage 1 (``--skip_vqvae``, or a resume after it
finished) fixes its own settings: a flag that contradicts the saved model is refused in one line when given
explicitly; when the preset filled it, the saved value is used, and the summary records the values used.
A new stage 1 removes the old prior and pipeline index of the folder before it is written (see
:mod:`~vqvae_transformer.models.fingerprint`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Sequence

import torch

from ..atomic import write_json_atomic
from ..errors import UserInputError
from ..images import make_user_grid
from ..layout import PRIOR_FOLDER, SAMPLE_GRID, SUMMARY_FILE, VQVAE_FOLDER
from ..models.fingerprint import read_fingerprint, stage1_fingerprint, write_fingerprint
from ..models.first_stage import FIRST_STAGE_CLASSES, load_first_stage
from ..models.pipeline import VQVAETransformerPipeline
from .args import (ArgumentParser, add_data_args, add_loop_args, add_prior_args, add_vqvae_args, adopt_flags,
                   finalize_args, loop_config)
from .data_setup import prepare_data
from .loop import make_accelerator
from .train_prior import train_prior_stage
from .transfer import NO_SOURCE
from .train_prior import stage_done as prior_done
from .train_vqvae import train_vqvae_stage
from .train_vqvae import stage_done as vqvae_done

logger = logging.getLogger(__name__)



def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description="Train both stages (tokenizer, then user-conditioned GPT-2 prior) and save a loadable pipeline. "
                    "With no --data_dir, trains on the embedded simulator of 31 walking people.")
    add_data_args(parser)
    add_vqvae_args(parser)
    add_prior_args(parser)
    add_loop_args(parser)
    g = parser.add_argument_group("stages and sharing")
    g.add_argument("--skip_vqvae", action="store_true", help="reuse OUTPUT_DIR/vqvae instead of training stage 1")
    g.add_argument("--skip_prior", action="store_true", help="stop after stage 1")
    g.add_argument("--init_from", default=None, metavar="MODEL",
                   help="start from a trained model: a folder written by train_main.py, a Hub repo id, or "
                        "'simulator' (the model of the embedded simulator, trained once with this preset and cached; "
                        "the first use takes a full training) ('none': random weights): stage 1 is fine-tuned from "
                        "its tokenizer (for a "
                        "quarter of the preset's steps unless --vqvae_steps is given), the prior from its prior "
                        "with new user tokens; its architecture flags are used (see "
                        "vqvae_transformer/training/transfer.py)")
    g.add_argument("--push_to_hub", action="store_true", help="push the pipeline (never checkpoints) to the Hub")
    g.add_argument("--hub_model_id", default=None, help="Hub repo id for --push_to_hub, e.g. me/microdoppler-gen")
    g.add_argument("--hub_private", action="store_true", help="create the Hub repo as private")
    from ..cli import add_debug_flag

    add_debug_flag(parser)  # run_cli removes --debug before parsing; listed for --help
    return parser


# flag -> key of the saved first stage's config.json that it sets
STAGE1_CONFIG_KEYS = {"codebook_size": "num_vq_embeddings", "codebook_dim": "codebook_dim",
                      "use_l2_norm": "use_l2_norm", "latent_channels": "latent_channels",
                      "block_out_channels": "block_out_channels", "resolution": "sample_size",
                      "channels": "in_channels", "ema_decay": "ema_decay",
                      "dead_code_threshold": "dead_code_threshold", "restart_sampling": "restart_sampling",
                      "commitment_beta": "commitment_beta"}


def saved_stage1_flags(vqvae_dir: Path) -> dict[str, object]:
    """``{flag: value}`` of the stage-1 flags (:data:`STAGE1_CONFIG_KEYS`, ``first_stage``) a saved first stage fixes."""
    config = json.loads((vqvae_dir / "config.json").read_text())
    saved = {flag: config[key] for flag, key in STAGE1_CONFIG_KEYS.items() if key in config}
    kinds = {cls.__name__: kind for kind, cls in FIRST_STAGE_CLASSES.items()}
    if config.get("_class_name") in kinds:
        saved["first_stage"] = kinds[config["_class_name"]]
    return saved


def adopt_saved_stage1(args: argparse.Namespace, vqvae_dir: Path, reason: str) -> dict[str, object]:
    """Make ``args`` describe the saved first stage that this run reuses instead of training one.

    A flag given explicitly that contradicts the saved model raises; a preset-filled (or unset) one takes the
    saved value.

    Returns:
        ``{flag: saved value}`` of the flags changed.

    Raises:
        UserInputError: one line naming the flag, the saved and the given value.
    """
    saved = saved_stage1_flags(vqvae_dir)
    changed = adopt_flags(args, saved, vqvae_dir, reason, "stage 1", "drop the flag or train a new stage 1")
    if changed:
        logger.info(f"stage 1 is reused ({reason}): using its saved " +
                    ", ".join(f"--{k} {v}" for k, v in changed.items()))
    return changed


def adopt_init_source(args: argparse.Namespace) -> Path:
    """``--init_from``: resolve and check the source model, take its architecture flags (not the image channels,
    which follow the data) and shorten a preset-filled stage-1 budget; sets ``args.init_source``."""
    from .transfer import INIT_FLAG, fine_tune_steps, resolve_init_source, source_prior_settings

    source = resolve_init_source(args.init_from, args.preset_name)
    reason = f"{INIT_FLAG} {args.init_from}"
    remedy = "drop the flag or start from another model"
    saved = {k: v for k, v in saved_stage1_flags(source / VQVAE_FOLDER).items() if k != "channels"}
    changed = adopt_flags(args, saved, source / VQVAE_FOLDER, reason, "stage 1", remedy)
    changed.update(adopt_flags(args, source_prior_settings(source), source / PRIOR_FOLDER, reason, "prior",
                               remedy))
    if changed:
        logger.info(f"{reason}: using its saved " + ", ".join(f"--{k} {v}" for k, v in changed.items()))
    shortened = None if args.skip_vqvae else fine_tune_steps(args)
    if shortened:
        logger.info(shortened)
    args.init_source = str(source)
    return source


def _clear_stage_checkpoints(accelerator, output_dir: Path, stage: str) -> None:
    """Remove a stage's old checkpoints (main process only), then wait for every rank.

    The folder is first renamed to a hidden ``.<stage>.removing-<pid>`` sibling (one atomic step), so a run
    killed during the removal never leaves a half-deleted checkpoint that ``--resume_from_checkpoint latest``
    could pick up; leftovers of such a kill (only ever this tool's own checkpoints) are removed here too."""
    parent = output_dir / "checkpoints"
    folder = parent / stage
    if accelerator.is_main_process:
        for stale in sorted(parent.glob(f".{stage}.removing-*")) if parent.is_dir() else []:
            shutil.rmtree(stale)
        if folder.is_dir():
            logger.warning(f"starting {stage} from scratch: removing old checkpoints in {folder} "
                           "(use --resume_from_checkpoint latest to continue them instead)")
            doomed = parent / f".{stage}.removing-{os.getpid()}"
            os.replace(folder, doomed)
            shutil.rmtree(doomed)
    accelerator.wait_for_everyone()


def _peak_memory_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux reports KiB


def _run_stage1(args, accelerator, data, train_idx, val_idx, summary: dict):
    output_dir = Path(args.output_dir)
    if args.skip_vqvae or (args.resume_from_checkpoint and vqvae_done(output_dir)):
        reason = "--skip_vqvae" if args.skip_vqvae else "it already finished"
        logger.info(f"stage 1: reusing {output_dir / VQVAE_FOLDER} ({reason})")
        return load_first_stage(output_dir / VQVAE_FOLDER), True, False
    if not args.resume_from_checkpoint:
        _clear_stage_checkpoints(accelerator, output_dir, VQVAE_FOLDER)
    cfg = loop_config(args, VQVAE_FOLDER, len(train_idx))
    init = Path(args.init_source) / VQVAE_FOLDER if getattr(args, "init_source", None) else None
    model, stage = train_vqvae_stage(args, cfg, data.images[train_idx], data.images[val_idx or train_idx],
                                     accelerator, init_from=init)
    summary["vqvae"] = {k: v for k, v in stage.items() if k != "history"}
    return model, stage["finished"], True


def _run_stage2(args, accelerator, first_stage, data, train_idx, val_idx, summary: dict, new_stage1: bool):
    """Train (or reuse, or continue) the prior; ``new_stage1``: stage 1 was trained in this run, so any saved
    prior or prior checkpoint belongs to another tokenizer and stage 2 starts from scratch."""
    output_dir = Path(args.output_dir)
    resume = args.resume_from_checkpoint and not new_stage1
    if resume and prior_done(output_dir):
        logger.info(f"stage 2: reusing {output_dir / PRIOR_FOLDER} (it already finished)")
        recorded = read_fingerprint(output_dir / PRIOR_FOLDER)
        if recorded is not None and recorded != stage1_fingerprint(output_dir / VQVAE_FOLDER):
            raise UserInputError(f"{output_dir / PRIOR_FOLDER} was trained on another stage 1 than "
                                 f"{output_dir / VQVAE_FOLDER}; run without --resume_from_checkpoint to train "
                                 "stage 2 again")
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel.from_pretrained(output_dir / PRIOR_FOLDER), True
    if not resume:
        _clear_stage_checkpoints(accelerator, output_dir, PRIOR_FOLDER)
    cfg = loop_config(args, PRIOR_FOLDER, len(train_idx))
    if not resume:
        cfg = dataclasses.replace(cfg, resume_from_checkpoint=None)
    measure_idx = val_idx or train_idx  # --val_fraction 0: measured on the training images
    init = Path(args.init_source) / PRIOR_FOLDER if getattr(args, "init_source", None) else None
    prior, stage = train_prior_stage(args, cfg, first_stage, data.images[train_idx], data.labels[train_idx],
                                     data.images[measure_idx], data.labels[measure_idx], data.user_ids, accelerator,
                                     init_from=init, colormap=data.colormap)
    summary["prior"] = {k: v for k, v in stage.items() if k != "history"}
    return prior, stage["finished"]


def _write_summary(output_dir: Path, summary: dict) -> Path:
    path = output_dir / SUMMARY_FILE
    previous = json.loads(path.read_text()) if path.is_file() else {}
    for stage in ("vqvae", "prior"):  # a resumed run keeps the figures of a stage it did not redo
        if stage not in summary and stage in previous:
            summary[stage] = previous[stage]
    return write_json_atomic(path, summary)


def card_figures(summary: dict) -> dict:
    """The headline figures of a training summary, for the model card (settings stay in the JSON)."""
    stage1, stage2 = summary.get("vqvae", {}), summary.get("prior", {})
    final = stage1.get("final", {})
    figures = {f"first stage {k} (validation split)": final[k] for k in
               ("codebook_usage", "normalized_entropy", "codebook_perplexity", "top_code_share", "psnr", "ssim")
               if k in final}
    figures.update({
        "first stage steps": stage1.get("steps"), "first stage wall time (s)": stage1.get("seconds"),
        "prior validation loss": stage2.get("final_val_loss"),
        "prior validation perplexity": stage2.get("final_val_perplexity"),
        "prior user-token gain (nats/code)": stage2.get("final_user_token_gain"),
        "prior steps": stage2.get("steps"), "prior wall time (s)": stage2.get("seconds"),
        "total wall time (s)": summary.get("wall_seconds"), "peak memory (GB)": summary.get("peak_memory_gb"),
        "users": summary.get("data", {}).get("num_users"),
        "training / validation images": "{} / {}".format(summary.get("data", {}).get("train_images"),
                                                         summary.get("data", {}).get("val_images")),
    })
    return {k: v for k, v in figures.items() if v is not None}


def _save_pipeline(args, first_stage, prior, data, summary: dict) -> VQVAETransformerPipeline:
    """Save the pipeline into OUTPUT_DIR, a sample grid for the card, the summary and the model card."""
    from ..hub import write_model_card

    output_dir = Path(args.output_dir)
    pipeline = VQVAETransformerPipeline(vqvae=first_stage.eval(), prior=prior.eval(), user_ids=data.user_ids,
                                        resolution=data.resolution, channels=data.channels,
                                        colormap=data.colormap)
    pipeline.save_pretrained(output_dir)
    fingerprint = stage1_fingerprint(output_dir / VQVAE_FOLDER)  # of the vqvae/ as the pipeline wrote it
    write_fingerprint(output_dir / PRIOR_FOLDER, fingerprint)
    write_fingerprint(output_dir, fingerprint)  # beside model_index.json
    shown = data.user_ids[:min(len(data.user_ids), 31)]
    per_user = 4
    generator = torch.Generator().manual_seed(args.seed)
    pixels = pipeline(user_ids=shown, num_images_per_user=per_user, generator=generator, output_type="pt").images
    make_user_grid(pixels, shown, per_user).save(output_dir / SAMPLE_GRID)
    _write_summary(output_dir, summary)
    write_model_card(output_dir, summary=card_figures(summary), repo_id=args.hub_model_id)
    return pipeline


def train(args: argparse.Namespace) -> dict:
    """Run the whole training described by finalized flags; returns the summary written to OUTPUT_DIR."""
    start = time.time()
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(loop_config(args, VQVAE_FOLDER, 1))
    data, train_idx, val_idx = prepare_data(args, reuse_split=bool(args.resume_from_checkpoint))
    summary: dict = {"settings": {k: v for k, v in vars(args).items() if k != "stop_after_steps"},
                     "data": {"source": data.source, "num_users": data.num_users, "user_ids": data.user_ids,
                              "train_images": len(train_idx), "val_images": len(val_idx),
                              "resolution": data.resolution, "channels": data.channels}}
    # What ran, not what was asked: --mixed_precision auto is resolved for this machine by make_accelerator.
    summary["settings"].update(mixed_precision=accelerator.mixed_precision, mixed_precision_flag=args.mixed_precision)
    first_stage, finished, new_stage1 = _run_stage1(args, accelerator, data, train_idx, val_idx, summary)
    if finished and accelerator.is_main_process:
        _write_summary(output_dir, summary)  # stage 1's figures survive an interruption of stage 2
    if finished and not args.skip_prior:
        prior, finished = _run_stage2(args, accelerator, first_stage, data, train_idx, val_idx, summary, new_stage1)
        if finished and accelerator.is_main_process:
            summary["wall_seconds"] = round(time.time() - start, 1)
            summary["peak_memory_gb"] = round(_peak_memory_gb(), 2)
            _save_pipeline(args, first_stage, prior, data, summary)
            if args.push_to_hub:
                from ..hub import push_to_hub

                url = push_to_hub(output_dir, args.hub_model_id, private=args.hub_private)
                logger.info(f"pushed to {url}")
    if not finished:
        logger.warning("training stopped before the end; continue with --resume_from_checkpoint latest")
    summary["finished"] = finished
    accelerator.end_training()
    return summary


def settings_line(args: argparse.Namespace, preset: str, device: str) -> str:
    """The run's first settings line. Prior steps the preset filled are marked as such: on small data stage 2
    replaces them (``presets.small_data_rule``) and its own first line says so. A stage that ``--skip_vqvae`` /
    ``--skip_prior`` leaves alone is named as reused / skipped, not with the preset's steps it will not train."""
    adapts = " (the preset's: stage 2 adapts them to small data and says so)" if "prior_steps" in getattr(
        args, "preset_filled", ()) else ""
    stage1 = "stage 1 reused (--skip_vqvae)" if getattr(args, "skip_vqvae", False) else \
        f"stage 1 {args.vqvae_steps} steps"
    prior = "prior skipped (--skip_prior)" if getattr(args, "skip_prior", False) else \
        f"prior {args.n_layer}x{args.n_embd} {args.prior_steps} steps{adapts}"
    return f"preset {preset}: {args.resolution} px, K={args.codebook_size}, {stage1}, {prior}, device {device}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``train_main.py``."""
    from ..cli import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    preset = finalize_args(args)
    from ..output_folder import check_writable  # (issue 13) an unusable --output_dir fails now, not after stage 1

    check_writable(args.output_dir, "--output_dir")
    if args.push_to_hub and not args.hub_model_id:
        raise UserInputError("--push_to_hub needs --hub_model_id (e.g. your-name/microdoppler-generator)")
    if args.init_from and args.init_from != NO_SOURCE:
        adopt_init_source(args)
    vqvae_dir = Path(args.output_dir) / VQVAE_FOLDER
    if args.skip_vqvae and not (vqvae_dir / "config.json").is_file():
        raise UserInputError(f"--skip_vqvae, but {vqvae_dir} holds no trained stage 1")
    if args.skip_vqvae or (args.resume_from_checkpoint and vqvae_done(Path(args.output_dir))):
        adopt_saved_stage1(args, vqvae_dir, "--skip_vqvae" if args.skip_vqvae else "it already finished")
    logger.info(settings_line(args, preset, "cuda" if torch.cuda.is_available() else "cpu"))
    summary = train(args)
    if summary["finished"] and not args.skip_prior:
        logger.info(f"done in {summary.get('wall_seconds', 0):.0f}s; model in {args.output_dir}; next: "
                    f"python generate_main.py --model_dir {args.output_dir}")
    return 0


if __name__ == "__main__":  # python -m vqvae_transformer.training.main: the same as train_main.py
    import sys

    from ..cli import run_cli

    sys.exit(run_cli(main))
