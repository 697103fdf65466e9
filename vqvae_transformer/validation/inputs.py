"""Inputs of a validation run: the model's facts, its real data and split, and the generated ``ID_<k>`` folders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..data import SpectrogramData, load_image_folder, scan_user_folders, stratified_split
from ..data.folder import DECODE_ERRORS
from ..data.provenance import DATA_INFO_FILE, load_model_data
from ..errors import UserInputError
from ..layout import GENERATION_INFO_FILE, MODEL_INDEX, VQVAE_FOLDER


@dataclasses.dataclass
class RealData:
    """Real images with the split the judge is trained and tested on."""

    data: SpectrogramData
    train_idx: list[int]
    val_idx: list[int]
    split_source: str


def model_facts(model_dir: str | Path) -> dict:
    """User ids, resolution, channels and colormap (``"none"`` when absent) of a trained model folder.

    Read from ``model_index.json`` (the pipeline), else ``data_info.json``, else the first stage's config.

    Raises:
        UserInputError: the folder does not exist or says nothing about its users.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserInputError(f"model folder {str(model_dir)!r} does not exist; train one with train_main.py or "
                             "pass --model_dir")
    facts: dict[str, Any] = {}
    for name in (MODEL_INDEX, DATA_INFO_FILE, f"{VQVAE_FOLDER}/config.json"):
        record = _read_json(model_dir / name)
        if name == "vqvae/config.json":
            record = {"resolution": record.get("sample_size"), "channels": record.get("in_channels")}
        for key in ("user_ids", "resolution", "channels", "colormap"):
            if facts.get(key) is None and record.get(key) is not None:
                facts[key] = record[key]
    if not facts.get("user_ids"):
        raise UserInputError(f"{model_dir} has no model_index.json or {DATA_INFO_FILE} naming its users; point "
                             "--model_dir to a folder written by train_main.py")
    if facts.get("resolution") is None or facts.get("channels") is None:
        raise UserInputError(f"{model_dir} does not say its resolution and channels (no model_index.json, "
                             f"{DATA_INFO_FILE} or vqvae/config.json); point --model_dir to a trained model")
    facts["user_ids"] = [int(u) for u in facts["user_ids"]]
    facts["colormap"] = facts.get("colormap") or "none"  # older folders: images were read as RGB
    return facts


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when the file is absent (UserInputError when unreadable)."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path} cannot be read ({err}); the model folder is damaged, retrain it") from None
    return record if isinstance(record, dict) else {}


def load_real_data(model_dir: str | Path, facts: dict, real_data_dir: str | Path | None, seed: int,
                   val_fraction: float) -> RealData:
    """The model's own data and saved split, or ``real_data_dir`` with a seeded stratified split.

    Args:
        model_dir: the trained model folder.
        facts: :func:`model_facts` of it (resolution and channels for ``real_data_dir``).
        real_data_dir: another folder of ``ID_<k>`` sub-folders, or None.
        seed: seed of the split of ``real_data_dir``.
        val_fraction: validation share of that split.

    Returns:
        A :class:`RealData`.
    """
    if real_data_dir is None:
        data, train_idx, val_idx = load_model_data(model_dir)
        return RealData(data, train_idx, val_idx, f"{Path(model_dir) / 'split.json'} (the training split)")
    data = load_image_folder(real_data_dir, int(facts["resolution"]), channels=int(facts["channels"]),
                             colormap=facts["colormap"])  # read as the model's training data was
    train_idx, val_idx = stratified_split(data.labels, val_fraction, seed, user_ids=data.user_ids)
    return RealData(data, train_idx, val_idx, f"stratified split of {real_data_dir} (seed {seed}, "
                                              f"val_fraction {val_fraction})")


def load_generated(generated_dir: str | Path, real: SpectrogramData, known_ids: Sequence[int]) -> SpectrogramData:
    """Generated ``ID_<k>`` folders, checked against the model and relabelled with the real data's labels.

    Args:
        generated_dir: folder of generated ``ID_<k>/*.png``.
        real: the real data (its resolution, channels and id map).
        known_ids: the public ids the model was trained on.

    Returns:
        The generated images ``[M, C, R, R]`` with ``labels`` indexing ``real.user_ids``.

    Raises:
        UserInputError: missing folder, ids the model or the real data do not know, images whose size or
            channels differ from the data's.
    """
    files = scan_user_folders(generated_dir)
    unknown = sorted(set(files) - set(known_ids))
    if unknown:
        raise UserInputError(f"{generated_dir} holds folders for user ids {unknown} that the model does not know "
                             f"(model ids: {_short(known_ids)}); remove them or pass the right --model_dir")
    missing_real = sorted(set(files) - set(real.user_ids))
    if missing_real:
        raise UserInputError(f"the real data ({real.source}) has no images of generated user ids {missing_real}; "
                             "pass a --real_data_dir that holds those users")
    _check_image_sizes(files, real.resolution)
    generated = load_image_folder(generated_dir, real.resolution, colormap=real.colormap or "none")
    if generated.channels != real.channels:
        raise UserInputError(f"generated images in {generated_dir} have {generated.channels} channel(s) but the "
                             f"data has {real.channels}; generate them with this model")
    labels = torch.tensor([real.id_to_label(generated.user_ids[i]) for i in generated.labels.tolist()],
                          dtype=torch.long)
    return dataclasses.replace(generated, labels=labels, user_ids=list(real.user_ids))


def _check_image_sizes(files: dict[int, list[Path]], resolution: int) -> None:
    """UserInputError naming the first generated image whose size is not ``resolution``×``resolution``."""
    wrong: list[str] = []
    first = ""
    for paths in files.values():
        for path in paths:
            try:
                with Image.open(path) as image:
                    size = image.size
            except DECODE_ERRORS as err:
                raise UserInputError(f"cannot read generated image {path} ({err}); regenerate it") from None
            if size != (resolution, resolution):
                wrong.append(str(path))
                first = first or f"{path} is {size[0]}x{size[1]}"
    if wrong:
        raise UserInputError(f"{len(wrong)} generated image(s) do not match the model's {resolution}x{resolution} "
                             f"resolution ({first}); generate them with this model")


def _short(values: Sequence[int], limit: int = 8) -> str:
    values = list(values)
    return ", ".join(map(str, values[:limit])) + (f", ... (+{len(values) - limit} more)" if len(values) > limit else "")


def generated_selection(generated_dir: str | Path) -> dict | None:
    """How the generated images were selected, from ``generation_info.json``'s ``attribution`` block
    (``generate_main.py --keep_attributed``); None for plain samples or a folder without that file."""
    path = Path(generated_dir) / GENERATION_INFO_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path} cannot be read ({err}); regenerate the folder with generate_main.py") from None
    block = record.get("attribution") if isinstance(record, dict) else None
    if not isinstance(block, dict):
        return None
    return {key: block.get(key) for key in ("method", "oversample", "acceptance_rate", "kept_attributed_rate")}
