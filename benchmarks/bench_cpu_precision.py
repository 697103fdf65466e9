"""One training step of each stage of the CPU preset: before the step-time changes, in float32 and under bf16 autocast.

What ``train_main.py --mixed_precision bf16`` changes on a CPU: Accelerate runs the forward pass under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (the quantizer's lookup and EMA stay in float32). This benchmark
times the project's own step functions (:class:`~vqvae_transformer.training.train_vqvae.VQVAEStep` and
:class:`~vqvae_transformer.training.train_prior.PriorStep`, backward pass and AdamW step included) on the CPU
preset's models at their real batch shapes (the prior with the dropout it trains with on small data), alternating
float32 and bf16 rounds so that both see the same machine load, and prints the median seconds per step and the
ratio. Whether the CPU computes bf16 natively (AVX-512 BF16 / AMX) is printed too: without it bf16 is emulated and
slower.

A third variant, ``before``, is float32 with what the project used before its step-time changes: PyTorch's default
per-parameter AdamW loop on the CPU instead of the fused kernel (:func:`~vqvae_transformer.training.loop.build_optimizer`)
and, for the prior, GPT-2's ``gelu_new`` (6 element-wise ops) instead of the same function as one fused kernel
(``models/defaults.PRIOR_ACTIVATION``). ``before / fp32`` is what those two changes buy.

The inputs are random images and token grids of the real shapes: a step's cost does not depend on their values.
The end-to-end effect on a whole run (and on quality) is measured by ``bench_readme_commands --train_args
"--mixed_precision bf16"`` (README).

Usage::

    python -m benchmarks.bench_cpu_precision            # 5 rounds of 10 steps per precision and stage
    python -m benchmarks.bench_cpu_precision --quick    # tiny models, a few seconds (the tests run it)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import GPT2Config

from benchmarks.common import add_step_timing_args, parse_with_quick
from vqvae_transformer.models.first_stage import downsample_factor
from vqvae_transformer.models.prior import build_prior, build_prior_config, vocabulary_from_config
from vqvae_transformer.training.loop import build_optimizer, cpu_has_native_bf16
from vqvae_transformer.training.presets import CPU_PRESET, small_data_rule
from vqvae_transformer.training.train_prior import PriorStep
from vqvae_transformer.training.train_vqvae import VQVAEStep, build_vqvae

VARIANTS = ("before", "fp32", "bf16")  # "before": float32, the former activation and AdamW loop
BEFORE_ACTIVATION = "gelu_new"
QUICK = {"rounds": 1, "steps": 2, "warmup": 1, "tiny": True}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--channels", type=int, default=3, help="image channels (3: colour data such as jet images)")
    add_step_timing_args(parser, QUICK, "alternating fp32/bf16 rounds per stage")
    return parser


class _Unwrap:
    """What the step functions ask of an Accelerator here: ``unwrap_model`` (the model is not wrapped)."""

    @staticmethod
    def unwrap_model(model):
        return model


def stage_setups(args: argparse.Namespace) -> dict:
    """``{stage: (models, step function, batch)}`` with the CPU preset's models and batch shapes; ``models`` maps
    ``"now"`` to the model as built today and ``"before"`` to the one of the ``before`` variant (the same weights)."""
    preset = dict(CPU_PRESET)
    resolution, batch_vq, batch_prior = preset["resolution"], preset["vqvae_batch_size"], preset["prior_batch_size"]
    if args.tiny:
        preset.update(block_out_channels=(16, 32), latent_channels=8, codebook_dim=8, codebook_size=32, n_layer=1,
                      n_embd=16, n_head=2)
        resolution, batch_vq, batch_prior = 16, 2, 2
    vq_args = argparse.Namespace(**preset)
    torch.manual_seed(0)
    vqvae = build_vqvae(vq_args, args.channels, resolution)
    images = torch.rand(batch_vq, args.channels, resolution, resolution) * 2 - 1  # (B, C, R, R) in [-1, 1]
    grid = (resolution // downsample_factor(preset["block_out_channels"]),) * 2  # (h, w) of the token grid
    dropout = small_data_rule("cpu").get("prior_dropout", preset["prior_dropout"])  # what the prior trains with on small data
    config = build_prior_config(preset["codebook_size"], 31, grid, n_layer=preset["n_layer"], n_embd=preset["n_embd"],
                                n_head=preset["n_head"], dropout=dropout,
                                attention_dropout=preset["prior_attention_dropout"])
    prior = build_prior(config)
    former = build_prior(GPT2Config.from_dict({**config.to_dict(), "activation_function": BEFORE_ACTIVATION}))
    former.load_state_dict(prior.state_dict())
    tokens = torch.randint(0, preset["codebook_size"], (batch_prior, *grid))  # (B, h, w)
    labels = torch.randint(0, 31, (batch_prior,))
    # VQVAEStep(): train_main's defaults (l1+l2 reconstruction, random time shifts; no LPIPS, as on this machine)
    return {"stage 1": ({"now": vqvae, "before": vqvae}, VQVAEStep(), (images,)),
            "prior": ({"now": prior, "before": former}, PriorStep(vocabulary_from_config(config),
                                                                   preset["user_dropout"]), (tokens, labels))}


def make_optimizer(model, variant: str) -> torch.optim.Optimizer:
    """The training loop's optimizer (:func:`build_optimizer`), or for ``before`` the default AdamW loop."""
    if variant == "before":
        return torch.optim.AdamW(model.parameters(), lr=1e-4)
    return build_optimizer(model, "cpu", learning_rate=1e-4, betas=(0.9, 0.999), weight_decay=0.0)


def time_steps(model, step_fn, batch, optimizer, variant: str, steps: int, warmup: int) -> float:
    """Median seconds of one training step (forward in ``variant``'s precision, backward, AdamW)."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
            loss, _ = step_fn(model, batch, _Unwrap())
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    args = parse_with_quick(build_parser(), argv, QUICK)
    native = cpu_has_native_bf16()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native}")
    results = {}
    for stage, (models, step_fn, batch) in stage_setups(args).items():
        runs = {}
        for variant in VARIANTS:
            model = models["before" if variant == "before" else "now"]
            runs[variant] = (model.train(), make_optimizer(model, variant))
        rounds = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant, (model, optimizer) in runs.items():
                rounds[variant].append(time_steps(model, step_fn, batch, optimizer, variant, args.steps,
                                                  args.warmup))
        medians = {v: statistics.median(r) for v, r in rounds.items()}
        results[stage] = {**medians, "speedup": medians["fp32"] / medians["bf16"],
                          "changes_speedup": medians["before"] / medians["fp32"], "rounds": rounds}
    print("\n| stage | before s/step | fp32 s/step | bf16 s/step | before / fp32 | fp32 / bf16 |\n"
          "|---|---|---|---|---|---|")
    for stage, r in results.items():
        print(f"| {stage} | {r['before']:.3f} | {r['fp32']:.3f} | {r['bf16']:.3f} | {r['changes_speedup']:.2f} | "
              f"{r['speedup']:.2f} |")
    if args.json:
        record = {"native_bf16": bool(native), "threads": torch.get_num_threads(), "stages": results}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return results


if __name__ == "__main__":
    main()
