"""Spectrograms from a ``datasets`` dataset: a Hub name, a ``save_to_disk`` folder or a local Hub-style folder.

Labels become public user ids: integers are taken as given (0-based ones are shifted to 1-based, with a log
line), strings such as ``"ID_7"`` or ``"7"`` (and ``ClassLabel`` names) are parsed to their integer and ordered
numerically, never as strings.
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
import re
import time
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import UserInputError
from .folder import (
    DECODE_ERRORS,
    SpectrogramData,
    check_resolution_and_channels,
    decode_image,
    recall_decoded,
    remember_decoded,
    stack_images,
)

logger = logging.getLogger(__name__)

# "ID_7", "ID7", "user-07", "7": an optional word prefix, then the integer id.
_LABEL_PATTERN = re.compile(r"^\s*[A-Za-z]*[_\- ]?(\d+)\s*$")
_MAX_LISTED = 5


def load_hub_dataset(
    name_or_path: str | os.PathLike,
    resolution: int,
    channels: int | None = None,
    num_users: int | None = None,
    image_column: str = "image",
    label_column: str = "label",
    split: str = "train",
) -> SpectrogramData:
    """Load spectrograms and user labels through ``datasets``.

    Args:
        name_or_path: a Hub dataset name (``org/name``), a folder written by ``save_to_disk`` (a ``Dataset``
            or a ``DatasetDict``), or a local Hub-style dataset folder (parquet/arrow/csv/image files).
        resolution: output side in pixels (at least 8).
        channels: 1 or 3 to force; None detects (1 when every image is grayscale, else 3).
        num_users: keep the first N users in id order; None keeps all.
        image_column: column holding the images.
        label_column: column holding the user of each image (ints or strings like ``"ID_7"``).
        split: the split to read.

    Returns:
        The images ``[N, C, R, R]`` in [-1, 1], 0-based labels, public user ids, and paths
        ``hub:<name>/<split>/<row>``.

    Raises:
        UserInputError: unknown dataset or split, missing columns, unparseable labels, bad ``num_users``,
            or unreadable images.
    """
    check_resolution_and_channels(resolution, channels)
    if num_users is not None and int(num_users) < 1:
        raise UserInputError(f"num_users={num_users} must be at least 1")
    name = str(name_or_path)
    dataset = _open_dataset(name, split)
    _check_columns(dataset, name, image_column, label_column)

    fingerprint = getattr(dataset, "_fingerprint", None)  # changes whenever the data does
    key = ("hub", name, split, fingerprint, image_column, label_column, int(resolution), channels, num_users)
    cached = recall_decoded(key) if fingerprint is not None else None
    if cached is not None:
        logger.info("Using the %d images of %s already decoded in this process", len(cached), name)
        return cached

    public_ids = _public_ids(dataset, label_column, name)  # one per row
    user_ids = sorted(set(public_ids))
    if num_users is not None and int(num_users) > len(user_ids):
        raise UserInputError(
            f"num_users={num_users} but dataset {name!r} has only {len(user_ids)} users; lower num_users"
        )
    if num_users is not None:
        user_ids = user_ids[: int(num_users)]
    data = _decode_rows(dataset, name, split, image_column, public_ids, user_ids, resolution, channels)
    if fingerprint is not None:
        remember_decoded(key, data)
    return data


def _open_dataset(name: str, split: str) -> Any:
    """The ``datasets.Dataset`` for ``name`` and ``split``, picking ``load_from_disk`` or ``load_dataset``."""
    import datasets  # deferred: importing datasets costs about a second

    path = pathlib.Path(name).expanduser()
    try:
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise UserInputError(
                        f"split {split!r} is not in {name!r} (splits: {', '.join(loaded)}); pass one of those"
                    )
                loaded = loaded[split]
            return loaded
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split)
        return datasets.load_dataset(name, split=split)
    except UserInputError:
        raise
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise UserInputError(
            f"cannot load dataset {name!r} split {split!r} ({reason}); check the name, the split and the network"
        ) from None


def _check_columns(dataset: Any, name: str, image_column: str, label_column: str) -> None:
    """Raise naming the available columns when the image or label column is missing."""
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise UserInputError(
            f"dataset {name!r} has no column {', '.join(repr(c) for c in missing)} "
            f"(columns: {', '.join(dataset.column_names)}); pass the right image/label column names"
        )


def _public_ids(dataset: Any, label_column: str, name: str) -> list[int]:
    """Public 1-based user id of every row, from int labels, ``ClassLabel`` names or strings."""
    import datasets

    feature = dataset.features[label_column]
    raw = list(dataset[label_column])
    if isinstance(feature, datasets.ClassLabel):
        raw = [feature.int2str(int(value)) for value in raw]  # names such as "ID_7", ordered as strings
    if all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in raw):
        return _ids_from_ints([int(value) for value in raw], name)
    return [_parse_label(value, name) for value in raw]


def _ids_from_ints(values: list[int], name: str) -> list[int]:
    """Integer labels as public ids; 0-based labels are shifted by one."""
    if not values:
        raise UserInputError(f"dataset {name!r} has no rows; pick another split or dataset")
    low = min(values)
    if low < 0:
        raise UserInputError(f"dataset {name!r} has negative label {low}; user labels must be ids >= 0")
    if low == 0:
        logger.info("Labels of %s start at 0: using label + 1 as the public (1-based) user id", name)
        return [v + 1 for v in values]
    return values


def _parse_label(value: object, name: str) -> int:
    """``"ID_7"``/``"7"`` -> 7; anything else is a UserInputError naming the value."""
    match = _LABEL_PATTERN.match(str(value))
    if match is None or int(match.group(1)) < 1:
        raise UserInputError(
            f"label {value!r} of dataset {name!r} is not a user id; use integers or strings like 'ID_7'"
        )
    return int(match.group(1))


def _decode_rows(
    dataset: Any,
    name: str,
    split: str,
    image_column: str,
    public_ids: list[int],
    user_ids: list[int],
    resolution: int,
    channels: int | None,
) -> SpectrogramData:
    """Decode the rows of the kept users, reporting unreadable rows by index."""
    import datasets

    start = time.perf_counter()
    label_of = {user_id: label for label, user_id in enumerate(user_ids)}
    rows = [row for row, user_id in enumerate(public_ids) if user_id in label_of]
    images = dataset.select(rows)
    if isinstance(images.features[image_column], datasets.Image):
        images = images.cast_column(image_column, datasets.Image(decode=False))  # decode here, errors by row
    arrays: list[np.ndarray] = []
    gray_flags: list[bool] = []
    bad: list[str] = []
    for row, item in zip(rows, images[image_column]):
        try:
            array, is_gray = decode_image(_image_source(item), resolution)
        except DECODE_ERRORS + (TypeError,) as err:
            logger.debug("Cannot read row %d of %s: %s", row, name, err)
            bad.append(str(row))
            continue
        arrays.append(array)
        gray_flags.append(is_gray)
    if bad:
        shown = ", ".join(bad[:_MAX_LISTED]) + (", ..." if len(bad) > _MAX_LISTED else "")
        raise UserInputError(
            f"cannot read the image of {len(bad)} row(s) of {name!r} split {split!r} (rows {shown}); "
            "fix the dataset"
        )
    stacked, channels = stack_images(arrays, gray_flags, channels)  # [N, C, R, R]
    logger.info(
        "Loaded %d images of %d users from %s (%s) at %d px, %d channel(s) in %.2f s",
        len(rows), len(user_ids), name, split, resolution, channels, time.perf_counter() - start,
    )
    return SpectrogramData(
        images=stacked,
        labels=torch.tensor([label_of[public_ids[row]] for row in rows], dtype=torch.long),
        user_ids=list(user_ids),
        paths=[f"hub:{name}/{split}/{row}" for row in rows],
        channels=channels,
        resolution=int(resolution),
        source=f"hub:{name}",
    )


def _image_source(item: Any) -> Any:
    """Something ``PIL.Image.open`` reads from a cell: bytes/path dict, path, PIL image or array."""
    if isinstance(item, dict):
        if item.get("bytes") is not None:
            return io.BytesIO(item["bytes"])
        if item.get("path"):
            return item["path"]
        raise ValueError("empty image cell")
    if isinstance(item, (str, os.PathLike)):
        return item
    if isinstance(item, Image.Image):
        return _png_bytes(item)
    if isinstance(item, (np.ndarray, Sequence)):
        return _png_bytes(Image.fromarray(np.asarray(item)))
    raise TypeError(f"image cell of type {type(item).__name__}")


def _png_bytes(image: Image.Image) -> io.BytesIO:
    """Re-encode an in-memory image so it goes through the same decoding path as files."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if image.mode != "F" else "TIFF")
    buffer.seek(0)
    return buffer
