"""The folder contract: ``DATA_DIR/ID_<k>/*.{png,jpg,jpeg,bmp,tif,tiff}`` loaded into tensors.

User folders are named ``ID_<k>`` (or ``ID<k>``) with ``k`` a positive integer, the public 1-based user id.
They are ordered by that integer (``ID_10`` after ``ID_9``), gaps keep their ids, and ``num_users=N`` keeps
the first N. Every image, of any size and PIL mode, becomes a ``[C, R, R]`` float32 tensor in [-1, 1];
``C`` is 1 when all images are grayscale, 3 otherwise, unless forced. With ``colormap="auto"`` (or a map's name),
colour images whose pixels lie on a known colormap (jet, ...; :mod:`.colormap`) are read as the scalar the colormap
encodes, one channel; the colormap is recorded in :attr:`SpectrogramData.colormap`. The default, ``"none"``, keeps
RGB (measured better for identity, see :data:`.colormap.DEFAULT_COLORMAP`).

A plain ``os.scandir`` + PIL loader is used rather than ``datasets.load_dataset("imagefolder")``, which orders
labels as strings and keeps corrupt images as rows that fail late (docs/DESIGN.md §7). Decoded tensors are kept
in memory for the process, so the stages of one run decode the folder once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
import re
import time
from typing import IO, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserInputError
from . import colormap as cmaps

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Lower-case file extensions read as images (matched case-insensitively)."""

MIN_RESOLUTION = 8
"""Smallest accepted ``resolution`` (pixels per side)."""

# Folder names of users: ID_7, ID7 (any case). The integer is the public id.
_USER_DIR_PATTERN = re.compile(r"^id_?(\d+)$", re.IGNORECASE)

# PIL modes that hold a single gray channel (alpha, if any, is dropped).
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
# Gray modes whose values are not 8-bit: decoded through a float array.
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})

# What PIL raises for unreadable, truncated or hostile files.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
)

# ITU-R 601 luma, the weights PIL uses for RGB -> L.
_LUMA_WEIGHTS = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32)

_MAX_LISTED = 5  # names listed in one-line error messages before "..."
_CACHE_SIZE = 4  # decoded folders kept in memory per process


@dataclasses.dataclass
class SpectrogramData:
    """A set of spectrograms with their users, ready for training.

    Tensors may be shared with the in-memory cache: treat them as read-only (clone before editing in place).
    """

    images: torch.Tensor  # [N, C, R, R] float32 in [-1, 1]
    labels: torch.Tensor  # [N] int64, 0-based index into user_ids
    user_ids: list[int]  # public ids, user_ids[label]
    paths: list[str]  # file path per image, or e.g. "hub:<name>/<split>/<row>"
    channels: int
    resolution: int
    source: str
    colormap: str | None = None  # the colormap the images were inverted through (one channel), or None
    colormap_fit: dict | None = None  # the detection's record (ColormapFit.to_dict) when colormap was "auto"

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        expected = (n, self.channels, self.resolution, self.resolution)
        if tuple(self.images.shape) != expected:
            raise ValueError(f"images have shape {tuple(self.images.shape)}, expected {expected}")
        if self.labels.shape != (n,) or len(self.paths) != n:
            raise ValueError(f"{n} images but {tuple(self.labels.shape)} labels and {len(self.paths)} paths")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_users(self) -> int:
        """Number of users in the id map (users of a subset may have no image left)."""
        return len(self.user_ids)

    def id_to_label(self, public_id: int) -> int:
        """Map a public (folder) user id to the 0-based label used inside the models."""
        try:
            return self.user_ids.index(int(public_id))
        except ValueError:
            raise UserInputError(
                f"user id {public_id} is not in the data (ids: {_short_list(self.user_ids)}); pick one of those"
            ) from None

    def label_to_id(self, label: int) -> int:
        """Map a 0-based label back to its public user id."""
        if not 0 <= int(label) < len(self.user_ids):
            raise ValueError(f"label {label} is outside [0, {len(self.user_ids)})")
        return self.user_ids[int(label)]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "SpectrogramData":
        """The images at ``indices``, keeping the full user-id map so labels stay valid.

        Args:
            indices: positions into this data (list or 1-D integer tensor).

        Returns:
            A new :class:`SpectrogramData` with the selected rows.
        """
        index = torch.as_tensor(list(indices) if not torch.is_tensor(indices) else indices, dtype=torch.long)
        index = index.reshape(-1)  # [M]
        return dataclasses.replace(
            self,
            images=self.images[index],  # [M, C, R, R]
            labels=self.labels[index],  # [M]
            user_ids=list(self.user_ids),
            paths=[self.paths[i] for i in index.tolist()],
        )

    def as_dataset(self) -> torch.utils.data.TensorDataset:
        """A ``TensorDataset(images, labels)`` for a DataLoader (items: ``[C, R, R]`` image, scalar label)."""
        return torch.utils.data.TensorDataset(self.images, self.labels)


