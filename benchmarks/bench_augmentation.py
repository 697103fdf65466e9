"""Few-shot augmentation benchmark: does adding generated spectrograms help a user classifier trained on k real ones?

The users' question ("if I add your images to my training set, does my classifier get better?"), measured. For each
k (real images per user, or ``all``: every image of a user outside the test set), each ``--init_from`` (the
generator trained from scratch, or started from a trained model: ``train_main.py --init_from``) and each seed:

1. copy the k-shot images of every user into a temporary ``ID_<k>/`` folder and train the generator on exactly
   those images with the real ``train_main.py`` (a subprocess, reduced steps, ``--val_fraction 0``);
2. generate ``--m`` images per user with the real ``generate_main.py``, once per ``--strength`` (1: sampled from
   nothing; below 1: variations of the generator's own k training images, ``generate_main.py --strength``);
3. train classifiers of the judge's architecture with the same seed, the same augmentation and about the same
   number of optimisation steps (``--classifier_steps``), one per mixing strategy (``--strategies``):

   * ``real``     — the k real images only (the baseline every gain is measured against);
   * ``mix``      — the k real + all M generated images per user;
   * ``mix_1to1`` — the k real + min(k, M) generated images per user (one generated image per real one);
   * ``balanced`` — the k real images, each repeated round(M / k) times, + all M generated per user: every epoch is
     about half real, half generated, and all M samples are used;
   * ``filter``   — the k real + the generated images that the ``real`` classifier (trained on the k real images
     only: never on test data) attributes to their intended user; the acceptance rate is reported;
   * ``pretrain`` — a share of the steps (``--pretrain_fraction``, half by default) on the generated images, then
     the rest fine-tuning on the k real ones;
   * ``pretrain_mix`` — the same share of the steps on the k real + all M generated images (``mix``), then the rest
     fine-tuning on the k real ones;

4. test every classifier on the same held-out real images (``--test_per_user`` per user, drawn once with a fixed
   seed, never copied into the generator's folder nor shown to any classifier).

Prints one row per (k, init, strength, seed) with each strategy's accuracy and gain over ``real`` in percentage
points, then (several seeds) mean ± std per (k, init, strength) and strategy, and the best strategy. A k larger than some user's
share of the non-test images is skipped with a note (e.g. k = 20 on 24 images per person with 8 held out).

Run from the repository root::

    python -m benchmarks.bench_augmentation                          # k = 5, 10, 20, all; seeds 0 1 2; 31 users
    python -m benchmarks.bench_augmentation --k 5 --seeds 0 --json augmentation.json
    python -m benchmarks.bench_augmentation --data_dir small_data --test_per_user 8 --k 5 all   # the users' shape
    python -m benchmarks.bench_augmentation --data_dir small_data --test_per_user 8 --k all \
        --vqvae_steps preset --prior_steps preset        # the generator trained as the README's command trains it
    python -m benchmarks.bench_augmentation --data_dir small_data --test_per_user 8 --k 5 --vqvae_steps preset \
        --prior_steps preset --seeds 0 --keep_dir          # prints the kept folder DIR; then, without retraining:
    python -m benchmarks.bench_augmentation --data_dir small_data --test_per_user 8 --k 5 --vqvae_steps preset \
        --prior_steps preset --seeds 0 --generators_from DIR --strength 0.25 --m 5
    python -m benchmarks.bench_augmentation --data_dir small_data --test_per_user 8 --k 5 --vqvae_steps preset \
        --prior_steps preset --seeds 0 --generators_from DIR --strategies real pretrain pretrain_mix \
        --pretrain_fraction 0.25                                   # a quarter of the steps before fine-tuning
    python -m benchmarks.bench_augmentation --init_from none simulator   # with and without simulator transfer
    python -m benchmarks.bench_augmentation --k 5 --strength 1 0.5      # plain samples and variations
    python -m benchmarks.bench_augmentation --num_users 4 --k 5 --m 4 --vqvae_steps 10 --prior_steps 10 \
        --seeds 0 --classifier_steps 10                                  # smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import run_script, work_dir
from vqvae_transformer.atomic import write_json_atomic
from vqvae_transformer.data import SpectrogramData, default_dataset_dir, load_image_folder
from vqvae_transformer.layout import DATA_INFO_FILE
from vqvae_transformer.models.pipeline import DEFAULT_GUIDANCE_SCALE
from vqvae_transformer.models.judge import accuracy, predict, train_judge

RESOLUTION = 64
SIMULATED_USERS = 31
SIMULATED_SAMPLES_PER_USER = 64
SIMULATOR_SEED = 0
TEST_SEED = 12345
"""Seed of the held-out test draw: fixed, so every k and every seed is tested on the same real images."""
ALL = 0
"""``--k all`` (every non-test image of each user), stored as 0."""
PRESET_STEPS = "preset"
"""``--vqvae_steps preset`` / ``--prior_steps preset``: leave the steps to ``train_main.py``'s preset."""
STRATEGIES = ("real", "mix", "mix_1to1", "balanced", "filter", "pretrain", "pretrain_mix")
"""Ways of training the classifier; ``real`` is the baseline and always runs (see the module docstring)."""


