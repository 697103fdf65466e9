"""Presets: complete sets of model and training settings for a laptop CPU or a GPU.

A flag given on the command line always wins over the preset's value (flags default to None and are filled
from the preset). ``auto`` picks ``gpu`` when a CUDA device is present, else ``cpu``.
"""

from __future__ import annotations

import logging

import torch

from ..models import defaults as D

logger = logging.getLogger(__name__)

# Budget of the CPU preset (2 cores): train_main from nothing in <= 20 min, peak memory <= 6 GB (benchmarks/).
CPU_PRESET: dict = {
    "resolution": D.RESOLUTION,
    "samples_per_user": 128,  # 64 -> 128: judge on samples 0.59 -> 0.76; 256: 0.72, and 20 min 12 s to train
    "first_stage": "vq",
    "block_out_channels": D.BLOCK_OUT_CHANNELS,  # 2 downsamplings: 64 px -> 16x16 tokens (8x8 lost every gait detail)
    "latent_channels": D.LATENT_CHANNELS,
    "codebook_size": D.CODEBOOK_SIZE,
    # Euclidean lookup at the latent's full width, re-seeding codes used < 2 times per batch from random encoder
    # outputs: the winner of benchmarks/bench_quantizer.py at this budget (l2-normalised 8-d codes: -0.5 dB).
    "codebook_dim": D.CODEBOOK_DIM,
    "use_l2_norm": D.USE_L2_NORM,
    "ema_decay": D.EMA_DECAY,
    "dead_code_threshold": D.DEAD_CODE_THRESHOLD,
    "restart_sampling": D.RESTART_SAMPLING,
    "commitment_beta": D.COMMITMENT_BETA,
    # Batch 8 x 2800 steps sees the same 22 400 images as 32 x 700, in 429 s against 382 s, and the tokenizer is far
    # better: PSNR 29.4 -> 32.0 dB; the judge recognises 97.8 % of reconstructions against 74.8 %, and their domain
    # FID falls from 18.0 to 1.5 (python -m benchmarks.bench_tokenizer_batch, README).
    "vqvae_batch_size": 8,
    "vqvae_steps": 2800,
    "vqvae_learning_rate": 4e-4,  # 1e-3 stalled at the mean image (batch 32)
    # Batch 16 (more, smaller steps learn faster here than 32) and no dropout (2x faster steps on CPU): 1300 steps
    # fit in the time 360 steps of 32 with dropout took.
    "prior_batch_size": 16,
    "prior_steps": 1300,
    "prior_learning_rate": 1.5e-3,
    "n_layer": D.N_LAYER,
    "n_embd": D.N_EMBD,
    "n_head": D.N_HEAD,
    "prior_dropout": D.PRIOR_DROPOUT,  # the prior underfits in this budget (train loss = validation loss)
    # Attention dropout makes a CPU training step 1.6x slower (0.94 s against 0.60 s with residual and embedding
    # dropout only, batch 16, 2 cores); the small-data rule's dropout is therefore residual and embedding only.
    "prior_attention_dropout": 0.0,
    # Column by column = time order. Same first stage, 650 steps: validation loss 1.72 against 2.03 row by row,
    # samples recognised 0.61 against 0.19 (benchmarks/bench_token_order.py, README).
    "token_order": D.TOKEN_ORDER,
    "user_dropout": 0.1,
    "prior_time_shifts": 0,  # extra time-shifted encodings per training image (small data: see SMALL_DATA_PRIOR)
    "prior_early_stopping": 0,  # evaluations without a lower validation loss before stage 2 stops (0: never)
    # bf16 autocast where the CPU computes bf16 natively (AVX-512 BF16, AMX), float32 elsewhere (emulated bf16 is
    # slower). 2-core AVX-512 BF16 CPU: training steps 1.16-1.24x shorter (python -m benchmarks.bench_cpu_precision);
    # with the fused GELU/AdamW a users'-shape run took 19.8 min against 24.4 in float32 before, the default data
    # 18.9 against 23.3-23.8, with the same validation figures (README).
    "mixed_precision": "auto",
    # One step count for both stages: stage 1 evaluates at 700, 1400, 2100, 2800, the prior at 700 and 1300.
    "eval_steps": 700,
    "checkpointing_steps": 350,
}

GPU_PRESET: dict = {
    **CPU_PRESET,
    "resolution": 128,
    "block_out_channels": (64, 128, 128, 256),  # 128 px -> 16x16 tokens
    "latent_channels": 128,
    "codebook_dim": 128,  # full-width Euclidean lookup, as in the CPU preset
    "vqvae_batch_size": 64,
    "vqvae_steps": 4000,
    "vqvae_learning_rate": 5e-4,
    "prior_batch_size": 64,
    "prior_steps": 8000,
    "prior_learning_rate": 5e-4,
    "n_layer": 8,
    "n_embd": 512,
    "prior_dropout": 0.1,
    "prior_attention_dropout": 0.1,
    "n_head": 8,
    "mixed_precision": "auto",  # bf16 on GPUs that compute it (Ampere and later), float32 on older ones
    "eval_steps": 500,
    "checkpointing_steps": 500,
}

PRESETS = {"cpu": CPU_PRESET, "gpu": GPU_PRESET}

