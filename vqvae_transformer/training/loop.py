"""The training loop both stages share, on Accelerate.

One loop, parameterised by a step function (batch -> loss and logs) and an evaluation function: devices, mixed
precision, gradient accumulation, clipping, warm-up + cosine schedule, checkpoints ``checkpoint-<step>`` with a total
limit, ``--resume_from_checkpoint latest`` with ``skip_first_batches``, trackers, and a tqdm bar on the main process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import UserInputError

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"

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

    def validate(self) -> None:
        """Reject impossible settings with the offending value."""
        for name in ("max_train_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                     "checkpoints_total_limit", "eval_steps"):
            if getattr(self, name) < 1:
                raise UserInputError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise UserInputError(f"learning rate must be > 0, got {self.learning_rate}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserInputError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


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


def save_checkpoint(accelerator: Accelerator, cfg: LoopConfig, step: int, history: list[dict]) -> Path:
    """``save_state`` into ``checkpoint-<step>`` (written to a temp folder, then renamed) and prune old ones."""
    final = cfg.checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = cfg.checkpoint_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(output_dir=str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "history": history}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(cfg.checkpoint_dir)[:-cfg.checkpoints_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def make_accelerator(cfg: LoopConfig) -> Accelerator:
    """An ``Accelerator`` for this stage: mixed precision, accumulation, trackers, a seedable sampler."""
    log_with = None if cfg.report_to in ("none", "", None) else cfg.report_to
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(cfg.output_dir),
                                            logging_dir=str(cfg.output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if log_with is not None:
        accelerator.init_trackers(cfg.tracker_name, config=_flat_config(cfg.tracker_config))
    logger.info(f"accelerate: {accelerator.distributed_type.value}, {accelerator.num_processes} process(es), "
                f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}", main_process_only=True)
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
        step_fn: ``(prepared_model, batch, accelerator) -> (loss, logs)``; runs the forward pass.
        eval_fn: ``(unwrapped_model, step, history) -> metrics``, called on the main process every ``eval_steps``
            and at the end (the model is in eval mode during the call; it may write figures).
        on_epoch_start: ``(unwrapped_model, epoch)`` hook, e.g. to reset usage counters.
        accelerator: reuse an existing accelerator (one per process is the norm).

    Returns:
        ``(unwrapped model, history, finished)``; ``finished`` is False when ``stop_after_steps`` cut it short.
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas,
                                  weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                              num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                              num_training_steps=cfg.max_train_steps * accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step, history = 0, []
    checkpoint = resolve_checkpoint(cfg.checkpoint_dir, cfg.resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / STATE_FILE).read_text())
        step, history = int(state["step"]), list(state["history"])
        logger.info(f"resumed from {checkpoint} at step {step}", main_process_only=True)

    updates_per_epoch = max(1, len(loader) // cfg.gradient_accumulation_steps)
    progress = tqdm(total=cfg.max_train_steps, initial=step, desc=cfg.tracker_name,
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    logs: dict[str, float] = {}
    finished = True
    while step < cfg.max_train_steps:
        epoch, done_in_epoch = divmod(step, updates_per_epoch)
        loader.set_epoch(epoch)
        if on_epoch_start is not None:
            on_epoch_start(accelerator.unwrap_model(model), epoch)
        batches = accelerator.skip_first_batches(loader, done_in_epoch * cfg.gradient_accumulation_steps) \
            if done_in_epoch else loader
        for batch in batches:
            with accelerator.accumulate(model):
                loss, logs = step_fn(model, batch, accelerator)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            logs = {"loss": float(loss.detach()), **logs, "lr": scheduler.get_last_lr()[0]}
            progress.update(1)
            progress.set_postfix({k: _short(v) for k, v in logs.items() if k != "lr"})
            accelerator.log(logs, step=step)
            if step % cfg.eval_steps == 0 or step == cfg.max_train_steps:
                history.append({"step": step, **logs})
                history[-1].update(_evaluate(accelerator, model, eval_fn, step, history))
            if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
                save_checkpoint(accelerator, cfg, step, history)
            if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps and step < cfg.max_train_steps:
                finished = False
                break
            if step >= cfg.max_train_steps:
                break
        if not finished:
            break
    progress.close()
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    accelerator.free_memory()
    return model, history, finished


def _evaluate(accelerator: Accelerator, model: torch.nn.Module, eval_fn: EvalFn | None, step: int,
              history: list[dict]) -> dict:
    metrics: dict[str, float] = {}
    if eval_fn is not None and accelerator.is_main_process:
        inner = accelerator.unwrap_model(model)
        inner.eval()
        with torch.no_grad():
            metrics = {f"val_{k}": v for k, v in eval_fn(inner, step, history).items()}
        inner.train()
        accelerator.log(metrics, step=step)
        logger.info(f"step {step}: " + ", ".join(f"{k}={_short(v)}" for k, v in metrics.items()),
                    main_process_only=True)
    accelerator.wait_for_everyone()
    return metrics


def _short(value: float) -> str:
    if isinstance(value, float) and (abs(value) >= 1e3 or (0 < abs(value) < 1e-3)):
        return f"{value:.2e}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def steps_for_epochs(epochs: int, num_examples: int, batch_size: int, accumulation: int = 1) -> int:
    """Optimiser steps that ``epochs`` passes over ``num_examples`` take."""
    per_epoch = max(1, (num_examples // batch_size) // accumulation) if num_examples >= batch_size else 1
    return max(1, math.ceil(epochs * per_epoch))


def config_dict(cfg: LoopConfig) -> dict:
    """JSON-friendly copy of a loop config."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