# ----------------------------------------------------------------------------------------------------------
# Scanning


def scan_user_folders(data_dir: str | os.PathLike, num_users: int | None = None) -> dict[int, list[pathlib.Path]]:
    """Find the user folders of ``data_dir`` and their image files.

    Args:
        data_dir: folder holding ``ID_<k>`` (or ``ID<k>``) sub-folders.
        num_users: keep the first N users in id order; None keeps all.

    Returns:
        ``{public_id: [image files sorted by natural name order]}`` in increasing id order.

    Raises:
        UserInputError: missing directory, no user folders, duplicate ids, bad ``num_users``, or an empty
            user folder.
    """
    root = pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UserInputError(f"data directory {str(root)!r} {what}; pass a folder holding ID_<k> sub-folders")
    if num_users is not None and int(num_users) < 1:
        raise UserInputError(f"num_users={num_users} must be at least 1")

    folders = _find_user_dirs(root)
    ids = sorted(folders)
    if num_users is not None and int(num_users) > len(ids):
        raise UserInputError(
            f"num_users={num_users} but {str(root)!r} has only {len(ids)} user folders "
            f"(ids {_short_list(ids)}); lower num_users"
        )
    selected = ids if num_users is None else ids[: int(num_users)]

    result: dict[int, list[pathlib.Path]] = {}
    ignored = 0
    for user_id in selected:
        images, skipped = _list_images(folders[user_id])
        if not images:
            raise UserInputError(
                f"user folder {str(folders[user_id])!r} holds no images ({'/'.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        result[user_id] = images
        ignored += skipped
    if ignored:
        logger.info("Ignored %d non-image entries in the user folders of %s", ignored, root)
    return result


def _find_user_dirs(root: pathlib.Path) -> dict[int, pathlib.Path]:
    """``{public_id: folder}`` for the ``ID_<k>`` sub-folders of ``root`` (errors on none or duplicates)."""
    folders: dict[int, pathlib.Path] = {}
    others: list[str] = []
    with os.scandir(root) as entries:
        for entry in entries:
            match = _USER_DIR_PATTERN.match(entry.name)
            if match is None or not entry.is_dir():
                others.append(entry.name)
                continue
            user_id = int(match.group(1))
            if user_id < 1:
                raise UserInputError(
                    f"user folder {entry.name!r} in {str(root)!r} has id {user_id}; ids are 1-based, rename it"
                )
            if user_id in folders:
                raise UserInputError(
                    f"user folders {folders[user_id].name!r} and {entry.name!r} in {str(root)!r} both have "
                    f"id {user_id}; keep one"
                )
            folders[user_id] = pathlib.Path(entry.path)
    if not folders:
        found = _short_list(sorted(others)) if others else "nothing"
        raise UserInputError(
            f"no ID_<k> user folders in {str(root)!r} (found: {found}); "
            "put each user's images in a folder named ID_1, ID_2, ..."
        )
    if others:
        logger.debug("Ignored %d entries of %s that are not ID_<k> folders", len(others), root)
    return folders


def _list_images(folder: pathlib.Path) -> tuple[list[pathlib.Path], int]:
    """Image files of one user folder in natural name order, and the count of other entries."""
    images: list[pathlib.Path] = []
    ignored = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            is_image = (
                not entry.name.startswith(".")
                and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                and entry.is_file()
            )
            if is_image:
                images.append(pathlib.Path(entry.path))
            else:
                ignored += 1
    images.sort(key=lambda path: _natural_key(path.name))
    return images, ignored


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key that orders digit runs numerically (img_2 before img_10)."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", name) if part]


