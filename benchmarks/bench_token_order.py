"""Token-order benchmark: does the prior learn more when it reads the token grid column by column (time order)?

On the first stage of a trained model (``--model_dir``, default the train default), train two priors with the real
``train_main.py --skip_vqvae``, identical except ``--token_order row`` / ``column``, on the same data, split and
budget (the preset's steps unless ``--prior_steps``). For each, generate ``--samples_per_user`` images per user with
the real ``generate_main.py`` at each ``--guidance_scales`` value and score them with the real ``validate_main.py``
(one shared output folder, so both orders are judged by the same cached judge). Prints one row per (order,
guidance): the prior's validation loss and user-token gain (nats/code, from ``training_summary.json``), the
prior's training time, and gan_test / CAS / domain-FID ratio / diversity from ``validation_report.json``.

Run from the repository root after ``python train_main.py``::

    python -m benchmarks.bench_token_order                           # the preset's budget, guidance 1 and 2
    python -m benchmarks.bench_token_order --prior_steps 20 --samples_per_user 2 --guidance_scales 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

from benchmarks.common import run_script, work_dir
from vqvae_transformer.data.provenance import read_data_info
from vqvae_transformer.inference.generate import DEFAULT_MODEL_DIR

ORDERS = ("row", "column")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR,
                        help=f"trained model whose first stage both priors use (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--prior_steps", type=int, default=None, help="prior steps (default: the preset's)")
    parser.add_argument("--samples_per_user", type=int, default=10, help="generated images per user (default: 10)")
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 2.0],
                        help="generate_main --guidance_scale values to score (default: 1 2)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the subprocesses (0: unset)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--keep_dir", action="store_true", help="keep the temporary models and images")
    return parser


def data_flags(model_dir: Path) -> list[str]:
    """``train_main`` flags that select the data ``model_dir`` was trained on (same files, so the same split)."""
    info = read_data_info(model_dir)
    folder = info.get("simulated_dir") or info.get("data_dir")
    if info.get("dataset_name") or not folder or not Path(folder).is_dir():
        raise SystemExit(f"{model_dir}: its training data ({info.get('source')}) is not a local folder here; "
                         "train a model on the default data or a --data_dir first")
    return ["--data_dir", str(folder), "--num_users", str(info["num_users"]), "--resolution", str(info["resolution"])]


def train_prior(args: argparse.Namespace, order: str, data: list[str], work: Path) -> dict:
    """Copy the first stage into ``work/order`` and train a prior there; returns the prior's summary figures."""
    out = work / order
    shutil.copytree(Path(args.model_dir) / "vqvae", out / "vqvae")
    command = ["train_main.py", "--skip_vqvae", "--token_order", order, "--output_dir", str(out), *data]
    if args.prior_steps:
        command += ["--prior_steps", str(args.prior_steps)]
    seconds = run_script(command, work / f"{order}_train.log", args.threads)
    prior = json.loads((out / "training_summary.json").read_text())["prior"]
    return {"train_s": round(seconds), "prior_s": prior["seconds"], "val_loss": prior["final_val_loss"],
            "user_gain": prior["final_user_token_gain"]}


def score(args: argparse.Namespace, order: str, guidance: float, work: Path) -> dict:
    """Generate with ``guidance`` and validate; returns the report's headline figures."""
    model, images = work / order, work / f"{order}_g{guidance:g}"
    run_script(["generate_main.py", "--model_dir", str(model), "--output_dir", str(images), "--samples_per_user",
                str(args.samples_per_user), "--guidance_scale", str(guidance)], work / f"{images.name}.log",
               args.threads)
    run_script(["validate_main.py", "--model_dir", str(model), "--generated_data_dir", str(images),
                "--output_dir", str(work / "validation")], work / f"{images.name}_validate.log", args.threads,
               ok_codes=(0, 1))  # 1 = some threshold failed, still a valid report
    report = json.loads((work / "validation" / "validation_report.json").read_text())
    return {key: report[key] for key in ("gan_test_ratio", "cas_ratio", "fid_ratio", "diversity_ratio",
                                         "gan_test_accuracy", "real_test_accuracy")}


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    """Train both priors, score every (order, guidance), print the table, optionally write the JSON."""
    args = build_parser().parse_args(argv)
    data = data_flags(Path(args.model_dir))  # fails before any training
    start = time.perf_counter()
    rows = []
    with work_dir("bench_token_order_", args.keep_dir) as work:
        for order in ORDERS:
            prior = train_prior(args, order, data, work)
            rows += [{"order": order, "guidance": g, **prior, **score(args, order, g, work)}
                     for g in args.guidance_scales]
    print(f"\ntoken order: first stage of {args.model_dir}, prior steps {args.prior_steps or 'preset'}, "
          f"{args.samples_per_user} images/user; {platform.machine()} {os.cpu_count()} cores, threads "
          f"{args.threads or 'unset'}")
    print("| order | guidance | val loss | user gain | prior s | gan_test (ratio) | CAS ratio | FID ratio "
          "| diversity |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['order']} | {r['guidance']:g} | {r['val_loss']:.3f} | {r['user_gain']:.3f} | {r['prior_s']:.0f} | "
              f"{r['gan_test_accuracy']:.3f} ({r['gan_test_ratio']:.3f}) | {_fmt(r['cas_ratio'], '.3f')} | "
              f"{_fmt(r['fid_ratio'], '.1f')} | {_fmt(r['diversity_ratio'], '.2f')} |")
    print(f"\ntotal {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
