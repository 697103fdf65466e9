"""Benchmark the embedded micro-Doppler simulator: speed, and how hard its identities are to tell apart.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_simulator [--num_users 31] [--samples_per_user 64] [--resolution 128]

Prints a table with the wall time of ``simulate_dataset`` (PNG files included), images/s, and the
difficulty check: a scikit-learn LogisticRegression on 32×32 down-sampled pixels, first 3/4 of each
person's images for training, the last 1/4 for testing (48 / 16 at the default 64 per person). The
accuracy should lie between 30 % and 90 %: separable, but not trivially by a linear model.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vqvae_transformer.data.simulate import simulate_dataset

CLASSIFIER_SIDE = 32  # px, the linear classifier's input side
ACCURACY_BAND = (0.30, 0.90)


def load_small(folder: pathlib.Path, side: int = CLASSIFIER_SIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load every ID_<k>/sample_*.png down-sampled to side×side grey.

    Returns:
        (pixels [N, side²] in [0, 1], user ids [N], sample index within the user [N]).
    """
    pixels, labels, index = [], [], []
    user_dirs = sorted(folder.glob("ID_*"), key=lambda p: int(p.name.split("_")[1]))
    for user_dir in user_dirs:
        user_id = int(user_dir.name.split("_")[1])
        for j, path in enumerate(sorted(user_dir.glob("sample_*.png"))):
            with Image.open(path) as img:
                small = img.convert("L").resize((side, side), Image.Resampling.BOX)
            pixels.append(np.asarray(small, dtype=np.float32).ravel() / 255.0)
            labels.append(user_id)
            index.append(j)
    return np.stack(pixels), np.array(labels), np.array(index)


def linear_accuracy(pixels: np.ndarray, labels: np.ndarray, index: np.ndarray, samples_per_user: int) -> float:
    """Train LogisticRegression on each user's first 3/4 of samples, return accuracy on the rest."""
    train = index < (3 * samples_per_user) // 4
    scaler = StandardScaler().fit(pixels[train])
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(scaler.transform(pixels[train]), labels[train])
    return float(clf.score(scaler.transform(pixels[~train]), labels[~train]))


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_users", type=int, default=31, help="number of persons (default 31)")
    parser.add_argument("--samples_per_user", type=int, default=64, help="images per person (default 64)")
    parser.add_argument("--resolution", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    args = parser.parse_args()
    if min(args.num_users, args.resolution) < 1 or args.samples_per_user < 4:
        parser.error("--num_users and --resolution must be ≥ 1 and --samples_per_user ≥ 4")

    with tempfile.TemporaryDirectory(prefix="bench_simulator_") as tmp:
        out = pathlib.Path(tmp) / "data"
        start = time.perf_counter()
        simulate_dataset(out, args.num_users, args.samples_per_user, args.resolution, seed=args.seed)
        seconds = time.perf_counter() - start
        pixels, labels, index = load_small(out)
    num_images = args.num_users * args.samples_per_user
    start = time.perf_counter()
    accuracy = linear_accuracy(pixels, labels, index, args.samples_per_user)
    fit_seconds = time.perf_counter() - start
    low, high = ACCURACY_BAND
    verdict = "ok" if low <= accuracy <= high else "OUT OF BAND"

    rows = [
        ("users × images/user @ px", f"{args.num_users} × {args.samples_per_user} @ {args.resolution}"),
        ("simulate_dataset total (s)", f"{seconds:.1f}"),
        ("images/s", f"{num_images / seconds:.1f}"),
        ("linear classifier, 32 px (train/test per user)",
         f"{(3 * args.samples_per_user) // 4}/{args.samples_per_user - (3 * args.samples_per_user) // 4}"),
        ("linear accuracy (chance {:.1%})".format(1 / args.num_users), f"{accuracy:.1%}  [{verdict}: band {low:.0%}–{high:.0%}]"),
        ("classifier fit (s)", f"{fit_seconds:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
