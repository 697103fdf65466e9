"""The model defaults: one place for each setting of the tokenizer and the prior.

The CPU preset (:mod:`vqvae_transformer.training.presets`) trains exactly these models; the constructors
(:class:`~vqvae_transformer.models.first_stage.VQFirstStage`, ``KLFirstStage``,
:class:`~vqvae_transformer.models.quantizer.EMAVectorQuantizer`, :func:`~vqvae_transformer.models.prior.build_prior_config`)
default to them and the CLI help prints them from here, so a model built in a notebook with no arguments is the model
``train_main.py`` trains on a CPU. Why each value was chosen: the comments in ``training/presets.py`` and the
benchmarks they cite (README, "Measured").
"""

from __future__ import annotations

# --- stage 1: the tokenizer -------------------------------------------------------------------------------------
RESOLUTION = 64  # image side (px)
BLOCK_OUT_CHANNELS = (16, 32, 64)  # 2 downsamplings: 64 px -> 16x16 tokens
NORM_NUM_GROUPS = 16  # GroupNorm groups = min(32, narrowest block): groups must not exceed channels
LATENT_CHANNELS = 32
CODEBOOK_SIZE = 1024  # K
CODEBOOK_DIM = 32  # lookup width; = LATENT_CHANNELS: a full-width Euclidean lookup
USE_L2_NORM = False
EMA_DECAY = 0.8
DEAD_CODE_THRESHOLD = 2.0  # codes used fewer times per batch are re-seeded
RESTART_SAMPLING = "uniform"  # re-seed from random encoder outputs
COMMITMENT_BETA = 0.25

# --- stage 2: the GPT-2 prior -----------------------------------------------------------------------------------
N_LAYER = 4
N_EMBD = 192
N_HEAD = 8
PRIOR_DROPOUT = 0.0
TOKEN_ORDER = "column"  # column by column = time order
# GPT-2's tanh-approximated GELU as one fused kernel ("gelu_new" is the same function in 6 element-wise ops).
PRIOR_ACTIVATION = "gelu_pytorch_tanh"
