"""Codebook utilisation tool: how many codes the tokenizer really uses, and which codes belong to which user.

    python -m vqvae_transformer.analysis.codebook --model_dir outputs/vqvae_transformer --output_dir codebook \\
        [--data_dir DATA] [--plot]

Encodes the model's validation split (or every image of ``--data_dir``) and writes ``codebook_report.json``:
``codebook_usage``, ``codebook_perplexity``, ``normalized_entropy``, ``top_code_share``, dead codes, per-user usage
and per-user *distinctive* codes (codes seen at least ``--min_count`` times of which at least ``--min_share`` come
from one user). Every figure is counted from the token indices themselves.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic import write_json_atomic
from ..errors import UserInputError
from ..models.first_stage import load_first_stage
from ..models.quantizer import code_statistics
from ..models.reconstruction import code_counts, encode_tokens
from ..output_folder import prepare_output_folder
from .inputs import add_model_input_args, check_model_inputs, load_images

logger = logging.getLogger(__name__)

REPORT_FILE = "codebook_report.json"
HISTOGRAM_FILE = "codebook_usage_histogram.png"
HEATMAP_FILE = "codebook_user_heatmap.png"
TOOL_NAME = "vqvae_transformer.analysis.codebook"


def per_user_counts(tokens: torch.Tensor, labels: torch.Tensor, num_users: int, codebook_size: int) -> np.ndarray:
    """``[U, K]`` code counts per user from token grids ``[N, h, w]`` and 0-based labels ``[N]``."""
    flat = tokens.reshape(tokens.shape[0], -1)  # (N, T)
    user_of_token = labels[:, None].expand_as(flat).reshape(-1)  # (N*T,)
    pairs = user_of_token * codebook_size + flat.reshape(-1)
    return torch.bincount(pairs, minlength=num_users * codebook_size).view(num_users, codebook_size).numpy()


def distinctive_codes(counts: np.ndarray, min_count: int = 5, min_share: float = 0.5) -> list[list[int]]:
    """Per user, the codes seen at least ``min_count`` times of which at least ``min_share`` come from that user.

    Args:
        counts: ``[U, K]`` per-user code counts.

    Returns:
        ``U`` sorted lists of code ids.
    """
    totals = counts.sum(axis=0)  # (K,)
    share = np.divide(counts, totals[None, :], out=np.zeros(counts.shape), where=totals[None, :] > 0)
    frequent = totals >= min_count
    return [sorted(np.flatnonzero(frequent & (share[u] >= min_share)).tolist()) for u in range(counts.shape[0])]


def codebook_report(tokens: torch.Tensor, labels: torch.Tensor, user_ids: list[int], codebook_size: int,
                    min_count: int = 5, min_share: float = 0.5) -> dict:
    """All figures of ``codebook_report.json`` from token grids and their users."""
    counts = code_counts(tokens, codebook_size)
    users = per_user_counts(tokens, labels, len(user_ids), codebook_size)
    distinct = distinctive_codes(users, min_count, min_share)
    dead = torch.nonzero(counts == 0).flatten().tolist()
    per_user = {}
    for label, uid in enumerate(user_ids):
        stats = code_statistics(torch.from_numpy(users[label]))
        per_user[str(uid)] = {"images": int((labels == label).sum()), "used_codes": stats["used_codes"],
                              "codebook_usage": stats["codebook_usage"],
                              "codebook_perplexity": stats["codebook_perplexity"],
                              "num_distinctive_codes": len(distinct[label]), "distinctive_codes": distinct[label]}
    num_distinct = [len(d) for d in distinct]
    return {
        **code_statistics(counts), "codebook_size": codebook_size, "num_images": int(tokens.shape[0]),
        "token_grid": list(tokens.shape[1:]), "dead_codes": len(dead), "dead_code_ids": dead,
        "distinctive_rule": {"min_count": min_count, "min_share": min_share},
        "distinctive_codes_per_user_mean": float(np.mean(num_distinct)) if num_distinct else 0.0,
        "distinctive_codes_per_user_min": int(min(num_distinct)) if num_distinct else 0,
        "per_user": per_user,
    }


def save_heatmap(tokens: torch.Tensor, labels: torch.Tensor, user_ids: list[int], codebook_size: int,
                 path: Path) -> Path:
    """Users x codes heat-map of each user's code distribution, codes ordered by overall frequency."""
    from ..figures import plt, save_figure

    users = per_user_counts(tokens, labels, len(user_ids), codebook_size).astype(float)
    order = np.argsort(-users.sum(axis=0), kind="stable")
    used = order[users.sum(axis=0)[order] > 0]
    share = users[:, used] / np.maximum(users.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(10, 0.18 * len(user_ids) + 1.5))
    image = ax.imshow(np.log10(share + 1e-4), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(user_ids)), [f"ID_{u}" for u in user_ids], fontsize=6)
    ax.set_xlabel(f"code (sorted by overall frequency; {len(used)} used of {codebook_size})")
    ax.set_title("log10 share of each user's tokens per code", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    from ..cli import ArgumentParser, add_debug_flag

    parser = ArgumentParser(description="Codebook utilisation of a trained tokenizer.")
    add_model_input_args(parser, "encode", "codebook_analysis", "the report or plots")
    parser.add_argument("--plot", action="store_true", help="also write the usage histogram and user heat-map")
    parser.add_argument("--min_count", type=int, default=5, help="distinctive codes: minimum occurrences")
    parser.add_argument("--min_share", type=float, default=0.5, help="distinctive codes: minimum share of one user")
    add_debug_flag(parser)
    return parser


def check_inputs(args: argparse.Namespace) -> Path:
    """Flag values, the model folder (complete, loadable, one model) and the data, before any work.

    Returns:
        The first-stage folder to load.

    Raises:
        UserInputError: one line naming the flag or file.
    """
    if args.min_count < 1 or not 0 < args.min_share <= 1:
        raise UserInputError(f"--min_count must be >= 1 and --min_share in (0, 1], got {args.min_count}, "
                             f"{args.min_share}")
    return check_model_inputs(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Encode, count, write ``codebook_report.json`` (and plots); prints the headline figures."""
    from ..cli import setup_logging
    from ..figures import save_usage_histogram

    setup_logging()
    args = build_parser().parse_args(argv)
    first_stage_dir = check_inputs(args)
    model_dir = Path(args.model_dir)
    folder = prepare_output_folder(args.output_dir, TOOL_NAME, overwrite=args.overwrite,
                                   reserved=[REPORT_FILE, HISTOGRAM_FILE, HEATMAP_FILE])
    first_stage = load_first_stage(first_stage_dir).eval()
    data = load_images(model_dir, args.data_dir, first_stage)
    k = first_stage.config.num_vq_embeddings
    tokens = encode_tokens(first_stage, data.images, args.batch_size)  # (N, h, w)
    report = codebook_report(tokens, data.labels, data.user_ids, k, args.min_count, args.min_share)
    report["source"] = data.source if args.data_dir else f"validation split of {model_dir}"
    out = folder.path
    written = [REPORT_FILE] + ([HISTOGRAM_FILE, HEATMAP_FILE] if args.plot else [])
    folder.record(added=written)  # registered before they appear
    write_json_atomic(out / REPORT_FILE, report)
    if args.plot:
        save_usage_histogram(code_counts(tokens, k), out / HISTOGRAM_FILE)
        save_heatmap(tokens, data.labels, data.user_ids, k, out / HEATMAP_FILE)
    print(f"codebook usage {report['codebook_usage']:.1%} ({report['used_codes']}/{k} codes), perplexity "
          f"{report['codebook_perplexity']:.1f}, normalised entropy {report['normalized_entropy']:.3f}, "
          f"dead codes {report['dead_codes']}, distinctive codes per user: mean "
          f"{report['distinctive_codes_per_user_mean']:.1f}, min {report['distinctive_codes_per_user_min']}")
    print(f"report: {out / REPORT_FILE}")
    return 0


if __name__ == "__main__":
    from ..cli import run_cli

    sys.exit(run_cli(main))
