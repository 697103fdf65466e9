"""Command-line flags shared by ``train_main.py`` and the per-stage training modules.

Model and training flags default to None and are filled from the preset (``--preset auto|cpu|gpu``); a flag given
explicitly always wins. Values are validated after parsing, naming the offending flag.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..data.colormap import COLORMAP_CHOICES, DEFAULT_COLORMAP
from ..cli import ArgumentParser  # noqa: F401  (the one CLI parser; re-exported for the stage modules)
from ..errors import UserInputError
from ..layout import DEFAULT_MODEL_DIR
from .loop import MIXED_PRECISIONS, LoopConfig
from .presets import PRESETS, apply_preset, resolve_preset

DEFAULT_OUTPUT_DIR = DEFAULT_MODEL_DIR

# The flags a stage's weights depend on: saved in its checkpoints, and a resume with other values is refused.
DATA_SETTINGS = ("data_dir", "dataset_name", "num_users", "resolution", "channels", "colormap", "samples_per_user",
                 "val_fraction", "seed")
STAGE_SETTINGS = {
    "vqvae": DATA_SETTINGS + ("first_stage", "block_out_channels", "latent_channels", "codebook_size",
                              "codebook_dim", "use_l2_norm", "adversarial_weight", "adversarial_start"),
    "prior": DATA_SETTINGS + ("n_layer", "n_embd", "n_head", "token_order"),
}


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def preset_help(dest: str) -> str:
    """`` (preset: X)`` or `` (preset: X on CPU, Y on GPU)`` for a flag the presets fill, read from the presets
    themselves (so ``--help`` never disagrees with what a run uses); ``""`` for other flags."""
    values = {name: preset[dest] for name, preset in PRESETS.items() if dest in preset}
    if not values:
        return ""
    shown = {name: _show(v) for name, v in values.items()}
    if len(set(shown.values())) == 1:
        return f" (preset: {next(iter(shown.values()))})"
    return " (preset: " + ", ".join(f"{v} on {name.upper()}" for name, v in shown.items()) + ")"


def _annotate_presets(group) -> None:
    """Append :func:`preset_help` to the help of every flag of ``group`` that a preset fills."""
    for action in group._group_actions:
        if action.help and action.help is not argparse.SUPPRESS:
            action.help += preset_help(action.dest).replace("%", "%%")


class _DeprecatedSpelling(argparse.Action):
    """Store the value; warn once when the flag was spelled with its deprecated alias (the last option string)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == self.option_strings[-1] and len(self.option_strings) > 1:
            import logging

            logging.getLogger(__name__).warning(f"{option_string} is deprecated in this tool; use "
                                                f"{self.option_strings[0]} (same meaning)")
        setattr(namespace, self.dest, values)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", default=None, help="folder of ID_<k>/ image folders (default: the embedded "
                   "simulator of walking people)")
    g.add_argument("--dataset_name", default=None, help="a Hub dataset name or a local `datasets` folder with "
                   "image and label columns (instead of --data_dir)")
    g.add_argument("--num_users", type=int, default=None, help="use the first N users (by folder id); default: "
                   "every user of the data, 31 for the simulator")
    g.add_argument("--resolution", type=int, default=None, help="image side in pixels")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 (grayscale) or 3 (colour); default: detected from the data")
    g.add_argument("--colormap", choices=COLORMAP_CHOICES, default=DEFAULT_COLORMAP,
                   help="colour images that lie on this matplotlib colormap are modelled as its scalar (one "
                        "channel) and generated images are written back in it; auto detects it (the choice and "
                        "its error are logged and saved in data_info.json), none keeps RGB "
                        f"(default: {DEFAULT_COLORMAP})")
    g.add_argument("--simulated_per_user", "--samples_per_user", dest="samples_per_user", type=int, default=None,
                   action=_DeprecatedSpelling,
                   help="recordings per simulated person when no data is given (--samples_per_user: the former, "
                        "deprecated spelling; in generate_main.py --samples_per_user counts generated images)")
    g.add_argument("--skip_bad_images", action="store_true", help="skip unreadable images (listed in the log) "
                   "instead of stopping")
    g.add_argument("--val_fraction", type=float, default=0.2, help="per-user share of images held out for "
                   "validation (default 0.2; 0 trains on everything and measures on the training images)")


