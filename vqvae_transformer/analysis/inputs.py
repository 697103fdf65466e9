"""What the analysis tools share: their model and data flags, the checks before any work, and the images they read."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import SpectrogramData, load_image_folder
from ..data.provenance import load_model_data, read_data_info
from ..errors import UserInputError, require_folder
from ..layout import DATA_INFO_FILE, DEFAULT_MODEL_DIR, VQVAE_FOLDER
from ..models.fingerprint import check_first_stage_files, check_model_folder


def add_model_input_args(parser: argparse.ArgumentParser, verb: str, default_output: str, reserved: str) -> None:
    """``--model_dir``, ``--data_dir``, ``--output_dir``, ``--overwrite`` and ``--batch_size`` of an analysis tool (``verb``: what it
    does to the images; ``reserved``: what of its own it never lets ``--overwrite`` replace)."""
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR,
                        help="training output folder (or a first-stage folder)")
    parser.add_argument("--data_dir", default=None, help=f"{verb} every image of this ID_<k> folder instead of the "
                        "model's validation split")
    parser.add_argument("--output_dir", default=default_output, help=f"where the report goes (default: "
                        f"{default_output})")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --output_dir holding files this tool did not write; they are kept, and "
                             f"one in the way of {reserved} is still refused (re-running into its own folder needs "
                             "no flag)")
    parser.add_argument("--batch_size", type=int, default=64, help="images encoded at once (default: 64)")


def check_model_inputs(args: argparse.Namespace) -> Path:
    """``--batch_size``, the model folder (complete, loadable, one model) and the data of ``args``, before any work.

    Returns:
        The first-stage folder to load.

    Raises:
        UserInputError: one line naming the flag or file.
    """
    from ..validation.cli import check_saved_data

    if args.batch_size < 1:
        raise UserInputError(f"--batch_size must be a positive integer (images encoded at once, e.g. 64), got "
                             f"{args.batch_size}")
    model_dir = Path(args.model_dir)
    require_folder(model_dir, "--model_dir", "train a model with train_main.py first")
    if (model_dir / VQVAE_FOLDER).is_dir():  # a training output folder
        check_model_folder(model_dir, need=(VQVAE_FOLDER,))
    elif (model_dir / "config.json").is_file():  # a first-stage folder itself
        check_first_stage_files(model_dir)
    first_stage_dir = locate_first_stage(model_dir)
    if args.data_dir is None:
        check_saved_data(model_dir, "--data_dir")
    else:
        require_folder(args.data_dir, "--data_dir", "pass a folder of ID_<k> image folders (or leave it out to use "
                       "the model's validation split)")
    return first_stage_dir


def locate_first_stage(model_dir: Path) -> Path:
    """The first-stage folder of a training output (``model_dir/vqvae``) or ``model_dir`` itself."""
    if (model_dir / VQVAE_FOLDER / "config.json").is_file():
        return model_dir / VQVAE_FOLDER
    if (model_dir / "config.json").is_file():
        return model_dir
    raise UserInputError(f"no trained first stage in {model_dir} (expected {model_dir / 'vqvae'}); "
                         "train one with train_main.py")


def load_images(model_dir: Path, data_dir: str | None, first_stage) -> SpectrogramData:
    """The validation split of ``model_dir`` or all images of ``data_dir`` read as the model's training data was
    (resolution, channels and, when ``data_info.json`` records one, the colormap)."""
    if data_dir is None:
        data, _, val_idx = load_model_data(model_dir)
        return data.subset(val_idx)
    info = read_data_info(model_dir) if (Path(model_dir) / DATA_INFO_FILE).is_file() else {}
    return load_image_folder(data_dir, first_stage.config.sample_size, channels=first_stage.config.in_channels,
                             colormap=info.get("colormap") or "none")