def _short_list(values: Iterable[object], limit: int = _MAX_LISTED) -> str:
    """``a, b, c, ... (+N more)`` for one-line messages."""
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... (+{len(values) - limit} more)" if len(values) > limit else "")


# ----------------------------------------------------------------------------------------------------------
# Decoding (shared with the Hub loader)


def check_resolution_and_channels(resolution: int, channels: int | None) -> None:
    """Reject a resolution below 8 or channels other than None, 1 or 3 (UserInputError naming the value)."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise UserInputError(f"resolution={resolution!r} must be an integer number of pixels (e.g. 64)")
    if resolution < MIN_RESOLUTION:
        raise UserInputError(f"resolution={resolution} is too small; use at least {MIN_RESOLUTION} (e.g. 64)")
    if channels not in (None, 1, 3):
        raise UserInputError(f"channels={channels} is not supported; use 1 (grayscale), 3 (colour) or leave unset")


def decode_image(source: str | os.PathLike | IO[bytes], resolution: int,
                 colormap: str | None = None, sizes: list | None = None) -> tuple[np.ndarray, bool]:
    """Open one image, convert it to RGB and resize it (antialiased) to ``resolution``.

    Args:
        source: a file path or a binary file object.
        resolution: output side in pixels.
        colormap: a colour image is inverted through this matplotlib colormap at full size (before resizing,
            which would blend colours off the colormap's curve) and returned as gray; None keeps RGB.
        sizes: when given, the image's original ``(width, height)`` is appended to it (for
            :func:`warn_odd_image_sizes`).

    Returns:
        ``(array, is_gray)``: a ``[3, R, R]`` float32 array in [0, 1] (a gray image has three equal
        channels) and whether the image is grayscale (a gray mode, RGB with identical channels, or a
        colour image inverted through ``colormap``).

    Raises:
        One of :data:`DECODE_ERRORS` for an unreadable file.
    """
    with Image.open(source) as image:
        image.load()
        if sizes is not None:
            sizes.append(image.size)
        return decode_pil_image(image, resolution, colormap)


def decode_pil_image(image: Image.Image, resolution: int, colormap: str | None = None) -> tuple[np.ndarray, bool]:
    """:func:`decode_image` of an opened ``PIL.Image`` (any mode): the same ``(array [3, R, R] in [0, 1], is_gray)``."""
    if image.mode in _HIGH_DEPTH_MODES:
        gray = _resize_high_depth(image, resolution)  # [R, R]
        return np.repeat(gray[None], 3, axis=0), True
    if image.mode in _GRAY_MODES:
        gray = np.asarray(_resize(image.convert("L"), resolution), dtype=np.float32) / 255.0  # [R, R]
        return np.repeat(gray[None], 3, axis=0), True
    rgb = image.convert("RGBA").convert("RGB") if image.mode in ("P", "PA") else image.convert("RGB")
    full = np.asarray(rgb)  # [H, W, 3] uint8
    is_gray = bool(np.array_equal(full[..., 0], full[..., 1]) and np.array_equal(full[..., 0], full[..., 2]))
    if colormap is not None and not is_gray:
        scalar = cmaps.rgb_to_scalar(full, colormap)  # [H, W] in [0, 1]
        resized = np.clip(np.asarray(_resize(Image.fromarray(scalar), resolution), dtype=np.float32), 0.0, 1.0)
        return np.repeat(resized[None], 3, axis=0), True
    small = np.asarray(_resize(rgb, resolution), dtype=np.float32) / 255.0  # [R, R, 3]
    return np.ascontiguousarray(small.transpose(2, 0, 1)), is_gray


def _resize(image: Image.Image, resolution: int) -> Image.Image:
    """Antialiased resize to ``resolution``×``resolution`` (a no-op when already that size)."""
    if image.size == (resolution, resolution):
        return image
    return image.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=None)


def _resize_high_depth(image: Image.Image, resolution: int) -> np.ndarray:
    """16-bit / 32-bit gray image -> ``[R, R]`` float32 in [0, 1], scaled by its value range."""
    values = np.asarray(image, dtype=np.float32)  # [H, W]
    if image.mode.startswith("I;16"):
        scaled = values / 65535.0
    else:
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0 and image.mode == "F":
            scaled = values
        elif low >= 0.0 and high <= 255.0:
            scaled = values / 255.0
        elif low >= 0.0 and high <= 65535.0:
            scaled = values / 65535.0
        else:
            scaled = (values - low) / max(high - low, 1e-12)
    resized = _resize(Image.fromarray(scaled.astype(np.float32)), resolution)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def stack_images(arrays: Sequence[np.ndarray], gray_flags: Sequence[bool], channels: int | None) -> tuple[torch.Tensor, int]:
    """Stack decoded images into the model's tensor.

    Args:
        arrays: ``[3, R, R]`` float32 arrays in [0, 1] from :func:`decode_image`.
        gray_flags: whether each image is grayscale.
        channels: 1 or 3 to force, None to detect (1 when every image is gray).

    Returns:
        ``(images, channels)`` with images ``[N, C, R, R]`` float32 in [-1, 1].
    """
    rgb = torch.from_numpy(np.stack(arrays)).clamp_(0.0, 1.0)  # [N, 3, R, R]
    if channels is None:
        channels = 1 if all(gray_flags) else 3
    if channels == 1:
        if all(gray_flags):
            gray = rgb[:, :1]  # [N, 1, R, R]: the three channels are equal
        else:
            gray = torch.einsum("nchw,c->nhw", rgb, _LUMA_WEIGHTS)[:, None]  # [N, 1, R, R]
        rgb = gray.contiguous()
    return rgb.mul_(2.0).sub_(1.0), channels


# ----------------------------------------------------------------------------------------------------------
# Loading with an in-memory cache

_cache: "collections.OrderedDict[tuple, SpectrogramData]" = collections.OrderedDict()


def clear_image_cache() -> None:
    """Forget every decoded dataset kept in memory (tests, or to free memory)."""
    _cache.clear()


def recall_decoded(key: tuple) -> SpectrogramData | None:
    """The decoded data stored under ``key`` in this process, or None."""
    if key not in _cache:
        return None
    _cache.move_to_end(key)
    return _cache[key]


def remember_decoded(key: tuple, data: SpectrogramData) -> None:
    """Keep ``data`` under ``key`` (the oldest entries are dropped beyond a few datasets)."""
    _cache[key] = data
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)


def load_image_folder(
    data_dir: str | os.PathLike,
    resolution: int,
    channels: int | None = None,
    num_users: int | None = None,
    skip_bad_images: bool = False,
    colormap: str | None = cmaps.DEFAULT_COLORMAP,
) -> SpectrogramData:
    """Load ``DATA_DIR/ID_<k>/*`` into a :class:`SpectrogramData`, decoding each folder once per process.

    Args:
        data_dir: folder holding ``ID_<k>`` sub-folders.
        resolution: output side in pixels (at least 8).
        channels: 1 or 3 to force; None detects (1 when every image is grayscale, else 3).
        num_users: keep the first N users in id order; None keeps all.
        skip_bad_images: skip unreadable images with a warning instead of stopping.
        colormap: ``"auto"`` detects whether the colour images lie on a known colormap and, if so, reads them
            as its scalar (one channel); a colormap name forces it; ``"none"`` or None keeps colour images as
            RGB. Ignored (none) when ``channels=3`` is forced.

    Returns:
        The images ``[N, C, R, R]`` in [-1, 1], 0-based labels, public user ids and file paths.

    Raises:
        UserInputError: see :func:`scan_user_folders`, a bad resolution/channels, or unreadable images.
    """
    check_resolution_and_channels(resolution, channels)
    colormap = None if colormap in (None, "none") or channels == 3 else cmaps.check_colormap_name(colormap)
    files_by_user = scan_user_folders(data_dir, num_users)
    root = pathlib.Path(data_dir).expanduser().resolve()
    key = _cache_key(root, files_by_user, resolution, channels, num_users, skip_bad_images) + (colormap,)
    cached = recall_decoded(key)
    if cached is not None:
        logger.info("Using the %d images of %s already decoded in this process", len(cached), root)
        return cached

    fit = None
    if colormap == "auto":
        colormap, fit = _detect_folder_colormap(files_by_user)
    data = _decode_folder(root, files_by_user, resolution, channels, skip_bad_images, colormap)
    data = dataclasses.replace(data, colormap_fit=fit)
    remember_decoded(key, data)
    return data


_COLORMAP_SAMPLE_IMAGES = 32  # images (spread over the users) whose pixels decide "auto"


def _detect_folder_colormap(files_by_user: dict[int, list[pathlib.Path]]) -> tuple[str | None, dict | None]:
    """Decide ``colormap="auto"``: the colormap the colour images lie on (logged with its error), or None."""
    order = [path for rank in range(max(len(files) for files in files_by_user.values()))
             for files in files_by_user.values() if rank < len(files) for path in [files[rank]]]  # round-robin
    images = []
    for path in order:
        if len(images) >= _COLORMAP_SAMPLE_IMAGES:
            break
        try:
            with Image.open(path) as image:
                if image.mode in _GRAY_MODES:
                    continue
                rgb = image.convert("RGBA").convert("RGB") if image.mode in ("P", "PA") else image.convert("RGB")
                full = np.asarray(rgb)
        except DECODE_ERRORS:
            continue  # reported (or skipped) by the decoding pass
        if not (np.array_equal(full[..., 0], full[..., 1]) and np.array_equal(full[..., 0], full[..., 2])):
            images.append(full)
    if not images:
        return None, None  # gray data: nothing to detect
    fits = cmaps.rank_colormaps(images)
    best = fits[0]
    record = {**best.to_dict(), "sampled_images": len(images)}
    if best.accepted:
        logger.info("Colour images lie on the %r colormap (distance to its curve: median %.1f, mean %.1f, p95 %.1f "
                    "in 0-255 RGB units, over %d pixels of %d images; next best %r at mean %.1f): modelled as its "
                    "scalar, one channel (--colormap none keeps RGB)", best.name, best.median_error,
                    best.mean_error, best.p95_error, best.num_pixels, len(images), fits[1].name,
                    best.runner_up_mean_error)
        return best.name, record
    logger.info("Colour images are not on a known colormap (closest %r: median %.1f, mean %.1f in 0-255 RGB units; "
                "next best at mean %.1f): kept as RGB", best.name, best.median_error, best.mean_error,
                best.runner_up_mean_error)
    return None, record


def _cache_key(
    root: pathlib.Path,
    files_by_user: dict[int, list[pathlib.Path]],
    resolution: int,
    channels: int | None,
    num_users: int | None,
    skip_bad_images: bool,
) -> tuple:
    """Identify a decoded folder by its files (name, mtime, size) and the decoding settings."""
    stamps = []
    for user_id, files in files_by_user.items():
        for path in files:
            stat = path.stat()
            stamps.append((user_id, path.name, stat.st_mtime_ns, stat.st_size))
    return ("folder", str(root), tuple(stamps), int(resolution), channels, num_users, bool(skip_bad_images))


def _decode_folder(
    root: pathlib.Path,
    files_by_user: dict[int, list[pathlib.Path]],
    resolution: int,
    channels: int | None,
    skip_bad_images: bool,
    colormap: str | None = None,
) -> SpectrogramData:
    """Decode every listed image; report unreadable ones by name (or skip them with a warning)."""
    start = time.perf_counter()
    user_ids = list(files_by_user)
    arrays: list[np.ndarray] = []
    gray_flags: list[bool] = []
    labels: list[int] = []
    paths: list[str] = []
    bad: list[str] = []
    sizes: list[tuple[int, int]] = []  # original (width, height) of each decoded image
    for label, user_id in enumerate(user_ids):
        decoded_for_user = 0
        for path in files_by_user[user_id]:
            try:
                size: list[tuple[int, int]] = []
                array, is_gray = decode_image(path, resolution, colormap, sizes=size)
            except DECODE_ERRORS as err:
                logger.debug("Cannot read %s: %s", path, err)
                bad.append(str(path))
                continue
            arrays.append(array)
            gray_flags.append(is_gray)
            labels.append(label)
            paths.append(str(path))
            sizes.append(size[0])
            decoded_for_user += 1
        if decoded_for_user == 0 and skip_bad_images:
            raise UserInputError(
                f"no image of user folder {str(files_by_user[user_id][0].parent)!r} can be read; "
                "fix the images or remove the folder"
            )
    _report_bad_images(bad, skip_bad_images)
    warn_odd_image_sizes(paths, sizes, resolution)

    images, channels = stack_images(arrays, gray_flags, channels)  # [N, C, R, R]
    logger.info(
        "Loaded %d images of %d users from %s at %d px, %d channel(s)%s in %.2f s",
        len(paths), len(user_ids), root, resolution, channels,
        f" (the scalar of colormap {colormap!r})" if colormap else "", time.perf_counter() - start,
    )
    return SpectrogramData(
        images=images,
        labels=torch.tensor(labels, dtype=torch.long),
        user_ids=user_ids,
        paths=paths,
        channels=channels,
        resolution=int(resolution),
        source=str(root),
        colormap=colormap,
    )


def _report_bad_images(bad: list[str], skip_bad_images: bool) -> None:
    """Raise naming the unreadable files, or warn that they were skipped."""
    if not bad:
        return
    if not skip_bad_images:
        raise UserInputError(
            f"cannot read {len(bad)} image(s): {_short_list(bad)}; fix or remove them (train_main.py "
            "--skip_bad_images, or skip_bad_images=True in Python, leaves them out instead)"
        )
    logger.warning("Skipped %d unreadable image(s): %s", len(bad), _short_list(bad, limit=20))


ODD_MIN_SIDE = 16  # images with a side below this many pixels are warned about
ODD_MAX_ASPECT = 8.0  # ... and images whose long side exceeds this many times the short one


def warn_odd_image_sizes(paths: Sequence[str], sizes: Sequence[tuple[int, int]], resolution: int) -> int:
    """Warn once when images are tiny (a side below :data:`ODD_MIN_SIDE` px) or far from square (aspect ratio above
    :data:`ODD_MAX_ASPECT`:1): resizing them to ``resolution`` x ``resolution`` makes blurs or smears, not
    spectrograms. Names the first such files and their ``(width, height)`` ``sizes``; returns how many there are."""
    odd: list[str] = []
    for path, (width, height) in zip(paths, sizes):
        if min(width, height) < ODD_MIN_SIDE or max(width, height) > ODD_MAX_ASPECT * max(min(width, height), 1):
            odd.append(f"{path} ({width}x{height})")
    if odd:
        logger.warning("%d image(s) are smaller than %d px on a side or more than %g:1 from square and were resized "
                       "to %dx%d anyway, e.g. %s; check they are spectrograms of the expected size",
                       len(odd), ODD_MIN_SIDE, ODD_MAX_ASPECT, resolution, resolution, _short_list(odd, limit=3))
    return len(odd)
