"""Generate N spectrograms per user into ``ID_<k>/`` folders, a grid and a JSON of the settings.

Output layout (docs/DESIGN.md §3 "Generated output")::

    output_dir/ID_<k>/gen_0000.png ...   same id convention and channels as the training data
    output_dir/grid.png                  rows = users, columns = the first samples of each user
    output_dir/generation_info.json      model, sampling settings, seed, ids, counts, timings

Users are sampled in groups; each group is written into a temporary sibling folder first and then moved into
place and listed in the folder's manifest, so an interrupted run leaves only finished users (``--skip_existing``
resumes it). The same seed, batch size and flags give byte-identical PNGs. Nothing this tool did not write is
ever replaced or deleted (:mod:`vqvae_transformer.output_folder`).

The command-line front end is ``generate_main.py``; :func:`run_generate_cli` holds its logic.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL.Image
import torch

from ..atomic import write_json_atomic
from ..errors import UserInputError
from ..images import GRID_COLUMNS, make_user_grid, tensor_to_pil
from ..layout import DEFAULT_MODEL_DIR, GENERATION_INFO_FILE
from ..models.fingerprint import PIPELINE_PARTS, check_model_folder
from ..models.pipeline import (DEFAULT_GUIDANCE_SCALE, DEFAULT_TEMPERATURE, VQVAETransformerPipeline,
                               resolve_model_folder)
from ..output_folder import (OutputFolder, clear_stale_staging, make_staging_dir, prepare_output_folder,
                             sigterm_as_keyboard_interrupt)
from .attribution import DEFAULT_OVERSAMPLE, JudgeAttribution, candidates_per_user
from .attribution import summarize as summarize_attribution
from .variations import SOURCE as VARIATION_SOURCE
from .variations import TrainingSources

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL_DIR", "generate_to_folder", "group_seed", "make_user_grid", "resolve_device",
           "run_generate_cli", "validate_generate_args"]

DEFAULT_OUTPUT_DIR = "generated_images"
INFO_FILE = GENERATION_INFO_FILE
GRID_FILE = "grid.png"
TOOL_NAME = "generate_main.py"
STAGING_KIND = "tmp"
PROVENANCE_KEY = "provenance"  # manifest meta: per user, the attribution record and variation sources of its images


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


def _user_groups(ids: Sequence[int], samples_per_user: int, batch_size: int) -> list[list[int]]:
    """Consecutive users sampled (and committed to disk) together: about ``batch_size`` sequences per group."""
    per_group = max(1, batch_size // samples_per_user)
    return [list(ids[i:i + per_group]) for i in range(0, len(ids), per_group)]


def group_seed(seed: int, group: Sequence[int]) -> int:
    """The pipeline seed of one user group, derived from the run's ``seed`` and the group's user ids."""
    state = np.random.SeedSequence([int(seed) % 2**63, *[int(u) for u in group]]).generate_state(1, np.uint64)
    return int(state[0]) >> 1  # 63-bit, valid for torch.manual_seed


def _user_files(user_id: int, samples_per_user: int) -> list[str]:
    """Relative paths of one user's generated images."""
    return [f"ID_{user_id}/gen_{i:04d}.png" for i in range(samples_per_user)]


def _commit_user(folder: OutputFolder, staging: Path, user_id: int, settings: dict, provenance: dict) -> int:
    """Move ``staging/ID_<k>/*`` into ``folder``, removing only this tool's earlier files of that user.

    ``settings`` (what ``--skip_existing`` compares) and ``provenance`` (the user's ``attribution`` record and
    ``variations`` sources, empty for plain sampling) go into the manifest with the images, so a resumed run can
    still report where kept users' images came from.
    """
    name = f"ID_{user_id}"
    new = sorted(f"{name}/{p.name}" for p in (staging / name).iterdir())
    old = sorted(rel for rel in folder.files if rel.startswith(name + "/") and rel not in new)
    users = dict(folder.meta.get("users", {}))
    users.pop(str(user_id), None)
    provenances = dict(folder.meta.get(PROVENANCE_KEY, {}))
    provenances.pop(str(user_id), None)
    # Registered before they appear.
    folder.record(added=new, meta={**folder.meta, "users": users, PROVENANCE_KEY: provenances})
    target = folder.path / name
    target.mkdir(parents=True, exist_ok=True)
    for rel in old:  # this tool's own earlier images of the user (prepare_output_folder refused foreign ones)
        (folder.path / rel).unlink(missing_ok=True)
    for rel in new:
        os.replace(staging / rel, folder.path / rel)
    users[str(user_id)] = settings
    if provenance:
        provenances[str(user_id)] = provenance
    folder.record(removed=old, meta={**folder.meta, "users": users, PROVENANCE_KEY: provenances})
    return len(new)


