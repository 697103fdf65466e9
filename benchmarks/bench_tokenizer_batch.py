"""Tokenizer batch-size benchmark: the same images seen in fewer large steps or in more small steps.

On the data of a trained model (``--model_dir``, default the train default), train stage 1 with the real
``train_main.py --skip_prior`` once per ``--settings`` entry ``BATCH:STEPS:LR`` (the CPU preset's other settings,
same data, split and seed), one after the other so that each stage-1 time is measured alone. Then score each
tokenizer on the validation split: PSNR, SSIM, codebook usage, and what the judge of ``validate_main`` (trained on
the real training split, cached in ``--judge_dir``, shared with ``validate_main``) makes of the reconstructions:
``reconstruction_test_accuracy`` (a ceiling on ``gan_test_accuracy``) and ``reconstruction_domain_fid`` (the
tokenizer's share of ``domain_fid``).

Run from the repository root after ``python train_main.py`` (and ``python validate_main.py``, whose judge it reuses)::

    python -m benchmarks.bench_tokenizer_batch                 # 32 x 700 at 6e-4 (the old preset) vs 8 x 2800 at 4e-4
    python -m benchmarks.bench_tokenizer_batch --settings 8:20:4e-4 32:5:6e-4 --judge_epochs 1 \
        --judge_dir /tmp/smoke_judge    # smoke; its own judge folder, so validate_main's cached judge stays
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.common import run_script, work_dir
from benchmarks.bench_token_order import data_flags
from vqvae_transformer.data.provenance import load_model_data
from vqvae_transformer.inference.generate import DEFAULT_MODEL_DIR
from vqvae_transformer.models.judge import DEFAULT_EPOCHS, load_or_train_judge
from vqvae_transformer.validation.scores import JUDGE_DIR, first_stage_metrics

DEFAULT_SETTINGS = ("32:700:6e-4", "8:2800:4e-4")


def parse_setting(text: str) -> tuple[int, int, float]:
    """``"BATCH:STEPS:LR"`` -> ``(batch, steps, lr)``; a clear error for anything else."""
    try:
        batch, steps, lr = text.split(":")
        parsed = int(batch), int(steps), float(lr)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"setting {text!r} is not BATCH:STEPS:LR (e.g. 8:2800:4e-4)") from err
    if parsed[0] < 1 or parsed[1] < 1 or parsed[2] <= 0:
        raise argparse.ArgumentTypeError(f"setting {text!r}: batch and steps must be >= 1 and LR > 0")
    return parsed


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR,
                        help=f"trained model whose data and split are used (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--settings", type=parse_setting, nargs="+",
                        default=[parse_setting(s) for s in DEFAULT_SETTINGS],
                        help=f"stage-1 BATCH:STEPS:LR to compare (default: {' '.join(DEFAULT_SETTINGS)})")
    parser.add_argument("--judge_dir", default=str(Path("validation") / JUDGE_DIR),
                        help="the judge's cache folder (default: validate_main's, validation/judge)")
    parser.add_argument("--judge_epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"judge epochs if it must be trained (default: {DEFAULT_EPOCHS}, validate_main's)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the subprocesses (0: unset)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--keep_dir", action="store_true", help="keep the temporary models")
    return parser


def train_first_stage(args: argparse.Namespace, setting: tuple[int, int, float], data: list[str],
                      work: Path) -> tuple[Path, dict]:
    """Train stage 1 alone with ``setting``; returns its folder and ``{wall_s, stage1_s}``."""
    batch, steps, lr = setting
    out = work / f"b{batch}_s{steps}"
    command = ["train_main.py", "--skip_prior", "--output_dir", str(out), *data, "--vqvae_batch_size", str(batch),
               "--vqvae_steps", str(steps), "--vqvae_learning_rate", str(lr)]
    wall = run_script(command, work / f"{out.name}.log", args.threads)
    summary = json.loads((out / "training_summary.json").read_text())["vqvae"]
    return out, {"wall_s": round(wall), "stage1_s": summary["seconds"]}


def main(argv: list[str] | None = None) -> None:
    """Train every setting, score its reconstructions with the judge, print the table."""
    args = build_parser().parse_args(argv)
    data = data_flags(Path(args.model_dir))  # fails before any training
    real, train_idx, val_idx = load_model_data(args.model_dir)
    start = time.perf_counter()
    rows = []
    with work_dir("bench_tokenizer_batch_", args.keep_dir) as work:
        trained = [(s, *train_first_stage(args, s, data, work)) for s in args.settings]
        judge = load_or_train_judge(
            real.images[train_idx], real.labels[train_idx], real.num_users,
            paths=[real.paths[i] for i in train_idx], val_paths=[real.paths[i] for i in val_idx],
            cache_dir=args.judge_dir, epochs=args.judge_epochs, seed=0,
        )
        for (batch, steps, lr), folder, times in trained:
            metrics = first_stage_metrics(folder, real.images[val_idx], real.labels[val_idx], judge, {})
            rows.append({"batch": batch, "steps": steps, "lr": lr, "images_seen": batch * steps, **times,
                         **{k: metrics[k] for k in ("psnr", "ssim", "codebook_usage", "normalized_entropy",
                                                    "reconstruction_test_accuracy", "reconstruction_domain_fid")}})
    print(f"\ntokenizer batch size: data of {args.model_dir}, {len(val_idx)} validation images; "
          f"{platform.machine()} {os.cpu_count()} cores, threads {args.threads or 'unset'}")
    print("| batch × steps (LR) | images seen | stage 1 s | PSNR dB | SSIM | usage | entropy "
          "| judge on recon | recon domain FID |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} × {r['steps']} ({r['lr']:g}) | {r['images_seen']} | {r['stage1_s']:.0f} | "
              f"{r['psnr']:.2f} | {r['ssim']:.3f} | {r['codebook_usage']:.3f} | {r['normalized_entropy']:.3f} | "
              f"{r['reconstruction_test_accuracy']:.3f} | {r['reconstruction_domain_fid']:.2f} |")
    print(f"\ntotal {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