def add_vqvae_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("stage 1: tokenizer")
    g.add_argument("--first_stage", choices=("vq", "kl"), default=None, help="backbone: diffusers VQModel (vq) or "
                   "AutoencoderKL (kl), both with our EMA quantizer")
    g.add_argument("--block_out_channels", type=int, nargs="+", default=None,
                   help="channels per encoder block; n blocks downsample by 2^(n-1)")
    g.add_argument("--latent_channels", type=int, default=None, help="latent channels before the quantizer")
    g.add_argument("--codebook_size", type=int, default=None, help="number of codes K")
    g.add_argument("--codebook_dim", type=int, default=None, help="lookup width (the latent channels: a full-width lookup; fewer: "
                   "linear projections to this width)")
    g.add_argument("--use_l2_norm", action=argparse.BooleanOptionalAction, default=None,
                   help="compare codes on the unit sphere")
    g.add_argument("--ema_decay", type=float, default=None, help="EMA decay of the codebook statistics")
    g.add_argument("--dead_code_threshold", type=float, default=None,
                   help="restart codes whose EMA count per step falls below this")
    g.add_argument("--restart_sampling", choices=("error", "uniform"), default=None,
                   help="re-seed dead codes from encoder outputs drawn by quantisation error or uniformly")
    g.add_argument("--commitment_beta", type=float, default=None, help="commitment loss weight")
    g.add_argument("--vqvae_steps", type=int, default=None, help="optimiser steps of stage 1")
    g.add_argument("--vqvae_epochs", type=float, default=None, help="epochs of stage 1 (instead of --vqvae_steps)")
    g.add_argument("--vqvae_batch_size", type=int, default=None, help="batch size of stage 1")
    g.add_argument("--vqvae_learning_rate", type=float, default=None, help="peak learning rate of stage 1")
    g.add_argument("--recon_loss", choices=("l1", "l2", "l1+l2"), default="l1+l2", help="reconstruction loss")
    g.add_argument("--lpips", choices=("auto", "on", "off"), default="auto",
                   help="perceptual loss with pretrained LPIPS: auto uses it when its weights are on disk "
                   "(one warning otherwise), on fails without them, off never uses it")
    g.add_argument("--lpips_weight", type=float, default=0.1, help="weight of the LPIPS loss")
    g.add_argument("--adversarial_weight", type=float, default=0.0,
                   help="weight of a patch discriminator's adversarial term (VQGAN's adaptive weight; 0: off). It "
                   "sharpens the decoder's texture; see the README's first-stage table")
    g.add_argument("--adversarial_start", type=float, default=0.5,
                   help="share of stage 1's steps before the discriminator starts (default 0.5)")
    g.add_argument("--time_shift", action=argparse.BooleanOptionalAction, default=True,
                   help="random circular time shifts as augmentation (never vertical flips: they reverse Doppler)")


def add_prior_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("stage 2: prior")
    g.add_argument("--n_layer", type=int, default=None, help="GPT-2 layers")
    g.add_argument("--n_embd", type=int, default=None, help="GPT-2 width")
    g.add_argument("--n_head", type=int, default=None, help="GPT-2 attention heads")
    g.add_argument("--prior_dropout", type=float, default=None,
                   help="GPT-2 residual and embedding dropout")
    g.add_argument("--prior_attention_dropout", type=float, default=None,
                   help="GPT-2 attention dropout (slow on a CPU: 1.6x the step time of the CPU preset's prior)")
    g.add_argument("--token_order", choices=("column", "row"), default=None,
                   help="how the prior reads the token grid: column by column (time order for spectrograms) or row "
                        "by row")
    g.add_argument("--user_dropout", type=float, default=None,
                   help="probability of replacing the user token by the null token (for guidance)")
    g.add_argument("--prior_time_shifts", type=int, default=None,
                   help="also encode each training image at this many random circular time shifts, so the prior "
                        "sees several token grids per recording (more when the data is small; the first lines of the "
                        "run say what was chosen)")
    g.add_argument("--prior_early_stopping", type=int, default=None,
                   help="stop stage 2 once this many evaluations in a row bring no lower validation loss (the best "
                        "weights are kept either way); 0 never stops early (more when the data is small; the first "
                        "lines of the run say what was chosen)")
    g.add_argument("--prior_steps", type=int, default=None, help="optimiser steps of stage 2")
    g.add_argument("--prior_epochs", type=float, default=None, help="epochs of stage 2 (instead of --prior_steps)")
    g.add_argument("--prior_batch_size", type=int, default=None, help="batch size of stage 2")
    g.add_argument("--prior_learning_rate", type=float, default=None, help="peak learning rate of stage 2")


