"""Load the training data for a run and fix its train/validation split (saved, and reused on resume)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..data import SpectrogramData, load_split, load_training_data, save_split, stratified_split
from ..data.colormap import DEFAULT_COLORMAP
from ..data.provenance import SPLIT_FILE, save_data_info

logger = logging.getLogger(__name__)


def data_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`load_training_data` arguments a run's flags ask for."""
    return dict(data_dir=args.data_dir, dataset_name=args.dataset_name, resolution=args.resolution,
                channels=args.channels, num_users=args.num_users, skip_bad_images=args.skip_bad_images,
                samples_per_user=args.samples_per_user, seed=args.seed,
                colormap=getattr(args, "colormap", DEFAULT_COLORMAP))


def prepare_data(args: argparse.Namespace, reuse_split: bool = True) -> tuple[SpectrogramData, list[int], list[int]]:
    """Load the data, then reuse ``OUTPUT_DIR/split.json`` (resume, stage 2 alone) or draw and save a new split.

    Also writes ``OUTPUT_DIR/data_info.json`` so validation and analysis can reload the same data.

    Returns:
        ``(data, train_indices, val_indices)``; ``val_indices`` is empty with ``--val_fraction 0``.
    """
    kwargs = data_kwargs(args)
    data = load_training_data(**kwargs)
    output_dir = Path(args.output_dir)
    split_path = output_dir / SPLIT_FILE
    if reuse_split and split_path.is_file():
        train_idx, val_idx = load_split(split_path, data)
        logger.info(f"reusing the saved split {split_path}: {len(train_idx)} train, {len(val_idx)} validation")
    else:
        train_idx, val_idx = stratified_split(data.labels, args.val_fraction, args.seed, user_ids=data.user_ids)
        save_split(split_path, data, train_idx, val_idx, args.seed, args.val_fraction)
        logger.info(f"split {len(data)} images of {data.num_users} users: {len(train_idx)} train, "
                    f"{len(val_idx)} validation (saved to {split_path})")
    if not val_idx:
        logger.warning("no validation split (--val_fraction 0): stage metrics and figures are measured on the "
                       "training images")
    save_data_info(output_dir, data, **kwargs)
    logger.info(f"data: {data.source} — {data.num_users} users {data.user_ids[0]}..{data.user_ids[-1]}, "
                f"{data.channels} channel(s), {data.resolution} px"
                + (f", colormap {data.colormap}" if data.colormap else ""))
    return data, train_idx, val_idx
