"""Where a model's data came from: saved beside the model so validation and analysis reload exactly that data.

``OUTPUT_DIR/data_info.json`` holds the arguments of :func:`load_training_data`; ``OUTPUT_DIR/split.json`` the
train/validation file lists (:mod:`.splits`). Together they give back the images training did and did not see.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import UserInputError
from ..layout import DATA_INFO_FILE, SPLIT_FILE
from .default import load_training_data
from .folder import SpectrogramData
from .splits import load_split


_LOAD_KEYS = ("data_dir", "dataset_name", "resolution", "channels", "num_users", "skip_bad_images",
              "samples_per_user", "seed", "colormap")


def save_data_info(output_dir: str | Path, data: SpectrogramData, **load_kwargs) -> Path:
    """Write ``data_info.json``: the :func:`load_training_data` arguments plus facts about ``data``.

    Args:
        output_dir: the model folder.
        data: the loaded data (its user ids, channels, resolution and source are recorded).
        load_kwargs: the arguments given to :func:`load_training_data` (paths are made absolute).
    """
    info = {key: load_kwargs.get(key) for key in _LOAD_KEYS}
    if info["data_dir"] is not None:
        info["data_dir"] = str(Path(info["data_dir"]).resolve())
    info["num_users"] = data.num_users  # the first N users again, whatever the flag was
    if data.source.startswith("simulated:"):
        info["simulated_dir"] = data.source.split(":", 1)[1]
    info.update(source=data.source, user_ids=list(data.user_ids), channels=data.channels,
                resolution=data.resolution, num_images=len(data),
                colormap=data.colormap or "none",  # what "auto" resolved to: reloads read the images the same way
                colormap_fit=data.colormap_fit)
    return write_json_atomic(Path(output_dir) / DATA_INFO_FILE, info)


def read_data_info(model_dir: str | Path) -> dict:
    """The saved ``data_info.json`` of a model folder (UserInputError when missing)."""
    path = Path(model_dir) / DATA_INFO_FILE
    if not path.is_file():
        raise UserInputError(f"{path} is missing: {model_dir} was not written by train_main.py; pass the real data "
                             "explicitly (e.g. --real_data_dir)")
    return json.loads(path.read_text())


def load_model_data(model_dir: str | Path) -> tuple[SpectrogramData, list[int], list[int]]:
    """Reload the data a model was trained on, with its saved split.

    Returns:
        ``(data, train_indices, val_indices)``.
    """
    info = read_data_info(model_dir)
    kwargs = {key: info.get(key) for key in _LOAD_KEYS if info.get(key) is not None}
    simulated = info.get("simulated_dir")
    if simulated and Path(simulated).is_dir():  # read the cached simulation; re-simulate only if it was deleted
        kwargs.update(data_dir=simulated)
        kwargs.pop("samples_per_user", None)
        kwargs.pop("seed", None)
    data = load_training_data(**kwargs)
    split_path = Path(model_dir) / SPLIT_FILE
    if not split_path.is_file():
        raise UserInputError(f"{split_path} is missing: retrain with train_main.py or pass --real_data_dir")
    train_idx, val_idx = load_split(split_path, data)
    return data, train_idx, val_idx


def load_model_training_split(model_dir: str | Path, flag: str) -> tuple[SpectrogramData, list[int]]:
    """The data ``model_dir`` was trained on and its training indices, for a tool option (``flag``) that needs them.

    Raises:
        UserInputError: one line naming ``flag`` when the folder holds no ``data_info.json`` (e.g. a Hub download),
            or when the image folder it records is no longer there (moved or deleted).
    """
    info = Path(model_dir) / DATA_INFO_FILE
    if not info.is_file():
        raise UserInputError(f"{flag} uses the model's real training images, but {info} is missing (the folder was "
                             "not written by train_main.py, or holds no record of its data); drop "
                             f"{flag} or use the folder train_main.py wrote")
    data_dir = read_data_info(model_dir).get("data_dir")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserInputError(f"{flag} uses the model's real training images, but {data_dir} (where {info} says they "
                             f"were) is no longer there; put the ID_<k> folders back there or drop {flag}")
    data, train_idx, _ = load_model_data(model_dir)
    return data, train_idx
