"""First-stage benchmark: VQ-VAE, quantized KL-VAE and a plain continuous VAE on the same data, split and budget.

Answers "is a continuous VAE or a VQ-VAE the better first stage for micro-Doppler data?" by measurement. Three
tokenizers are trained with the same data, split (train_main's, seed ``--seed``), resolution, architecture (the
preset's blocks and latent width), loss (``--recon_loss``, time-shift augmentation), optimiser, schedule, batch and
step budget:

* ``vq``  — ``train_main.py --first_stage vq --skip_prior`` (diffusers ``VQModel`` + our EMA quantizer);
* ``kl``  — ``train_main.py --first_stage kl --skip_prior`` (diffusers ``AutoencoderKL``, its posterior mean quantized
  by the same quantizer: the tokens the prior would model);
* ``vq_adv`` — ``vq`` with the adversarial term (``train_main.py --adversarial_weight W``, the benchmark's
  ``--adversarial_weight``, default 0.5): a patch discriminator against the decoder's blur (not in the default
  ``--kinds``);
* ``plain`` — a stock diffusers ``AutoencoderKL`` with no quantizer (reconstruction + KL loss, weight ``--kl_weight``),
  trained in-process by the same Accelerate loop (``vqvae_transformer.training.loop.run_training``): the continuous
  reference an earlier VAE-vs-VQ write-up had in mind (it claimed VAE 28.5 dB / LPIPS 0.15 against VQ-VAE 26.8 dB /
  0.12 on spectrograms).

Each is measured on the validation split: PSNR and SSIM (torchmetrics, images in [0, 1]), LPIPS (pretrained
weights only; ``n/a`` without them), the judge's accuracy on the reconstructions and their domain FID against the
real validation images (the judge of ``validate_main.py``, trained once on the real training split), their texture
against the real images' (mean absolute neighbour-pixel difference along frequency and along time, reconstructions
over real: below 1 is smoother), codebook usage
(quantized ones), the readiness score of :class:`vqvae_transformer.analysis.latent_space.LatentSpaceAnalyzer`, and
seconds per training step (stage wall time / steps; the quantized ones' include their periodic evaluations and
figures, a few per cent at the preset's budget). One table, every row from this run.

Run from the repository root::

    python -m benchmarks.bench_first_stage                                   # the CPU preset's stage-1 budget
    python -m benchmarks.bench_first_stage --data_dir small_data             # the users' shape
    python -m benchmarks.bench_first_stage --quick                           # smoke run (a minute; see QUICK)
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import time
from pathlib import Path

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from benchmarks.common import parse_with_quick, quick_help, run_script, work_dir
from vqvae_transformer.analysis.latent_space import LatentSpaceAnalyzer
from vqvae_transformer.data.provenance import load_model_data
from vqvae_transformer.figures import to_unit
from vqvae_transformer.layout import SUMMARY_FILE, VQVAE_FOLDER
from vqvae_transformer.models.first_stage import load_first_stage
from vqvae_transformer.validation import metrics as M
from vqvae_transformer.models.judge import DEFAULT_EPOCHS, accuracy, predict
from vqvae_transformer.validation.inputs import RealData
from vqvae_transformer.validation.scores import train_or_load_judge

KINDS = ("vq", "kl", "plain", "vq_adv")
DEFAULT_KINDS = ("vq", "kl", "plain")
QUICK = {"num_users": 3, "vqvae_steps": 20, "train_args": "--simulated_per_user 8 --resolution 32", "judge_epochs": 2}
"""``--quick``: 3 users, 8 simulated recordings each at 32 px, 20 steps, a 2-epoch judge."""
COLUMNS = ("PSNR dB", "SSIM", "LPIPS", "judge on recon", "recon FID", "texture f", "texture t", "usage", "readiness",
           "s/step")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=None, help="ID_<k> folders (default: the embedded simulator)")
    parser.add_argument("--num_users", type=int, default=None, help="first N users (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default: 0)")
    parser.add_argument("--vqvae_steps", type=int, default=None, help="stage-1 steps of all three (default: the "
                        "preset's)")
    parser.add_argument("--kl_weight", type=float, default=1e-6,
                        help="KL weight of the plain VAE (default: 1e-6, the kl first stage's)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(DEFAULT_KINDS),
                        help=f"which first stages (default: {' '.join(DEFAULT_KINDS)})")
    parser.add_argument("--adversarial_weight", type=float, default=0.5,
                        help="train_main.py --adversarial_weight of vq_adv (default: 0.5)")
    parser.add_argument("--judge_epochs", type=int, default=DEFAULT_EPOCHS, help="judge training epochs")
    parser.add_argument("--train_args", default="", help="extra train_main.py flags for every variant (quoted)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS / torch threads (0: unset)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--keep_dir", action="store_true", help="keep the trained models")
    parser.add_argument("--quick", action="store_true", help=quick_help(QUICK))
    return parser


def train_flags(args: argparse.Namespace) -> list[str]:
    """train_main.py flags shared by every variant (data, split, budget)."""
    flags = ["--seed", str(args.seed), "--skip_prior", *shlex.split(args.train_args)]
    if args.data_dir:
        flags += ["--data_dir", args.data_dir]
    if args.num_users:
        flags += ["--num_users", str(args.num_users)]
    if args.vqvae_steps:
        flags += ["--vqvae_steps", str(args.vqvae_steps)]
    return flags


def train_quantized(kind: str, args: argparse.Namespace, work: Path) -> tuple[Path, float]:
    """Train the ``vq``, ``kl`` or ``vq_adv`` first stage with the real train_main.py; returns its folder and
    seconds/step."""
    out = work / kind
    backbone = ["--first_stage", kind] if kind != "vq_adv" else \
        ["--first_stage", "vq", "--adversarial_weight", str(args.adversarial_weight)]
    run_script(["train_main.py", *backbone, "--output_dir", str(out), *train_flags(args)],
               work / f"{kind}.log", args.threads)
    stage = json.loads((out / SUMMARY_FILE).read_text())["vqvae"]
    return out, stage["seconds"] / max(stage["steps"], 1)


class PlainVAEStep:
    """One step of the plain VAE: reconstruction loss (as stage 1's) + ``kl_weight`` x KL, time-shift augmented."""

    def __init__(self, recon_loss: str, kl_weight: float, time_shift: bool):
        self.recon_loss, self.kl_weight, self.time_shift = recon_loss, kl_weight, time_shift

    def __call__(self, model, batch, accelerator):
        from vqvae_transformer.data.augment import circular_time_shift
        from vqvae_transformer.training.train_vqvae import batch_psnr, reconstruction_loss

        images = batch[0]  # (B, C, R, R) in [-1, 1]
        if self.time_shift:
            images = circular_time_shift(images)
        posterior = model.encode(images).latent_dist
        recon = model.decode(posterior.sample()).sample  # (B, C, R, R)
        rec = reconstruction_loss(recon, images, self.recon_loss)
        kl = posterior.kl().mean()
        return rec + self.kl_weight * kl, {"recon": float(rec.detach()), "kl": float(kl.detach()),
                                           "psnr": batch_psnr(recon, images)}


def train_plain(args: argparse.Namespace, reference: Path, work: Path) -> tuple[torch.nn.Module, float]:
    """Train a stock ``AutoencoderKL`` (no quantizer) of the same architecture as ``reference``'s first stage, on
    its training split, with the loop settings train_main.py used; returns the model and seconds/step."""
    from diffusers import AutoencoderKL

    from vqvae_transformer.training.args import finalize_args, loop_config
    from vqvae_transformer.training.loop import run_training
    from vqvae_transformer.training.main import build_parser as train_parser

    data, train_idx, _ = load_model_data(reference)
    config = load_first_stage(reference / VQVAE_FOLDER).config
    keys = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
            "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size")
    torch.manual_seed(args.seed)
    model = AutoencoderKL(**{k: config[k] for k in keys})
    flags = train_parser().parse_args(["--output_dir", str(work / "plain"), *train_flags(args)])
    finalize_args(flags)
    cfg = loop_config(flags, "vqvae", len(train_idx))
    step = PlainVAEStep(flags.recon_loss, args.kl_weight, flags.time_shift)
    start = time.perf_counter()
    model, history, _ = run_training(cfg, model, torch.utils.data.TensorDataset(data.images[train_idx]), step)
    steps = history[-1]["step"] if history else cfg.max_train_steps
    return model.eval(), (time.perf_counter() - start) / max(steps, 1)


