"""Identity-filter benchmark: do samples the prior itself ranks high for their user look more like that user?

On a trained model (``--model_dir``), draw ``--oversample`` x ``--samples_per_user`` candidates per user (the
shipped sampling defaults), score every candidate with the prior (``--rank``, one or more of
:data:`vqvae_transformer.inference.identity_filter.RANKINGS`):

- ``posterior``: the intended user's posterior among all users, the prior as a generative classifier
  (:func:`~vqvae_transformer.inference.identity_filter.select_attributed`, ``N + 1`` prior passes per candidate);
- ``ratio``: the user-vs-null log-likelihood ratio (2 passes);
- ``likelihood``: the log-likelihood under the user (2 passes),

and write one folder of ``--samples_per_user`` images per user for the first candidates drawn (no ranking) and one
per ranking (the best-ranked). Each is scored by the real ``validate_main.py`` (the same judge: it is trained on the
model's training split once and reused). Prints the prior's own attribution rate (with ``posterior``) and, per
folder, gan-test and CAS (accuracies and their ratios to the judge's accuracy on real images), the domain-FID ratio
and diversity.

    python -m benchmarks.bench_identity_filter --model_dir outputs/vqvae_transformer
    python -m benchmarks.bench_identity_filter --model_dir M --oversample 3 --rank ratio likelihood
    python -m benchmarks.bench_identity_filter --model_dir M --samples_per_user 2 --oversample 2   # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from benchmarks.common import run_script, work_dir
from vqvae_transformer.inference.generate import DEFAULT_MODEL_DIR
from vqvae_transformer.inference.attribution import candidates_per_user
from vqvae_transformer.inference.identity_filter import RANKINGS, prior_scores, select_attributed, top_per_user
from vqvae_transformer.images import tensor_to_pil
from vqvae_transformer.models.pipeline import VQVAETransformerPipeline


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR, help=f"trained model (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--samples_per_user", type=int, default=10, help="images kept per user (default: 10)")
    parser.add_argument("--oversample", type=float, default=4.0, help="candidates per kept image (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--rank", nargs="+", choices=RANKINGS, default=["posterior"],
                        help="the prior's scores to rank candidates by, one folder each (default: posterior)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the subprocesses (0: unset)")
    parser.add_argument("--keep_dir", action="store_true", help="keep the generated folders")
    return parser


def write_folder(pipe: VQVAETransformerPipeline, tokens: torch.Tensor, labels: torch.Tensor, out: Path) -> None:
    """Decode ``tokens`` (``(M, h, w)``) and write ``out/ID_<k>/gen_<i>.png``."""
    pixels = []
    for start in range(0, len(tokens), 64):
        decoded = pipe.vqvae.decode_tokens(tokens[start:start + 64].to(pipe.vqvae.device))
        pixels.append((pipe._colour(pipe._to_model_range(decoded)) + 1) / 2)  # (B, C, R, R) in [0, 1]
    for i, (label, image) in enumerate(zip(labels.tolist(), tensor_to_pil(torch.cat(pixels).clamp(0, 1)))):
        folder = out / f"ID_{pipe.user_ids[label]}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"gen_{i:05d}.png")


def main(argv: list[str] | None = None) -> list[tuple[str, dict]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.rank)) != len(args.rank):
        parser.error(f"--rank names a ranking twice ({' '.join(args.rank)}); give each once")
    pipe = VQVAETransformerPipeline.from_pretrained(args.model_dir)
    per_user = candidates_per_user(args.samples_per_user, args.oversample)
    start = time.perf_counter()
    tokens = pipe(num_images_per_user=per_user, generator=torch.Generator().manual_seed(args.seed),
                  output_type="latent").images  # (N * per_user, h, w), user-major
    labels = torch.arange(len(pipe.user_ids)).repeat_interleave(per_user)
    sampled = time.perf_counter() - start
    first = torch.cat([(labels == u).nonzero().squeeze(1)[:args.samples_per_user] for u in range(len(pipe.user_ids))])
    ranked = {}
    if "posterior" in args.rank:
        ranked["posterior"], reports = select_attributed(pipe.prior, tokens, labels, args.samples_per_user,
                                                         pipe.user_ids)
        rate = sum(r.attributed for r in reports) / sum(r.candidates for r in reports)
        print(f"the prior attributes {rate:.3f} of its samples to the intended user (lowest user: "
              f"{min(r.acceptance_rate for r in reports):.2f})")
    cheap = [r for r in args.rank if r != "posterior"]
    if cheap:
        for name, scores in prior_scores(pipe.prior, tokens, labels, cheap).items():
            ranked[name] = torch.cat([best for _, best in top_per_user(scores, labels, args.samples_per_user)])
    folders = {"no filter": first, **{r: ranked[r] for r in args.rank}}  # the order asked
    scored = time.perf_counter() - start - sampled
    print(f"{len(tokens)} candidates sampled in {sampled:.0f} s, scored in {scored:.0f} s")
    rows = []
    with work_dir("bench_identity_filter_", args.keep_dir) as work:
        first_output = None
        for name, chosen in folders.items():
            folder = work / name.replace(" ", "_")
            output = work / "validation" / folder.name
            write_folder(pipe, tokens[chosen], labels[chosen], folder)
            if first_output is not None:
                # One judge for every folder: a copy of the first validation folder (validate_main's own files,
                # which it overwrites) holds its cached judge, which validate_main then reuses.
                shutil.copytree(first_output, output)
            run_script(["validate_main.py", "--model_dir", args.model_dir, "--generated_data_dir", str(folder),
                        "--output_dir", str(output)], work / f"{folder.name}.log", args.threads, ok_codes=(0, 1))
            first_output = first_output or output
            rows.append((name, json.loads((output / "validation_report.json").read_text())))
    def cell(value, width: int, digits: int) -> str:  # a metric validate_main skipped (too few images) is None
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    print(f"real images: the judge's accuracy {cell(rows[0][1]['real_test_accuracy'], 0, 3)} (the ratios' denominator)")
    print(f"{'images':<12}{'gan-test':>10}{'ratio':>7}{'CAS':>8}{'ratio':>7}{'FID ratio':>11}{'diversity':>11}")
    for name, m in rows:
        print(f"{name:<12}{cell(m['gan_test_accuracy'], 10, 3)}{cell(m['gan_test_ratio'], 7, 3)}"
              f"{cell(m['cas_accuracy'], 8, 3)}{cell(m['cas_ratio'], 7, 3)}"
              f"{cell(m['fid_ratio'], 11, 2)}{cell(m['diversity_ratio'], 11, 2)}")
    return rows


if __name__ == "__main__":
    main()
