"""Sampling benchmark: the pipeline's KV-cached, batched ``generate()`` against a no-cache loop.

Runs side by side in one process, for the presets' token grid (16x16 = 256 tokens) and a smaller 8x8 = 64 tokens,
with classifier-free guidance off and on. Models have the CPU preset's sizes (speed does not depend on training);
the first stage is the CPU preset's backbone at the resolution that gives the grid. Images/s include decoding.

    python -m benchmarks.bench_sampling                 # batch 32, the CPU preset's prior
    python -m benchmarks.bench_sampling --grids 16      # only the presets' grid
"""

from __future__ import annotations

import argparse
import time

import torch

from vqvae_transformer.models.first_stage import build_first_stage, downsample_factor
from vqvae_transformer.models.pipeline import VQVAETransformerPipeline
from vqvae_transformer.models.prior import build_prior, build_prior_config
from vqvae_transformer.training.presets import CPU_PRESET


def build_pipeline(grid: int, num_users: int, n_layer: int, n_embd: int, n_head: int) -> VQVAETransformerPipeline:
    preset = CPU_PRESET
    blocks = preset["block_out_channels"]
    resolution = grid * downsample_factor(blocks)
    torch.manual_seed(0)
    vqvae = build_first_stage("vq", block_out_channels=blocks, latent_channels=preset["latent_channels"],
                              num_vq_embeddings=preset["codebook_size"], codebook_dim=preset["codebook_dim"],
                              sample_size=resolution)
    vqvae.train()(torch.rand(4, 1, resolution, resolution) * 2 - 1)  # initialise the codebook
    prior = build_prior(build_prior_config(preset["codebook_size"], num_users, (grid, grid), n_layer=n_layer,
                                           n_embd=n_embd, n_head=n_head))
    return VQVAETransformerPipeline(vqvae=vqvae.eval(), prior=prior.eval())


def images_per_second(pipeline, n: int, batch_size: int, guidance: float, use_cache: bool) -> float:
    user_ids = [pipeline.user_ids[i % len(pipeline.user_ids)] for i in range(n)]
    start = time.perf_counter()
    if use_cache:
        pipeline(user_ids=user_ids, num_images_per_user=1, guidance_scale=guidance, batch_size=batch_size,
                 generator=torch.Generator().manual_seed(0), output_type="pt")
    else:  # the replaced system's sampler: the same generate() call without the KV cache
        from vqvae_transformer.models.prior import sample_tokens

        labels = torch.tensor(pipeline.labels_for(user_ids))
        for i in range(0, n, batch_size):
            tokens = sample_tokens(pipeline.prior, labels[i:i + batch_size], guidance_scale=guidance,
                                   use_cache=False, seed=i)
            pipeline.vqvae.decode_tokens(tokens)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, nargs="+", default=[16, 8], help="token grid sides to measure")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_users", type=int, default=31)
    parser.add_argument("--n_layer", type=int, default=CPU_PRESET["n_layer"])
    parser.add_argument("--n_embd", type=int, default=CPU_PRESET["n_embd"])
    parser.add_argument("--n_head", type=int, default=CPU_PRESET["n_head"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, prior "
          f"{args.n_layer}x{args.n_embd}")
    rows = []
    for grid in args.grids:
        pipeline = build_pipeline(grid, args.num_users, args.n_layer, args.n_embd, args.n_head)
        images_per_second(pipeline, 4, 4, 1.0, True)  # warm-up: the first call in a process is slow
        for guidance in (1.0, 3.0):
            cached = images_per_second(pipeline, args.batch_size, args.batch_size, guidance, True)
            uncached = images_per_second(pipeline, args.batch_size, args.batch_size, guidance, False)
            rows.append((grid, guidance, cached, uncached))
            print(f"  {grid}x{grid} guidance {guidance}: cached {cached:.2f} img/s, no cache {uncached:.3f} img/s",
                  flush=True)
    header = f"{'tokens':>7} {'guidance':>8} {'cached img/s':>13} {'no-cache img/s':>15} {'speed-up':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for grid, guidance, cached, uncached in rows:
        print(f"{grid * grid:>7} {guidance:>8.1f} {cached:>13.2f} {uncached:>15.3f} {cached / uncached:>8.1f}x")


if __name__ == "__main__":
    main()
