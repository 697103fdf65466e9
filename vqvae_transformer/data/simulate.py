"""Write the embedded micro-Doppler dataset: ``OUTPUT_DIR/ID_<k>/sample_<j>.png`` plus ``persons.json``.

Usage::

    python -m vqvae_transformer.data.simulate --num_users 31 --samples_per_user 64 --resolution 128 \\
        --output_dir DIR [--seed S] [--colormap gray|jet]

The output is deterministic (same arguments ⇒ byte-identical files) and atomic: everything is written into
a temporary sibling folder that is renamed into place at the end, so an interrupted run never leaves a
half-written dataset. An existing non-empty ``output_dir`` is an error, unless it is exactly a complete
previous run with the same parameters (its ``persons.json`` records them), in which case it is reused
as is and nothing is written. So the simulator never replaces or deletes a file in ``output_dir`` (its
``persons.json`` plays the role of the other tools' ownership manifest, see
:mod:`vqvae_transformer.output_folder`). The staging folder ``.<name>.partial-<host>-<pid>-*`` of a killed run
is removed by the next run; SIGTERM removes it at once (one line, exit 143).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Sequence

import numpy as np
from PIL import Image

from ..cli import run_cli, setup_logging
from ..errors import UserInputError
from ..output_folder import (check_writable, clear_stale_staging, list_files, make_staging_dir,
                             sigterm_as_keyboard_interrupt)
from .simulator import PersonTraits, RadarConfig, draw_persons, simulate_spectrogram, spectrogram_to_image

logger = logging.getLogger(__name__)

FORMAT_TAG = "vqvae_transformer.simulator/1"
PERSONS_FILE = "persons.json"
COLORMAPS = ("gray", "jet")
STAGING_KIND = "partial"


def recording_rng(seed: int, user_id: int) -> np.random.Generator:
    """Generator of one user's recording nuisances; sample j is the j-th draw sequence from it.

    Independent of the number of users and of other users, so the first M samples of a user are the
    same whatever ``samples_per_user`` or ``num_users`` a run asks for.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0xDA7A, int(user_id)]))


def simulate_user_images(
    person: PersonTraits,
    num_samples: int,
    resolution: int,
    seed: int = 0,
    colormap: str = "gray",
    radar: RadarConfig | None = None,
) -> np.ndarray:
    """Simulate ``num_samples`` images of one person (no files written).

    Args:
        person: the person's traits.
        num_samples: number of recordings.
        resolution: image side in pixels.
        seed: dataset seed (with the user id it fixes the recording nuisances).
        colormap: "gray" or "jet".
        radar: radar settings (default :class:`RadarConfig`).

    Returns:
        uint8 array [num_samples, R, R] (gray) or [num_samples, R, R, 3] (jet).
    """
    rng = recording_rng(seed, person.user_id)
    return np.stack(
        [
            spectrogram_to_image(simulate_spectrogram(person, rng, radar), resolution, colormap)
            for _ in range(num_samples)
        ]
    )


def _parameters(num_users: int, samples_per_user: int, resolution: int, seed: int, colormap: str) -> dict:
    """The settings that determine the dataset's content (stored in persons.json)."""
    return {
        "format": FORMAT_TAG,
        "num_users": num_users,
        "samples_per_user": samples_per_user,
        "resolution": resolution,
        "seed": seed,
        "colormap": colormap,
        "radar": RadarConfig().to_dict(),
    }


