"""Start training from another trained model (``train_main.py --init_from MODEL``), e.g. one trained on the embedded
simulator: stage 1 is fine-tuned from its tokenizer, the prior's body from its prior with fresh user tokens.

What is carried over:

* **Stage 1**: every weight and quantizer buffer (the codebook and its EMA statistics) of ``MODEL/vqvae``. The
  architecture flags (blocks, latent channels, K, code width, quantizer settings, resolution) are taken from it;
  one given explicitly that contradicts it is refused. The image channels follow *this* data: a one-channel source
  on colour images (or the reverse) gets its first and last convolutions inflated (weights repeated over the new
  channels and divided by their number) or folded (summed over the input channels, averaged over the output ones),
  so a grey image copied into every channel passes through the inflated network exactly as through the source.
* **Stage 2**: every transformer weight of ``MODEL/prior`` (blocks, position embeddings, the K code embeddings,
  the null-user token) when the codebook size and token grid match; the user tokens are new (this data's persons
  are other people): each starts from the mean of the source's user embeddings, the "average person" the source
  knows, so the prior begins by drawing plausible spectrograms and learns who is who. GPT-2 sizes and token order
  are taken from the source.

A stage resumed from a checkpoint takes the checkpoint's weights; the initialisation only matters for a fresh start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from ..data.default import cache_root
from ..errors import UserInputError
from ..layout import MODEL_INDEX, PRIOR_FOLDER, VQVAE_FOLDER
from ..models.first_stage import load_first_stage
from ..models.fingerprint import check_model_folder
from ..models.pipeline import resolve_model_folder
from ..models.prior import vocabulary_from_config

logger = logging.getLogger(__name__)

INIT_FLAG = "--init_from"
SIMULATOR_SOURCE = "simulator"  # --init_from simulator: the model of the embedded simulator, built once and cached
NO_SOURCE = "none"  # --init_from none: random initialisation
PRETRAINED_CACHE_VERSION = 1
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                       "MASTER_PORT", "TORCHELASTIC_RUN_ID")
"""Bump when training changes what the simulator model is, so an old cached one is not reused."""
# The first and last convolutions of both first stages (diffusers Encoder / Decoder): their channel axes follow
# the images. name -> axis that counts image channels.
_CHANNEL_AXES = {"encoder.conv_in.weight": 1, "decoder.conv_out.weight": 0, "decoder.conv_out.bias": 0}
# Prior flag -> GPT2Config attribute taken from the source prior.
PRIOR_CONFIG_KEYS = {"n_layer": "n_layer", "n_embd": "n_embd", "n_head": "n_head", "token_order": "token_order"}
# Share of the preset's stage-1 steps a fine-tuned tokenizer trains for (a flag given explicitly is kept).
FINE_TUNE_STEP_FRACTION = 0.25


def simulator_model_dir(preset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``--init_from simulator`` keeps the model trained on the embedded simulator with ``preset``:
    ``<cache root>/pretrained/simulator_<preset>_seed0_v<version>`` (the cache root of the simulated data)."""
    return cache_root(cache_dir).resolve() / "pretrained" / f"simulator_{preset}_seed0_v{PRETRAINED_CACHE_VERSION}"


def build_simulator_model(preset: str, cache_dir: str | os.PathLike | None = None,
                          extra_flags: Sequence[str] = ()) -> Path:
    """The simulator-trained model of ``preset``: reused from the cache, or trained once by ``train_main``'s logic
    in a child process (the README's default command, ``--seed 0``) into a hidden sibling folder that is renamed
    into place when complete, so an interrupted build leaves no half model. ``extra_flags`` go to that training.

    In a multi-process run only the main process builds; the others wait for the folder.

    Raises:
        UserInputError: the build failed (its exit code; the log lines above say why).
    """
    target = simulator_model_dir(preset, cache_dir)
    if (target / MODEL_INDEX).is_file():
        logger.info(f"{INIT_FLAG} {SIMULATOR_SOURCE}: using the model cached in {target}")
        return target
    if os.environ.get("RANK", "0") != "0":
        while not (target / MODEL_INDEX).is_file():
            time.sleep(10)
        return target
    logger.warning(f"{INIT_FLAG} {SIMULATOR_SOURCE}: training the model of the embedded simulator once into {target} "
                   f"(the {preset} preset's full training: about 20 min on a 2-core CPU; every later run reuses it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    command = [sys.executable, "-m", "vqvae_transformer.training.main", "--preset", preset, "--seed", "0",
               "--output_dir", str(staging / "model"), *extra_flags]
    try:
        # One process on its own: without the launcher's variables it never joins this run's process group.
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES and not k.startswith("ACCELERATE_")}
        code = subprocess.run(command, env=env).returncode
        if code != 0:
            raise UserInputError(f"{INIT_FLAG} {SIMULATOR_SOURCE}: training the simulator model failed (exit {code}, "
                                 f"see the lines above); run {' '.join(command[1:3])} yourself to see why, or pass "
                                 f"{INIT_FLAG} none")
        try:
            os.replace(staging / "model", target)
        except OSError:
            if not (target / MODEL_INDEX).is_file():  # another process finished first: keep its folder
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_init_source(value: str, preset: str = "cpu") -> Path:
    """The local folder of ``--init_from``: a folder written by ``train_main.py``, a Hub repo id, or ``simulator``
    (:func:`build_simulator_model` of ``preset``), checked to hold one consistent model with both stages.

    Raises:
        UserInputError: one line naming the folder or the file that is wrong.
    """
    folder = build_simulator_model(preset) if value == SIMULATOR_SOURCE else resolve_model_folder(value)
    check_model_folder(folder, need=(VQVAE_FOLDER, PRIOR_FOLDER))
    return folder


