"""One training step of the CPU preset's prior at several attention-head counts (same width, depth and weights count).

The CPU preset's prior is 4 blocks of width 192. Its step is compute-bound on a 2-core CPU, and the attention's cost
depends on how the width is cut into heads: 8 heads of 24 dimensions against 4 of 48. This benchmark builds the
preset's prior once per ``--heads`` value (the parameters are the same in number: heads only reshape the
projections), times the project's own training step on it
(:class:`~vqvae_transformer.training.train_prior.PriorStep`, backward pass and fused AdamW included, under the
precision ``--mixed_precision auto`` picks on this CPU) at each ``--batch_sizes`` value (16: the preset's batch; 8:
its small-data rule's), alternating the head counts round by round so that all see the same machine load, and prints
the median seconds per step and the ratio to the first head count.

What it does not measure: the quality of a prior trained with each head count (``train_main.py --n_head H``, README),
and the per-step overhead of the real training loop (data loading, logging, evaluations), which ``train_main.py``'s
progress bar shows.

Usage::

    python -m benchmarks.bench_prior_heads               # heads 8 4, batches 16 8, 5 rounds of 10 steps
    python -m benchmarks.bench_prior_heads --quick       # tiny settings, a few seconds (the tests run it)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch

from benchmarks.bench_cpu_precision import time_steps
from benchmarks.common import add_step_timing_args, parse_with_quick
from vqvae_transformer.models.first_stage import downsample_factor
from vqvae_transformer.models.prior import build_prior, build_prior_config, vocabulary_from_config
from vqvae_transformer.training.loop import build_optimizer, cpu_has_native_bf16
from vqvae_transformer.training.presets import CPU_PRESET
from vqvae_transformer.training.train_prior import PriorStep

TINY_WIDTH = 16  # --tiny: the prior's width
QUICK = {"rounds": 1, "steps": 2, "warmup": 1, "batch_sizes": [2], "heads": [2, 1], "tiny": True}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--heads", type=int, nargs="+", default=[CPU_PRESET["n_head"], 4],
                        help="attention-head counts (each must divide the preset's width); ratios are to the first")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[CPU_PRESET["prior_batch_size"], 8],
                        help="sequences per step")
    add_step_timing_args(parser, QUICK, "alternating rounds per batch size")
    return parser


def build_runs(args: argparse.Namespace) -> tuple[dict, tuple[int, int], int]:
    """``({heads: (prior, optimizer, step function)}, token grid, codebook size)`` for the preset's prior (tiny with
    ``--tiny``); every prior starts from the same seed."""
    sizes = {k: CPU_PRESET[k] for k in ("n_layer", "n_embd", "codebook_size")}
    side = CPU_PRESET["resolution"] // downsample_factor(CPU_PRESET["block_out_channels"])
    grid = (side, side)  # the CPU preset's token grid (h, w)
    if args.tiny:
        sizes, grid = {"n_layer": 1, "n_embd": TINY_WIDTH, "codebook_size": 32}, (4, 4)
    runs = {}
    for heads in args.heads:
        torch.manual_seed(0)
        config = build_prior_config(sizes["codebook_size"], 31, grid, n_layer=sizes["n_layer"],
                                    n_embd=sizes["n_embd"], n_head=heads, dropout=CPU_PRESET["prior_dropout"],
                                    attention_dropout=CPU_PRESET["prior_attention_dropout"])
        prior = build_prior(config).train()
        optimizer = build_optimizer(prior, "cpu", learning_rate=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
        runs[heads] = (prior, optimizer, PriorStep(vocabulary_from_config(config), CPU_PRESET["user_dropout"]))
    return runs, grid, sizes["codebook_size"]


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parse_with_quick(parser, argv, QUICK)
    width = TINY_WIDTH if args.tiny else CPU_PRESET["n_embd"]
    if len(set(args.heads)) < len(args.heads):
        parser.error(f"--heads {' '.join(map(str, args.heads))} repeats a value: give each head count once")
    for heads in args.heads:
        if heads < 1 or width % heads:
            parser.error(f"--heads {heads} does not divide the prior's width {width}: choose a divisor of it")
    variant = "bf16" if cpu_has_native_bf16() else "fp32"  # what --mixed_precision auto runs on this CPU
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, precision {variant} (what --mixed_precision auto picks here)")
    runs, grid, codebook_size = build_runs(args)
    results = {}
    for batch_size in args.batch_sizes:
        tokens = torch.randint(0, codebook_size, (batch_size, *grid))  # (B, h, w): the cost does not depend on values
        labels = torch.randint(0, 31, (batch_size,))
        rounds: dict[int, list[float]] = {h: [] for h in runs}
        for _ in range(args.rounds):
            for heads, (prior, optimizer, step_fn) in runs.items():
                rounds[heads].append(time_steps(prior, step_fn, (tokens, labels), optimizer, variant, args.steps,
                                                args.warmup))
        medians = {h: statistics.median(r) for h, r in rounds.items()}
        first = medians[args.heads[0]]
        results[batch_size] = {str(h): {"seconds": m, "ratio": first / m, "rounds": rounds[h]}
                               for h, m in medians.items()}
    print("\n| batch | " + " | ".join(f"{h} heads s/step" for h in args.heads) + " | "
          + " | ".join(f"{args.heads[0]} / {h}" for h in args.heads[1:]) + " |")
    print("|---" * (1 + 2 * len(args.heads) - 1) + "|")
    for batch_size, row in results.items():
        print(f"| {batch_size} | " + " | ".join(f"{row[str(h)]['seconds']:.3f}" for h in args.heads) + " | "
              + " | ".join(f"{row[str(h)]['ratio']:.2f}" for h in args.heads[1:]) + " |")
    if args.json:
        record = {"precision": variant, "threads": torch.get_num_threads(), "heads": args.heads,
                  "batches": {str(b): r for b, r in results.items()}}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return results


if __name__ == "__main__":
    main()
