"""Stage-1 fingerprints: a model folder is always one consistent model.

The prior (stage 2) and the pipeline index are only meaningful with the exact first stage they were trained on. The
trainer records the sha256 of the first stage's ``config.json`` and weights (:func:`stage1_fingerprint`) in
``prior/stage1_fingerprint.json`` and in ``stage1_fingerprint.json`` beside ``model_index.json``; loading
(:func:`check_model_folder`) and resuming stage 2 compare it with the first stage actually present and refuse a
mixture in one line. Folders saved before fingerprints existed load with a warning.

Before any work, the command-line tools run :func:`check_model_folder` with the parts they need: every file
present, complete JSON / safetensors, weights of the kind and shapes their config describes, stage 1 matching the
prior, each failure one line naming the file.

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
from ..errors import UserInputError, require_folder
from ..layout import MODEL_INDEX, PIPELINE_PARTS, PRIOR_FOLDER, VQVAE_FOLDER  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "stage1_fingerprint.json"
FINGERPRINT_KEY = "stage1_sha256"
# What save_pretrained of the GPT-2 prior writes (plus our fingerprint); nothing else in prior/ is ours.
PRIOR_FILES = ("config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin", FINGERPRINT_FILE)
# What the pipeline save writes at the top of the model folder and depends on the first stage.
INDEX_FILES = (MODEL_INDEX, FINGERPRINT_FILE)


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
    """The fingerprint recorded in ``folder``, or None when the folder predates fingerprints.

    Raises:
        UserInputError: the fingerprint file is damaged (not a JSON object).
    """
    path = Path(folder) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    return read_json_file(path, "the model folder").get(FINGERPRINT_KEY)


# What each part of a model folder must hold: (config file, weights files in order of preference).
FIRST_STAGE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
PRIOR_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_REMEDY = "the model folder is damaged or incomplete: re-save or re-download it, or retrain it with train_main.py"


def read_json_file(path: Path, what: str = "the model folder") -> dict:
    """The JSON object in ``path``; UserInputError naming the file when it is missing, empty or not JSON."""
    remedy = _REMEDY if what == "the model folder" else f"{what} is damaged: restore or recreate it"
    if not path.is_file():
        raise UserInputError(f"{path} is missing; {remedy}")
    try:
        text = path.read_bytes()
    except OSError as err:
        raise UserInputError(f"{path} cannot be read ({err.strerror}); check its permissions") from None
    if not text.strip():
        raise UserInputError(f"{path} is empty ({len(text)} bytes); {remedy}")
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = f"{err.msg}: line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) \
            else "not UTF-8 text"
        raise UserInputError(f"{path} is not valid JSON ({reason}; truncated or overwritten?); {remedy}") from None
    if not isinstance(record, dict):
        raise UserInputError(f"{path} holds a JSON {type(record).__name__}, not an object; {remedy}")
    return record


def _weights_file(folder: Path, names: tuple[str, ...]) -> Path:
    """The first existing weights file of ``names`` in ``folder`` (UserInputError when none or empty)."""
    for name in names:
        path = folder / name
        if path.is_file():
            if path.stat().st_size == 0:
                raise UserInputError(f"{path} is empty (0 bytes); {_REMEDY}")
            return path
    raise UserInputError(f"{folder / names[0]} is missing (no weights in {folder}); {_REMEDY}")


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """``{name: shape}`` from a safetensors header (None for a ``.bin`` file, not inspected).

    Raises:
        UserInputError: the file is truncated or not a safetensors file.
    """
    if path.suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"{path} is not a complete safetensors file ({reason}; {path.stat().st_size} bytes: "
                             f"truncated by an interrupted copy or download?); {_REMEDY}") from None


def _expected_shapes(module_class, config: dict | object) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """``({name: shape}, tied names)`` of the state dict ``module_class`` builds from ``config`` (on the meta device,
    so nothing is allocated)."""
    import torch

    with torch.device("meta"):
        model = module_class.from_config(config) if hasattr(module_class, "from_config") and isinstance(config, dict) \
            else module_class(config)
    tied = getattr(model, "_tied_weights_keys", None) or ()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, set(tied)


def _compare_shapes(weights: Path, config_file: Path, found: dict, expected: dict, tied: set[str],
                    kinds: tuple[str, str] | None = None) -> None:
    """UserInputError naming ``weights`` when its tensors are not those the config describes."""
    missing = sorted(set(expected) - set(found) - tied)
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        parts.append(f"{wrong[0]} is {list(found[wrong[0]])} in the file but {list(expected[wrong[0]])} in the config"
                     + (f", {len(wrong) - 1} more differ" if len(wrong) > 1 else ""))
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    what = f"{weights} does not match {config_file}"
    if kinds is not None:  # (kind of the weights, class the config names)
        what = f"{weights} holds a {kinds[0]} first stage but {config_file} describes a {kinds[1]}"
    raise UserInputError(f"{what} ({'; '.join(parts)}); the two files come from different models: restore the "
                         "matching pair, re-download the folder or retrain")


def _first_stage_kind(class_name: str) -> str | None:
    """``"vq"`` or ``"kl"`` for our classes and the stock diffusers ones, None otherwise."""
    return {"VQFirstStage": "vq", "VQModel": "vq", "KLFirstStage": "kl", "AutoencoderKL": "kl"}.get(class_name)


def check_first_stage_files(folder: str | os.PathLike) -> dict:
    """Check a first-stage folder without loading it: ``config.json`` is a JSON object naming a first-stage class,
    and the weights file is a complete safetensors file whose tensors are the ones that config describes (so a vq
    config with kl weights, or the reverse, is refused naming both kinds).

    Returns:
        The config.

    Raises:
        UserInputError: one line naming the offending file.
    """
    from . import first_stage as fs

    folder = Path(folder)
    config_file = folder / "config.json"
    config = read_json_file(config_file)
    class_name = config.get("_class_name")
    classes = {cls.__name__: cls for cls in fs.FIRST_STAGE_CLASSES.values()}
    classes.update({name: pair[0] for name, pair in getattr(fs, "_STOCK_CLASSES", {}).items()})
    if class_name not in classes:
        raise UserInputError(f"{config_file} names the class {class_name!r}, not a first stage "
                             f"({', '.join(sorted(classes))}); point to a first stage saved by this project")
    weights = _weights_file(folder, FIRST_STAGE_WEIGHTS)
    found = _tensor_shapes(weights)
    if found is None:
        return config
    try:
        expected, tied = _expected_shapes(classes[class_name], config)
    except Exception as err:  # a config the class cannot be built from: damaged or from another version
        raise UserInputError(f"{config_file} does not describe a buildable {class_name} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); {_REMEDY}") from None
    kind, latent = _first_stage_kind(class_name), config.get("latent_channels")
    conv = found.get("encoder.conv_out.weight")
    weights_kind = None
    if conv and isinstance(latent, int):  # the kl encoder outputs mean and log-variance: twice the channels
        weights_kind = {latent: "vq", 2 * latent: "kl"}.get(conv[0])
    kinds = (weights_kind, f"{kind} one ({class_name})") if weights_kind and kind and weights_kind != kind else None
    _compare_shapes(weights, config_file, found, expected, tied, kinds)
    return config


def check_prior_files(folder: str | os.PathLike, codebook_size: int | None = None) -> dict:
    """Check a prior folder without loading it: ``config.json`` describes a GPT-2 and the weights are a complete
    safetensors file holding the tensors of that config; ``codebook_size`` (the first stage's K) must match.

    Returns:
        The config.

    Raises:
        UserInputError: one line naming the offending file.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    config = read_json_file(config_file)
    if config.get("model_type") != "gpt2":
        raise UserInputError(f"{config_file} describes a {config.get('model_type')!r} model, not the GPT-2 prior; "
                             f"{_REMEDY}")
    recorded = config.get("codebook_size")
    if codebook_size is not None and recorded is not None and recorded != codebook_size:
        raise UserInputError(f"{config_file} is a prior over {recorded} codes but vqvae/ has {codebook_size}; the "
                             "folder mixes two trainings: retrain, or finish with train_main.py "
                             "--resume_from_checkpoint latest")
    weights = _weights_file(folder, PRIOR_WEIGHTS)
    found = _tensor_shapes(weights)
    if found is None:
        return config
    from transformers import GPT2Config, GPT2LMHeadModel

    try:
        expected, tied = _expected_shapes(GPT2LMHeadModel, GPT2Config.from_dict(config))
    except Exception as err:  # a config GPT-2 cannot be built from
        raise UserInputError(f"{config_file} does not describe a buildable GPT-2 ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); {_REMEDY}") from None
    _compare_shapes(weights, config_file, found, expected, tied)
    return config


def check_model_folder(folder: str | os.PathLike, need: tuple[str, ...] | None = None) -> None:
    """Refuse a model folder that is not one consistent, loadable model, in one line naming the offending file.

    With ``need`` (parts: ``"model_index.json"``, ``"vqvae"``, ``"prior"``; :data:`PIPELINE_PARTS` for
    generation), run before any work: each needed part must be present, and each part present (needed or not)
    must be loadable: JSON files complete JSON objects, weights complete safetensors files holding the tensors
    their config describes (so a first stage of the other kind than its config says is refused), the prior over
    the first stage's codes. Then, always: the prior and the index must record the fingerprint of the ``vqvae/``
    the folder holds (folders saved before fingerprints: a warning). Nothing is loaded into memory.

    ``VQVAETransformerPipeline.from_pretrained`` calls it without ``need`` after loading (fingerprints only).

    Raises:
        UserInputError: one line naming the offending file and what to do.
    """
    folder = Path(folder)
    if need is not None:
        require_folder(folder, "model folder", "pass the folder written by train_main.py")
        for part in need:
            if not (folder / part).exists():
                raise UserInputError(f"{folder / part} is missing; {_REMEDY}")
        if (folder / MODEL_INDEX).exists():
            read_json_file(folder / MODEL_INDEX)
        codebook_size = None
        if (folder / VQVAE_FOLDER).exists():
            codebook_size = check_first_stage_files(folder / VQVAE_FOLDER).get("num_vq_embeddings")
        if (folder / PRIOR_FOLDER).exists():
            check_prior_files(folder / PRIOR_FOLDER, codebook_size)
    if not (folder / VQVAE_FOLDER / "config.json").is_file():
        return
    actual = stage1_fingerprint(folder / VQVAE_FOLDER)
    for part, where, marker in ((folder / PRIOR_FOLDER, "prior/", folder / PRIOR_FOLDER / "config.json"),
                                (folder, "model_index.json", folder / MODEL_INDEX)):
        if need is not None and not marker.exists():
            continue  # the part is absent (a stage-1-only folder): nothing to match
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
