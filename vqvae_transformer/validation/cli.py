"""Command line of ``validate_main.py``: parse the flags, run the validation, print a summary, set the exit code.

Exit codes: 0 when every threshold passes, 1 when any fails (the report and the last log line name them),
2 for bad input (one line on stderr: missing folders, a damaged or mixed model folder, generated ids the model does
not know, wrong image sizes, an unwritable --output_dir; ``--debug`` adds the traceback), 130 Ctrl-C, 143 SIGTERM.
Every input is checked before the judge is trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import torch

from ..cli import ArgumentParser, add_debug_flag, run_cli, setup_logging
from ..data.provenance import DATA_INFO_FILE, SPLIT_FILE
from ..errors import UserInputError, require_folder
from ..layout import DEFAULT_MODEL_DIR, FIGURES_FOLDER
from ..models.fingerprint import check_model_folder, read_json_file
from ..output_folder import prepare_output_folder
from ..models.judge import DEFAULT_EPOCHS
from .report import REPORT_JSON, REPORT_MD, run_validation
from .scores import JUDGE_DIR
from .thresholds import (REAL_ACCURACY_LIMIT, SMALL_VALIDATION_PER_USER, SMALL_VALIDATION_REAL_ACCURACY_LIMIT,
                         Thresholds)

logger = logging.getLogger(__name__)

DEFAULT_GENERATED_DIR = "generated_images"
DEFAULT_OUTPUT_DIR = "validation"
TOOL_NAME = "validate_main.py"
EXIT_FAILED = 1

_THRESHOLD_HELP = {
    "min_real_accuracy": "lowest judge accuracy on real validation images for the judge to be trusted",
    "min_gan_test_ratio": "lowest gan_test_accuracy / real_test_accuracy",
    "min_cas_ratio": "lowest cas_accuracy / real_test_accuracy",
    "max_fid_ratio": "highest domain_fid / domain_fid_real",
    "max_memorization": "highest memorization_rate",
    "min_diversity_ratio": "lowest diversity_ratio",
    "max_diversity_ratio": "highest diversity_ratio",
    "min_codebook_usage": "lowest share of codes used on the validation images",
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``validate_main.py``."""
    parser = ArgumentParser(
        description="Validate generated spectrograms: judge accuracy, identity fidelity (GAN-test, CAS), "
                    "domain FID, memorization, diversity and tokenizer figures, with pass/fail thresholds.")
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR,
                        help=f"folder written by train_main.py (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--real_data_dir", default=None,
                        help="another real ID_<k> folder, split with --seed and --val_fraction "
                             "(default: the model's own data and saved split)")
    parser.add_argument("--generated_data_dir", default=DEFAULT_GENERATED_DIR,
                        help=f"folder of generated ID_<k>/*.png (default: {DEFAULT_GENERATED_DIR})")
    parser.add_argument("--target_user_id", type=int, default=None,
                        help="validate one user only (1-based id as in the folders; the judge still learns all)")
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR,
                        help=f"where the report, figures and cached judge go (default: {DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --output_dir holding files validate_main.py did not write; they are "
                             "kept, and one in the way of the report, figures/ or judge/ is still refused "
                             "(re-running into its own folder needs no flag)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the judge, CAS classifier, FID halves and --real_data_dir split (default: 0)")
    parser.add_argument("--judge_epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs of the judge (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--cas_epochs", type=int, default=None,
                        help="training epochs of the CAS classifier (default: the judge's number of steps)")
    parser.add_argument("--val_fraction", type=float, default=0.2,
                        help="validation share of each user for --real_data_dir (default: 0.2)")
    parser.add_argument("--no_judge_cache", action="store_true",
                        help="retrain the judge even when OUTPUT_DIR/judge matches the data")
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    defaults = Thresholds()
    group = parser.add_argument_group("thresholds (exit code 1 when one fails)")
    for field in dataclasses.fields(Thresholds):
        default = getattr(defaults, field.name)
        shown = default if default is not None else (
            f"{REAL_ACCURACY_LIMIT}, or {SMALL_VALIDATION_REAL_ACCURACY_LIMIT} with at most "
            f"{SMALL_VALIDATION_PER_USER} validation images per user")
        group.add_argument(f"--{field.name}", type=float, default=default,
                           help=f"{_THRESHOLD_HELP[field.name]} (default: {shown})")
    add_debug_flag(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Reject values argparse lets through (UserInputError naming the flag and value)."""
    if args.target_user_id is not None and args.target_user_id < 1:
        raise UserInputError(f"--target_user_id {args.target_user_id} must be a 1-based user id (1, 2, ...)")
    for flag in ("judge_epochs", "cas_epochs", "num_threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserInputError(f"--{flag} {value} must be at least 1")
    if not 0.0 < args.val_fraction < 1.0:
        raise UserInputError(f"--val_fraction {args.val_fraction} must be in (0, 1), e.g. 0.2")
    if args.min_diversity_ratio > args.max_diversity_ratio:
        raise UserInputError(f"--min_diversity_ratio {args.min_diversity_ratio} is above --max_diversity_ratio "
                             f"{args.max_diversity_ratio}")


def check_saved_data(model_dir: str | Path, flag: str) -> None:
    """Before any work: the data ``model_dir`` was trained on can be found again (``data_info.json``, the data
    folder it names and ``split.json``), else one line that says to pass ``flag`` (a real ``ID_<k>`` folder).

    Raises:
        UserInputError: naming the missing file or folder and ``flag``.
    """
    model_dir = Path(model_dir)
    info_file = model_dir / DATA_INFO_FILE
    if not info_file.is_file():
        raise UserInputError(f"{info_file} is missing, so the data {model_dir} was trained on is unknown; pass "
                             f"{flag} FOLDER (real images in ID_<k> sub-folders)")
    info = read_json_file(info_file)
    data_dir = info.get("data_dir")
    if data_dir and not info.get("simulated_dir") and not Path(data_dir).is_dir():
        raise UserInputError(f"the training data of {model_dir}, {data_dir} (recorded in {DATA_INFO_FILE}), is not "
                             f"there any more; restore it, or pass {flag} FOLDER (real images in ID_<k> sub-folders)")
    if not (model_dir / SPLIT_FILE).is_file():
        raise UserInputError(f"{model_dir / SPLIT_FILE} is missing, so the training/validation split is unknown; "
                             f"retrain with train_main.py or pass {flag} FOLDER (it gets its own split)")


def check_inputs(args: argparse.Namespace) -> None:
    """The model folder (loadable, one consistent model), the real data and the generated folder, before the
    output folder is touched or the judge trained (UserInputError naming the file and the flag)."""
    model_dir = Path(args.model_dir)
    require_folder(model_dir, "--model_dir", "train a model with train_main.py or pass --model_dir")
    check_model_folder(model_dir, need=("vqvae",))  # the first stage is used; prior/ and the index if present
    if args.real_data_dir is None:
        check_saved_data(model_dir, "--real_data_dir")
    else:
        require_folder(args.real_data_dir, "--real_data_dir", "pass a folder of real ID_<k> folders (or leave it out "
                       "to use the model's own data)")
    require_folder(args.generated_data_dir, "--generated_data_dir", "run generate_main.py first or pass the folder "
                   "it wrote")


def format_summary(report: dict) -> str:
    """A short table of the checks and the headline figures."""
    rows = [f"{'check':<22}{'value':>10}  {'limit':<10}result"]
    for c in report["checks"]:
        value = "n/a" if c["value"] is None else f"{c['value']:.4g}"
        result = {True: "pass", False: "FAIL", None: "not measured"}[c["passed"]]
        rows.append(f"{c['name']:<22}{value:>10}  {c['op']} {c['limit']:<7}{result}")
    extra = ", ".join(f"{k}={report[k]:.4g}" for k in ("real_test_accuracy", "gan_test_accuracy", "cas_accuracy",
                                                          "domain_fid", "domain_fid_real", "psnr",
                                                          "reconstruction_test_accuracy",
                                                          "reconstruction_domain_fid")
                      if report.get(k) is not None)
    return "\n".join(rows + [extra])


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    thresholds = Thresholds(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Thresholds)})
    check_inputs(args)
    # Before training the judge: the output folder must be writable and hold nothing foreign in the way.
    folder = prepare_output_folder(args.output_dir, TOOL_NAME, overwrite=args.overwrite,
                                   reserved=[REPORT_JSON, REPORT_MD, FIGURES_FOLDER, JUDGE_DIR])
    try:
        report = run_validation(
            args.model_dir, args.generated_data_dir, real_data_dir=args.real_data_dir,
            target_user_id=args.target_user_id, output_dir=args.output_dir, thresholds=thresholds, seed=args.seed,
            judge_epochs=args.judge_epochs, cas_epochs=args.cas_epochs, val_fraction=args.val_fraction,
            use_judge_cache=not args.no_judge_cache,
        )
    finally:  # what this run wrote is its own, even when it stopped half-way
        if folder.path.is_dir():
            folder.record_present()
    print(format_summary(report))
    where = f"{args.output_dir}/{REPORT_MD} and {REPORT_JSON}"
    if report["failed"]:
        logger.error("Validation FAILED: %s (see %s)", ", ".join(report["failed"]), where)
        return EXIT_FAILED
    logger.info("Validation passed every threshold (see %s)", where)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, validate and return the exit code (0 pass, 1 a threshold failed, 2 bad input)."""
    setup_logging()
    return run_cli(_main, argv)
