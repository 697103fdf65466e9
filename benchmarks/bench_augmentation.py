"""Few-shot augmentation benchmark: does adding generated spectrograms help a user classifier trained on k real ones?

For each k (real images per user) and seed: copy the k-shot images of every user into a temporary ``ID_<k>/``
folder, train the generator on them with the real ``train_main.py`` (a subprocess, reduced steps), generate M
images per user with the real ``generate_main.py``, then train two classifiers of the judge's architecture with the
same seed and the same number of optimisation steps:

* (a) on the k real images per user,
* (b) on the k real + M generated images per user,

and test both on the same held-out real images (``--test_per_user`` per user, drawn once with a fixed seed, never
copied into the generator's folder nor shown to either classifier). Prints accuracy (a), accuracy (b), the gain in
percentage points and the time of each phase; with several seeds also mean ± std per k.

The generator trains on all k images (``train_main.py --val_fraction 0``: its own stage figures are then in-sample).
The table's ``gen_train`` column is read back from the model's ``training_summary.json``.

Run from the repository root::

    python -m benchmarks.bench_augmentation                          # k = 5 and 10, M = 20, seed 0, 31 users
    python -m benchmarks.bench_augmentation --k 5 --seeds 0 1 2 --json augmentation.json
    python -m benchmarks.bench_augmentation --num_users 4 --k 5 --m 4 --vqvae_steps 10 --prior_steps 10   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from vqvae_transformer.data import SpectrogramData, default_dataset_dir, load_image_folder
from vqvae_transformer.models.pipeline import DEFAULT_GUIDANCE_SCALE
from vqvae_transformer.validation.judge import accuracy, predict, train_judge

REPO_ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 64
SIMULATED_USERS = 31
SIMULATED_SAMPLES_PER_USER = 64
SIMULATOR_SEED = 0
TEST_SEED = 12345
"""Seed of the held-out test draw: fixed, so every k and every seed is tested on the same real images."""
STDERR_TAIL_LINES = 40


# ----------------------------------------------------------------------------------------------------------
# Flags


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10], help="real images per user (default: 5 10)")
    parser.add_argument("--m", type=int, default=20, help="generated images per user added to (b) (default: 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds of the k-shot draw, the generator and the classifiers (default: 0)")
    parser.add_argument("--num_users", type=int, default=SIMULATED_USERS,
                        help=f"first N users of the data (default: {SIMULATED_USERS})")
    parser.add_argument("--data_dir", default=None,
                        help="a folder of ID_<k>/ images instead of the simulated default (31 users x 64, 64 px)")
    parser.add_argument("--test_per_user", type=int, default=16,
                        help="held-out real test images per user (default: 16)")
    parser.add_argument("--vqvae_steps", type=int, default=1600,
                        help="stage-1 steps of train_main (default: 1600, batch 8 as in the CPU preset)")
    parser.add_argument("--prior_steps", type=int, default=300,
                        help="stage-2 steps of train_main (default: 300, batch 16 as in the CPU preset)")
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                        help="train_main preset for every other model setting; resolution stays 64 (default: cpu)")
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                        help=f"generate_main's --guidance_scale (default: {DEFAULT_GUIDANCE_SCALE}, its own default)")
    parser.add_argument("--classifier_steps", type=int, default=300,
                        help="optimisation steps of each classifier, rounded up to whole epochs (default: 300)")
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP_NUM_THREADS for the subprocesses; 0 leaves it unset (default: 0)")
    parser.add_argument("--keep_dir", action="store_true", help="keep the temporary folders (their path is printed)")
    parser.add_argument("--json", default=None, help="also write the settings and rows to this JSON file")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Reject impossible values, naming the flag and the value."""
    for flag in ("m", "num_users", "test_per_user", "vqvae_steps", "prior_steps", "classifier_steps"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if min(args.k) < 1:
        raise ValueError(f"--k values must be positive integers, got {args.k}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
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


def split_test_and_pool(labels: torch.Tensor, test_per_user: int, max_k: int) -> tuple[list[int], dict[int, list[int]]]:
    """Per user, draw the held-out test images (fixed seed); the rest is the pool the k-shot images come from.

    Args:
        labels: ``[N]`` 0-based user labels.
        test_per_user: test images per user.
        max_k: the largest k asked for; every user needs ``test_per_user + max_k`` images.

    Returns:
        ``(test indices, {label: pool indices in file order})``.
    """
    test: list[int] = []
    pool: dict[int, list[int]] = {}
    for label in sorted(set(labels.tolist())):
        members = torch.nonzero(labels == label).flatten().numpy()
        if len(members) < test_per_user + max_k:
            raise ValueError(f"user label {label} has {len(members)} images; --test_per_user {test_per_user} "
                             f"plus k = {max_k} needs {test_per_user + max_k}")
        drawn = np.random.default_rng([TEST_SEED, label]).permutation(members)
        test.extend(int(i) for i in drawn[:test_per_user])
        pool[label] = sorted(int(i) for i in drawn[test_per_user:])
    return sorted(test), pool


def few_shot_indices(pool: dict[int, list[int]], k: int, seed: int) -> list[int]:
    """The first ``k`` of a per-user permutation seeded by ``(seed, label)`` (so the 5-shot set is in the 10-shot)."""
    chosen: list[int] = []
    for label, members in pool.items():
        chosen.extend(int(i) for i in np.random.default_rng([seed, label]).permutation(members)[:k])
    return sorted(chosen)


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


@contextmanager
def work_dir(prefix: str, keep: bool):
    """A temporary folder for a benchmark's models and images: removed afterwards, or kept (path printed)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            print(f"temporary folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_script(command: list[str], log_path: Path, threads: int, ok_codes: tuple[int, ...] = (0,)) -> float:
    """Run ``python <command>`` in the repository root, output to ``log_path``; returns its wall seconds.

    Raises:
        subprocess.CalledProcessError: for an exit code outside ``ok_codes``, after printing the last lines of the log.
    """
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            done = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
            if done.returncode not in ok_codes:
                raise subprocess.CalledProcessError(done.returncode, done.args)
        except subprocess.CalledProcessError:
            log.flush()
            lines = log_path.read_text(errors="replace").split("\n")
            tail = [line.rsplit("\r", 1)[-1] for line in lines][-STDERR_TAIL_LINES:]  # last state of tqdm bars
            print(f"\n{command[0]} failed; last lines of {log_path}:\n" + "\n".join(tail), file=sys.stderr)
            raise
    return time.perf_counter() - start


def train_generator(args: argparse.Namespace, data_dir: Path, model_dir: Path, seed: int) -> tuple[float, int]:
    """Train both stages on ``data_dir`` with ``train_main.py``.

    Returns:
        ``(wall seconds, images the generator trained on)`` (the latter from ``training_summary.json``).
    """
    last_step = max(args.vqvae_steps, args.prior_steps)
    command = ["train_main.py", "--data_dir", str(data_dir), "--output_dir", str(model_dir), "--lpips", "off",
               "--seed", str(seed), "--preset", args.preset, "--resolution", str(RESOLUTION),
               "--vqvae_steps", str(args.vqvae_steps), "--prior_steps", str(args.prior_steps),
               # evaluate (figures, sample grid) and checkpoint once, at the end of each stage: the budget is steps
               "--eval_steps", str(last_step), "--checkpointing_steps", str(last_step)]
    command += ["--val_fraction", "0"]  # the generator trains on all k images
    seconds = run_script(command, model_dir.parent / f"{model_dir.name}_train.log", args.threads)
    summary = json.loads((model_dir / "training_summary.json").read_text())
    return seconds, int(summary["data"]["train_images"])


def generate(args: argparse.Namespace, model_dir: Path, output_dir: Path, seed: int) -> float:
    """Generate ``--m`` images per user with ``generate_main.py`` into ``output_dir``; returns wall seconds."""
    command = ["generate_main.py", "--model_dir", str(model_dir), "--output_dir", str(output_dir),
               "--samples_per_user", str(args.m), "--seed", str(seed), "--guidance_scale", str(args.guidance_scale)]
    return run_script(command, output_dir.parent / f"{output_dir.name}.log", args.threads)


def load_generated(folder: Path, data: SpectrogramData) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated images ``[G, C, R, R]`` and their labels ``[G]`` in ``data``'s label space (mapped by user id)."""
    generated = load_image_folder(folder, RESOLUTION, channels=data.channels)
    labels = torch.tensor([data.id_to_label(generated.user_ids[int(label)]) for label in generated.labels])
    return generated.images, labels


# ----------------------------------------------------------------------------------------------------------
# Classifiers


def classifier_accuracy(images: torch.Tensor, labels: torch.Tensor, num_classes: int, test_images: torch.Tensor,
                        test_labels: torch.Tensor, seed: int, steps: int) -> dict:
    """Train a judge-architecture classifier for about ``steps`` steps and test it on the held-out images.

    ``epochs=1`` with ``min_steps=steps`` gives every training set the same budget (rounded up to whole epochs).

    Returns:
        ``{"accuracy", "steps", "seconds", "train_images"}``.
    """
    start = time.perf_counter()
    judge = train_judge(images, labels, num_classes, epochs=1, seed=seed, min_steps=steps)
    test_accuracy = accuracy(predict(judge, test_images), test_labels)
    steps_per_epoch = max(1, images.shape[0] // judge.settings["batch_size"])
    return {"accuracy": test_accuracy, "steps": judge.epochs_run * steps_per_epoch,
            "seconds": time.perf_counter() - start, "train_images": int(images.shape[0])}


# ----------------------------------------------------------------------------------------------------------
# One (k, seed) run and the tables


def run_one(args: argparse.Namespace, data: SpectrogramData, test_idx: list[int], pool: dict[int, list[int]],
            k: int, seed: int, work: Path) -> dict:
    """Draw the k-shot set, train and sample the generator, train and test both classifiers; returns the row."""
    train_idx = few_shot_indices(pool, k, seed)
    check_disjoint(train_idx, test_idx, data)
    run_dir = work / f"k{k}_seed{seed}"
    data_dir, model_dir, generated_dir = run_dir / "data", run_dir / "model", run_dir / "generated"
    write_few_shot_folder(data, train_idx, data_dir)
    model_dir.mkdir(parents=True)

    print(f"k={k} seed={seed}: training the generator on {len(train_idx)} images ...", flush=True)
    train_seconds, generator_images = train_generator(args, data_dir, model_dir, seed)
    print(f"k={k} seed={seed}: generating {args.m} images per user ...", flush=True)
    generate_seconds = generate(args, model_dir, generated_dir, seed)
    generated_images, generated_labels = load_generated(generated_dir, data)

    test_images, test_labels = data.images[test_idx], data.labels[test_idx]
    real_images, real_labels = data.images[train_idx], data.labels[train_idx]
    print(f"k={k} seed={seed}: training the classifiers ...", flush=True)
    real = classifier_accuracy(real_images, real_labels, data.num_users, test_images, test_labels, seed,
                               args.classifier_steps)
    mixed = classifier_accuracy(torch.cat([real_images, generated_images]),
                                torch.cat([real_labels, generated_labels]), data.num_users, test_images,
                                test_labels, seed, args.classifier_steps)
    return {"k": k, "m": args.m, "seed": seed, "users": data.num_users, "test_images": len(test_idx),
            "generator_train_images": generator_images,
            "generator_train_per_user": generator_images / data.num_users,
            "generated_images": int(generated_images.shape[0]),
            "accuracy_real": real["accuracy"], "accuracy_real_generated": mixed["accuracy"],
            "gain_pp": 100.0 * (mixed["accuracy"] - real["accuracy"]),
            "classifier_steps_real": real["steps"], "classifier_steps_real_generated": mixed["steps"],
            "seconds": {"train_generator": train_seconds, "generate": generate_seconds,
                        "classifier_real": real["seconds"], "classifier_real_generated": mixed["seconds"]}}


def format_rows(rows: list[dict]) -> list[str]:
    """The results as a Markdown table, one line per (k, seed)."""
    lines = ["| k | M | seed | gen. trained on /user | acc. real | acc. real+gen | gain (pp) | clf steps a/b "
             "| train gen (s) | generate (s) | clf a (s) | clf b (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seconds"]
        lines.append(f"| {r['k']} | {r['m']} | {r['seed']} | {r['generator_train_per_user']:g} "
                     f"| {r['accuracy_real']:.1%} | {r['accuracy_real_generated']:.1%} | {r['gain_pp']:+.1f} "
                     f"| {r['classifier_steps_real']}/{r['classifier_steps_real_generated']} "
                     f"| {s['train_generator']:.0f} | {s['generate']:.0f} | {s['classifier_real']:.0f} "
                     f"| {s['classifier_real_generated']:.0f} |")
    return lines


def _mean_std(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    """``mean ± std`` (sample std) of ``values`` times ``scale``."""
    scaled = [scale * v for v in values]
    return f"{statistics.mean(scaled):{fmt}} ± {statistics.stdev(scaled):{fmt}}"


def summarize(rows: list[dict]) -> tuple[list[str], dict]:
    """Mean ± std over seeds per k (only for k with 2 or more seeds): table lines and a JSON-ready dict."""
    lines = ["| k | seeds | acc. real (%) | acc. real+gen (%) | gain (pp) |", "|---|---|---|---|---|"]
    record: dict = {}
    for k in sorted({r["k"] for r in rows}):
        group = [r for r in rows if r["k"] == k]
        if len(group) < 2:
            continue
        real = [r["accuracy_real"] for r in group]
        mixed = [r["accuracy_real_generated"] for r in group]
        gain = [r["gain_pp"] for r in group]
        lines.append(f"| {k} | {len(group)} | {_mean_std(real, 100)} | {_mean_std(mixed, 100)} "
                     f"| {_mean_std(gain):s} |")
        record[str(k)] = {"seeds": [r["seed"] for r in group],
                          "accuracy_real": [statistics.mean(real), statistics.stdev(real)],
                          "accuracy_real_generated": [statistics.mean(mixed), statistics.stdev(mixed)],
                          "gain_pp": [statistics.mean(gain), statistics.stdev(gain)]}
    return (lines if record else []), record


def print_report(args: argparse.Namespace, rows: list[dict], total_seconds: float) -> dict:
    """Print the settings line, the table and (several seeds) the summary; returns the JSON record."""
    first = rows[0]
    print(f"\nfew-shot augmentation: {first['users']} users, {first['test_images']} held-out real test images "
          f"({args.test_per_user}/user, never seen by the generator or the classifiers); generator "
          f"{args.preset} preset at {RESOLUTION} px, {args.vqvae_steps} + {args.prior_steps} steps, "
          f"trained on all k images; classifiers: judge CNN, same seed, ~{args.classifier_steps} steps; "
          f"threads {args.threads or 'unset'}; {platform.machine()} {os.cpu_count()} cores")
    print("\n".join(format_rows(rows)))
    summary_lines, summary = summarize(rows)
    if summary_lines:
        print("\nmean ± std over seeds\n" + "\n".join(summary_lines))
    print(f"\ntotal {total_seconds / 60:.1f} min")
    return {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows, "summary": summary,
            "total_seconds": total_seconds}


def main(argv: list[str] | None = None) -> None:
    """Run every (k, seed), print the table, optionally write the JSON."""
    args = build_parser().parse_args(argv)
    validate_args(args)
    start = time.perf_counter()
    data = load_benchmark_data(args.data_dir, args.num_users)
    test_idx, pool = split_test_and_pool(data.labels, args.test_per_user, max(args.k))
    with work_dir("bench_augmentation_", args.keep_dir) as work:
        rows = [run_one(args, data, test_idx, pool, k, seed, work) for seed in args.seeds for k in args.k]
    record = print_report(args, rows, time.perf_counter() - start)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
