"""The embedded default dataset (simulated spectrograms in a cache folder) and the training-data dispatcher."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

from ..errors import UserInputError
from .colormap import DEFAULT_COLORMAP
from .folder import MIN_RESOLUTION, SpectrogramData, load_image_folder
from .hub_dataset import load_hub_dataset

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "VQVAE_TRANSFORMER_CACHE"
DEFAULT_NUM_USERS = 31
SIMULATED_CACHE_VERSION = 1
"""Bump when the simulator's output changes, so old cache folders are not reused."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``cache_dir``, else ``$VQVAE_TRANSFORMER_CACHE``, else ``~/.cache/vqvae_transformer``."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV_VAR):
        return pathlib.Path(os.environ[CACHE_ENV_VAR]).expanduser()
    return pathlib.Path.home() / ".cache" / "vqvae_transformer"


def default_dataset_dir(
    num_users: int = DEFAULT_NUM_USERS,
    samples_per_user: int = 64,
    resolution: int = 64,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
    """The simulated default dataset folder, simulated on first use and reused afterwards.

    The folder is ``<cache root>/simulated/u<users>_s<samples>_r<resolution>_seed<seed>_v<version>`` and
    holds ``ID_<k>/*.png`` grayscale images like any user dataset. The simulator writes it atomically, and
    processes asking at once (one per GPU) accept the folder of whichever finishes first.

    Args:
        num_users: simulated users (ids 1..num_users).
        samples_per_user: images per user.
        resolution: image side in pixels.
        seed: simulator seed (same seed, same images).
        cache_dir: cache root; default ``$VQVAE_TRANSFORMER_CACHE`` or ``~/.cache/vqvae_transformer``.

    Returns:
        The dataset folder.
    """
    _check_simulation_args(num_users, samples_per_user, resolution)
    key = f"u{int(num_users)}_s{int(samples_per_user)}_r{int(resolution)}_seed{int(seed)}_v{SIMULATED_CACHE_VERSION}"
    target = cache_root(cache_dir).resolve() / "simulated" / key
    if target.is_dir() and any(target.iterdir()):  # the simulator moves a finished folder into place atomically
        logger.info("Using the simulated dataset cached in %s", target)
        return target

    from .simulate import simulate_dataset  # deferred: only needed on a cache miss

    logger.info(
        "Simulating the default dataset (%d users x %d images, %d px) into %s",
        num_users, samples_per_user, resolution, target,
    )
    simulate_dataset(
        target,
        num_users=int(num_users),
        samples_per_user=int(samples_per_user),
        resolution=int(resolution),
        seed=int(seed),
        colormap="gray",
        show_progress=False,
    )
    return target


def _check_simulation_args(num_users: int, samples_per_user: int, resolution: int) -> None:
    """One-line errors for simulator sizes a user can get wrong."""
    if int(num_users) < 1:
        raise UserInputError(f"num_users={num_users} must be at least 1")
    if int(samples_per_user) < 1:
        raise UserInputError(f"samples_per_user={samples_per_user} must be at least 1")
    if int(resolution) < MIN_RESOLUTION:
        raise UserInputError(f"resolution={resolution} is too small; use at least {MIN_RESOLUTION} (e.g. 64)")


def load_training_data(
    data_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    resolution: int = 64,
    channels: int | None = None,
    num_users: int | None = DEFAULT_NUM_USERS,
    skip_bad_images: bool = False,
    samples_per_user: int = 64,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    colormap: str | None = DEFAULT_COLORMAP,
) -> SpectrogramData:
    """Load the training data from a folder, a ``datasets`` dataset, or the embedded default.

    Args:
        data_dir: a folder of ``ID_<k>`` sub-folders (see :func:`load_image_folder`).
        dataset_name: a Hub dataset name or a local ``datasets`` folder (see :func:`load_hub_dataset`).
        resolution: image side in pixels.
        channels: 1 or 3 to force; None detects from the data.
        num_users: first N users; None keeps every user of ``data_dir``/``dataset_name``
            (and simulates 31 for the default).
        skip_bad_images: skip unreadable images of ``data_dir`` with a warning.
        samples_per_user: images per user of the simulated default.
        seed: simulator seed of the default.
        cache_dir: cache root for the simulated default.
        colormap: ``auto``, ``none`` or a colormap name for the colour images of ``data_dir``
            (see :func:`load_image_folder`); the simulated default is gray.

    Returns:
        The loaded :class:`SpectrogramData`; ``source`` is the folder, ``hub:<name>`` or ``simulated:<folder>``.
    """
    if data_dir is not None and dataset_name is not None:
        raise UserInputError(
            f"both data_dir={str(data_dir)!r} and dataset_name={dataset_name!r} were given; pass only one"
        )
    if dataset_name is not None:
        return load_hub_dataset(dataset_name, resolution, channels=channels, num_users=num_users)
    if data_dir is not None:
        return load_image_folder(
            data_dir, resolution, channels=channels, num_users=num_users, skip_bad_images=skip_bad_images,
            colormap=colormap,
        )
    folder = default_dataset_dir(
        num_users=DEFAULT_NUM_USERS if num_users is None else num_users,
        samples_per_user=samples_per_user,
        resolution=resolution,
        seed=seed,
        cache_dir=cache_dir,
    )
    data = load_image_folder(folder, resolution, channels=channels)
    return dataclasses.replace(data, source=f"simulated:{folder}")