def measure(model, real: RealData, judge, seed: int) -> dict:
    """The table's figures of one first stage on the validation split (see the module docstring)."""
    data = real.data
    images, labels = data.images[real.val_idx], data.labels[real.val_idx]  # (N, C, R, R), (N,)
    analyzer = LatentSpaceAnalyzer(model, seed=seed)
    reps = analyzer.collect_latent_representations(images, labels)
    recon = reps.reconstructions.clamp(-1, 1)  # (N, C, R, R)
    readiness = analyzer.readiness_report()
    lpips, _ = M.lpips_distance(recon, images)
    codebook = analyzer.results.get("codebook", {})
    texture = M.texture_ratio(images, recon)
    return {
        "PSNR dB": float(peak_signal_noise_ratio(to_unit(recon), to_unit(images), data_range=1.0)),
        "SSIM": float(structural_similarity_index_measure(to_unit(recon), to_unit(images), data_range=1.0)),
        "LPIPS": lpips,
        "judge on recon": accuracy(predict(judge, recon), labels),
        "recon FID": M.domain_fid(judge, images, recon),
        "texture f": texture[0],
        "texture t": texture[1],
        "usage": codebook.get("codebook_usage") if codebook.get("applicable") else None,
        "readiness": readiness["score"],
        "sub_scores": readiness["sub_scores"],
    }


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Train the first stages, measure them, print the table."""
    args = parse_with_quick(build_parser(), argv, QUICK)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# host: {platform.node()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"seed {args.seed}; data {args.data_dir or 'embedded simulator'}")
    rows = {}
    with work_dir("bench_first_stage_", args.keep_dir) as work:
        trained, per_step = {}, {}
        for kind in ("vq", "kl", "vq_adv"):
            if kind in args.kinds or "plain" in args.kinds and not trained:  # plain copies vq's split/architecture
                trained[kind], per_step[kind] = train_quantized(kind, args, work)
        reference = next(iter(trained.values()))
        data, train_idx, val_idx = load_model_data(reference)
        real = RealData(data, train_idx, val_idx, "the model's saved split")
        judge = train_or_load_judge(real, work, args.judge_epochs, args.seed, use_cache=True)
        real_accuracy = accuracy(predict(judge, data.images[val_idx]), data.labels[val_idx])
        models = {kind: load_first_stage(path / VQVAE_FOLDER).eval() for kind, path in trained.items()
                  if kind in args.kinds}
        if "plain" in args.kinds:
            models["plain"], per_step["plain"] = train_plain(args, reference, work)
        for kind, model in models.items():
            rows[kind] = {**measure(model, real, judge, args.seed), "s/step": per_step[kind]}
    print(f"# {len(val_idx)} validation images of {data.num_users} users at {data.resolution} px; the judge "
          f"recognises {real_accuracy:.3f} of the real ones")
    print("| first stage | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for kind, row in rows.items():
        print(f"| {kind} | " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"real_accuracy": real_accuracy, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
