"""The training loop both stages share, on Accelerate.

One loop, parameterised by a step function (batch -> loss and logs) and an evaluation function: devices, mixed
precision, gradient accumulation, clipping, warm-up + cosine schedule, checkpoints ``checkpoint-<step>`` with a total
limit, ``--resume_from_checkpoint latest`` with ``skip_first_batches``, trackers, and a tqdm bar on the main process.

Several processes: every rank writes its part of a checkpoint, then all wait; only the main process renames,
prunes and writes files. A checkpoint records ``cfg.resume_settings`` (the flags its weights depend on); a resume
with different values is refused in one line before any state is loaded.

Signals: while the loop runs, SIGINT and SIGTERM only set a flag; at the end of the current optimiser step every
rank joins in saving a checkpoint at that step, and :class:`~vqvae_transformer.cli.TrainingInterrupted` carries the
one line ``run_cli`` prints (exit 130 or 143). Temp folders a hard kill left behind are removed at start.

Numerical faults: a NaN/inf loss (any micro-batch, any rank) or, outside fp16 (whose scaler skips such steps), a
non-finite gradient norm stops the loop at that optimiser step with :class:`NumericalFault` (a
:class:`~vqvae_transformer.errors.UserInputError`: one line, exit 2) naming the stage, the step and the last good
checkpoint; that step is neither checkpointed nor evaluated, and the stage writes no final model. A resume applies
this run's learning rate, so "lower the learning rate, then resume" does what it says.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, parse_flag_from_env, set_seed
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..atomic import write_text_atomic
from ..cli import TrainingInterrupted
from ..errors import UserInputError

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"


class NumericalFault(UserInputError):
    """The loss (or the gradient norm) became NaN or infinite; the message names stage, step and what to do.

    The ranks agree on the fault (it is reduced across processes), so every rank raises it and only the main
    process prints it."""

    on_every_rank = True


StepFn = Callable[[torch.nn.Module, tuple, Accelerator], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[torch.nn.Module, int, list], dict[str, float]]
EpochFn = Callable[[torch.nn.Module, int], None]


@dataclass
class LoopConfig:
    """Settings of one stage's training loop (the CLI flags map onto these)."""

    output_dir: Path
    checkpoint_dir: Path
    max_train_steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 50
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    checkpointing_steps: int = 200
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None
    report_to: str = "none"
    eval_steps: int = 200
    tracker_name: str = "vqvae_transformer"
    tracker_config: dict = field(default_factory=dict)
    stop_after_steps: int | None = None  # testing hook: stop (as if killed) after this global step
    # Stop, as a finished run, once this many evaluations in a row brought no lower ``val_loss`` (0: never).
    early_stopping_patience: int = 0
    # Flags the weights depend on ({flag name without --: value}); saved in each checkpoint, compared on resume.
    resume_settings: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Reject impossible settings with the offending value."""
        for name in ("max_train_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                     "checkpoints_total_limit", "eval_steps"):
            if getattr(self, name) < 1:
                raise UserInputError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise UserInputError(f"learning rate must be > 0, got {self.learning_rate}")
        if self.early_stopping_patience < 0:
            raise UserInputError(f"early stopping patience must be >= 0 (0: never), got {self.early_stopping_patience}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise UserInputError(f"--mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, got "
                                 f"{self.mixed_precision!r}")


MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX-512 BF16 or AMX); elsewhere PyTorch emulates
    bf16 and autocast makes CPU training slower, not faster."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_mixed_precision(value: str, device: torch.device) -> tuple[str, str]:
    """``--mixed_precision`` as Accelerate takes it, and why: ``auto`` is bf16 where ``device`` computes it
    natively (a CUDA GPU with bf16, a CPU with AVX-512 BF16 or AMX), else ``no``; other values are kept.

    On a 2-core AVX-512 BF16 CPU, bf16 autocast shortened a training step of the CPU preset's stages by 1.16-1.24x
    and a whole users'-shape run by 11 % with the same validation figures (README, ``benchmarks/bench_cpu_precision.py``).
    """
    if value != "auto":
        return value, "as given"
    kind = torch.device(device).type
    if kind == "cuda":
        native = torch.cuda.is_bf16_supported()
        where = f"this GPU {'computes' if native else 'does not compute'} bf16"
    elif kind == "cpu":
        native = cpu_has_native_bf16()
        where = f"this CPU {'has' if native else 'has no'} native bf16 (AVX-512 BF16 / AMX)"
    else:
        native, where = False, f"bf16 autocast is not used on {kind}"
    return ("bf16" if native else "no"), f"--mixed_precision auto: {where}"


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints in ``checkpoint_dir``, oldest first (by step number, not by name)."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for entry in checkpoint_dir.iterdir():
        suffix = entry.name[len(CHECKPOINT_PREFIX):]
        if entry.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and (entry / STATE_FILE).is_file():
            found.append((int(suffix), entry))
    return [path for _, path in sorted(found)]


def run_finished(checkpoint_dir: Path) -> bool:
    """Whether the newest checkpoint in ``checkpoint_dir`` is the last step of its run.

    False with no checkpoint, or when a run was cut short (killed, interrupted, a numerical fault) after it; True
    for a run that stopped early on its validation loss, and for a checkpoint of an older version, which does not
    record its run's length.
    """
    found = list_checkpoints(checkpoint_dir)
    if not found:
        return False
    state = json.loads((found[-1] / STATE_FILE).read_text())
    total = state.get("max_train_steps")
    return total is None or int(state["step"]) >= int(total) or bool(state.get("stopped_early"))


def resolve_checkpoint(checkpoint_dir: Path, resume: str | None) -> Path | None:
    """Map ``--resume_from_checkpoint`` (None, ``latest`` or a path) to a checkpoint folder.

    ``latest`` with no checkpoint yet starts from scratch (and says so); an explicit path that does not exist is
    an error.
    """
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(checkpoint_dir)
        if not found:
            logger.info(f"no checkpoint in {checkpoint_dir}; starting from scratch", main_process_only=True)
            return None
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserInputError(f"--resume_from_checkpoint {resume}: not a checkpoint folder (no {STATE_FILE}); "
                             f"use 'latest' or a {CHECKPOINT_PREFIX}<step> folder under {checkpoint_dir}")
    return path


def check_resume_settings(checkpoint: Path, saved: dict | None, given: dict) -> None:
    """Refuse to resume ``checkpoint`` with flags that contradict the ones it was trained with.

    Args:
        checkpoint: the checkpoint folder (named in the message).
        saved: ``resume_settings`` recorded in it (None: a checkpoint from before settings were recorded).
        given: this run's ``resume_settings``.

    Raises:
        UserInputError: one line naming the first differing flag, the saved and the given value.
    """
    if saved is None:
        logger.warning(f"{checkpoint} records no settings (older version): cannot check this run's flags match",
                       main_process_only=True)
        return
    for key, value in given.items():
        if key not in saved or saved[key] is None or _same(saved[key], value):  # None: it was left automatic
            continue
        if key == "stage1_fingerprint":
            raise UserInputError(f"{checkpoint} was trained on another first stage than the one in the model folder "
                                 f"(fingerprint {str(saved[key])[:12]} vs {str(value)[:12]}); run without "
                                 "--resume_from_checkpoint to train stage 2 again on it")
        raise UserInputError(f"--{key} {_flag_value(value)} contradicts the checkpoint {checkpoint}, saved with "
                             f"--{key} {_flag_value(saved[key])}; give the saved value or run without "
                             "--resume_from_checkpoint")


def _same(a, b) -> bool:
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 - JSON turns tuples into lists
    return norm(a) == norm(b)


def _flag_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return "(unset)" if value is None else str(value)


def save_checkpoint(accelerator: Accelerator, cfg: LoopConfig, step: int, history: list[dict],
                    stopped_early: bool = False) -> Path:
    """``save_state`` into ``checkpoint-<step>`` (written to a temp folder, then renamed) and prune old ones.

    Every rank writes its files into the temp folder; only after all have finished does the main process write
    the state file, rename the folder and prune old checkpoints, and the others wait for that.
    """
    final = cfg.checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = cfg.checkpoint_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(output_dir=str(tmp))
    accelerator.wait_for_everyone()  # every rank's random_states_<rank>.pkl is in tmp
    if accelerator.is_main_process:
        write_text_atomic(tmp / STATE_FILE, json.dumps({"step": step, "max_train_steps": cfg.max_train_steps,
                                                        "stopped_early": stopped_early, "history": history,
                                                        "settings": cfg.resume_settings}, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(cfg.checkpoint_dir)[:-cfg.checkpoints_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def remove_stale_temp_checkpoints(accelerator: Accelerator, checkpoint_dir: Path) -> None:
    """Remove ``.checkpoint-*.tmp`` folders a killed run left (main process), then wait for every rank."""
    if accelerator.is_main_process and checkpoint_dir.is_dir():
        for stale in checkpoint_dir.glob(f".{CHECKPOINT_PREFIX}*.tmp"):
            logger.info(f"removing {stale}, an unfinished checkpoint of an interrupted run", main_process_only=True)
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()


class StopSignals:
    """While active, SIGINT and SIGTERM set :attr:`signum` instead of stopping the process (main thread only).

    A second signal of the same kind while the checkpoint is being written is also only recorded.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def any_rank(self, accelerator: Accelerator) -> int | None:
        """The signal any rank received (all ranks call this together each step), or None."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum or 0], device=accelerator.device)
        return int(accelerator.reduce(flag, reduction="max").item()) or None


def make_accelerator(cfg: LoopConfig) -> Accelerator:
    """An ``Accelerator`` for this stage: mixed precision, accumulation, trackers, a seedable sampler."""
    log_with = None if cfg.report_to in ("none", "", None) else cfg.report_to
    # The device the Accelerator will use, found as AcceleratorState finds it (ACCELERATE_USE_CPU: `accelerate
    # launch --cpu`); a PartialState made without it would fix a multi-process CPU run to one process.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    precision, reason = resolve_mixed_precision(cfg.mixed_precision, state.device)
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(cfg.output_dir),
                                            logging_dir=str(cfg.output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if log_with is not None:
        accelerator.init_trackers(cfg.tracker_name, config=_flat_config(cfg.tracker_config))
    logger.info(f"accelerate: {accelerator.distributed_type.value}, {accelerator.num_processes} process(es), "
                f"device {accelerator.device}, mixed precision {accelerator.mixed_precision} ({reason})",
                main_process_only=True)
    return accelerator


def _flat_config(config: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.items()}


def run_training(
    cfg: LoopConfig,
    model: torch.nn.Module,
    dataset: Dataset,
    step_fn: StepFn,
    eval_fn: EvalFn | None = None,
    on_epoch_start: EpochFn | None = None,
    accelerator: Accelerator | None = None,
) -> tuple[torch.nn.Module, list[dict], bool]:
    """Train ``model`` for ``cfg.max_train_steps`` optimiser steps.

    Args:
        cfg: loop settings.
        model: the module to train (not yet prepared).
        dataset: map-style dataset of training examples.
        step_fn: ``(prepared_model, batch, accelerator) -> (loss, logs)``; runs the forward pass. Optionally it
            has ``prepare(accelerator)``, called once after the model is prepared and before a checkpoint is
            loaded (what it prepares is saved and restored with the checkpoints), and a ``global_step`` attribute,
            set to the number of optimiser steps already taken before each batch.
        eval_fn: ``(unwrapped_model, step, history) -> metrics``, called on the main process every ``eval_steps``
            and at the end (the model is in eval mode during the call; it may write figures).
        on_epoch_start: ``(unwrapped_model, epoch)`` hook, e.g. to reset usage counters.
        accelerator: reuse an existing accelerator (one per process is the norm).

    Returns:
        ``(unwrapped model, history, finished)``; ``finished`` is False when ``stop_after_steps`` cut it short.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint at the step it interrupted was saved first.
        UserInputError: the resumed checkpoint was saved with other ``cfg.resume_settings``.
        NumericalFault: a NaN/inf loss or gradient norm at some step (on any rank); nothing of that step was saved.
    """
    cfg.validate()
    accelerator = accelerator or make_accelerator(cfg)
    accelerator.free_memory()  # forget objects of an earlier stage so save_state/load_state see only this one
    accelerator.gradient_accumulation_steps = cfg.gradient_accumulation_steps
    set_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=len(dataset) >= cfg.batch_size,
                        generator=generator)
    if len(loader) == 0:
        raise UserInputError(f"no training batches: {len(dataset)} examples for batch size {cfg.batch_size}")
    optimizer = build_optimizer(model, accelerator.device, cfg.learning_rate, cfg.adam_betas, cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                              num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                              num_training_steps=cfg.max_train_steps * accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if hasattr(step_fn, "prepare"):  # e.g. a discriminator: prepared after the model, saved in every checkpoint
        step_fn.prepare(accelerator)

    step, history, stopped_early = 0, [], False
    remove_stale_temp_checkpoints(accelerator, cfg.checkpoint_dir)
    checkpoint = resolve_checkpoint(cfg.checkpoint_dir, cfg.resume_from_checkpoint)
    if checkpoint is not None:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        check_resume_settings(checkpoint, state.get("settings"), cfg.resume_settings)
        accelerator.load_state(str(checkpoint))
        _apply_learning_rate(optimizer, scheduler, cfg.learning_rate)
        step, history = int(state["step"]), list(state["history"])
        stopped_early = bool(state.get("stopped_early"))
        logger.info(f"resumed from {checkpoint} at step {step}" + (" (it had stopped early: nothing to train)"
                                                                    if stopped_early else ""), main_process_only=True)

    updates_per_epoch = max(1, len(loader) // cfg.gradient_accumulation_steps)
    progress = tqdm(total=cfg.max_train_steps, initial=step, desc=cfg.tracker_name,
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    with StopSignals() as stop:
        finished = stopped_early or _train_steps(cfg, accelerator, model, loader, optimizer, scheduler, step_fn,
                                                 eval_fn, on_epoch_start, step, history, updates_per_epoch, progress,
                                                 stop)
    progress.close()
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    accelerator.free_memory()
    return model, history, finished


def _train_steps(cfg, accelerator, model, loader, optimizer, scheduler, step_fn, eval_fn, on_epoch_start, step,
                 history, updates_per_epoch, progress, stop: StopSignals) -> bool:
    """The optimiser steps of :func:`run_training`; returns ``finished`` or raises ``TrainingInterrupted`` or
    ``NumericalFault``."""
    logs: dict[str, float] = {}
    finished = True
    nonfinite = torch.zeros(2, dtype=torch.bool, device=accelerator.device)  # [loss, gradient norm] not finite
    check_grad_norm = accelerator.mixed_precision != "fp16"  # fp16's scaler skips steps with inf gradients itself
    while step < cfg.max_train_steps:
        epoch, done_in_epoch = divmod(step, updates_per_epoch)
        loader.set_epoch(epoch)
        if on_epoch_start is not None:
            on_epoch_start(accelerator.unwrap_model(model), epoch)
        batches = accelerator.skip_first_batches(loader, done_in_epoch * cfg.gradient_accumulation_steps) \
            if done_in_epoch else loader
        for batch in batches:
            with accelerator.accumulate(model):
                if hasattr(step_fn, "global_step"):
                    step_fn.global_step = step  # optimiser steps already taken (a schedule inside the step)
                loss, logs = step_fn(model, batch, accelerator)
                nonfinite[0] |= ~torch.isfinite(loss.detach()).all()
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    if check_grad_norm and isinstance(norm, torch.Tensor):
                        nonfinite[1] |= ~torch.isfinite(norm.detach()).to(nonfinite.device)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            bad_loss, bad_grad = _any_rank(accelerator, nonfinite)  # before this step's checkpoint or evaluation
            if bad_loss or bad_grad:
                progress.close()
                raise NumericalFault(_fault_message(cfg, step, bad_loss))
            logs = {"loss": float(loss.detach()), **logs, "lr": scheduler.get_last_lr()[0]}
            progress.update(1)
            progress.set_postfix({k: _short(v) for k, v in logs.items() if k != "lr"})
            accelerator.log(logs, step=step)
            plateau = False
            if step % cfg.eval_steps == 0 or step == cfg.max_train_steps:
                history.append({"step": step, **logs})
                history[-1].update(_evaluate(accelerator, model, eval_fn, step, history))
                if cfg.early_stopping_patience and step < cfg.max_train_steps:  # every rank: the main one decides
                    flag = plateaued(history, cfg.early_stopping_patience) and accelerator.is_main_process
                    plateau = _any_rank(accelerator, torch.tensor([flag], device=accelerator.device))[0]
            if plateau:
                save_checkpoint(accelerator, cfg, step, history, stopped_early=True)
                progress.close()
                logger.info(f"stopping {cfg.tracker_name} at step {step} of {cfg.max_train_steps}: no lower validation "
                            f"loss in the last {cfg.early_stopping_patience} evaluations", main_process_only=True)
                return True
            saved = step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps
            if saved:
                save_checkpoint(accelerator, cfg, step, history)
            signum = stop.any_rank(accelerator)
            if signum is not None:
                path = save_checkpoint(accelerator, cfg, step, history) if not saved else \
                    cfg.checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
                progress.close()
                raise TrainingInterrupted(
                    f"interrupted at step {step} of stage {cfg.tracker_name} ({signal.Signals(signum).name}); "
                    f"checkpoint saved to {path}; continue with --resume_from_checkpoint latest", signum)
            if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps and step < cfg.max_train_steps:
                finished = False
                break
            if step >= cfg.max_train_steps:
                break
        if not finished:
            break
    return finished


def plateaued(history: list[dict], patience: int) -> bool:
    """Whether the last ``patience`` evaluations in ``history`` (entries with ``val_loss``) all failed to go below
    the lowest ``val_loss`` before them."""
    losses = [float(entry["val_loss"]) for entry in history if "val_loss" in entry]
    if patience < 1 or len(losses) <= patience:
        return False
    return min(losses[-patience:]) >= min(losses[:-patience])


def _any_rank(accelerator: Accelerator, flags: torch.Tensor) -> list[bool]:
    """``flags`` (bool) or-ed over the ranks; every rank calls this together once per optimiser step."""
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags.to(torch.int32), reduction="sum")
    return [bool(v) for v in flags.tolist()]


def _fault_message(cfg: LoopConfig, step: int, bad_loss: bool) -> str:
    """The one line of a :class:`NumericalFault` at ``step``: what happened, what was kept, what to do."""
    stage = cfg.tracker_name
    what = "the loss is NaN or infinite" if bad_loss else "the gradient norm is NaN or infinite"
    lr_flag = f"--{stage}_learning_rate" if stage in ("vqvae", "prior") else "--learning_rate"
    remedy = f"lower {lr_flag} (now {cfg.learning_rate:g})"
    if cfg.mixed_precision != "no":
        remedy += f" or use --mixed_precision no (now {cfg.mixed_precision})"
    found = list_checkpoints(cfg.checkpoint_dir)
    kept = [path for path in found if int(path.name[len(CHECKPOINT_PREFIX):]) < step]
    if kept:
        resume = "latest" if kept[-1] == found[-1] else str(kept[-1])
        after = (f"the last good checkpoint {kept[-1]} is kept: {remedy}, then continue with "
                 f"--resume_from_checkpoint {resume}")
    else:
        after = f"no checkpoint was saved before it (--checkpointing_steps {cfg.checkpointing_steps}): {remedy} " \
                "and train again"
    return (f"stage {stage} stopped at step {step} of {cfg.max_train_steps}: {what} (numerical fault); this step "
            f"and the final model were not saved; {after}")


def _apply_learning_rate(optimizer, scheduler, learning_rate: float) -> None:
    """After ``load_state``: make the restored schedule peak at this run's ``learning_rate``.

    ``load_state`` restores the schedule of the checkpoint, so without this a resume would silently keep the old
    learning rate. The same learning rate changes nothing (a resume stays bit-identical).
    """
    inner = getattr(scheduler, "scheduler", scheduler)
    old = list(getattr(inner, "base_lrs", []))
    if not old or all(lr == learning_rate for lr in old):
        return
    logger.info(f"learning rate {old[0]:g} of the checkpoint replaced by this run's {learning_rate:g}",
                main_process_only=True)
    inner.base_lrs = [learning_rate] * len(old)
    lambdas = getattr(inner, "lr_lambdas", None)
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = learning_rate
        if lambdas is not None:
            group["lr"] = learning_rate * lambdas[i](inner.last_epoch)
        elif old[i]:
            group["lr"] = group["lr"] * learning_rate / old[i]
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(model: torch.nn.Module, device: torch.device | str, learning_rate: float,
                    betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters, as one fused kernel on devices that have it (CPU, CUDA).

    The same update as the per-parameter loop PyTorch runs by default on a CPU; a CPU-preset stage-1 training step
    is 1.04x shorter with it (2 cores; ``python -m benchmarks.bench_cpu_precision``, "before / fp32", the only
    change in that stage).
    """
    return torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay,
                             fused=torch.device(device).type in FUSED_ADAMW_DEVICES)