def add_loop_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help=f"where the model goes (default "
                   f"{DEFAULT_OUTPUT_DIR})")
    g.add_argument("--preset", choices=("auto", "cpu", "gpu"), default="auto",
                   help="fills every model/training flag you do not give; auto = gpu if CUDA is present")
    g.add_argument("--batch_size", type=int, default=None, help="batch size of both stages (per-stage flags win)")
    g.add_argument("--learning_rate", type=float, default=None, help="learning rate of both stages "
                   "(per-stage flags win)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="batches per optimiser step")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm (0: off)")
    g.add_argument("--lr_warmup_steps", type=int, default=None, help="linear warm-up steps (default: 5%% of steps)")
    g.add_argument("--mixed_precision", choices=MIXED_PRECISIONS, default=None,
                   help="mixed precision; auto = bf16 where the device computes it natively (a CPU with AVX-512 "
                        "BF16 or AMX, a CUDA GPU with bf16), else no (default: the preset's)")
    g.add_argument("--seed", type=int, default=0, help="seed of data split, simulation, initialisation, sampling")
    g.add_argument("--checkpointing_steps", type=int, default=None, help="save training state every N steps")
    g.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep at most this many checkpoints")
    g.add_argument("--resume_from_checkpoint", default=None,
                   help="'latest' or a checkpoint folder: continue an interrupted run")
    g.add_argument("--eval_steps", type=int, default=None, help="evaluate and write figures every N steps")
    g.add_argument("--report_to", default="none",
                   help="tracker for accelerate (tensorboard, wandb, ...; default none)")
    # Tests only: "vqvae:N" or "prior:N" stops that stage after step N, as if the process had been killed.
    g.add_argument("--stop_after_steps", default=None, help=argparse.SUPPRESS)


def finalize_args(args: argparse.Namespace) -> str:
    """Apply the preset and the both-stage shortcuts, then validate; returns the preset name used."""
    if args.batch_size is not None:
        for key in ("vqvae_batch_size", "prior_batch_size"):
            if hasattr(args, key) and getattr(args, key) is None:
                setattr(args, key, args.batch_size)
    if args.learning_rate is not None:
        for key in ("vqvae_learning_rate", "prior_learning_rate"):
            if hasattr(args, key) and getattr(args, key) is None:
                setattr(args, key, args.learning_rate)
    name, preset = resolve_preset(args.preset)
    # What the preset filled may still follow the data size (stage 2 on small data); what was given never changes.
    args.preset_filled = apply_preset(args, preset)
    args.preset_name = name
    validate_args(args)
    return name


