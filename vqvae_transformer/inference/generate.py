"""Generate N spectrograms per user into ``ID_<k>/`` folders, a grid and a JSON of the settings.

Output layout (DESIGN.md §3 "Generated output")::

    output_dir/ID_<k>/gen_0000.png ...   same id convention and channels as the training data
    output_dir/grid.png                  rows = users, columns = the first samples of each user
    output_dir/generation_info.json      model, sampling settings, seed, ids, counts, timings

Everything is written into a temporary sibling folder first and then moved into place, so an interrupted run
leaves no half-written user folder. The same seed (and batch size) gives byte-identical PNGs.

The command-line front end is ``generate_main.py``; :func:`run_generate_cli` holds its logic.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import PIL.Image
import PIL.ImageDraw
import torch
from torchvision.utils import make_grid

from ..errors import UserInputError
from ..models.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_TEMPERATURE, VQVAETransformerPipeline, tensor_to_pil

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL_DIR", "generate_to_folder", "make_user_grid", "resolve_device", "run_generate_cli",
           "validate_generate_args"]

DEFAULT_MODEL_DIR = "outputs/vqvae_transformer"
DEFAULT_OUTPUT_DIR = "generated_images"
GRID_COLUMNS = 8
INFO_FILE = "generation_info.json"
GRID_FILE = "grid.png"


def make_user_grid(pixels: torch.Tensor, user_ids: Sequence[int], per_user: int,
                   columns: int = GRID_COLUMNS) -> PIL.Image.Image:
    """One row per user, the first ``columns`` samples of each, with ``ID_<k>`` written left of each row.

    Args:
        pixels: ``[N, C, R, R]`` in [0, 1], user-major (``per_user`` consecutive images per user).
        user_ids: the public id of each row (``N / per_user`` entries).
        per_user: images per user in ``pixels``.
        columns: at most this many samples per row.

    Returns:
        A PIL image, mode ``"L"`` for 1 channel and ``"RGB"`` for 3.
    """
    cols = min(per_user, columns)
    rows = pixels.reshape(len(user_ids), per_user, *pixels.shape[1:])[:, :cols]  # (U, cols, C, R, R)
    grid = make_grid(rows.flatten(0, 1), nrow=cols, padding=2, pad_value=1.0)  # (C', H, W), C' = 3 for C = 1
    grid = grid[:1] if pixels.shape[1] == 1 else grid  # make_grid repeats a single channel to three
    body = tensor_to_pil(grid[None])[0]
    white, black = (255, 0) if body.mode == "L" else ((255, 255, 255), (0, 0, 0))
    label_width = 48  # room for "ID_<k>" in PIL's default font
    canvas = PIL.Image.new(body.mode, (body.width + label_width, body.height), color=white)
    canvas.paste(body, (label_width, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    cell = pixels.shape[-1] + 2  # image side + padding
    for row, user_id in enumerate(user_ids):
        draw.text((2, row * cell + 2 + max(cell // 2 - 6, 0)), f"ID_{user_id}", fill=black)
    return canvas


def _write_user_folders(staging: Path, pixels: torch.Tensor, image_ids: Sequence[int]) -> dict[int, int]:
    """Write ``staging/ID_<k>/gen_<i>.png`` (i counts per user); returns images written per id."""
    counts: dict[int, int] = {}
    for image, user_id in zip(tensor_to_pil(pixels), image_ids):
        index = counts.get(user_id, 0)
        folder = staging / f"ID_{user_id}"
        folder.mkdir(exist_ok=True)
        image.save(folder / f"gen_{index:04d}.png")
        counts[user_id] = index + 1
    return counts


def _move_into_place(staging: Path, output_dir: Path, names: Sequence[str]) -> None:
    """Replace ``output_dir/<name>`` by ``staging/<name>`` for each name; the old copy is dropped afterwards."""
    output_dir.mkdir(parents=True, exist_ok=True)
    trash = staging / ".replaced"
    trash.mkdir()
    for name in names:
        target = output_dir / name
        if target.exists() or target.is_symlink():
            os.replace(target, trash / name)
        os.replace(staging / name, target)
    shutil.rmtree(trash)


def generate_to_folder(
    pipeline: VQVAETransformerPipeline,
    output_dir: str | Path,
    samples_per_user: int = 10,
    user_ids: Sequence[int] | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 64,
    seed: int = 0,
    model_dir: str | None = None,
    grid_columns: int = GRID_COLUMNS,
) -> dict:
    """Generate ``samples_per_user`` images per user and write them in the dataset layout.

    Only the ``ID_<k>`` folders of the requested users, ``grid.png`` and ``generation_info.json`` are
    replaced; other folders already in ``output_dir`` are left alone.

    Args:
        pipeline: a loaded :class:`VQVAETransformerPipeline`.
        output_dir: target folder (created if missing).
        samples_per_user: images per user (> 0).
        user_ids: public 1-based ids; None means every user the model knows.
        temperature, top_k, top_p, guidance_scale, batch_size, seed: sampling settings, see
            :meth:`VQVAETransformerPipeline.__call__`.
        model_dir: what the model was loaded from, recorded in the JSON (defaults to the pipeline's
            ``_name_or_path``).
        grid_columns: at most this many samples per user in ``grid.png``.

    Returns:
        The dict written to ``generation_info.json``.

    Raises:
        UserInputError: unknown user ids, bad sampling settings or an ``output_dir`` that is a file.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserInputError(f"output_dir {output_dir} is a file; pass a folder")
    ids = [pipeline.user_ids[label] for label in pipeline.labels_for(user_ids)]  # validates before sampling

    start = time.perf_counter()
    result = pipeline(user_ids=ids, num_images_per_user=samples_per_user, temperature=temperature, top_k=top_k,
                      top_p=top_p, guidance_scale=guidance_scale, seed=seed, batch_size=batch_size,
                      output_type="pt")
    seconds = time.perf_counter() - start
    pixels = result.images  # (N, C, R, R) in [0, 1]

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        counts = _write_user_folders(staging, pixels, result.user_ids)
        make_user_grid(pixels, ids, samples_per_user, grid_columns).save(staging / GRID_FILE)
        info = {
            "model_dir": model_dir if model_dir is not None else pipeline.config.get("_name_or_path"),
            "output_dir": str(output_dir),
            "user_ids": ids,
            "samples_per_user": samples_per_user,
            "num_images": int(pixels.shape[0]),
            "images_per_user": {str(k): v for k, v in counts.items()},
            "resolution": int(pixels.shape[-1]),
            "channels": int(pixels.shape[1]),
            "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                         "guidance_scale": guidance_scale, "batch_size": batch_size, "seed": seed},
            "device": str(pipeline.device),
            "seconds": round(seconds, 3),
            "images_per_second": round(pixels.shape[0] / seconds, 2) if seconds > 0 else None,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _move_into_place(staging, output_dir, [f"ID_{k}" for k in ids] + [GRID_FILE, INFO_FILE])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d images for %d users to %s in %.1f s (%.1f images/s)", info["num_images"], len(ids),
                output_dir, seconds, info["images_per_second"] or 0.0)
    return info


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was asked for but torch.cuda.is_available() is False; "
                             "use --device cpu or --device auto")
    if name not in ("cpu", "cuda"):
        raise UserInputError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def validate_generate_args(args: argparse.Namespace) -> None:
    """Reject bad values after parsing, naming the flag and the value.

    Raises:
        UserInputError: for non-positive counts, temperature or guidance, top_k <= 0, top_p outside (0, 1],
            non-positive or repeated user ids.
    """
    for flag in ("samples_per_user", "batch_size"):
        if getattr(args, flag) <= 0:
            raise UserInputError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if not args.temperature > 0:
        raise UserInputError(f"--temperature must be > 0, got {args.temperature}")
    if not args.guidance_scale > 0:
        raise UserInputError(f"--guidance_scale must be > 0 (1 disables guidance), got {args.guidance_scale}")
    if args.top_k is not None and args.top_k <= 0:
        raise UserInputError(f"--top_k must be a positive integer (omit it to keep all codes), got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise UserInputError(f"--top_p must be in (0, 1] (omit it to turn nucleus sampling off), got {args.top_p}")
    if args.user_ids is not None:
        bad = [u for u in args.user_ids if u <= 0]
        if bad:
            raise UserInputError(f"--user_ids are 1-based folder ids (ID_<k>), got {bad}")
        repeated = sorted({u for u in args.user_ids if args.user_ids.count(u) > 1})
        if repeated:
            raise UserInputError(f"--user_ids lists {repeated} more than once; give each id once")


def load_pipeline(model_dir: str, device: torch.device) -> VQVAETransformerPipeline:
    """Load the pipeline from a folder or Hub repo id and move it to ``device``.

    Raises:
        UserInputError: the default model folder does not exist (train first) or loading failed.
    """
    if model_dir == DEFAULT_MODEL_DIR and not Path(model_dir).is_dir():
        raise UserInputError(f"no trained model at {model_dir} (the default --model_dir); run train_main.py "
                             "first or pass --model_dir FOLDER_OR_HUB_REPO_ID")
    pipeline = VQVAETransformerPipeline.from_pretrained(model_dir)
    return pipeline.to(device)


def run_generate_cli(args: argparse.Namespace) -> dict:
    """The logic behind ``generate_main.py``: validate, load, generate, write.

    Args:
        args: the namespace parsed by ``generate_main.build_parser()``.

    Returns:
        The generation info (also written to ``generation_info.json``).
    """
    validate_generate_args(args)
    device = resolve_device(args.device)
    pipeline = load_pipeline(args.model_dir, device)
    return generate_to_folder(
        pipeline, args.output_dir, samples_per_user=args.samples_per_user, user_ids=args.user_ids,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, guidance_scale=args.guidance_scale,
        batch_size=args.batch_size, seed=args.seed, model_dir=args.model_dir,
    )
