"""Stratified per-user train/validation splits, saved as file lists so every stage sees the same split."""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Sequence

import numpy as np
import torch

from ..atomic import write_json_atomic
from ..errors import UserInputError
from .folder import SpectrogramData

logger = logging.getLogger(__name__)

SPLIT_FORMAT_VERSION = 1


def stratified_split(
    labels: Sequence[int] | torch.Tensor, val_fraction: float = 0.2, seed: int = 0,
    user_ids: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Split indices per user into train and validation.

    Each user with at least 2 images gets at least one image on each side (when ``val_fraction > 0``);
    a user with a single image goes to train. The draw uses its own generator seeded by ``(seed, label)``,
    so it ignores the torch/numpy global RNG and a user's split does not depend on the other users.

    Args:
        labels: ``[N]`` 0-based user labels.
        val_fraction: share of each user's images for validation, in [0, 1).
        seed: seed of the draw.
        user_ids: public id of each label (``SpectrogramData.user_ids``), only for the warning about users with a
            single image, which then names their folders ``ID_<k>``.

    Returns:
        ``(train_indices, val_indices)``, each sorted.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise UserInputError(f"val_fraction={val_fraction} must be in [0, 1) (e.g. 0.2)")
    label_array = np.asarray(labels.tolist() if torch.is_tensor(labels) else list(labels), dtype=np.int64)  # [N]
    train: list[int] = []
    val: list[int] = []
    single: list[int] = []
    for label in np.unique(label_array).tolist():
        members = np.flatnonzero(label_array == label)  # indices of this user
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(label)])
        members = rng.permutation(members)
        n_val = _validation_count(len(members), float(val_fraction))
        if len(members) == 1:
            single.append(int(label))
        val.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    if single and val_fraction > 0:
        names = [f"ID_{user_ids[label]}" for label in single] if user_ids is not None else \
            [f"label {label}" for label in single]
        logger.warning("%d user(s) have a single image and get no validation image: %s", len(single),
                       ", ".join(names))
    return sorted(train), sorted(val)


def _validation_count(n: int, val_fraction: float) -> int:
    """Validation images for a user with ``n`` images: rounded share, at least 1 and at most n - 1."""
    if n < 2 or val_fraction == 0.0:
        return 0
    return min(max(int(round(n * val_fraction)), 1), n - 1)


def save_split(
    path: str | os.PathLike,
    data: SpectrogramData,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    seed: int,
    val_fraction: float,
) -> pathlib.Path:
    """Write the split as JSON file lists (atomically: temp file + ``os.replace``).

    Args:
        path: the JSON file to write (parent folders are created).
        data: the data the indices refer to.
        train_idx: indices of the training images.
        val_idx: indices of the validation images.
        seed: the seed the split was drawn with.
        val_fraction: the validation share it was drawn with.

    Returns:
        The written path.
    """
    path = pathlib.Path(path)
    record = {
        "format_version": SPLIT_FORMAT_VERSION,
        "source": data.source,
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "user_ids": [int(u) for u in data.user_ids],
        "train": [data.paths[int(i)] for i in train_idx],
        "val": [data.paths[int(i)] for i in val_idx],
    }
    write_json_atomic(path, record, indent=1)
    logger.info("Saved the split (%d train, %d validation) to %s", len(record["train"]), len(record["val"]), path)
    return path


def load_split(path: str | os.PathLike, data: SpectrogramData) -> tuple[list[int], list[int]]:
    """Map a saved split back onto indices of ``data``.

    Files are matched by their full path first, then by ``<user folder>/<file name>`` so a data folder that
    moved still matches.

    Args:
        path: a JSON file written by :func:`save_split`.
        data: the data to index.

    Returns:
        ``(train_indices, val_indices)``, each sorted.

    Raises:
        UserInputError: missing or malformed file, or a listed image that is not in ``data``.
    """
    path = pathlib.Path(path)
    record = _read_split_record(path)
    by_path = {p: i for i, p in enumerate(data.paths)}
    by_tail = _index_by_tail(data.paths)
    sides = []
    for side in ("train", "val"):
        indices = []
        for listed in record[side]:
            index = by_path.get(listed, by_tail.get(_tail(listed)))
            if index is None:
                raise UserInputError(
                    f"split file {str(path)!r} lists {listed!r}, which is not in the data ({data.source}); "
                    "use the same data as in training, or delete the split file to draw a new one"
                )
            indices.append(index)
        sides.append(sorted(indices))
    return sides[0], sides[1]


def _read_split_record(path: pathlib.Path) -> dict:
    """The JSON record of a split file, checked for its ``train``/``val`` lists."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"split file {str(path)!r} does not exist; check the output folder") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"split file {str(path)!r} cannot be read ({err}); delete it to draw a new split") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), list) for k in ("train", "val")):
        raise UserInputError(f"split file {str(path)!r} has no 'train'/'val' file lists; delete it to draw a new split")
    return record


def _tail(path: str) -> str:
    """``<user folder>/<file name>`` of a path (the part that survives moving the data folder)."""
    parts = pathlib.PurePath(path).parts
    return "/".join(parts[-2:])


def _index_by_tail(paths: Sequence[str]) -> dict[str, int]:
    """Index of each unambiguous path tail."""
    counts: dict[str, int] = {}
    index: dict[str, int] = {}
    for i, path in enumerate(paths):
        tail = _tail(path)
        counts[tail] = counts.get(tail, 0) + 1
        index[tail] = i
    return {tail: i for tail, i in index.items() if counts[tail] == 1}