def _recorded_provenance(folder: OutputFolder, user_id: int) -> dict:
    """The ``provenance`` :func:`_commit_user` recorded for a user kept by ``--skip_existing`` (empty if none)."""
    return folder.meta.get(PROVENANCE_KEY, {}).get(str(user_id), {})


def _user_complete(folder: OutputFolder, user_id: int, samples_per_user: int, settings: dict) -> bool:
    """--skip_existing: True when the user's images are all listed and present and were made with ``settings``.

    Raises:
        UserInputError: the user's images in the folder were generated with other settings.
    """
    recorded = folder.meta.get("users", {}).get(str(user_id))
    if recorded is None or not all(folder.owns(rel) for rel in _user_files(user_id, samples_per_user)):
        return False
    if recorded != settings:
        changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        raise UserInputError(f"--skip_existing: ID_{user_id} in {folder.path} was generated with other settings "
                             f"({', '.join(changed)} differ); rerun with the same flags, or drop --skip_existing "
                             "to regenerate")
    needed = [key for key, used in (("attribution", "keep_attributed" in settings),
                                    ("variations", "strength" in settings)) if used]
    # Written before the manifest kept provenance: regenerated, so that its record can be reported.
    return all(key in _recorded_provenance(folder, user_id) for key in needed)


def _read_grid_pixels(output_dir: Path, ids: Sequence[int], columns: int) -> torch.Tensor:
    """The first ``columns`` images of each user read back from disk, ``[U * columns, C, R, R]`` in [0, 1]."""
    images = []
    for user_id in ids:
        for rel in _user_files(user_id, columns):
            with PIL.Image.open(output_dir / rel) as image:
                array = np.asarray(image)
            tensor = torch.from_numpy(array.copy()).float() / 255.0
            images.append(tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1))
    return torch.stack(images)


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
    overwrite: bool = False,
    skip_existing: bool = False,
    attribution: JudgeAttribution | None = None,
    oversample: float = 1.0,
    sources: TrainingSources | None = None,
    strength: float = 1.0,
) -> dict:
    """Generate ``samples_per_user`` images per user and write them in the dataset layout.

    Ownership (see :mod:`vqvae_transformer.output_folder`): files this tool wrote earlier (listed in the
    folder's manifest) are replaced; any other file makes it refuse, unless ``overwrite``, which writes beside
    such files (never inside a requested ``ID_<k>`` folder holding them). ``ID_<k>`` folders of users not
    requested are left alone.

    Users are sampled in groups of about ``batch_size`` sequences, each group with a seed derived from
    ``seed`` and its user ids, and each group is moved into place (and listed in the manifest) as soon as it is
    written: an interrupted run keeps the finished users, and ``skip_existing`` resumes it. With the same flags,
    a resumed run's files are byte-identical to an uninterrupted run's.

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
        overwrite: allow foreign files in ``output_dir`` (they are kept).
        skip_existing: keep users whose images this tool already wrote with the same settings.
        attribution: with a judge (:class:`~vqvae_transformer.inference.attribution.JudgeAttribution`), draw
            ``ceil(samples_per_user x oversample)`` candidates per user and keep the ``samples_per_user`` the judge
            gives the highest probability of the intended user (``generate_main.py --keep_attributed``); the
            per-user acceptance rates go into the JSON's ``attribution`` block.
        oversample: candidates drawn per kept image with ``attribution`` (>= 1).
        sources: with the model's training recordings (:class:`~vqvae_transformer.inference.variations.
            TrainingSources`), every image starts from one of its user's, drawn at random and time-shifted, and
            the prior writes ``strength`` of its token grid (``generate_main.py --strength``); which recording
            and shift go into the JSON's ``variations`` block.
        strength: in ``(0, 1]``, with ``sources``; see :meth:`VQVAETransformerPipeline.__call__`.

    Returns:
        The dict written to ``generation_info.json``.

    Raises:
        UserInputError: unknown user ids, bad sampling settings, an unwritable ``output_dir`` or foreign files
            in the way (all before any image is sampled).
    """
    output_dir = Path(output_dir)
    ids = [pipeline.user_ids[label] for label in pipeline.labels_for(user_ids)]  # validates before sampling
    folder = prepare_output_folder(output_dir, TOOL_NAME, overwrite=overwrite,
                                   reserved=[f"ID_{k}" for k in ids] + [GRID_FILE, INFO_FILE], staging_beside=True)
    clear_stale_staging(output_dir, STAGING_KIND)
    resolved_model = model_dir if model_dir is not None else pipeline.config.get("_name_or_path")
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "guidance_scale": guidance_scale,
                "batch_size": batch_size, "seed": seed}
    if sources is not None:
        sources.check_users(ids)
        sampling["strength"] = strength
    settings = {"model_dir": resolved_model, "samples_per_user": samples_per_user, **sampling}
    draws = samples_per_user
    if attribution is not None:
        draws = candidates_per_user(samples_per_user, oversample)
        settings["keep_attributed"] = {"method": "judge", "oversample": oversample}
    done = {k for k in ids if skip_existing and _user_complete(folder, k, samples_per_user, settings)}

    seconds, generated, records, origins = 0.0, [], {}, {}
    for group in _user_groups(ids, draws, batch_size):
        if all(k in done for k in group):
            continue
        start = time.perf_counter()
        image = None
        if sources is not None:  # one training recording per draw, user-major like the pipeline's requests
            image, drawn = sources.draw([k for k in group for _ in range(draws)], group_seed(seed, group))
            for i, user_id in enumerate(group):
                origins[user_id] = drawn[i * draws:(i + 1) * draws]
        result = pipeline(user_ids=group, num_images_per_user=draws, temperature=temperature, top_k=top_k,
                          top_p=top_p, guidance_scale=guidance_scale,
                          generator=torch.Generator().manual_seed(group_seed(seed, group)),
                          batch_size=batch_size, output_type="pt", image=image, strength=strength)
        seconds += time.perf_counter() - start
        staging = make_staging_dir(output_dir, STAGING_KIND)
        try:
            _write_user_folders(staging, result.images, result.user_ids)
            if attribution is not None:  # keep the best-attributed samples_per_user of the draws, in staging
                records.update(attribution.keep_best(staging, [k for k in group if k not in done], samples_per_user))
            for user_id in group:
                if user_id not in done:
                    provenance = {}
                    if attribution is not None:
                        provenance["attribution"] = records[user_id]
                    if sources is not None:
                        provenance["variations"] = origins[user_id]
                    _commit_user(folder, staging, user_id, settings, provenance)
                    generated.append(user_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    for user_id in sorted(done):  # users kept from an earlier run: their records come from the manifest
        kept = _recorded_provenance(folder, user_id)
        if attribution is not None:
            records[user_id] = kept["attribution"]
        if sources is not None:
            origins[user_id] = kept["variations"]
    cols = min(samples_per_user, grid_columns)
    pixels = _read_grid_pixels(output_dir, ids, cols)
    num_generated = len(generated) * samples_per_user
    info = {
        "model_dir": resolved_model,
        "output_dir": str(output_dir),
        "user_ids": ids,
        "samples_per_user": samples_per_user,
        "num_images": len(ids) * samples_per_user,
        "images_per_user": {str(k): samples_per_user for k in ids},
        "generated_user_ids": generated,
        "skipped_user_ids": [k for k in ids if k in done],
        "resolution": int(pixels.shape[-1]),
        "channels": int(pixels.shape[1]),
        "sampling": sampling,
        "device": str(pipeline.device),
        "seconds": round(seconds, 3),
        "images_per_second": round(num_generated / seconds, 2) if seconds > 0 else None,
    }
    if attribution is not None:  # images_per_second counts kept images: the sampling of every candidate is paid
        info["attribution"] = summarize_attribution(records, oversample)
        _log_attribution(info["attribution"], samples_per_user)
    if sources is not None:  # per user, the recording each draw started from (kept_candidates maps kept images)
        info["variations"] = {"strength": strength, "source": VARIATION_SOURCE,
                              "per_user": {str(k): origins[k] for k in sorted(origins)}}
    folder.record(added=[GRID_FILE, INFO_FILE])
    grid_tmp = output_dir / f".{GRID_FILE}.{os.getpid()}.tmp.png"
    try:
        make_user_grid(pixels, ids, cols, grid_columns).save(grid_tmp)
        os.replace(grid_tmp, output_dir / GRID_FILE)
    finally:
        grid_tmp.unlink(missing_ok=True)
    write_json_atomic(output_dir / INFO_FILE, info)
    logger.info("wrote %d images for %d users to %s in %.1f s (%.1f images/s); kept %d users already there",
                num_generated, len(generated), output_dir, seconds, info["images_per_second"] or 0.0, len(done))
    return info


def _log_attribution(block: dict, samples_per_user: int) -> None:
    """One line overall, one warning naming the users where fewer than all kept images are attributed."""
    if not block["per_user"]:
        return
    logger.info("--keep_attributed: the judge attributes %.1f%% of %d candidates to their intended user; %.1f%% of "
                "the %d kept images", 100 * block["acceptance_rate"], block["candidates"],
                100 * block["kept_attributed_rate"], block["kept"])
    short = [f"ID_{k} ({r['kept_attributed']}/{samples_per_user})" for k, r in block["per_user"].items()
             if r["kept_attributed"] < samples_per_user]
    if short:
        logger.warning("--keep_attributed: for %d user(s) fewer than %d kept images are attributed to them: %s; "
                       "a larger --oversample draws more candidates", len(short), samples_per_user,
                       ", ".join(short[:10]) + (" ..." if len(short) > 10 else ""))


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
    for flag, value, hint in (("temperature", args.temperature, f"e.g. {DEFAULT_TEMPERATURE}"),
                              ("guidance_scale", args.guidance_scale,
                               f"1 disables guidance, default {DEFAULT_GUIDANCE_SCALE}")):
        if not math.isfinite(value):
            raise UserInputError(f"--{flag} must be a finite number > 0 ({hint}), got {value}")
        if not value > 0:
            raise UserInputError(f"--{flag} must be > 0, got {value} ({hint})")
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
    strength = getattr(args, "strength", None)
    if strength is not None and not (math.isfinite(strength) and 0.0 < strength <= 1.0):
        raise UserInputError(f"--strength must be in (0, 1] (the share of each image the prior writes; 1 = from "
                             f"nothing), got {strength}")
    oversample = getattr(args, "oversample", None)
    if oversample is not None:
        if not getattr(args, "keep_attributed", False):
            raise UserInputError(f"--oversample {oversample} only applies with --keep_attributed; add it or drop "
                                 "--oversample")
        if not (math.isfinite(oversample) and oversample >= 1):
            raise UserInputError(f"--oversample must be a finite number >= 1 (candidates per kept image, default "
                                 f"{DEFAULT_OVERSAMPLE}), got {oversample}")


PNG_OVERHEAD_BYTES = 256  # PNG signature, header, end chunk and zlib framing of one small image
MEMORY_SHARE = 0.8  # refuse a run whose images held at once would need more than this share of the free memory


def _human_bytes(count: float) -> str:
    """``1.5 GiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} PiB"


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), None when unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _png_bytes_on_disk(resolution: int, channels: int, folder: Path) -> int:
    """Estimated disk use of one generated PNG: the uncompressed 8-bit pixels (noise-like spectrograms barely
    compress) plus :data:`PNG_OVERHEAD_BYTES`, rounded up to the file system's block size."""
    raw = resolution * resolution * channels + PNG_OVERHEAD_BYTES
    try:
        block = os.statvfs(folder).f_frsize or 4096
    except (OSError, AttributeError):
        block = 4096
    return -(-raw // block) * block


def check_generation_fits(args: argparse.Namespace, pipeline: VQVAETransformerPipeline) -> None:
    """Refuse, before sampling, a run whose images cannot fit on the disk of ``--output_dir`` or in memory.

    * Disk: ``samples_per_user * users`` PNGs of :func:`_png_bytes_on_disk` each must fit in the free space of
      the output folder's disk (``shutil.disk_usage``).
    * Memory: a user group's images are held as float32 ``[N, C, R, R]`` (twice, while being concatenated) before
      they are written, with the prior's key/value cache of one ``--batch_size`` chunk (doubled with guidance);
      that must stay below :data:`MEMORY_SHARE` of the available memory.

    Raises:
        UserInputError: one line with the estimate, what is free and the flag to lower.
    """
    users = len(args.user_ids) if args.user_ids else len(pipeline.user_ids)
    resolution, channels = int(pipeline.config.resolution), pipeline.output_channels
    total = args.samples_per_user * users
    where = _existing_ancestor(Path(args.output_dir))
    per_png = _png_bytes_on_disk(resolution, channels, where)
    free = shutil.disk_usage(where).free
    if total * per_png > free:
        fit = max(free // (per_png * users), 0)
        raise UserInputError(
            f"--samples_per_user {args.samples_per_user} x {users} user(s) = {total} images need about "
            f"{_human_bytes(total * per_png)} on disk ({resolution}x{resolution} px, {channels} channel(s): about "
            f"{_human_bytes(per_png)} per PNG) but {where} has {_human_bytes(free)} free; lower --samples_per_user "
            f"(about {fit} fit) or choose an --output_dir on a larger disk")
    held = max(min(args.samples_per_user, total), min(args.batch_size, total))  # images of one group at once
    image_bytes = 2 * held * channels * resolution * resolution * 4
    prior = pipeline.prior.config
    chunk = min(args.batch_size, total) * (2 if args.guidance_scale != 1 else 1)
    cache_bytes = 2 * prior.n_layer * prior.n_embd * prior.n_positions * 4 * chunk + chunk * prior.vocab_size * 4
    need, available = image_bytes + cache_bytes, _available_memory()
    if available is not None and need > MEMORY_SHARE * available:
        flag, value = ("--batch_size", args.batch_size) if cache_bytes > image_bytes or \
            args.batch_size >= args.samples_per_user else ("--samples_per_user", args.samples_per_user)
        raise UserInputError(
            f"{flag} {value} needs about {_human_bytes(need)} of memory at once ({held} images of "
            f"{resolution}x{resolution} px held before writing, and the prior's cache for "
            f"{min(args.batch_size, total)} sequences) but {_human_bytes(available)} is available; lower {flag} "
            "(run several times with other --seed values into other --output_dir folders for more images)")


def load_pipeline(model_dir: str, device: torch.device) -> tuple[VQVAETransformerPipeline, Path]:
    """Load the pipeline from a folder or Hub repo id and move it to ``device``.

    Returns:
        ``(pipeline, folder)``: the folder is the local one it was loaded from (a Hub id resolved once), for the
        other files of the model (its training split, its judge).

    Raises:
        UserInputError: the default model folder does not exist (train first) or loading failed.
    """
    if model_dir == DEFAULT_MODEL_DIR and not Path(model_dir).is_dir():
        raise UserInputError(f"no trained model at {model_dir} (the default --model_dir); run train_main.py "
                             "first or pass --model_dir FOLDER_OR_HUB_REPO_ID")
    folder = resolve_model_folder(model_dir)
    check_model_folder(folder, need=PIPELINE_PARTS)  # every file present, complete and of one model, before loading
    pipeline = VQVAETransformerPipeline.from_pretrained(folder)
    return pipeline.to(device), folder


def run_generate_cli(args: argparse.Namespace) -> dict:
    """The logic behind ``generate_main.py``: validate, load, generate, write.

    Args:
        args: the namespace parsed by ``generate_main.build_parser()``.

    Returns:
        The generation info (also written to ``generation_info.json``).
    """
    validate_generate_args(args)
    overwrite, skip_existing = getattr(args, "overwrite", False), getattr(args, "skip_existing", False)
    # Cheap folder checks first (writability, foreign files), again with the user ids once the model is loaded.
    prepare_output_folder(args.output_dir, TOOL_NAME, overwrite=overwrite, staging_beside=True)
    device = resolve_device(args.device)
    pipeline, folder = load_pipeline(args.model_dir, device)
    check_generation_fits(args, pipeline)  # disk and memory, before sampling
    attribution, oversample, sources = None, 1.0, None
    strength = getattr(args, "strength", None)
    if strength is not None and strength < 1.0:
        sources = TrainingSources.for_model(folder)
    if getattr(args, "keep_attributed", False):
        oversample = args.oversample if args.oversample is not None else DEFAULT_OVERSAMPLE
        attribution = JudgeAttribution.for_model(folder, seed=args.seed)
    try:
        with sigterm_as_keyboard_interrupt():
            return generate_to_folder(
                pipeline, args.output_dir, samples_per_user=args.samples_per_user, user_ids=args.user_ids,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, guidance_scale=args.guidance_scale,
                batch_size=args.batch_size, seed=args.seed, model_dir=args.model_dir, overwrite=overwrite,
                skip_existing=skip_existing, attribution=attribution, oversample=oversample, sources=sources,
                strength=strength if sources is not None else 1.0,
            )
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise  # run_cli reports the other path errors (and shows the traceback of the rest)
        raise UserInputError(f"--output_dir {args.output_dir}: the disk filled up while writing ({err.strerror}); "
                             "the users finished so far are kept: free space and rerun with --skip_existing, or "
                             "choose an --output_dir on another disk") from err