def check_report_to(value: str) -> None:
    """``--report_to``: none, all or one tracker accelerate knows whose package is installed (UserInputError)."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [t.value for t in LoggerType if t.value != "all"]
    if value in ("none", "all"):
        return
    if value not in known:
        raise UserInputError(f"--report_to {value!r} is not a tracker; use none, all or one of {', '.join(known)}")
    if value not in [str(getattr(t, "value", t)) for t in get_available_trackers()]:
        raise UserInputError(f"--report_to {value}: the {value} package is not installed; pip install {value} or "
                             "use --report_to none")


def validate_args(args: argparse.Namespace) -> None:
    """Reject impossible values, naming the flag and the value."""
    check_report_to(getattr(args, "report_to", "none") or "none")  # (issue 13: one line, the values that exist)
    positive = ("num_users", "resolution", "samples_per_user", "latent_channels", "codebook_size", "codebook_dim",
                "vqvae_steps", "vqvae_batch_size", "n_layer", "n_embd", "n_head", "prior_steps", "prior_batch_size",
                "gradient_accumulation_steps", "checkpointing_steps", "checkpoints_total_limit", "eval_steps")
    for key in positive:
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise UserInputError(f"--{key} must be a positive integer, got {value}")
    if args.data_dir is not None and getattr(args, "dataset_name", None) is not None:
        raise UserInputError(f"give --data_dir ({args.data_dir}) or --dataset_name ({args.dataset_name}), not both")
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserInputError(f"--val_fraction must lie in [0, 1), got {args.val_fraction}")
    for key in ("vqvae_learning_rate", "prior_learning_rate"):
        value = getattr(args, key, None)
        if value is not None and value <= 0:
            raise UserInputError(f"--{key} must be > 0, got {value}")
    shifts = getattr(args, "prior_time_shifts", None)
    if shifts is not None and shifts < 0:
        raise UserInputError(f"--prior_time_shifts must be >= 0 (0: one token grid per image), got {shifts}")
    patience = getattr(args, "prior_early_stopping", None)
    if patience is not None and patience < 0:
        raise UserInputError(f"--prior_early_stopping must be >= 0 (0: never stop early), got {patience}")
    weight = getattr(args, "adversarial_weight", None)
    if weight is not None and not (math.isfinite(weight) and weight >= 0):
        raise UserInputError(f"--adversarial_weight must be >= 0 (0: off), got {weight}")
    start = getattr(args, "adversarial_start", None)
    if start is not None and not 0.0 <= start < 1.0:
        raise UserInputError(f"--adversarial_start must lie in [0, 1) (a share of stage 1's steps), got {start}")
    for key in ("user_dropout", "prior_dropout", "prior_attention_dropout"):
        value = getattr(args, key, None)
        if value is not None and not 0.0 <= value < 1.0:
            raise UserInputError(f"--{key} must lie in [0, 1), got {value}")
    if getattr(args, "n_embd", None) and getattr(args, "n_head", None) and args.n_embd % args.n_head:
        raise UserInputError(f"--n_embd {args.n_embd} must be divisible by --n_head {args.n_head}")
    blocks = getattr(args, "block_out_channels", None)
    if blocks is not None and args.resolution is not None and args.resolution % (2 ** (len(blocks) - 1)):
        raise UserInputError(f"--resolution {args.resolution} must be divisible by 2^{len(blocks) - 1} "
                             f"(from {len(blocks)} --block_out_channels)")
    codebook_dim, latent_channels = getattr(args, "codebook_dim", None), getattr(args, "latent_channels", None)
    if codebook_dim is not None and latent_channels is not None and codebook_dim > latent_channels:
        raise UserInputError(f"--codebook_dim {args.codebook_dim} must not exceed --latent_channels "
                             f"{args.latent_channels}")


def loop_config(args: argparse.Namespace, stage: str, num_examples: int) -> LoopConfig:
    """The :class:`LoopConfig` of ``stage`` (``vqvae`` or ``prior``) from parsed, finalized flags."""
    from .loop import steps_for_epochs

    batch = getattr(args, f"{stage}_batch_size")
    epochs = getattr(args, f"{stage}_epochs", None)
    steps = steps_for_epochs(epochs, num_examples, batch, args.gradient_accumulation_steps) if epochs \
        else getattr(args, f"{stage}_steps")
    output_dir = Path(args.output_dir)
    warmup = args.lr_warmup_steps if args.lr_warmup_steps is not None else max(1, steps // 20)
    return LoopConfig(
        output_dir=output_dir, checkpoint_dir=output_dir / "checkpoints" / stage, max_train_steps=steps,
        batch_size=batch, learning_rate=getattr(args, f"{stage}_learning_rate"), lr_warmup_steps=warmup,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_grad_norm=args.max_grad_norm,
        mixed_precision=args.mixed_precision, seed=args.seed, checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit, resume_from_checkpoint=args.resume_from_checkpoint,
        report_to=args.report_to, eval_steps=min(args.eval_steps, steps), tracker_name=f"{stage}",
        tracker_config={k: v for k, v in vars(args).items() if v is not None},
        stop_after_steps=_stop_after(args.stop_after_steps, stage),
        resume_settings={k: getattr(args, k) for k in STAGE_SETTINGS[stage] if hasattr(args, k)},
    )


def _stop_after(spec: str | None, stage: str) -> int | None:
    if not spec:
        return None
    name, _, steps = spec.partition(":")
    return int(steps) if name == stage else None


def adopt_flags(args: argparse.Namespace, saved: dict, source, reason: str, what: str, remedy: str) -> dict:
    """Set each flag of ``saved`` (``{flag: value}`` read from a saved model) on ``args`` unless it was given
    explicitly (a preset-filled or unset flag takes the saved value); an explicit contradiction raises.

    Returns:
        ``{flag: saved value}`` of the flags changed.

    Raises:
        UserInputError: ``--<flag> <given> contradicts the <what> in <source> (<reason>), saved with --<flag>
            <value>; <remedy>``.
    """
    filled = set(getattr(args, "preset_filled", ()))
    changed = {}
    for flag, value in saved.items():
        given = getattr(args, flag, None)
        same = list(given) == list(value) if isinstance(given, (list, tuple)) and isinstance(value, list) \
            else given == value
        if same:
            continue
        if given is not None and flag not in filled:
            show = lambda v: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
            raise UserInputError(f"--{flag} {show(given)} contradicts the {what} in {source} ({reason}), saved "
                                 f"with --{flag} {show(value)}; {remedy}")
        setattr(args, flag, value)
        changed[flag] = value
    return changed


def _annotated(add):
    """Wrap an ``add_*_args`` function so the groups it adds get :func:`preset_help` in their help texts."""
    def wrapper(parser: argparse.ArgumentParser) -> None:
        before = len(parser._action_groups)
        add(parser)
        for group in parser._action_groups[before:]:
            _annotate_presets(group)
    wrapper.__doc__, wrapper.__name__ = add.__doc__, add.__name__
    return wrapper


add_data_args = _annotated(add_data_args)
add_vqvae_args = _annotated(add_vqvae_args)
add_prior_args = _annotated(add_prior_args)
add_loop_args = _annotated(add_loop_args)

