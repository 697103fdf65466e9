"""Generate spectrograms per user from a trained vqvae_transformer model.

Examples::

    python generate_main.py                                   # every user, 10 images each
    python generate_main.py --user_ids 1 3 7 --samples_per_user 50 --seed 1
    python generate_main.py --model_dir org/name              # a model on the Hub (or in the offline cache)
    python generate_main.py --skip_existing                   # resume an interrupted run
    python generate_main.py --keep_attributed --oversample 3  # keep the samples a real-trained judge attributes

Exit codes: 0 done, 2 a bad flag, model folder or output path (one ``error:`` line on stderr; --debug adds the
traceback), 130 Ctrl-C, 143 SIGTERM (finished users are kept; --skip_existing resumes).

Nothing this script did not write is ever replaced: an --output_dir holding other files is refused
(exit 2) unless --overwrite, which writes beside them (see vqvae_transformer/output_folder.py).

The logic lives in :mod:`vqvae_transformer.inference.generate`; this script only parses the flags.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from vqvae_transformer.cli import quiet_interrupt_before_run_cli

if __name__ == "__main__":  # run as a script (an import, e.g. by the tests, changes no handler)
    quiet_interrupt_before_run_cli()  # Ctrl-C while the libraries load (seconds): one line, like anywhere else

from vqvae_transformer.cli import ArgumentParser, add_debug_flag, run_cli, setup_logging
from vqvae_transformer.inference.attribution import DEFAULT_OVERSAMPLE
from vqvae_transformer.inference.generate import DEFAULT_MODEL_DIR, DEFAULT_OUTPUT_DIR, run_generate_cli
from vqvae_transformer.models.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_TEMPERATURE


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``generate_main.py``."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR,
                        help="folder written by train_main.py, or a Hub repo id org/name "
                             f"(default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR,
                        help=f"where ID_<k>/ folders, grid.png and generation_info.json go (default: "
                             f"{DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--samples_per_user", type=int, default=10, help="images per user (default: 10)")
    parser.add_argument("--user_ids", type=int, nargs="+", default=None,
                        help="1-based user ids as in the data folders, e.g. --user_ids 1 3 7 (default: all)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help=f"softmax temperature, > 0; lower is more conservative (default: {DEFAULT_TEMPERATURE})")
    parser.add_argument("--top_k", type=int, default=None,
                        help="sample only among the k most likely codes (default: all codes)")
    parser.add_argument("--top_p", type=float, default=None,
                        help="nucleus sampling threshold in (0, 1] (default: off)")
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                        help="classifier-free guidance scale, > 0; 1 disables it, higher sharpens identity, too "
                             f"high overshoots (default: {DEFAULT_GUIDANCE_SCALE})")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="sequences sampled per generate() call; the images depend on it (default: 64)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed and batch size give identical images (default: 0)")
    parser.add_argument("--keep_attributed", action="store_true",
                        help="draw --oversample times as many candidates per user and keep the ones a judge trained "
                             "on the model's real training split gives the highest probability of their user; "
                             "acceptance rates per user go into generation_info.json. Needs the model's training "
                             "data (its data_info.json). gan-test of validate_main.py is then not independent")
    parser.add_argument("--oversample", type=float, default=None,
                        help=f"with --keep_attributed: candidates drawn per kept image, >= 1 "
                             f"(default: {DEFAULT_OVERSAMPLE})")
    parser.add_argument("--strength", type=float, default=None,
                        help="variations of real recordings: each image starts from a random real training image of "
                             "its user (the model's training split, circularly time-shifted), keeps its first "
                             "1 - S of the time axis as codes and lets the prior write the rest; in (0, 1], 1 = "
                             "from nothing. Needs the model's training data (its data_info.json); which recording "
                             "each image started from goes into generation_info.json (default: 1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run; cuda without a GPU is an error (default: auto)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --output_dir that holds files this tool did not write; they are "
                             "kept (never replaced or deleted), and a requested ID_<k> folder holding such files "
                             "is still refused. Without it such a folder is refused. Re-running into a folder "
                             "this tool wrote replaces its own earlier files and needs no flag")
    parser.add_argument("--skip_existing", action="store_true",
                        help="resume an interrupted run: keep users whose images this tool already wrote with "
                             "the same flags and generate only the missing ones (same files as one "
                             "uninterrupted run)")
    add_debug_flag(parser)
    return parser


def _main(argv: Sequence[str] | None) -> None:
    run_generate_cli(build_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and generate; returns the exit code (2 with one line on stderr for user errors)."""
    setup_logging()
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