def source_prior_settings(folder: Path) -> dict[str, object]:
    """``{flag: value}`` of the prior flags the source's ``prior/config.json`` fixes."""
    config = json.loads((folder / PRIOR_FOLDER / "config.json").read_text())
    return {flag: config[key] for flag, key in PRIOR_CONFIG_KEYS.items() if key in config}


def fine_tune_steps(args: argparse.Namespace) -> str | None:
    """Shorten a preset-filled ``--vqvae_steps`` to :data:`FINE_TUNE_STEP_FRACTION` for a fine-tuned tokenizer;
    returns the line that says so (None when the steps were given)."""
    if "vqvae_steps" not in set(getattr(args, "preset_filled", ())) or args.vqvae_steps is None:
        return None
    before = args.vqvae_steps
    args.vqvae_steps = max(1, int(round(before * FINE_TUNE_STEP_FRACTION)))
    return (f"stage 1 fine-tunes for {args.vqvae_steps} steps ({FINE_TUNE_STEP_FRACTION:.0%} of the preset's "
            f"{before}, {INIT_FLAG}); pass --vqvae_steps to choose")


def _adapt_channels(name: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``tensor`` of the source reshaped along its image-channel axis to ``shape`` (module docstring)."""
    axis = _CHANNEL_AXES[name]
    have, want = tensor.shape[axis], shape[axis]
    if have == 1:  # inflate: one channel -> `want` copies, divided on the input side (a sum follows)
        out = tensor.repeat_interleave(want, dim=axis)
        return out / want if axis == 1 else out
    if want == 1:  # fold: `have` channels -> one (sum of the inputs' weights, mean of the outputs)
        return tensor.sum(dim=axis, keepdim=True) if axis == 1 else tensor.mean(dim=axis, keepdim=True)
    raise UserInputError(f"{INIT_FLAG}: the source first stage has {have} image channels, this data {want}; only "
                         "1 <-> 3 can be converted: pass --channels or start from another model")


def init_first_stage(model: torch.nn.Module, source_dir: Path) -> int:
    """Copy the source first stage at ``source_dir`` into ``model`` (same kind and architecture; the image channels
    may differ, module docstring). Returns the number of tensors copied.

    Raises:
        UserInputError: another first-stage kind or architecture than ``model``.
    """
    source = load_first_stage(source_dir)
    if type(source) is not type(model):
        raise UserInputError(f"{INIT_FLAG}: {source_dir} holds a {type(source).__name__}, this run trains a "
                             f"{type(model).__name__}; pass --first_stage to match it or start from another model")
    target = model.state_dict()
    state = {}
    for name, tensor in source.state_dict().items():
        if name not in target:
            raise UserInputError(f"{INIT_FLAG}: {source_dir} has a weight {name} this first stage lacks; start from "
                                 "a model saved by this version")
        if tensor.shape != target[name].shape:
            if name not in _CHANNEL_AXES:
                raise UserInputError(f"{INIT_FLAG}: {name} is {tuple(tensor.shape)} in {source_dir} but "
                                     f"{tuple(target[name].shape)} here; drop the architecture flags that differ")
            tensor = _adapt_channels(name, tensor, target[name].shape)
        state[name] = tensor
    model.load_state_dict(state, strict=True)
    return len(state)


@torch.no_grad()
def init_prior(prior: torch.nn.Module, source_dir: Path) -> int:
    """Copy the source prior at ``source_dir`` into ``prior`` except its user tokens (module docstring).

    Both vocabularies are ``[K codes | users | null]``; the codes and the null token are copied, each new user token
    is set to the mean of the source's user embeddings. Returns the number of tensors copied or adapted.

    Raises:
        UserInputError: a different codebook size, token grid or GPT-2 size.
    """
    from transformers import GPT2LMHeadModel

    source = GPT2LMHeadModel.from_pretrained(source_dir)
    old, new = vocabulary_from_config(source.config), vocabulary_from_config(prior.config)
    for what, a, b in (("codebook size", old.codebook_size, new.codebook_size),
                       ("token grid", list(source.config.token_grid), list(prior.config.token_grid)),
                       ("token order", old.token_order, new.token_order)):
        if a != b:
            raise UserInputError(f"{INIT_FLAG}: the prior in {source_dir} has {what} {a}, this run {b}; start from a "
                                 "model of the same first-stage settings")
    target = prior.state_dict()
    state = {}
    for name, tensor in source.state_dict().items():
        if name not in target:
            continue  # buffers transformers does not save either way (attention masks)
        if name in ("transformer.wte.weight", "lm_head.weight"):
            # (K + N_src + 1, n_embd) -> (K + N_new + 1, n_embd): codes, mean user, null
            k, users = old.codebook_size, tensor[old.user_token(0):old.null_token]
            tensor = torch.cat([tensor[:k], users.mean(0, keepdim=True).expand(new.num_users, -1),
                                tensor[old.null_token:old.null_token + 1]])
        if tensor.shape != target[name].shape:
            raise UserInputError(f"{INIT_FLAG}: {name} is {tuple(tensor.shape)} in {source_dir} but "
                                 f"{tuple(target[name].shape)} here; drop the prior flags that differ")
        state[name] = tensor
    missing, unexpected = prior.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not prior.config.tie_word_embeddings]
    if missing or unexpected:
        raise UserInputError(f"{INIT_FLAG}: the prior in {source_dir} does not match this one (missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}); start from a model saved by this version")
    return len(state)