# ----------------------------------------------------------------------------------------------------------
# Flags


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=parse_k, nargs="+", default=[5, 10, 20, ALL],
                        help="real images per user, or 'all' (every non-test image) (default: 5 10 20 all)")
    parser.add_argument("--m", type=int, default=20, help="generated images per user (default: 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the k-shot draw, the generator and the classifiers (default: 0 1 2)")
    parser.add_argument("--init_from", nargs="+", default=["none"],
                        help="train_main.py --init_from of the generator, one run per value: none (from scratch), "
                             "simulator (the default model, built once into the cache: about 20 min) or a model "
                             "folder (default: none)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES),
                        help="classifier mixing strategies; real always runs (default: all)")
    parser.add_argument("--num_users", type=int, default=SIMULATED_USERS,
                        help=f"first N users of the data (default: {SIMULATED_USERS})")
    parser.add_argument("--data_dir", default=None,
                        help="a folder of ID_<k>/ images instead of the simulated default (31 users x 64, 64 px)")
    parser.add_argument("--test_per_user", type=int, default=16,
                        help="held-out real test images per user (default: 16)")
    parser.add_argument("--vqvae_steps", type=parse_steps, default=1600,
                        help="stage-1 steps of train_main, or 'preset': the preset's, as the README's command "
                             "trains (default: 1600, batch 8 as in the CPU preset)")
    parser.add_argument("--prior_steps", type=parse_steps, default=300,
                        help="stage-2 steps of train_main, or 'preset': the preset's and its small-data rule's "
                             "(e.g. 2200 steps of 8 on a few dozen images per user), as the README's command trains "
                             "(default: 300, batch 16 as in the CPU preset)")
    parser.add_argument("--train_args", default="",
                        help="extra train_main.py flags of every generator, quoted (e.g. \"--adversarial_weight "
                             "0.5\"); not checked against --generators_from's kept runs")
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                        help="train_main preset for every other model setting; resolution stays 64 (default: cpu)")
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                        help=f"generate_main's --guidance_scale (default: {DEFAULT_GUIDANCE_SCALE}, its own default)")
    parser.add_argument("--strength", type=float, nargs="+", default=[1.0],
                        help="generate_main's --strength, one set of generated images (and of classifiers) per "
                             "value: < 1 makes variations of the generator's own k training images (default: 1, "
                             "plain sampling)")
    parser.add_argument("--classifier_steps", type=int, default=300,
                        help="optimisation steps of each classifier, rounded up to whole epochs (default: 300)")
    parser.add_argument("--pretrain_fraction", type=float, default=0.5,
                        help="share of the classifier steps that pretrain / pretrain_mix spend before fine-tuning on "
                             "the real images, in (0, 1) (default: 0.5)")
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP_NUM_THREADS for the subprocesses; 0 leaves it unset (default: 0)")
    parser.add_argument("--generators_from", default=None,
                        help="a folder an earlier run kept (--keep_dir): reuse its trained generators instead of "
                             "training them (same data, k, --init_from and seeds; each k-shot folder is checked "
                             "file by file; the folder may have been moved since); sampling and the classifiers run "
                             "again (default: train them)")
    parser.add_argument("--keep_dir", action="store_true", help="keep the temporary folders (their path is printed)")
    parser.add_argument("--json", default=None, help="also write the settings and rows to this JSON file")
    return parser


