"""How much of the data do saved tokenizers keep, in the eyes of validation's judge?

The default data's FID threshold is limited by stage 1 as much as by the prior: a sample can hardly be closer to the
real images than the tokenizer's reconstruction of them. This benchmark scores the stage 1 of existing model folders
(``train_main.py`` output; ``--skip_prior`` runs are enough) without training anything but the judge: each folder's
first stage reconstructs its own validation split (the saved split, never its training images), and the
reconstructions (through the tokens) are scored as ``validate_main.py`` scores its tokenizer — PSNR, the judge's
accuracy on them, their domain FID against the real validation images and the floor (``domain_fid_real``: two user-
stratified halves of the real validation images, drawn with seed 0 — ``validate_main.py``'s default — for every
judge, so that only the judge changes between its rows), the judge being validation's own
(:func:`~vqvae_transformer.validation.scores.train_or_load_judge`, trained on the folder's training split). With
``--judge_seeds`` several judges score the same reconstructions, which separates the judge's spread from the
tokenizer's; with ``--checkpoints`` every stage-1 checkpoint the folder kept is scored too (how the end of training
moves the figures).

Judges are cached per (split, seed) in the work folder, so folders with one split (e.g. runs of one training seed
with other stage-1 flags) share them; ``--judge_cache DIR`` keeps them between runs.

Usage::

    python -m benchmarks.bench_tokenizer_fidelity --model_dirs M1 M2 [--judge_seeds 0 1 2] [--checkpoints]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import load_file

from benchmarks.common import work_dir
from vqvae_transformer.data.provenance import load_model_data
from vqvae_transformer.layout import VQVAE_FOLDER
from vqvae_transformer.models.first_stage import load_first_stage
from vqvae_transformer.models.judge import DEFAULT_EPOCHS, accuracy, predict
from vqvae_transformer.models.reconstruction import tokenizer_metrics_and_reconstructions
from vqvae_transformer.validation import metrics as M
from vqvae_transformer.validation.inputs import RealData
from vqvae_transformer.validation.scores import train_or_load_judge

COLUMNS = ("PSNR dB", "judge on real", "judge on recon", "recon FID", "floor", "ratio")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dirs", nargs="+", required=True, help="model folders holding vqvae/ and split.json")
    parser.add_argument("--judge_seeds", type=int, nargs="+", default=[0],
                        help="seeds of the judges that score (validate_main.py's default: 0)")
    parser.add_argument("--checkpoints", action="store_true",
                        help="also score every stage-1 checkpoint kept in MODEL/checkpoints/vqvae")
    parser.add_argument("--judge_epochs", type=int, default=DEFAULT_EPOCHS, help="judge training epochs")
    parser.add_argument("--judge_cache", default=None, help="keep the judges here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser


def stage1_states(model_dir: Path, checkpoints: bool) -> Iterator[tuple[str, dict | None]]:
    """``(name, state dict or None for the saved model)``: the kept checkpoints in step order, then the model.

    Each checkpoint's weights are read when its turn comes, so only one is held at a time."""
    if checkpoints:
        found = sorted((model_dir / "checkpoints" / VQVAE_FOLDER).glob("checkpoint-*"),
                       key=lambda p: int(p.name.rsplit("-", 1)[1]))
        for path in found:
            yield path.name, load_file(path / "model.safetensors")
    yield "final", None


def split_tag(real: RealData) -> str:
    """A short name of the split: folders with the same training and validation files share their judges."""
    names = [real.data.paths[i] for i in real.train_idx] + ["|"] + [real.data.paths[i] for i in real.val_idx]
    return hashlib.sha256("\n".join(map(str, names)).encode()).hexdigest()[:12]


def score_folder(model_dir: Path, judge_seeds: list[int], checkpoints: bool, judge_epochs: int,
                 cache: Path) -> list[dict]:
    """One row per (stage-1 state, judge seed) of ``model_dir``."""
    data, train_idx, val_idx = load_model_data(model_dir)
    real = RealData(data, train_idx, val_idx, "split")
    images, labels = data.images[val_idx], data.labels[val_idx]  # (N, C, R, R) in [-1, 1], (N,)
    judges = {seed: train_or_load_judge(real, cache / f"judge_{split_tag(real)}_seed{seed}", judge_epochs, seed,
                                        use_cache=True) for seed in judge_seeds}
    # What depends on the judge alone, once per judge: its accuracy on the real images and the real-vs-real floor.
    on_real = {seed: accuracy(predict(judge, images), labels) for seed, judge in judges.items()}
    floors = {seed: M.domain_fid_real(judge, images, labels, seed=0) for seed, judge in judges.items()}
    model = load_first_stage(model_dir / VQVAE_FOLDER).eval()
    saved = {k: v.clone() for k, v in model.state_dict().items()}  # the saved model's weights, restored for "final"
    rows = []
    for name, state in stage1_states(model_dir, checkpoints):
        model.load_state_dict(saved if state is None else state)
        measured, recon = tokenizer_metrics_and_reconstructions(model, images)  # recon: (N, C, R, R), as validation
        psnr = measured["psnr"]
        for seed, judge in judges.items():
            fid, floor = M.domain_fid(judge, images, recon), floors[seed]
            rows.append({"model": str(model_dir), "state": name, "judge_seed": seed, "PSNR dB": psnr,
                         "judge on real": on_real[seed],
                         "judge on recon": accuracy(predict(judge, recon), labels),
                         "recon FID": fid, "floor": floor, "ratio": fid / floor})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    rows: list[dict] = []
    with work_dir("bench_tokenizer_fidelity-", keep=False) as work:
        cache = Path(args.judge_cache) if args.judge_cache else work
        for model_dir in args.model_dirs:
            rows += score_folder(Path(model_dir), args.judge_seeds, args.checkpoints, args.judge_epochs, cache)
    print("\n| model | stage 1 | judge seed | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (3 + len(COLUMNS)))
    for r in rows:
        print(f"| {r['model']} | {r['state']} | {r['judge_seed']} | {r['PSNR dB']:.2f} | {r['judge on real']:.3f} | "
              f"{r['judge on recon']:.3f} | {r['recon FID']:.3f} | {r['floor']:.3f} | {r['ratio']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