# The users' regime: a few dozen images per person. Below this many training images per user (median), the prior
# sees every token grid dozens of times in a preset's budget and overfits (on 31 x 19 training images: training loss
# 0.13 nats/code while validation loss rose from 2.32 at step 700 to 2.90 at step 1300). The embedded default
# (~100 training images per user) is above it and keeps the preset unchanged.
SMALL_DATA_IMAGES_PER_USER = 48
SMALL_DATA_PRIOR: dict = {
    # Evaluate often enough to keep the weights of the best validation step (early stopping by selection).
    "prior_eval_steps": 100,
    # ... and stop 3 evaluations after it: on 31 x 19 training images the lowest validation loss came at step 400
    # of 1300 (4.00, then 4.05, 4.17, 4.35, ... 5.20 at 1300), so the last 600 steps (about 7 of the 25 minutes)
    # only overfit (README, users'-shape data, seed 0).
    "prior_early_stopping": 3,
    # 4 extra time-shifted encodings per training image: on 31 x 19 training images (seed 0, the same stage 1;
    # then with dropout 0.1) the validation loss kept falling to 3.58 at step 1300 instead of rising after 4.00 at
    # step 400, and the samples carry the user far better: judge on samples 0.30 -> 0.65, CAS 0.39 -> 0.53, domain
    # FID ratio 7.1 -> 1.7 (README). At a fixed 400 steps the same settings had looked worse (they need the longer
    # run). Dropout stays the preset's (the CPU preset's 0): with the shifts the prior underfits its 1300 steps
    # (training loss = validation loss), and without dropout it reached a lower validation loss with samples that
    # carry the user better, for 3 training seeds, in shorter steps (README, "Dropout on small data").
    "prior_time_shifts": 4,
}
"""Prior settings for small data under every preset; each replaces the preset's value only where the flag was not
given."""

SMALL_DATA_PRIOR_BY_PRESET: dict[str, dict] = {
    # The CPU preset's prior is compute-bound and still underfits its 1300 steps of 16 on small data: the same
    # training sequences in steps of 8 reach a lower validation loss (2600 x 8, seeds 0 / 1: 3.51 / 3.73 against
    # 3.62 / 3.77 at 1300 x 16). A step of 8 costs about 0.58 of one of 16 on 2 cores, so 2400 x 8 took a
    # users'-shape run to 20.0 min (prior 708 s); 2200 x 8 (17 600 sequences against 20 800) with an evaluation
    # every 200 steps (1600 sequences, as 100 steps of 16) fits the 20 minutes (README, "Small data").
    "cpu": {"prior_batch_size": 8, "prior_steps": 2200, "prior_eval_steps": 200},
    # Never measured on a GPU (none here): the GPU preset keeps its batch and steps.
    "gpu": {},
}
"""Small-data prior settings that belong to one preset's budget; they override :data:`SMALL_DATA_PRIOR`."""


def small_data_rule(preset: str | None) -> dict:
    """The small-data prior settings of ``preset`` (``cpu``/``gpu``; None: those common to every preset)."""
    return {**SMALL_DATA_PRIOR, **SMALL_DATA_PRIOR_BY_PRESET.get(preset or "", {})}


def small_data_prior_settings(images_per_user: float, given: set[str], preset: str | None = None
                              ) -> tuple[dict, str]:
    """The prior settings that follow the data size, and the reason, for the first log lines of stage 2.

    Args:
        images_per_user: median training images per user.
        given: names of flags the user gave on the command line (never overridden).
        preset: the preset in use (``cpu``/``gpu``), whose own small-data settings apply (:func:`small_data_rule`).

    Returns:
        ``(settings, reason)``; settings is empty above :data:`SMALL_DATA_IMAGES_PER_USER`.
    """
    if images_per_user >= SMALL_DATA_IMAGES_PER_USER:
        return {}, (f"{images_per_user:g} training images per user >= {SMALL_DATA_IMAGES_PER_USER}: "
                    "preset prior settings")
    rule = small_data_rule(preset)
    settings = {k: v for k, v in rule.items() if k not in given}
    kept = sorted(set(rule) & given)
    parts = [", ".join(f"{k}={v}" for k, v in settings.items()) if settings else "no setting changed"]
    if kept:
        parts.append(f"kept as given: {', '.join(kept)}")
    reason = (f"small data ({images_per_user:g} training images per user < {SMALL_DATA_IMAGES_PER_USER}): "
              + "; ".join(parts))
    return settings, reason


def resolve_preset(name: str) -> tuple[str, dict]:
    """Map ``auto``/``cpu``/``gpu`` to a preset, logging the choice for ``auto``.

    Returns:
        ``(preset name, a copy of its settings)``.
    """
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
        reason = "a CUDA device is present" if name == "gpu" else "no CUDA device is present"
        logger.info(f"--preset auto: using the {name.upper()} preset because {reason}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose auto, cpu or gpu")
    return name, dict(PRESETS[name])


def apply_preset(args, preset: dict) -> list[str]:
    """Fill every ``None`` attribute of ``args`` that the preset knows; return the names filled."""
    filled = []
    for key, value in preset.items():
        if hasattr(args, key) and getattr(args, key) is None:
            setattr(args, key, value)
            filled.append(key)
    return filled