def parse_k(text: str) -> int:
    """``--k`` value: a positive integer, or ``all`` (:data:`ALL`)."""
    if text == "all":
        return ALL
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"k must be a positive integer or 'all', got {text}")
    return value


def parse_steps(text: str) -> int | None:
    """``--vqvae_steps`` / ``--prior_steps`` value: a positive integer, or ``preset`` (None: the flag is not passed
    to ``train_main.py``, so the preset and its small-data rule choose, as for the README's command)."""
    if text == PRESET_STEPS:
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"steps must be a positive integer or '{PRESET_STEPS}', got {text}")
    return value


def steps_label(steps: int | None) -> str:
    """Steps as printed: the number, or ``preset``."""
    return PRESET_STEPS if steps is None else str(steps)


def k_label(k: int) -> str:
    """``k`` as printed: the number, or ``all``."""
    return "all" if k == ALL else str(k)


def validate_args(args: argparse.Namespace) -> None:
    """Reject impossible values, naming the flag and the value."""
    for flag in ("m", "num_users", "test_per_user", "vqvae_steps", "prior_steps", "classifier_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if not (math.isfinite(args.pretrain_fraction) and 0.0 < args.pretrain_fraction < 1.0):
        raise ValueError(f"--pretrain_fraction must be in (0, 1), got {args.pretrain_fraction}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    bad = [v for v in args.strength if not (math.isfinite(v) and 0.0 < v <= 1.0)]
    if bad:
        raise ValueError(f"--strength must be in (0, 1], got {bad[0]}")
    if args.generators_from is not None and not Path(args.generators_from).is_dir():
        raise ValueError(f"--generators_from {args.generators_from}: no such folder (give the folder an earlier "
                         f"run printed with --keep_dir)")
    if args.data_dir is None and args.num_users > SIMULATED_USERS:
        raise ValueError(f"--num_users {args.num_users}: the simulated default has {SIMULATED_USERS} users")


# ----------------------------------------------------------------------------------------------------------
# Data: held-out test set and k-shot draws


def load_benchmark_data(data_dir: str | None, num_users: int) -> SpectrogramData:
    """The first ``num_users`` users of ``data_dir``, or of the cached simulated default, at 64 px."""
    if data_dir is None:  # the 31-user default, simulated into its cache folder on first use
        data_dir = default_dataset_dir(num_users=SIMULATED_USERS, samples_per_user=SIMULATED_SAMPLES_PER_USER,
                                       resolution=RESOLUTION, seed=SIMULATOR_SEED)
    return load_image_folder(data_dir, RESOLUTION, num_users=num_users)


def split_test_and_pool(labels: torch.Tensor, test_per_user: int) -> tuple[list[int], dict[int, list[int]]]:
    """Per user, draw the held-out test images (fixed seed); the rest is the pool the k-shot images come from.

    Args:
        labels: ``[N]`` 0-based user labels.
        test_per_user: test images per user; every user needs at least one image more.

    Returns:
        ``(test indices, {label: pool indices in file order})``.
    """
    test: list[int] = []
    pool: dict[int, list[int]] = {}
    for label in sorted(set(labels.tolist())):
        members = torch.nonzero(labels == label).flatten().numpy()
        if len(members) <= test_per_user:
            raise ValueError(f"user label {label} has {len(members)} images; --test_per_user {test_per_user} "
                             f"leaves none to train on (lower --test_per_user)")
        drawn = np.random.default_rng([TEST_SEED, label]).permutation(members)
        test.extend(int(i) for i in drawn[:test_per_user])
        pool[label] = sorted(int(i) for i in drawn[test_per_user:])
    return sorted(test), pool


def few_shot_indices(pool: dict[int, list[int]], k: int, seed: int) -> list[int]:
    """The first ``k`` of a per-user permutation seeded by ``(seed, label)`` (so the 5-shot set is in the 10-shot);
    ``k = ALL`` takes the whole pool."""
    chosen: list[int] = []
    for label, members in pool.items():
        drawn = np.random.default_rng([seed, label]).permutation(members)
        chosen.extend(int(i) for i in (drawn if k == ALL else drawn[:k]))
    return sorted(chosen)


def smallest_pool(pool: dict[int, list[int]]) -> int:
    """The fewest non-test images any user has (the largest k every user can give)."""
    return min(len(members) for members in pool.values())


def check_disjoint(train_idx: list[int], test_idx: list[int], data: SpectrogramData) -> None:
    """Raise if a test image (by index or by file) is among the training images."""
    shared = set(train_idx) & set(test_idx)
    shared_files = {data.paths[i] for i in train_idx} & {data.paths[i] for i in test_idx}
    if shared or shared_files:
        raise RuntimeError(f"held-out test images leaked into the training set: {sorted(shared_files)[:5]}")


def write_few_shot_folder(data: SpectrogramData, indices: list[int], folder: Path) -> None:
    """Copy the chosen image files into ``folder/ID_<user id>/`` (the dataset contract train_main reads)."""
    for i in indices:
        user_dir = folder / f"ID_{data.user_ids[int(data.labels[i])]}"
        user_dir.mkdir(parents=True, exist_ok=True)
        source = Path(data.paths[i])
        shutil.copy2(source, user_dir / source.name)


# ----------------------------------------------------------------------------------------------------------
# The generator (subprocesses: the real CLIs)


def train_generator(args: argparse.Namespace, data_dir: Path, model_dir: Path, seed: int,
                    init_from: str = "none") -> tuple[float, int, dict]:
    """Train both stages on ``data_dir`` with ``train_main.py`` (``--init_from init_from``).

    Returns:
        ``(wall seconds, images the generator trained on, {"vqvae": steps, "prior": steps})``, the last two from
        ``training_summary.json`` (the steps actually trained, whoever chose them).
    """
    command = ["train_main.py", "--data_dir", str(data_dir), "--output_dir", str(model_dir), "--lpips", "off",
               "--seed", str(seed), "--preset", args.preset, "--resolution", str(RESOLUTION)]
    for flag in ("vqvae_steps", "prior_steps"):
        if getattr(args, flag) is not None:  # None: the preset's (and its small-data rule's) steps
            command += [f"--{flag}", str(getattr(args, flag))]
    if args.vqvae_steps is not None and args.prior_steps is not None:
        # evaluate (figures, sample grid) and checkpoint once, at the end of each stage: the budget is steps
        last_step = max(args.vqvae_steps, args.prior_steps)
        command += ["--eval_steps", str(last_step), "--checkpointing_steps", str(last_step)]
    command += ["--val_fraction", "0"]  # the generator trains on all k images
    if init_from != "none":
        command += ["--init_from", init_from]
    command += shlex.split(args.train_args)
    seconds = run_script(command, model_dir.parent / f"{model_dir.name}_train.log", args.threads)
    summary = json.loads((model_dir / "training_summary.json").read_text())
    steps = {stage: int(summary[stage]["steps"]) for stage in ("vqvae", "prior")}
    return seconds, int(summary["data"]["train_images"]), steps


def few_shot_files(folder: Path) -> set[tuple[str, str]]:
    """``(ID_<id>/<file>, sha256 of its bytes)`` of every image in a k-shot folder (what :func:`write_few_shot_folder`
    copied): equal sets mean the same images under the same users, whatever folder they were copied from."""
    return {(path.relative_to(folder).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest())
            for path in folder.glob("ID_*/*") if path.is_file()}


def reuse_generator(kept_run: Path, expected_data: Path, into: Path) -> tuple[float, int, dict, Path]:
    """A generator an earlier run trained (``--generators_from``), checked to be trained on the same k-shot files.

    The kept model is copied (without its training checkpoints) to ``into``, and the copy's ``data_info.json`` is
    pointed at ``expected_data``: variations (``--strength`` < 1) read the generator's training images from the
    folder that file names, and the earlier run's temporary folder is gone or moved. The kept folder is only read.

    Args:
        kept_run: ``<kept folder>/<run name>``, holding ``data/`` and ``model/``.
        expected_data: this run's k-shot folder (just written by :func:`write_few_shot_folder`).
        into: where the copy goes (must not exist).

    Returns:
        ``(the earlier training's wall seconds, images it trained on, {"vqvae": steps, "prior": steps}, into)``,
        from its ``training_summary.json``.

    Raises:
        FileNotFoundError: the kept run, its model summary or its ``data_info.json`` is missing, or its training did
            not finish.
        ValueError: its k-shot files differ from this run's draw (another data folder, k or seed).
    """
    summary_path = kept_run / "model" / "training_summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"--generators_from: no trained generator at {kept_run / 'model'} (was that run "
                                f"made with the same --k, --init_from and --seeds, and --keep_dir?)")
    summary = json.loads(summary_path.read_text())
    if "wall_seconds" not in summary:  # written when stage 2 finishes; stage 1 alone writes the summary earlier
        raise FileNotFoundError(f"--generators_from: the generator at {kept_run / 'model'} did not finish training "
                                f"(its run was stopped); train it again")
    kept, wanted = few_shot_files(kept_run / "data"), few_shot_files(expected_data)
    if kept != wanted:
        differ = sorted({name for name, _ in kept ^ wanted})
        raise ValueError(f"--generators_from: {kept_run / 'data'} differs from this run's k-shot draw in "
                         f"{len(differ)} files (e.g. {differ[0]}: missing, extra or other bytes): another "
                         f"--data_dir, --test_per_user or draw; train the generators again")
    info_path = kept_run / "model" / DATA_INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"--generators_from: {info_path} is missing (the kept model was not written by "
                                f"train_main.py); train the generators again")
    shutil.copytree(kept_run / "model", into, ignore=shutil.ignore_patterns("checkpoints"))
    info = json.loads(info_path.read_text())
    info["data_dir"] = str(expected_data.resolve())  # the same files (checked above), where they are now
    write_json_atomic(into / DATA_INFO_FILE, info)
    steps = {stage: int(summary[stage]["steps"]) for stage in ("vqvae", "prior")}
    return float(summary["wall_seconds"]), int(summary["data"]["train_images"]), steps, into


def generate(args: argparse.Namespace, model_dir: Path, output_dir: Path, seed: int, strength: float = 1.0) -> float:
    """Generate ``--m`` images per user with ``generate_main.py`` into ``output_dir`` (``--strength strength``:
    variations of the generator's training images when < 1); returns wall seconds."""
    command = ["generate_main.py", "--model_dir", str(model_dir), "--output_dir", str(output_dir),
               "--samples_per_user", str(args.m), "--seed", str(seed), "--guidance_scale", str(args.guidance_scale)]
    if strength != 1.0:
        command += ["--strength", str(strength)]
    return run_script(command, output_dir.parent / f"{output_dir.name}.log", args.threads)


def load_generated(folder: Path, data: SpectrogramData) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated images ``[G, C, R, R]`` and their labels ``[G]`` in ``data``'s label space (mapped by user id)."""
    generated = load_image_folder(folder, RESOLUTION, channels=data.channels)
    labels = torch.tensor([data.id_to_label(generated.user_ids[int(label)]) for label in generated.labels])
    return generated.images, labels


# ----------------------------------------------------------------------------------------------------------
# Classifiers and mixing strategies


def classifier_accuracy(images: torch.Tensor, labels: torch.Tensor, num_classes: int, test_images: torch.Tensor,
                        test_labels: torch.Tensor, seed: int, steps: int, init_state: dict | None = None) -> dict:
    """Train a judge-architecture classifier for about ``steps`` steps and test it on the held-out images.

    ``epochs=1`` with ``min_steps=steps`` gives every training set the same budget (rounded up to whole epochs).

    Returns:
        ``{"accuracy", "steps", "seconds", "train_images", "judge"}``.
    """
    start = time.perf_counter()
    judge = train_judge(images, labels, num_classes, epochs=1, seed=seed, min_steps=steps, init_state=init_state)
    test_accuracy = accuracy(predict(judge, test_images), test_labels)
    steps_per_epoch = max(1, images.shape[0] // judge.settings["batch_size"])
    return {"accuracy": test_accuracy, "steps": judge.epochs_run * steps_per_epoch,
            "seconds": time.perf_counter() - start, "train_images": int(images.shape[0]), "judge": judge}


def first_per_user(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the first ``count`` entries of every label (all of a label's entries when it has fewer)."""
    keep = [torch.nonzero(labels == label).flatten()[:count] for label in labels.unique(sorted=True)]
    return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)


def balanced_repeats(real_count: int, generated_count: int) -> int:
    """How many times ``balanced`` repeats the real images so that they weigh about as much as the generated ones."""
    return max(1, round(generated_count / max(real_count, 1)))


def attributed_mask(judge, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[G]`` bool: the images ``judge`` attributes to their intended label (the ``filter`` strategy)."""
    if images.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    return predict(judge, images) == labels


def run_strategies(strategies: list[str], real: tuple[torch.Tensor, torch.Tensor],
                   generated: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   num_classes: int, k_per_user: int, seed: int, steps: int,
                   pretrain_fraction: float = 0.5) -> dict[str, dict]:
    """Train and test one classifier per strategy (``real`` always first: ``filter`` uses it).

    Args:
        strategies: names from :data:`STRATEGIES`.
        real, generated, test: ``(images [N, C, R, R], 0-based labels [N])``.
        num_classes: users.
        k_per_user: real images per user (``mix_1to1`` adds as many generated ones, at most all of them).
        seed, steps: the classifiers' seed and step budget.
        pretrain_fraction: the share of ``steps`` that ``pretrain`` / ``pretrain_mix`` spend before fine-tuning on
            the real images (the rest of the budget).

    Returns:
        ``{strategy: {"accuracy", "steps", "seconds", "train_images"[, "acceptance"]}}``.
    """
    (real_x, real_y), (gen_x, gen_y), (test_x, test_y) = real, generated, test

    def fit(x, y, budget=steps, init_state=None):
        return classifier_accuracy(x, y, num_classes, test_x, test_y, seed, budget, init_state)

    def pretrain_then_real(x, y):
        first = max(1, round(steps * pretrain_fraction))
        pre = fit(x, y, budget=first)
        tuned = fit(real_x, real_y, budget=max(1, steps - first), init_state=pre["judge"].model.state_dict())
        tuned["steps"] += pre["steps"]
        tuned["seconds"] += pre["seconds"]
        tuned["train_images"] += pre["train_images"]
        return tuned

    results = {"real": fit(real_x, real_y)}
    if "mix" in strategies:
        results["mix"] = fit(torch.cat([real_x, gen_x]), torch.cat([real_y, gen_y]))
    if "mix_1to1" in strategies:
        chosen = first_per_user(gen_y, k_per_user)
        results["mix_1to1"] = fit(torch.cat([real_x, gen_x[chosen]]), torch.cat([real_y, gen_y[chosen]]))
    if "balanced" in strategies:
        repeats = balanced_repeats(real_x.shape[0], gen_x.shape[0])
        results["balanced"] = fit(torch.cat([real_x.repeat(repeats, 1, 1, 1), gen_x]),
                                  torch.cat([real_y.repeat(repeats), gen_y]))
    if "filter" in strategies:
        kept = attributed_mask(results["real"]["judge"], gen_x, gen_y)
        results["filter"] = fit(torch.cat([real_x, gen_x[kept]]), torch.cat([real_y, gen_y[kept]]))
        results["filter"]["acceptance"] = int(kept.sum()) / kept.numel() if kept.numel() else 0.0
    if "pretrain" in strategies:
        results["pretrain"] = pretrain_then_real(gen_x, gen_y)
    if "pretrain_mix" in strategies:
        results["pretrain_mix"] = pretrain_then_real(torch.cat([real_x, gen_x]), torch.cat([real_y, gen_y]))
    for result in results.values():
        result.pop("judge")
    return results


# ----------------------------------------------------------------------------------------------------------
# One (k, init, seed) run and the tables


def run_one(args: argparse.Namespace, data: SpectrogramData, test_idx: list[int], pool: dict[int, list[int]],
            k: int, init_from: str, seed: int, work: Path) -> list[dict]:
    """Draw the k-shot set, train the generator; per ``--strength``, sample it and train and test one classifier
    per strategy. Returns one row per strength."""
    train_idx = few_shot_indices(pool, k, seed)
    check_disjoint(train_idx, test_idx, data)
    tag = f"k={k_label(k)} init={init_from} seed={seed}"
    run_dir = work / f"k{k_label(k)}_init{args.init_from.index(init_from)}_seed{seed}"
    data_dir, model_dir = run_dir / "data", run_dir / "model"
    write_few_shot_folder(data, train_idx, data_dir)
    if args.generators_from:
        train_seconds, generator_images, generator_steps, model_dir = reuse_generator(
            Path(args.generators_from) / run_dir.name, data_dir, model_dir)
        print(f"{tag}: reusing the generator in {model_dir} (trained on the same {len(train_idx)} images)",
              flush=True)
    else:
        model_dir.mkdir(parents=True)
        print(f"{tag}: training the generator on {len(train_idx)} images ...", flush=True)
        train_seconds, generator_images, generator_steps = train_generator(args, data_dir, model_dir, seed,
                                                                           init_from)
    rows = []
    for number, strength in enumerate(args.strength):
        generated_dir = run_dir / f"generated{number}"
        print(f"{tag}: generating {args.m} images per user (strength {strength:g}) ...", flush=True)
        generate_seconds = generate(args, model_dir, generated_dir, seed, strength)
        generated = load_generated(generated_dir, data)

        print(f"{tag}: training the classifiers ({', '.join(args.strategies)}) ...", flush=True)
        k_per_user = len(train_idx) // data.num_users if k == ALL else k
        results = run_strategies(args.strategies, (data.images[train_idx], data.labels[train_idx]), generated,
                                 (data.images[test_idx], data.labels[test_idx]), data.num_users, k_per_user, seed,
                                 args.classifier_steps, args.pretrain_fraction)
        base = results["real"]["accuracy"]
        rows.append({
            "k": k_label(k), "init_from": init_from, "strength": strength, "m": args.m, "seed": seed,
            "users": data.num_users, "test_images": len(test_idx), "generator_train_images": generator_images,
            "generator_train_per_user": generator_images / data.num_users, "generator_steps": generator_steps,
            "generator_reused": bool(args.generators_from), "generated_images": int(generated[0].shape[0]),
            "accuracy": {name: r["accuracy"] for name, r in results.items()},
            "gain_pp": {name: 100.0 * (r["accuracy"] - base) for name, r in results.items() if name != "real"},
            "filter_acceptance": results.get("filter", {}).get("acceptance"),
            "pretrain_fraction": args.pretrain_fraction,
            "classifier_steps": {name: r["steps"] for name, r in results.items()},
            "seconds": {"train_generator": train_seconds, "generate": generate_seconds,
                        **{f"classifier_{name}": r["seconds"] for name, r in results.items()}}})
    return rows


def _strategy_names(rows: list[dict]) -> list[str]:
    """The strategies present in the rows, in :data:`STRATEGIES` order."""
    return [name for name in STRATEGIES if name in rows[0]["accuracy"]]


def format_rows(rows: list[dict]) -> list[str]:
    """The results as a Markdown table, one line per (k, init, seed): accuracy of each strategy (gain in pp)."""
    names = _strategy_names(rows)
    lines = ["| k | init | strength | seed | gen. trained on /user | " + " | ".join(names)
             + " | filter kept | train gen (s) | generate (s) |",
             "|" + "---|" * (len(names) + 8)]
    for r in rows:
        cells = [f"{r['accuracy']['real']:.1%}"] + [f"{r['accuracy'][n]:.1%} ({r['gain_pp'][n]:+.1f})"
                                                     for n in names[1:]]
        kept = "n/a" if r["filter_acceptance"] is None else f"{r['filter_acceptance']:.0%}"
        lines.append(f"| {r['k']} | {r['init_from']} | {_strength(r):g} | {r['seed']} | {r['generator_train_per_user']:g} | "
                     + " | ".join(cells) + f" | {kept} | {r['seconds']['train_generator']:.0f} "
                     f"| {r['seconds']['generate']:.0f} |")
    return lines


def _strength(row: dict) -> float:
    """The row's ``--strength`` (rows written before the flag existed are plain sampling)."""
    return row.get("strength", 1.0)


def _mean_std(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    """``mean ± std`` (sample std) of ``values`` times ``scale``."""
    scaled = [scale * v for v in values]
    return f"{statistics.mean(scaled):{fmt}} ± {statistics.stdev(scaled):{fmt}}"


def summarize(rows: list[dict]) -> tuple[list[str], dict]:
    """Mean ± std over seeds per (k, init, strength) (groups of 2 or more seeds): real accuracy and each
    strategy's gain, and the best strategy by mean gain. Returns table lines and a JSON-ready dict."""
    names = _strategy_names(rows)
    lines = ["| k | init | strength | seeds | acc. real (%) | " + " | ".join(f"gain {n} (pp)" for n in names[1:])
             + " | best |", "|" + "---|" * (len(names) + 5)]
    record: dict = {}
    for key in dict.fromkeys((r["k"], r["init_from"], _strength(r)) for r in rows):
        group = [r for r in rows if (r["k"], r["init_from"], _strength(r)) == key]
        if len(group) < 2:
            continue
        real = [r["accuracy"]["real"] for r in group]
        gains = {n: [r["gain_pp"][n] for r in group] for n in names[1:]}
        best = max(gains, key=lambda n: statistics.mean(gains[n])) if gains else "real"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {len(group)} | {_mean_std(real, 100)} | "
                     + " | ".join(_mean_std(gains[n]) for n in names[1:]) + f" | {best} |")
        record[f"k={key[0]} init={key[1]} strength={key[2]:g}"] = {
            "seeds": [r["seed"] for r in group], "accuracy_real": [statistics.mean(real), statistics.stdev(real)],
            "gain_pp": {n: [statistics.mean(v), statistics.stdev(v)] for n, v in gains.items()}, "best": best}
    return (lines if record else []), record


def print_report(args: argparse.Namespace, rows: list[dict], skipped: list[str], total_seconds: float) -> dict:
    """Print the settings line, the table and (several seeds) the summary; returns the JSON record."""
    first = rows[0]
    print(f"\nfew-shot augmentation: {first['users']} users, {first['test_images']} held-out real test images "
          f"({args.test_per_user}/user, never seen by the generator or the classifiers); generator "
          f"{args.preset} preset at {RESOLUTION} px, {steps_label(args.vqvae_steps)} + {steps_label(args.prior_steps)} "
          f"steps, "
          f"trained on all k images, M = {args.m} generated per user, guidance {args.guidance_scale}; classifiers: "
          f"judge CNN, same seed and augmentation, ~{args.classifier_steps} steps "
          f"(pretrain strategies: {args.pretrain_fraction:g} of them before fine-tuning on the real images); "
          f"threads {args.threads or 'unset'}; {platform.machine()} {os.cpu_count()} cores")
    print("accuracy on the held-out real images (gain over real only, pp)")
    print("\n".join(format_rows(rows)))
    for note in skipped:
        print(note)
    summary_lines, summary = summarize(rows)
    if summary_lines:
        print("\nmean ± std over seeds\n" + "\n".join(summary_lines))
    print(f"\ntotal {total_seconds / 60:.1f} min")
    return {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows, "skipped": skipped,
            "summary": summary, "total_seconds": total_seconds}


def main(argv: list[str] | None = None) -> None:
    """Run every (k, seed), print the table, optionally write the JSON."""
    args = build_parser().parse_args(argv)
    validate_args(args)
    start = time.perf_counter()
    if "real" not in args.strategies:
        args.strategies = ["real", *args.strategies]
    data = load_benchmark_data(args.data_dir, args.num_users)
    test_idx, pool = split_test_and_pool(data.labels, args.test_per_user)
    largest = smallest_pool(pool)
    ks = [k for k in dict.fromkeys(args.k) if k == ALL or k <= largest]
    skipped = [f"k={k}: skipped, a user has only {largest} images outside the test set" for k in args.k
               if k not in ks]
    if not ks:
        raise ValueError(f"--k {' '.join(map(k_label, args.k))}: no k fits; the smallest user has {largest} "
                         f"images outside the {args.test_per_user} test images per user (try --k all)")
    rows = []
    with work_dir("bench_augmentation_", args.keep_dir) as work:
        for seed in args.seeds:
            for init_from in args.init_from:
                for k in ks:
                    done = run_one(args, data, test_idx, pool, k, init_from, seed, work)
                    rows.extend(done)
                    for line in format_rows(done)[2:]:
                        print("row done: " + line, flush=True)  # a long run shows each row
    record = print_report(args, rows, skipped, time.perf_counter() - start)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
