"""Generator benchmark: our VQ-VAE + GPT-2 prior against a class-conditional DDPM, same data, split and wall time.

Method, one run:

1. Train our generator with the real ``train_main.py`` (the CPU preset's model at the budget of
   :data:`BENCH_STEPS` unless told; ``--data_dir``, ``--num_users``, ``--seed``, ``--vqvae_steps``,
   ``--prior_steps`` and ``--train_args`` are passed through). Its total wall time
   is read from ``training_summary.json`` (``wall_seconds``: data loading, both stages, evaluations, saving).
2. Train a class-conditional DDPM built from diffusers parts for that many seconds of wall clock (``--ddpm_seconds``
   overrides), in this process, on exactly the model's training split (``load_model_data(model_dir)``):
   ``UNet2DModel`` with one learned class embedding per user plus a null class (``num_class_embeds = users + 1``;
   labels are replaced by the null class with probability ``--label_dropout``, for classifier-free guidance),
   ``DDPMScheduler`` noise (epsilon prediction, MSE), AdamW, an EMA of the weights, the same circular time shifts
   as our training when its ``time_shift`` setting is on, an ``Accelerator`` loop that checks the clock every step.
3. Generate ``--samples_per_user`` images per user with each: ours with the real ``generate_main.py`` (its
   ``images_per_second`` from ``generation_info.json``), the DDPM with ``DDIMScheduler`` (or
   ``DPMSolverMultistepScheduler``, ``--sampler dpm``) in ``--ddim_steps`` steps at ``--guidance_scale``
   (``eps_null + g (eps_user - eps_null)``, the convention of our prior's guidance), written as
   ``ddpm_gen/ID_<k>/gen_<j>.png`` like ``generate_main`` writes (grayscale for one channel, coloured back in the
   data's colormap for false-colour data). Sampling time counts only the denoising of all users' images.
4. Score both folders with the real ``validate_main.py --model_dir OUR_MODEL`` into one shared output folder, so
   one cached judge (trained on the real training split) scores both, and print one table side by side.

With ``--model_dir`` an already trained model of ours is reused (step 1 is skipped; its seconds come from its
summary), e.g. to train the DDPM again without training ours again.

Equal wall time is generous to the DDPM: our ``wall_seconds`` also pays for data loading, evaluations and saving,
which the DDPM spends on optimisation steps (the table shows our two stages' own seconds too).

Run from the repository root::

    python -m benchmarks.bench_generators                                   # 600 + 400 steps, 31 users, 10 images/user
    python -m benchmarks.bench_generators --vqvae_steps 0 --prior_steps 0   # the CPU preset's 2800 + 1300 steps
    python -m benchmarks.bench_generators --quick                          # smoke run (a minute or two; see QUICK)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from benchmarks.common import parse_with_quick, quick_help, run_script, work_dir
from vqvae_transformer.data.augment import circular_time_shift
from vqvae_transformer.data.colormap import scalar_to_rgb
from vqvae_transformer.data.provenance import load_model_data
from vqvae_transformer.images import tensor_to_pil
from vqvae_transformer.layout import SUMMARY_FILE
from vqvae_transformer.models.pipeline import DEFAULT_GUIDANCE_SCALE

REPORT_KEYS = ("real_test_accuracy", "gan_test_accuracy", "gan_test_ratio", "cas_accuracy", "cas_ratio",
               "domain_fid", "domain_fid_real", "fid_ratio", "diversity_ratio", "memorization_rate")
"""Figures read from ``validation_report.json`` (names of docs/DESIGN.md §4)."""
BENCH_STEPS = (600, 400)
"""Default (stage-1, prior) budget of our generator: about a fifth and a third of the CPU preset's 2800 + 1300, so
that both trainings at equal wall time, the sampling and the scoring fit in an hour on 2 cores (``0 0`` runs the
preset's budget, about three times as long)."""
QUICK = {"num_users": 3, "vqvae_steps": 20, "prior_steps": 20, "samples_per_user": 2, "ddpm_seconds": 20.0,
         "ddim_steps": 5, "threads": 1, "train_args": "--simulated_per_user 8 --resolution 32"}
"""``--quick``: 3 users, 8 simulated recordings each at 32 px, 20 + 20 steps, a 20-second DDPM, 5 DDIM steps."""
DDPM_BLOCKS = (32, 64, 64)
"""UNet channels per resolution level for 64 px on a 2-core CPU: 64 -> 32 -> 16 px, attention only at 16 px."""


# ----------------------------------------------------------------------------------------------------------
# Flags


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = parser.add_argument_group("data and our generator (passed to train_main.py)")
    g.add_argument("--data_dir", default=None, help="folder of ID_<k>/ images (default: train_main's simulator)")
    g.add_argument("--num_users", type=int, default=None, help="first N users (default: train_main's)")
    g.add_argument("--seed", type=int, default=0, help="seed of both trainings and both samplers (default: 0)")
    g.add_argument("--vqvae_steps", type=int, default=BENCH_STEPS[0],
                   help=f"stage-1 steps (default: {BENCH_STEPS[0]}; 0: the preset's, 2800 on the CPU)")
    g.add_argument("--prior_steps", type=int, default=BENCH_STEPS[1],
                   help=f"prior steps (default: {BENCH_STEPS[1]}; 0: the preset's, 1300 on the CPU)")
    g.add_argument("--model_dir", default=None,
                   help="reuse this model trained by train_main.py instead of training ours (its training_summary.json "
                        "gives the seconds; the data flags above are then ignored: the model's own data and split "
                        "are used)")
    g.add_argument("--train_args", default="",
                   help='further train_main.py flags in one string, e.g. "--simulated_per_user 8 --resolution 32"')
    g = parser.add_argument_group("DDPM")
    g.add_argument("--ddpm_seconds", type=float, default=None,
                   help="DDPM training wall seconds (default: our training_summary.json wall_seconds)")
    g.add_argument("--ddpm_batch_size", type=int, default=16, help="DDPM training batch size (default: 16)")
    g.add_argument("--ddpm_lr", type=float, default=5e-4, help="AdamW peak learning rate (default: 5e-4)")
    g.add_argument("--ddpm_warmup_steps", type=int, default=100, help="linear LR warm-up steps (default: 100)")
    g.add_argument("--ddpm_blocks", type=int, nargs="+", default=list(DDPM_BLOCKS),
                   help="UNet block_out_channels; attention only in the last "
                        f"(default: {' '.join(map(str, DDPM_BLOCKS))})")
    g.add_argument("--beta_schedule", choices=("squaredcos_cap_v2", "linear"), default="squaredcos_cap_v2",
                   help="DDPMScheduler beta schedule (default: squaredcos_cap_v2, the cosine schedule)")
    g.add_argument("--label_dropout", type=float, default=0.1,
                   help="probability of training on the null class, for guidance (default: 0.1, as our prior)")
    g.add_argument("--sampler", choices=("ddim", "dpm"), default="ddim",
                   help="DDIMScheduler (eta 0) or DPMSolverMultistepScheduler (default: ddim)")
    g.add_argument("--ddim_steps", type=int, default=50, help="denoising steps of the sampler (default: 50)")
    g.add_argument("--sample_batch_size", type=int, default=64, help="DDPM images per denoising batch (default: 64)")
    g = parser.add_argument_group("both")
    g.add_argument("--samples_per_user", type=int, default=10, help="generated images per user (default: 10)")
    g.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                   help=f"guidance of both samplers (default: {DEFAULT_GUIDANCE_SCALE}, generate_main's)")
    g.add_argument("--threads", type=int, default=0,
                   help="OMP_NUM_THREADS of the subprocesses and torch.set_num_threads here (0: unset)")
    g.add_argument("--json", default=None, help="also write the settings and rows to this JSON file")
    g.add_argument("--keep_dir", action="store_true", help="keep the temporary models and images (path printed)")
    g.add_argument("--quick", action="store_true", help=quick_help(QUICK))
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Reject impossible values, naming the flag and the value."""
    if args.model_dir and not (Path(args.model_dir) / SUMMARY_FILE).is_file():
        raise ValueError(f"--model_dir {args.model_dir} has no {SUMMARY_FILE}; pass a folder written by train_main.py")
    for flag in ("samples_per_user", "ddpm_batch_size", "ddim_steps", "sample_batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    for flag in ("vqvae_steps", "prior_steps"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag} must be >= 0 (0: the preset's), got {getattr(args, flag)}")
    if args.num_users is not None and args.num_users < 1:
        raise ValueError(f"--num_users must be a positive integer, got {args.num_users}")
    if args.ddpm_seconds is not None and args.ddpm_seconds <= 0:
        raise ValueError(f"--ddpm_seconds must be > 0, got {args.ddpm_seconds}")
    if not 0.0 <= args.label_dropout < 1.0:
        raise ValueError(f"--label_dropout must be in [0, 1), got {args.label_dropout}")
    if args.guidance_scale != 1.0 and args.label_dropout == 0.0:
        raise ValueError(f"--guidance_scale {args.guidance_scale} needs a null class: --label_dropout must be > 0")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.ddpm_lr <= 0 or args.ddpm_warmup_steps < 0:
        raise ValueError(f"--ddpm_lr must be > 0 and --ddpm_warmup_steps >= 0, got {args.ddpm_lr}, "
                         f"{args.ddpm_warmup_steps}")
    if len(args.ddpm_blocks) < 2 or min(args.ddpm_blocks) < 8 or any(c % 8 for c in args.ddpm_blocks):
        raise ValueError(f"--ddpm_blocks needs 2+ levels of multiples of 8 channels, got {args.ddpm_blocks}")


# ----------------------------------------------------------------------------------------------------------
# The DDPM (in this process, diffusers parts)


def build_ddpm_unet(resolution: int, channels: int, num_users: int,
                    block_out_channels: Sequence[int] = DDPM_BLOCKS) -> UNet2DModel:
    """A small class-conditional ``UNet2DModel``: ``[B, C, R, R]`` noisy images, ``[B]`` timesteps and ``[B]``
    classes -> ``[B, C, R, R]`` predicted noise.

    Args:
        resolution: image side R; must be divisible by ``2 ** (len(block_out_channels) - 1)``.
        channels: image channels C (1 for the scalar of colormap data).
        num_users: users U; class ``U`` is the null class (classifier-free guidance), so
            ``num_class_embeds = U + 1`` learned embeddings are added to the timestep embedding
            (``class_embed_type=None``: a plain ``nn.Embedding``).
        block_out_channels: channels per level, one ``layers_per_block=1`` ResNet block each; every level but the
            last downsamples by 2, and only the last (lowest-resolution) one has self-attention.

    Returns:
        The model, in train mode.
    """
    levels = len(block_out_channels)
    if resolution % 2 ** (levels - 1):
        raise ValueError(f"resolution {resolution} is not divisible by 2^{levels - 1} ({levels} UNet levels)")
    down = ("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",)  # R, R/2, ..., R/2^(L-1) (attention)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1)
    groups = math.gcd(*block_out_channels, 32)  # GroupNorm groups dividing every width (32 for the default)
    return UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels,
                       down_block_types=down, up_block_types=up, block_out_channels=tuple(block_out_channels),
                       layers_per_block=1, norm_num_groups=groups, attention_head_dim=8,
                       class_embed_type=None, num_class_embeds=num_users + 1)


def build_noise_scheduler(beta_schedule: str = "squaredcos_cap_v2") -> DDPMScheduler:
    """The training noise schedule: 1000 steps, epsilon prediction, predicted x0 clipped to [-1, 1] when sampling."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type="epsilon")


