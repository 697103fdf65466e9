"""Is validation's diversity estimator right where the answer is known? Two samples of the same real images.

For each trained model (``--model_dirs``, after ``validate_main.py`` has cached its judge in
``MODEL/validation/judge``), the judge's features of the real *training* images are split at random, per user,
into a "generated" group of ``--generated_per_user`` and a "real" group of ``--real_per_user`` (validation's sizes:
10 generated and ~5 validation images per user). Both groups come from one distribution, so a diversity ratio
should read 1. Over ``--splits`` splits the table gives the mean and standard deviation of

- the ratio of averages over users (:func:`vqvae_transformer.validation.metrics.diversity_ratio`, validation's), and
- the average of per-user ratios (validation's estimator before 2026-12-07), biased upward by Jensen's inequality
  when each user's real spread comes from ~5 images.

    python -m benchmarks.bench_diversity_estimator --model_dirs M1 M2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from vqvae_transformer.data.provenance import load_model_data
from vqvae_transformer.models.judge import KEY_FILE, features, load_cached_judge
from vqvae_transformer.validation.cli import DEFAULT_OUTPUT_DIR
from vqvae_transformer.validation.metrics import diversity_ratio
from vqvae_transformer.validation.scores import JUDGE_DIR

JUDGE_FOLDER = Path(DEFAULT_OUTPUT_DIR) / JUDGE_DIR
"""Where ``validate_main.py`` (default ``--output_dir``) caches the judge inside a model folder."""


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dirs", nargs="+", required=True, help="trained models, each validated once")
    parser.add_argument("--splits", type=int, default=300, help="random splits per model (default: 300)")
    parser.add_argument("--generated_per_user", type=int, default=10, help="the 'generated' group (default: 10)")
    parser.add_argument("--real_per_user", type=int, default=5, help="the 'real' group (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits (default: 0)")
    return parser


def split_estimates(feats: torch.Tensor, labels: torch.Tensor, splits: int, generated: int, real: int,
                    seed: int) -> dict[str, list[float]]:
    """Both estimators over ``splits`` random per-user splits of ``feats`` (``[N, F]``, users ``labels``).

    Users with fewer than ``generated + real`` images are left out.

    Returns:
        ``{"ratio_of_averages": [...], "average_of_ratios": [...]}``, one value per split.
    """
    generator = torch.Generator().manual_seed(seed)
    users = [u for u in labels.unique().tolist() if int((labels == u).sum()) >= generated + real]
    if not users:
        raise SystemExit(f"error: no user has {generated + real} training images; lower --generated_per_user or "
                         "--real_per_user")
    out: dict[str, list[float]] = {"ratio_of_averages": [], "average_of_ratios": []}
    for _ in range(splits):
        gen_idx, real_idx = [], []
        for user in users:
            members = (labels == user).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            gen_idx.append(members[:generated])
            real_idx.append(members[generated:generated + real])
        gi, ri = torch.cat(gen_idx), torch.cat(real_idx)
        ratio, per_user = diversity_ratio(feats[gi], labels[gi], feats[ri], labels[ri])
        out["ratio_of_averages"].append(ratio)
        out["average_of_ratios"].append(sum(per_user.values()) / len(per_user))
    return out


def load_judge(model_dir: Path):
    """The judge ``validate_main.py`` cached in ``model_dir`` (one clear error when there is none)."""
    folder = model_dir / JUDGE_FOLDER
    record = folder / KEY_FILE
    if not record.is_file():
        raise SystemExit(f"error: no cached judge in {folder}; run python validate_main.py --model_dir {model_dir} "
                         "first")
    judge = load_cached_judge(folder, json.loads(record.read_text())["key"])
    if judge is None:
        raise SystemExit(f"error: the judge in {folder} cannot be read; run validate_main.py again")
    return judge


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print("| model | users | feature dim | splits | ratio of averages (validation) | average of per-user ratios |")
    print("|---|---|---|---|---|---|")
    for model_dir in map(Path, args.model_dirs):
        judge = load_judge(model_dir)
        data, train_idx, _ = load_model_data(model_dir)
        feats, labels = features(judge, data.images[train_idx]), data.labels[train_idx]  # [N, F], [N]
        result = split_estimates(feats, labels, args.splits, args.generated_per_user, args.real_per_user, args.seed)
        cells = [f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" for v in result.values()]
        print(f"| {model_dir} | {len(labels.unique())} | {feats.shape[1]} | {args.splits} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
