"""Stage-1 fingerprints: a model folder is always one consistent model.

The prior (stage 2) and the pipeline index are only meaningful with the exact first stage they were trained on. The
trainer records the sha256 of the first stage's ``config.json`` and weights (:func:`stage1_fingerprint`) in
``prior/stage1_fingerprint.json`` and in ``stage1_fingerprint.json`` beside ``model_index.json``; loading
(:func:`check_model_folder`) and resuming stage 2 compare it with the first stage actually present and refuse a
mixture in one line. Folders saved before fingerprints existed load with a warning.

Writing a new first stage first removes what depended on the old one (:func:`invalidate_dependents`): the trainer's
own ``prior/`` files, ``model_index.json``, the loader shim and the root fingerprint. Files the trainer did not
write are never touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import UserInputError

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "stage1_fingerprint.json"
FINGERPRINT_KEY = "stage1_sha256"
VQVAE_FOLDER = "vqvae"
PRIOR_FOLDER = "prior"
# What save_pretrained of the GPT-2 prior writes (plus our fingerprint); nothing else in prior/ is ours.
PRIOR_FILES = ("config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin", FINGERPRINT_FILE)
# What the pipeline save writes at the top of the model folder and depends on the first stage.
INDEX_FILES = ("model_index.json", FINGERPRINT_FILE)


def stage1_fingerprint(vqvae_dir: str | os.PathLike) -> str:
    """sha256 (hex) over the first stage's ``config.json`` and its ``*.safetensors`` files, in name order.

    Raises:
        UserInputError: ``vqvae_dir`` holds no ``config.json``.
    """
    folder = Path(vqvae_dir)
    config = folder / "config.json"
    if not config.is_file():
        raise UserInputError(f"no first stage at {folder} (config.json missing); train one with train_main.py")
    digest = hashlib.sha256()
    for path in [config, *sorted(folder.glob("*.safetensors"))]:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def write_fingerprint(folder: str | os.PathLike, fingerprint: str) -> Path:
    """Record ``fingerprint`` in ``folder/stage1_fingerprint.json`` (atomically)."""
    return write_json_atomic(Path(folder) / FINGERPRINT_FILE, {FINGERPRINT_KEY: fingerprint})


def read_fingerprint(folder: str | os.PathLike) -> str | None:
    """The fingerprint recorded in ``folder``, or None when the folder predates fingerprints."""
    path = Path(folder) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(FINGERPRINT_KEY)


def check_model_folder(folder: str | os.PathLike) -> None:
    """Refuse a model folder whose prior or index was saved with another first stage than the one it holds.

    Called by ``VQVAETransformerPipeline.from_pretrained`` after the components are loaded.

    Raises:
        UserInputError: one line naming the part that does not belong to ``vqvae/``.
    """
    folder = Path(folder)
    if not (folder / VQVAE_FOLDER / "config.json").is_file():
        return
    actual = stage1_fingerprint(folder / VQVAE_FOLDER)
    for part, where in ((folder / PRIOR_FOLDER, "prior/"), (folder, "model_index.json")):
        recorded = read_fingerprint(part)
        if recorded is None:
            logger.warning(f"{folder}: {where} records no stage-1 fingerprint (saved by an older version); "
                           "cannot check it belongs to vqvae/")
        elif recorded != actual:
            raise UserInputError(f"{folder}: {where} was trained on another first stage than the vqvae/ it holds "
                                 f"(fingerprint {recorded[:12]} vs {actual[:12]}); the folder mixes two trainings "
                                 "- finish it with train_main.py --resume_from_checkpoint latest or retrain")


def invalidate_dependents(output_dir: str | os.PathLike) -> list[Path]:
    """Remove what depends on the current first stage of ``output_dir`` before a new one is written.

    Only the trainer's own files go: the files ``save_pretrained`` writes in ``prior/`` (the folder itself only
    when it is then empty), ``model_index.json``, the root fingerprint and the loader shim when it is ours.

    Returns:
        The paths removed.
    """
    from .pipeline import SHIM_MODULE, SHIM_SOURCE

    output_dir = Path(output_dir)
    removed = []
    prior = output_dir / PRIOR_FOLDER
    # The fingerprint goes first: a crash half-way leaves a prior that no longer claims to match anything.
    for name in (FINGERPRINT_FILE, *PRIOR_FILES):
        path = prior / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    if prior.is_dir() and not any(prior.iterdir()):
        prior.rmdir()
    for name in (FINGERPRINT_FILE, *INDEX_FILES):
        path = output_dir / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    shim = output_dir / f"{SHIM_MODULE}.py"
    if shim.is_file() and shim.read_text() == SHIM_SOURCE:
        shim.unlink()
        removed.append(shim)
    if removed:
        logger.info(f"new first stage: removed {len(removed)} file(s) of the model trained on the old one "
                    f"({', '.join(str(p.relative_to(output_dir)) for p in removed)})")
    return removed