def _validate(num_users: int, samples_per_user: int, resolution: int, seed: int, colormap: str) -> None:
    """Raise UserInputError naming the first bad value."""
    for name, value, low in (("num_users", num_users, 1), ("samples_per_user", samples_per_user, 1),
                             ("resolution", resolution, 8), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserInputError(f"--{name} must be an integer ≥ {low}, got {value!r}")
    if colormap not in COLORMAPS:
        raise UserInputError(f"--colormap must be one of {', '.join(COLORMAPS)}, got {colormap!r}")


def _is_complete_run(folder: pathlib.Path, parameters: dict) -> bool:
    """True when ``folder`` holds a finished dataset written with exactly ``parameters``."""
    try:
        with open(folder / PERSONS_FILE, encoding="utf-8") as fh:
            stored = json.load(fh)
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.get("parameters") != parameters:
        return False
    for user_id in range(1, parameters["num_users"] + 1):
        user_dir = folder / f"ID_{user_id}"
        if not user_dir.is_dir() or len(list(user_dir.glob("sample_*.png"))) != parameters["samples_per_user"]:
            return False
    return True


def _write_user(folder: pathlib.Path, images: np.ndarray) -> None:
    """Write one user's images as ``sample_<j>.png`` (mode L for [N, R, R], RGB for [N, R, R, 3])."""
    folder.mkdir()
    for j, image in enumerate(images):
        Image.fromarray(image).save(folder / f"sample_{j:04d}.png", format="PNG")


def _write_persons(folder: pathlib.Path, parameters: dict, persons: list[PersonTraits]) -> None:
    """Write persons.json: the generation parameters and every person's traits."""
    payload = {"parameters": parameters, "persons": [p.to_dict() for p in persons]}
    with open(folder / PERSONS_FILE, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")


def simulate_dataset(
    output_dir: str | os.PathLike,
    num_users: int = 31,
    samples_per_user: int = 64,
    resolution: int = 128,
    seed: int = 0,
    colormap: str = "gray",
    show_progress: bool = False,
    workers: int | None = None,
) -> pathlib.Path:
    """Simulate the dataset and move it atomically into ``output_dir``.

    Args:
        output_dir: destination folder; must not exist or be empty, unless it is a complete previous run
            with the same parameters (then it is returned untouched).
        num_users: number of persons (folders ID_1..ID_<num_users>).
        samples_per_user: images per person.
        resolution: image side in pixels.
        seed: seed of the persons' traits and of the recording nuisances.
        colormap: "gray" (PNG mode L) or "jet" (RGB).
        show_progress: show a tqdm bar over users.
        workers: processes simulating users in parallel (default: one per CPU core, at most one per user); the
            files do not depend on it.

    Returns:
        The dataset folder as a resolved path.

    Raises:
        UserInputError: bad values, or ``output_dir`` exists with other content.
    """
    _validate(num_users, samples_per_user, resolution, seed, colormap)
    output = pathlib.Path(output_dir).expanduser().resolve()
    parameters = _parameters(num_users, samples_per_user, resolution, seed, colormap)
    if output.exists() and not output.is_dir():
        raise UserInputError(f"--output_dir {output} exists and is not a folder; choose another path")
    if output.is_dir() and any(output.iterdir()):
        if _is_complete_run(output, parameters):
            logger.info("%s already holds this simulated dataset; reusing it", output)
            return output
        example = next((rel for rel in list_files(output)), None)
        detail = f" (e.g. {example})" if example else ""
        raise UserInputError(f"--output_dir {output} exists and is not empty{detail}; nothing was changed: choose "
                             "a new or empty folder")
    check_writable(output, staging_beside=True)
    clear_stale_staging(output, STAGING_KIND)
    staging = make_staging_dir(output, STAGING_KIND)
    try:
        _simulate_into(staging, parameters, show_progress, workers)
        return _move_into_place(staging, output, parameters)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _simulate_into(staging: pathlib.Path, parameters: dict, show_progress: bool, workers: int | None) -> None:
    """Simulate every user into ``staging`` (one folder per user, then persons.json last).

    Users are independent (each has its own seeded generator), so they are simulated by one process per CPU core;
    the files are the same whatever the number of processes.
    """
    from tqdm.auto import tqdm

    persons = draw_persons(parameters["num_users"], parameters["seed"])
    workers = max(1, min(workers or _usable_cores(), len(persons)))
    logger.info(
        "simulating %d users × %d spectrograms at %d px into %s (%d processes)",
        len(persons), parameters["samples_per_user"], parameters["resolution"], staging, workers,
    )
    progress = tqdm(total=len(persons), desc="simulating users", unit="user", disable=not show_progress)
    if workers == 1:
        for person in persons:
            _simulate_user_into(staging, person, parameters)
            progress.update()
    else:  # spawn, not fork: the parent may hold torch/OpenMP threads that a forked child would inherit half-made
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_simulate_user_into, staging, person, parameters) for person in persons]
            try:
                for done in as_completed(futures):
                    done.result()  # re-raises a worker's error
                    progress.update()
            except BaseException:  # stop queued users now, so the caller's clean-up does not wait for them
                for future in futures:
                    future.cancel()
                raise
    progress.close()
    _write_persons(staging, parameters, persons)


def _usable_cores() -> int:
    """CPU cores this process may use (its affinity mask on Linux, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):  # Linux only
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _simulate_user_into(staging: pathlib.Path, person: PersonTraits, parameters: dict) -> None:
    """Simulate one user's recordings and write them to ``staging/ID_<k>`` (a worker process's job)."""
    images = simulate_user_images(
        person, parameters["samples_per_user"], parameters["resolution"], parameters["seed"], parameters["colormap"]
    )
    _write_user(staging / f"ID_{person.user_id}", images)


def _move_into_place(staging: pathlib.Path, output: pathlib.Path, parameters: dict) -> pathlib.Path:
    """Rename ``staging`` to ``output``; a concurrent identical run that finished first is accepted."""
    try:
        if output.is_dir() and not any(output.iterdir()):
            output.rmdir()
        os.replace(staging, output)
    except OSError as err:
        if _is_complete_run(output, parameters):
            logger.info("%s was completed by another run with the same parameters; reusing it", output)
            return output
        raise UserInputError(f"could not move the simulated dataset into --output_dir {output}: {err}") from err
    logger.info("wrote %s", output)
    return output


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become UserInputError (one line, exit 2 via run_cli)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(message)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = _Parser(
        prog="python -m vqvae_transformer.data.simulate",
        description="Simulate radar micro-Doppler spectrograms of walking people into DIR/ID_<k>/sample_<j>.png.",
    )
    parser.add_argument("--num_users", type=int, default=31, help="number of simulated persons (default 31)")
    parser.add_argument("--samples_per_user", type=int, default=64, help="spectrograms per person (default 64)")
    parser.add_argument("--resolution", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--output_dir", required=True, help="destination folder (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of traits and recordings (default 0)")
    parser.add_argument(
        "--colormap", default="gray", help="gray (grayscale PNG) or jet (RGB PNG); default gray"
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, validate and write the dataset.

    Returns:
        0 on success (bad input raises UserInputError; run through :func:`run_cli` for exit code 2).
    """
    args = build_parser().parse_args(argv)
    _validate(args.num_users, args.samples_per_user, args.resolution, args.seed, args.colormap)
    if not args.output_dir.strip():
        raise UserInputError("--output_dir must not be empty")
    with sigterm_as_keyboard_interrupt():  # SIGTERM: staging removed, "interrupted", exit 143
        path = simulate_dataset(
            args.output_dir,
            num_users=args.num_users,
            samples_per_user=args.samples_per_user,
            resolution=args.resolution,
            seed=args.seed,
            colormap=args.colormap,
            show_progress=not args.no_progress,
        )
    logger.info("dataset ready at %s", path)
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_cli(main))