def train_ddpm(images: torch.Tensor, labels: torch.Tensor, num_users: int, seconds: float, *,
               batch_size: int = 16, learning_rate: float = 5e-4, warmup_steps: int = 100,
               label_dropout: float = 0.1, time_shift: bool = True, block_out_channels: Sequence[int] = DDPM_BLOCKS,
               beta_schedule: str = "squaredcos_cap_v2", seed: int = 0, max_steps: int | None = None,
               ema_decay: float = 0.9999) -> tuple[UNet2DModel, DDPMScheduler, dict]:
    """Train a class-conditional DDPM for ``seconds`` of wall clock (checked after every step).

    Each step: a batch of training images ``x0`` ``[B, C, R, R]`` in [-1, 1] (reshuffled every epoch, circularly
    time-shifted when ``time_shift``), timesteps ``t ~ U{0..999}`` ``[B]``, noise ``eps ~ N(0, I)``, the
    scheduler's ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``, labels replaced by the null class ``num_users`` with
    probability ``label_dropout``, loss ``MSE(unet(x_t, t, labels), eps)``; AdamW with a linear warm-up, an
    ``Accelerator`` for device and backward, and an EMA of the weights (diffusers ``EMAModel`` with warm-up) that is
    copied into the returned model.

    Args:
        images: ``[N, C, R, R]`` training images in [-1, 1].
        labels: ``[N]`` 0-based user labels (< ``num_users``).
        num_users: users U (the null class is U).
        seconds: wall-clock training budget; at least one step is taken.
        batch_size, learning_rate, warmup_steps, label_dropout, time_shift, block_out_channels, beta_schedule:
            training settings (see the benchmark's flags).
        seed: seed of the initial weights, the batch order, the noise and the label dropout.
        max_steps: also stop after this many steps (tests; None: only the clock).
        ema_decay: the EMA's maximum decay.

    Returns:
        ``(unet in eval mode with the EMA weights, noise scheduler, stats)``; ``stats`` holds ``steps``,
        ``images_seen``, ``seconds``, ``first_loss`` and ``final_loss`` (mean of the first / last 10 % of steps,
        at least one) and ``parameters``.
    """
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"expected [N, C, R, R] images and [N] labels, got {tuple(images.shape)}, "
                         f"{tuple(labels.shape)}")
    if int(labels.max()) >= num_users or int(labels.min()) < 0:
        raise ValueError(f"labels must lie in [0, {num_users}), got {int(labels.min())}..{int(labels.max())}")
    torch.manual_seed(seed)  # initial weights
    unet = build_ddpm_unet(images.shape[-1], images.shape[1], num_users, block_out_channels)
    noise_scheduler = build_noise_scheduler(beta_schedule)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=1e-2)
    lr_lambda = (lambda step: min(1.0, (step + 1) / warmup_steps)) if warmup_steps else (lambda step: 1.0)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    accelerator = Accelerator()
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    ema = EMAModel(accelerator.unwrap_model(unet).parameters(), decay=ema_decay, use_ema_warmup=True, power=3 / 4)
    generator = torch.Generator().manual_seed(seed)  # batches, noise, timesteps, dropout (on the CPU)
    num_steps = noise_scheduler.config.num_train_timesteps
    n, batch_size = images.shape[0], min(batch_size, images.shape[0])
    order, position, losses = torch.randperm(n, generator=generator), 0, []

    unet.train()
    start = time.perf_counter()
    while True:
        if position + batch_size > n:  # a new epoch: reshuffle, drop the last partial batch
            order, position = torch.randperm(n, generator=generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        x0 = images[index]  # [B, C, R, R]
        if time_shift:
            x0 = circular_time_shift(x0, generator)
        y = labels[index].clone()  # [B]
        y[torch.rand(batch_size, generator=generator) < label_dropout] = num_users  # null class
        noise = torch.randn(x0.shape, generator=generator)  # [B, C, R, R]
        t = torch.randint(0, num_steps, (batch_size,), generator=generator)  # [B]
        x_t = noise_scheduler.add_noise(x0, noise, t)  # [B, C, R, R]
        device = accelerator.device
        prediction = unet(x_t.to(device), t.to(device), class_labels=y.to(device)).sample  # [B, C, R, R]
        loss = F.mse_loss(prediction.float(), noise.to(device))
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(accelerator.unwrap_model(unet).parameters())
        losses.append(float(loss.detach()))
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or (max_steps is not None and len(losses) >= max_steps):
            break

    model = accelerator.unwrap_model(unet)
    ema.copy_to(model.parameters())
    model.eval()
    tenth = max(1, len(losses) // 10)
    stats = {"steps": len(losses), "images_seen": len(losses) * batch_size, "seconds": round(elapsed, 1),
             "first_loss": sum(losses[:tenth]) / tenth, "final_loss": sum(losses[-tenth:]) / tenth,
             "parameters": sum(p.numel() for p in model.parameters())}
    return model, noise_scheduler, stats


@torch.no_grad()
def sample_ddpm(unet: UNet2DModel, noise_scheduler: DDPMScheduler, labels: torch.Tensor, num_users: int, *,
                steps: int = 50, guidance_scale: float = DEFAULT_GUIDANCE_SCALE, sampler: str = "ddim",
                batch_size: int = 64, seed: int = 0) -> torch.Tensor:
    """Sample one image per label with classifier-free guidance; deterministic for the same ``seed``.

    Args:
        unet: a model from :func:`train_ddpm` (eval mode).
        noise_scheduler: its training scheduler; the sampler is built from its config.
        labels: ``[N]`` 0-based user labels, one image each, in this order.
        num_users: users U (class U is the null class).
        steps: denoising steps.
        guidance_scale: ``eps = eps_null + g * (eps_user - eps_null)``; 1 skips the null pass.
        sampler: ``"ddim"`` (``DDIMScheduler``, eta 0) or ``"dpm"`` (``DPMSolverMultistepScheduler``).
        batch_size: images denoised together.
        seed: seed of the initial noise (drawn batch by batch from one generator on the CPU).

    Returns:
        ``[N, C, R, R]`` float32 in [0, 1] on the CPU (what :func:`vqvae_transformer.images.tensor_to_pil` takes).
    """
    if sampler not in ("ddim", "dpm"):
        raise ValueError(f"sampler must be 'ddim' or 'dpm', got {sampler!r}")
    scheduler_cls = DDIMScheduler if sampler == "ddim" else DPMSolverMultistepScheduler
    scheduler = scheduler_cls.from_config(noise_scheduler.config)
    device = next(unet.parameters()).device
    channels, resolution = unet.config.in_channels, unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    out = []
    for first in range(0, labels.shape[0], batch_size):
        y = labels[first:first + batch_size].to(device)  # [b]
        b = y.shape[0]
        x = torch.randn((b, channels, resolution, resolution), generator=generator).to(device)  # [b, C, R, R]
        scheduler.set_timesteps(steps)  # resets the multistep solver's state too
        x = x * scheduler.init_noise_sigma
        guided = guidance_scale != 1.0
        classes = torch.cat([y, torch.full_like(y, num_users)]) if guided else y  # [2b] user then null, or [b]
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)  # [2b or b, C, R, R]
            eps = unet(x_in, t, class_labels=classes).sample
            if guided:
                eps_user, eps_null = eps.chunk(2)  # [b, C, R, R] each
                eps = eps_null + guidance_scale * (eps_user - eps_null)
            x = scheduler.step(eps, t, x).prev_sample  # [b, C, R, R]
        out.append(x.clamp(-1.0, 1.0).cpu())
    return (torch.cat(out) + 1.0) / 2.0  # [N, C, R, R] in [0, 1]


def write_generated(pixels: torch.Tensor, labels: torch.Tensor, user_ids: Sequence[int], folder: Path,
                    colormap: str | None = None) -> None:
    """Write ``folder/ID_<k>/gen_<j>.png`` as ``generate_main`` does (grayscale for 1 channel, RGB for 3).

    Args:
        pixels: ``[N, C, R, R]`` in [0, 1].
        labels: ``[N]`` 0-based labels into ``user_ids``.
        user_ids: public ids.
        folder: output folder (created).
        colormap: the data's colormap for false-colour data (``pixels`` is then its scalar, C = 1, and is
            coloured back to RGB), or None.
    """
    if colormap:
        rgb = scalar_to_rgb(pixels[:, 0].numpy(), colormap)  # (N, R, R, 3) in [0, 1]
        pixels = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()  # [N, 3, R, R]
    counts: dict[int, int] = {}
    for image, label in zip(tensor_to_pil(pixels), labels.tolist()):
        user_id = int(user_ids[label])
        index = counts.get(user_id, 0)
        user_dir = folder / f"ID_{user_id}"
        user_dir.mkdir(parents=True, exist_ok=True)
        image.save(user_dir / f"gen_{index:04d}.png")
        counts[user_id] = index + 1


# ----------------------------------------------------------------------------------------------------------
# The run: ours via the real CLIs, the DDPM here, both scored by validate_main


def train_ours(args: argparse.Namespace, model_dir: Path, work: Path) -> dict:
    """Train our generator with ``train_main.py``; returns its summary figures (seconds from the summary)."""
    command = ["train_main.py", "--output_dir", str(model_dir), "--seed", str(args.seed)]
    for flag in ("data_dir", "num_users", "vqvae_steps", "prior_steps"):
        if getattr(args, flag):  # None / 0: train_main's own default
            command += [f"--{flag}", str(getattr(args, flag))]
    command += shlex.split(args.train_args)
    print("training ours: " + " ".join(command), flush=True)
    run_script(command, work / "ours_train.log", args.threads)
    return trained_figures(model_dir)


def trained_figures(model_dir: Path) -> dict:
    """Seconds, steps and data size of a model trained by ``train_main.py``, from its ``training_summary.json``."""
    summary = json.loads((model_dir / SUMMARY_FILE).read_text())
    return {"train_s": summary["wall_seconds"],
            "stages_s": summary["vqvae"]["seconds"] + summary["prior"]["seconds"],
            "steps": f"{summary['vqvae']['steps']} + {summary['prior']['steps']}",
            "time_shift": bool(summary["settings"].get("time_shift", True)),
            "train_images": summary["data"]["train_images"]}


def generate_ours(args: argparse.Namespace, model_dir: Path, folder: Path, work: Path) -> dict:
    """``generate_main.py`` into ``folder``; returns its images/s (sampling only, from ``generation_info.json``)."""
    run_script(["generate_main.py", "--model_dir", str(model_dir), "--output_dir", str(folder), "--samples_per_user",
                str(args.samples_per_user), "--seed", str(args.seed), "--guidance_scale", str(args.guidance_scale)],
               work / "ours_generate.log", args.threads)
    info = json.loads((folder / "generation_info.json").read_text())
    return {"images": info["num_images"], "images_per_s": info["images_per_second"]}


def run_ddpm(args: argparse.Namespace, model_dir: Path, seconds: float, time_shift: bool, folder: Path) -> dict:
    """Train the DDPM on ``model_dir``'s training split for ``seconds``, sample every user into ``folder``."""
    data, train_idx, _ = load_model_data(model_dir)
    images, labels = data.images[train_idx], data.labels[train_idx]  # [N, C, R, R] in [-1, 1], [N]
    print(f"training the DDPM on {len(train_idx)} images for {seconds:.0f} s ...", flush=True)
    unet, noise_scheduler, stats = train_ddpm(
        images, labels, data.num_users, seconds, batch_size=args.ddpm_batch_size, learning_rate=args.ddpm_lr,
        warmup_steps=args.ddpm_warmup_steps, label_dropout=args.label_dropout, time_shift=time_shift,
        block_out_channels=args.ddpm_blocks, beta_schedule=args.beta_schedule, seed=args.seed)
    wanted = torch.arange(data.num_users).repeat_interleave(args.samples_per_user)  # [U * S], user-major
    print(f"sampling {wanted.shape[0]} DDPM images ({args.sampler}, {args.ddim_steps} steps) ...", flush=True)
    start = time.perf_counter()
    pixels = sample_ddpm(unet, noise_scheduler, wanted, data.num_users, steps=args.ddim_steps,
                         guidance_scale=args.guidance_scale, sampler=args.sampler,
                         batch_size=args.sample_batch_size, seed=args.seed)
    sample_seconds = time.perf_counter() - start
    write_generated(pixels, wanted, data.user_ids, folder, data.colormap)
    return {"train_s": stats["seconds"], "stages_s": stats["seconds"], "steps": str(stats["steps"]),
            "images": int(wanted.shape[0]), "images_per_s": wanted.shape[0] / sample_seconds,
            "ddpm": stats, "train_images": len(train_idx)}


def score(args: argparse.Namespace, model_dir: Path, folder: Path, work: Path) -> dict:
    """``validate_main.py`` on ``folder`` into the shared ``work/validation``; returns :data:`REPORT_KEYS`."""
    run_script(["validate_main.py", "--model_dir", str(model_dir), "--generated_data_dir", str(folder),
                "--output_dir", str(work / "validation")], work / f"{folder.name}_validate.log", args.threads,
               ok_codes=(0, 1))  # 1 = some threshold failed, still a valid report
    report = json.loads((work / "validation" / "validation_report.json").read_text())
    return {key: report.get(key) for key in REPORT_KEYS} | {"passed": report.get("passed")}


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(rows: list[dict]) -> list[str]:
    """The two generators side by side as a Markdown table."""
    lines = ["| generator | train s (stages) | steps | sampling images/s | gan_test (ratio) | CAS (ratio) "
             "| FID ratio (FID / floor) | diversity | memorization |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['train_s']:.0f} ({r['stages_s']:.0f}) | {r['steps']} "
            f"| {_fmt(r['images_per_s'], '.2f')} "
            f"| {_fmt(r['gan_test_accuracy'], '.3f')} ({_fmt(r['gan_test_ratio'], '.3f')}) "
            f"| {_fmt(r['cas_accuracy'], '.3f')} ({_fmt(r['cas_ratio'], '.3f')}) "
            f"| {_fmt(r['fid_ratio'], '.2f')} ({_fmt(r['domain_fid'], '.2f')} / {_fmt(r['domain_fid_real'], '.2f')}) "
            f"| {_fmt(r['diversity_ratio'], '.2f')} | {_fmt(r['memorization_rate'], '.3f')} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Train both generators, sample and score both, print the table, optionally write the JSON."""
    args = parse_with_quick(build_parser(), argv, QUICK)
    validate_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with work_dir("bench_generators_", args.keep_dir) as work:
        if args.model_dir:
            model_dir = Path(args.model_dir)
            print(f"reusing our model {model_dir} (trained by train_main.py)", flush=True)
            ours = trained_figures(model_dir)
        else:
            model_dir = work / "ours"
            ours = train_ours(args, model_dir, work)
        ours |= generate_ours(args, model_dir, work / "ours_gen", work)
        seconds = args.ddpm_seconds if args.ddpm_seconds is not None else ours["train_s"]
        ddpm = run_ddpm(args, model_dir, seconds, ours["time_shift"], work / "ddpm_gen")
        ours |= score(args, model_dir, work / "ours_gen", work)
        ddpm |= score(args, model_dir, work / "ddpm_gen", work)
    rows = [{"name": "ours (VQ-VAE + GPT-2)", **ours},
            {"name": f"DDPM ({'x'.join(map(str, args.ddpm_blocks))} UNet, {args.sampler} {args.ddim_steps})",
             **ddpm}]
    d = ddpm["ddpm"]
    print(f"\ngenerators: same data and split ({ours['train_images']} training images), "
          f"{args.samples_per_user} images/user, guidance {args.guidance_scale:g}, seed {args.seed}; DDPM "
          f"{d['parameters'] / 1e6:.2f} M parameters, batch {args.ddpm_batch_size}, {d['images_seen']} images seen, "
          f"loss {d['first_loss']:.3f} -> {d['final_loss']:.3f}; {platform.machine()} {os.cpu_count()} cores, "
          f"threads {args.threads or 'unset'}")
    print("\n".join(format_table(rows)))
    print(f"\nreal_test_accuracy {_fmt(ours['real_test_accuracy'], '.3f')} (the judge on real validation images); "
          f"total {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