def _evaluate(accelerator: Accelerator, model: torch.nn.Module, eval_fn: EvalFn | None, step: int,
              history: list[dict]) -> dict:
    metrics: dict[str, float] = {}
    if eval_fn is not None and accelerator.is_main_process:
        inner = accelerator.unwrap_model(model)
        inner.eval()
        with torch.no_grad():
            metrics = evaluation_record(eval_fn(inner, step, history))
        inner.train()
        accelerator.log(metrics, step=step)
        logger.info(f"step {step}: " + ", ".join(f"{k}={_short(v)}" for k, v in metrics.items()),
                    main_process_only=True)
    accelerator.wait_for_everyone()
    return metrics


def evaluation_record(metrics: dict[str, float]) -> dict[str, float]:
    """An evaluation's ``metrics`` under the names the loop records them in ``history`` (``val_<name>``)."""
    return {f"val_{k}": v for k, v in metrics.items()}


def with_evaluation(history: list[dict], metrics: dict[str, float]) -> list[dict]:
    """``history`` with the evaluation now running merged into its last entry (the loop records it only once
    ``eval_fn`` returns): what a curve drawn during that evaluation must show, the current point included."""
    if not history:
        return []
    return [*history[:-1], {**history[-1], **evaluation_record(metrics)}]


def _short(value: float) -> str:
    if isinstance(value, float) and (abs(value) >= 1e3 or (0 < abs(value) < 1e-3)):
        return f"{value:.2e}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def steps_for_epochs(epochs: int, num_examples: int, batch_size: int, accumulation: int = 1) -> int:
    """Optimiser steps that ``epochs`` passes over ``num_examples`` take."""
    per_epoch = max(1, (num_examples // batch_size) // accumulation) if num_examples >= batch_size else 1
    return max(1, math.ceil(epochs * per_epoch))
