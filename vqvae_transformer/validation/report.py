"""The validation run: real data + generated images -> metrics (docs/DESIGN.md §4) -> JSON, Markdown and figures.

``run_validation`` loads the data a model was trained on (or another real folder with its own seeded split),
the generated ``ID_<k>`` folders, trains (or reuses) the judge, computes every metric, compares them with the
thresholds and writes ``<output_dir>/validation_report.json``, ``validation_report.md`` and ``figures/*.png``.
The pieces live one concern per module: :mod:`.inputs`, :mod:`.scores`, :mod:`.thresholds`,
:mod:`.report_figures` and :mod:`.markdown`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from ..atomic import write_text_atomic
from ..data import SpectrogramData
from ..errors import UserInputError
from ..layout import FIGURES_FOLDER
from . import metrics as M
from .inputs import RealData, generated_selection, load_generated, load_real_data, model_facts
from ..models.judge import DEFAULT_EPOCHS, Judge
from .markdown import render_markdown
from .report_figures import write_figures
from .scores import compute_metrics, first_stage_metrics, json_value, train_or_load_judge
from .thresholds import Thresholds, check_thresholds, resolve_thresholds

logger = logging.getLogger(__name__)
REPORT_JSON = "validation_report.json"
REPORT_MD = "validation_report.md"


def run_validation(
    model_dir: str | Path,
    generated_dir: str | Path,
    real_data_dir: str | Path | None = None,
    target_user_id: int | None = None,
    output_dir: str | Path = "validation",
    thresholds: Thresholds | None = None,
    seed: int = 0,
    judge_epochs: int = DEFAULT_EPOCHS,
    cas_epochs: int | None = None,
    val_fraction: float = 0.2,
    use_judge_cache: bool = True,
) -> dict:
    """Validate generated images against the real data and write the report.

    Args:
        model_dir: the trained model folder (``model_index.json``, ``vqvae/``, ``data_info.json``, ``split.json``).
        generated_dir: generated ``ID_<k>/*.png``.
        real_data_dir: another real ``ID_<k>`` folder (gets its own seeded stratified split); default the
            model's own data and split.
        target_user_id: public (1-based) id to restrict the report to; the judge is still trained on all users.
        output_dir: where the report, figures and the cached judge go.
        thresholds: pass/fail limits (default :class:`Thresholds`).
        seed: seed of the judge, the CAS classifier, the FID halves and the split of ``real_data_dir``.
        judge_epochs: training epochs of the judge.
        cas_epochs: training epochs of the CAS classifier; default: as many optimisation steps as the judge.
        val_fraction: validation share when splitting ``real_data_dir``.
        use_judge_cache: reuse ``<output_dir>/judge`` when its key matches.

    Returns:
        The report dict (also written to ``validation_report.json``): the §4 metrics at top level, ratios,
        ``per_user``, ``checks``, ``thresholds``, ``passed``, ``failed``, ``skipped``, ``reasons``, ``settings``,
        ``seconds``.

    Raises:
        UserInputError: missing folders, unknown ids, size or channel mismatches, an unknown target user.
    """
    start = time.perf_counter()
    thresholds = thresholds or Thresholds()
    output_dir = Path(output_dir)
    facts = model_facts(model_dir)
    if not Path(generated_dir).is_dir():
        raise UserInputError(f"generated images folder {str(generated_dir)!r} does not exist; run generate_main.py "
                             "or pass --generated_data_dir")
    real = load_real_data(model_dir, facts, real_data_dir, seed, val_fraction)
    generated = load_generated(generated_dir, real.data, facts["user_ids"])
    selection = generated_selection(generated_dir)
    target_label = _target_label(target_user_id, generated, real.data)

    judge = train_or_load_judge(real, output_dir, judge_epochs, seed, use_judge_cache)
    if cas_epochs is None:  # same optimisation budget as the judge
        cas_epochs = max(1, round(judge_epochs * len(real.train_idx) / max(len(generated), 1)))
    values, reasons, extras = compute_metrics(judge, real, generated, target_label, cas_epochs, seed)
    values.update(first_stage_metrics(model_dir, real.data.images[real.val_idx], real.data.labels[real.val_idx],
                                      judge, reasons))

    counts = torch.bincount(real.data.labels[real.val_idx], minlength=real.data.num_users).float()  # per user
    per_user = float(counts[counts > 0].median()) if bool((counts > 0).any()) else 0.0
    thresholds, rule = resolve_thresholds(thresholds, per_user)
    if rule:
        logger.info("thresholds: %s", rule)
    checks = check_thresholds(values, thresholds)
    report = _assemble(values, reasons, extras, checks, thresholds, real, generated, judge, target_user_id,
                       dict(model_dir=str(model_dir), generated_dir=str(generated_dir),
                            real_data_dir=None if real_data_dir is None else str(real_data_dir), seed=seed,
                            judge_epochs=judge_epochs, cas_epochs=cas_epochs, val_fraction=val_fraction))
    report["generated_selection"] = selection  # None: plain samples; else gan-test is not independent
    report["threshold_rule"] = rule  # why min_real_accuracy has its value (None: given on the command line)
    report["figures"] = write_figures(output_dir / FIGURES_FOLDER, report, extras, real.data)
    report["seconds"] = round(time.perf_counter() - start, 2)
    write_report(output_dir, report)
    return report


def _target_label(target_user_id: int | None, generated: SpectrogramData, data: SpectrogramData) -> int | None:
    """0-based label of the target user (UserInputError when it has no generated images)."""
    if target_user_id is None:
        return None
    label = data.id_to_label(int(target_user_id))
    if not bool((generated.labels == label).any()):
        raise UserInputError(f"--target_user_id {target_user_id} has no generated images in {generated.source}; "
                             "generate images for that user first")
    return label


def _wilson(counts: tuple[int, int] | None) -> list[float] | None:
    """Wilson 95 % interval ``[low, high]`` of a per-user accuracy from ``(right, tested)``, None without images."""
    if counts is None:
        return None
    low, high = M.wilson_interval(*counts)
    return [low, high]


def _assemble(values: dict, reasons: dict, extras: dict, checks: list[dict], thresholds: Thresholds,
              real: RealData, generated: SpectrogramData, judge: Judge, target_user_id: int | None,
              settings: dict) -> dict:
    """The JSON report: metrics at top level, then per-user figures, checks and settings."""
    ids = real.data.user_ids
    in_scope = sorted(set(extras["gen_labels"].tolist()) | set(extras["val_labels"].tolist()))
    memo = extras["memorization"]
    per_user = {}
    for label in in_scope:
        mask = extras["gen_labels"] == label
        per_user[str(ids[label])] = {
            "real_test_accuracy": extras["real_per_label"][label],
            "gan_test_accuracy": extras["gan_per_label"][label],
            "cas_accuracy": extras["cas_per_label"][label],
            "diversity_ratio": extras["diversity_per_label"].get(label),
            "memorization_rate": float(memo.flagged[mask].double().mean()) if bool(mask.any()) else None,
            "intervals": {key: _wilson(extras["per_label_counts"][name][label]) for key, name in (
                ("real_test_accuracy", "real"), ("gan_test_accuracy", "generated"), ("cas_accuracy", "cas"))},
            "num_validation": int((extras["val_labels"] == label).sum()),
            "num_generated": int(mask.sum()),
        }
    failed = [c["name"] for c in checks if c["passed"] is False]
    report = {key: values.get(key) for key in (
        "real_test_accuracy", "gan_test_accuracy", "cas_accuracy", "domain_fid", "domain_fid_real",
        "domain_kid", "domain_kid_real", "memorization_rate", "diversity_ratio", "codebook_usage",
        "codebook_perplexity", "normalized_entropy",
        "psnr", "ssim", "lpips", "reconstruction_test_accuracy", "reconstruction_domain_fid", "gan_test_ratio",
        "cas_ratio", "fid_ratio")}
    report.update(
        passed=not failed,
        failed=failed,
        skipped=[c["name"] for c in checks if c["passed"] is None],
        checks=checks,
        thresholds=dataclasses.asdict(thresholds),
        reasons=reasons,
        intervals=extras["intervals"],
        per_user=per_user,
        confusion_matrix={"rows": "intended user (generated images)", "columns": "judge's prediction",
                          "user_ids": ids, "generated": extras["confusion_generated"].tolist(),
                          "real_validation": extras["confusion_real"].tolist()},
        memorization={"feature_space": "judge penultimate layer, L2", "percentile": M.MEMORIZATION_PERCENTILE,
                      "threshold": memo.threshold, "num_flagged": int(memo.flagged.sum())},
        judge={"from_cache": judge.from_cache, "train_seconds": round(judge.train_seconds, 2),
               "train_accuracy": judge.train_accuracy, "epochs_run": judge.epochs_run, **judge.settings},
        counts=extras["counts"],
        settings={**settings, "target_user_id": target_user_id, "real_data_source": real.data.source,
                  "split": real.split_source, "resolution": real.data.resolution, "channels": real.data.channels,
                  "num_users": real.data.num_users,
                  "scope": f"user {target_user_id} only" if target_user_id is not None else "all users",
                  "tokenizer_scope": "all users' validation images (codebook usage is a property of the set)"},
    )
    return report


def write_report(output_dir: Path, report: dict) -> tuple[Path, Path]:
    """Write ``validation_report.json`` and ``validation_report.md`` (atomically)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = _write_text(output_dir / REPORT_JSON, json.dumps(report, indent=1, default=json_value))
    md_path = _write_text(output_dir / REPORT_MD, render_markdown(report))
    logger.info("Wrote %s and %s", json_path, md_path)
    return json_path, md_path


def _write_text(path: Path, text: str) -> Path:
    return write_text_atomic(path, text + "\n")
