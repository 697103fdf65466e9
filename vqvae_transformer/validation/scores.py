"""The measurements of a validation run (docs/DESIGN.md §4): the judge trained on the real training split, every
judge-based metric with its confidence interval, and the tokenizer's figures on the validation images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..data import SpectrogramData
from ..layout import VQVAE_FOLDER
from ..models.first_stage import load_first_stage
from ..models.reconstruction import tokenizer_metrics_and_reconstructions
from . import metrics as M
from .inputs import RealData
from ..models.judge import Judge, accuracy, features, load_or_train_judge, predict

JUDGE_DIR = "judge"
"""Sub-folder of a validation output folder where the judge is cached."""


def train_or_load_judge(real: RealData, output_dir: Path, epochs: int, seed: int, use_cache: bool) -> Judge:
    """Train the judge on the real training split, or reuse the cached one."""
    data = real.data
    return load_or_train_judge(
        data.images[real.train_idx], data.labels[real.train_idx], data.num_users,
        paths=[data.paths[i] for i in real.train_idx], val_paths=[data.paths[i] for i in real.val_idx],
        cache_dir=output_dir / JUDGE_DIR if use_cache else None, epochs=epochs, seed=seed,
    )


def json_value(value: Any) -> Any:
    """Floats that are NaN/inf become None (JSON has no NaN); tensors become lists."""
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def compute_metrics(judge: Judge, real: RealData, generated: SpectrogramData, target_label: int | None,
                    cas_epochs: int, seed: int) -> tuple[dict, dict, dict]:
    """Every judge-based metric of §4, overall and per user.

    Args:
        judge: trained on ``real``'s training split.
        real: the real data and split.
        generated: generated images labelled with ``real``'s labels.
        target_label: restrict to this 0-based label, or None for every user.
        cas_epochs: training epochs of the CAS classifier.
        seed: seed of the CAS classifier and the halves of ``domain_fid_real``.

    Returns:
        ``(metrics, reasons for unmeasured metrics, extras)`` where extras hold per-label values, confusion
        matrices, memorization details and features for the figures.
    """
    data = real.data
    train_x, train_y = data.images[real.train_idx], data.labels[real.train_idx]  # [N, C, R, R], [N]
    val_x, val_y = data.images[real.val_idx], data.labels[real.val_idx]  # [V, C, R, R], [V]
    gen_x, gen_y = generated.images, generated.labels  # [M, C, R, R], [M]
    if target_label is not None:
        keep_val, keep_gen = val_y == target_label, gen_y == target_label
        val_scope_x, val_scope_y = val_x[keep_val], val_y[keep_val]
        gen_x, gen_y = gen_x[keep_gen], gen_y[keep_gen]
    else:
        val_scope_x, val_scope_y = val_x, val_y
    k = data.num_users
    reasons: dict[str, str] = {}

    pred_val = predict(judge, val_scope_x)  # [V']
    pred_gen = predict(judge, gen_x)  # [M']
    out: dict[str, Any] = {
        "real_test_accuracy": M.accuracy(pred_val, val_scope_y),
        "gan_test_accuracy": M.accuracy(pred_gen, gen_y),
    }
    cas, cas_per_label, cas_correct = _cas(gen_x, gen_y, val_x, val_y, k, target_label, cas_epochs, seed, reasons)
    out["cas_accuracy"] = cas

    f_train, f_val, f_gen = features(judge, train_x), features(judge, val_x), features(judge, gen_x)  # [*, F]
    f_val_scope = f_val[val_y == target_label] if target_label is not None else f_val
    out["domain_fid"], out["domain_fid_real"] = _fids(judge, val_scope_x, val_scope_y, gen_x, seed, reasons)
    memo = M.memorization_rate(f_gen, f_train, f_val)
    out["memorization_rate"] = memo.rate
    out["diversity_ratio"], diversity_per_label = M.diversity_ratio(f_gen, gen_y, f_val_scope, val_scope_y)
    if out["diversity_ratio"] is None:
        reasons["diversity_ratio"] = "no user has at least 2 generated and 2 real validation images"

    out["gan_test_ratio"] = _ratio(out["gan_test_accuracy"], out["real_test_accuracy"])
    out["cas_ratio"] = _ratio(out["cas_accuracy"], out["real_test_accuracy"])
    out["fid_ratio"] = _ratio(out["domain_fid"], out["domain_fid_real"])
    intervals = _intervals(pred_val == val_scope_y, val_scope_y, pred_gen == gen_y, gen_y, cas_correct, f_gen,
                           f_val_scope, seed, reasons)
    out["domain_kid"] = intervals["domain_kid"]["estimate"] if "domain_kid" in intervals else None
    out["domain_kid_real"] = intervals["domain_kid_real"]["estimate"] if "domain_kid_real" in intervals else None
    extras = {
        "real_per_label": M.per_user_accuracy(pred_val, val_scope_y, k),
        "gan_per_label": M.per_user_accuracy(pred_gen, gen_y, k),
        "cas_per_label": cas_per_label,
        "intervals": intervals,
        "per_label_counts": {"real": _per_label_counts(pred_val == val_scope_y, val_scope_y, k),
                             "generated": _per_label_counts(pred_gen == gen_y, gen_y, k),
                             "cas": (_per_label_counts(cas_correct[0], cas_correct[1], k)
                                     if cas_correct is not None else [None] * k)},
        "diversity_per_label": diversity_per_label,
        "confusion_generated": M.confusion_matrix(pred_gen, gen_y, k),
        "confusion_real": M.confusion_matrix(pred_val, val_scope_y, k),
        "memorization": memo,
        "gen_images": gen_x, "gen_labels": gen_y, "val_images": val_scope_x, "val_labels": val_scope_y,
        "train_images": train_x,
        "counts": {"train": int(train_x.shape[0]), "validation": int(val_scope_x.shape[0]),
                   "generated": int(gen_x.shape[0])},
    }
    return {key: json_value(value) for key, value in out.items()}, reasons, extras


def _cas(gen_x: torch.Tensor, gen_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, k: int,
         target_label: int | None, epochs: int, seed: int,
         reasons: dict) -> tuple[float | None, list, tuple[torch.Tensor, torch.Tensor] | None]:
    """CAS over the users that have generated images (None with a reason when it is meaningless).

    Returns:
        ``(accuracy, per-label accuracies, (correct [V'] bool, labels [V']) of the real test images or None)``.
    """
    users = torch.unique(gen_y)
    if target_label is not None:
        reasons["cas_accuracy"] = ("one target user: a classifier trained on generated images of a single user "
                                   "is constant, so CAS is meaningless")
        return None, [None] * k, None
    if users.numel() < 2 or gen_x.shape[0] < 2:
        reasons["cas_accuracy"] = "generated images cover fewer than 2 users; CAS needs at least 2 classes"
        return None, [None] * k, None
    keep = torch.isin(val_y, users)  # test only on users the generator produced
    accuracy, classifier = M.cas_accuracy(gen_x, gen_y, val_x[keep], val_y[keep], k, epochs=epochs, seed=seed)
    predicted = predict(classifier, val_x[keep])  # [V']
    per_label = M.per_user_accuracy(predicted, val_y[keep], k)
    return accuracy, per_label, (predicted == val_y[keep], val_y[keep])


INTERVAL_METRICS = ("real_test_accuracy", "gan_test_accuracy", "cas_accuracy", "gan_test_ratio", "cas_ratio",
                    "fid_ratio", "domain_kid", "domain_kid_real", "diversity_ratio")
"""Metrics whose report entries get a confidence interval (``report["intervals"]``)."""


def _intervals(real_correct: torch.Tensor, real_y: torch.Tensor, gen_correct: torch.Tensor, gen_y: torch.Tensor,
               cas: tuple[torch.Tensor, torch.Tensor] | None, f_gen: torch.Tensor, f_val: torch.Tensor, seed: int,
               reasons: dict) -> dict[str, dict]:
    """Confidence intervals of :data:`INTERVAL_METRICS` (``{metric: Interval.as_dict() + kid_std}``).

    Thresholds stay judged on the point estimates; these only show how far a figure could move with another
    sample of ~5 images per user. Metrics that cannot be measured are left out (their reason is in ``reasons``).
    """
    out = {"real_test_accuracy": M.bootstrap_accuracy_ci(real_correct, real_y, seed=seed),
           "gan_test_accuracy": M.bootstrap_accuracy_ci(gen_correct, gen_y, seed=seed),
           "gan_test_ratio": M.bootstrap_ratio_ci(gen_correct, gen_y, real_correct, real_y, paired=False,
                                                  seed=seed)}
    if cas is not None:
        cas_correct, cas_y = cas
        out["cas_accuracy"] = M.bootstrap_accuracy_ci(cas_correct, cas_y, seed=seed)
        # Paired: the judge's correctness on the very images the CAS classifier was tested on.
        tested = torch.isin(real_y, torch.unique(cas_y))
        if bool((real_y[tested] == cas_y).all()):
            out["cas_ratio"] = M.bootstrap_ratio_ci(cas_correct, cas_y, real_correct[tested], cas_y, paired=True,
                                                    seed=seed)
        else:
            raise RuntimeError("CAS test images are not a subset of the real validation images in order")
    diversity = M.bootstrap_diversity_ci(f_gen, gen_y, f_val, real_y, seed=seed)
    if diversity.estimate is not None:
        out["diversity_ratio"] = diversity
    if f_gen.shape[0] >= 2 and f_val.shape[0] >= 2:
        out["fid_ratio"] = M.bootstrap_fid_ratio_ci(f_gen, gen_y, f_val, real_y, seed=seed)
        kid, kid_std = M.kernel_distance(f_gen, f_val, seed=seed)
        out["domain_kid"] = kid
        result = {name: interval.as_dict() for name, interval in out.items()}
        result["domain_kid"]["std"] = kid_std
    else:
        reasons["domain_kid"] = f"needs 2+ images per set ({f_val.shape[0]} real, {f_gen.shape[0]} generated)"
        result = {name: interval.as_dict() for name, interval in out.items()}
    half_a, _ = M.split_in_halves(real_y, seed)
    if half_a.numel() >= 2:
        kid_real, kid_real_std = M.kernel_distance_real(f_val, real_y, seed=seed)
        result["domain_kid_real"] = {**kid_real.as_dict(), "std": kid_real_std}
    else:
        reasons["domain_kid_real"] = f"{f_val.shape[0]} real validation images cannot form two halves of 2+"
    return {name: {key: json_value(value) for key, value in entry.items()} for name, entry in result.items()}


def _per_label_counts(correct: torch.Tensor, labels: torch.Tensor, k: int) -> list[tuple[int, int] | None]:
    """``(right, tested)`` per label ``[k]`` (None for labels without images), for Wilson intervals."""
    counts: list[tuple[int, int] | None] = []
    for label in range(k):
        mask = labels == label
        counts.append((int(correct[mask].sum()), int(mask.sum())) if bool(mask.any()) else None)
    return counts


def _fids(judge: Judge, val_x: torch.Tensor, val_y: torch.Tensor, gen_x: torch.Tensor, seed: int,
          reasons: dict) -> tuple[float | None, float | None]:
    """``(domain_fid, domain_fid_real)``; None with a reason when a set has fewer than 2 images."""
    fid = fid_real = None
    if val_x.shape[0] >= 2 and gen_x.shape[0] >= 2:
        fid = M.domain_fid(judge, val_x, gen_x)
    else:
        reasons["domain_fid"] = f"needs 2+ images per set ({val_x.shape[0]} real, {gen_x.shape[0]} generated)"
    half_a, _ = M.split_in_halves(val_y, seed)
    if half_a.numel() >= 2:
        fid_real = M.domain_fid_real(judge, val_x, val_y, seed)
    else:
        reasons["domain_fid_real"] = f"{val_x.shape[0]} real validation images cannot form two halves of 2+"
    return fid, fid_real


def first_stage_metrics(model_dir: str | Path, val_images: torch.Tensor, val_labels: torch.Tensor, judge: Judge,
                        reasons: dict) -> dict:
    """PSNR, SSIM, codebook statistics, LPIPS and the judge's accuracy on reconstructions of the validation images.

    ``reconstruction_test_accuracy`` is the ceiling the tokenizer puts on ``gan_test_accuracy``: what the judge
    still recognises after images pass through the tokens. ``reconstruction_domain_fid`` (reconstructions vs the
    images they reconstruct, in the judge's feature space) is the tokenizer's share of ``domain_fid``.
    """
    first_stage = load_first_stage(Path(model_dir) / VQVAE_FOLDER).eval()
    out, recon = tokenizer_metrics_and_reconstructions(first_stage, val_images)  # recon: (N, C, R, R)
    out["reconstruction_test_accuracy"] = accuracy(predict(judge, recon), val_labels)
    out["reconstruction_domain_fid"] = M.domain_fid(judge, val_images, recon) if val_images.shape[0] >= 2 else None
    if out["reconstruction_domain_fid"] is None:
        reasons["reconstruction_domain_fid"] = f"needs 2+ validation images, got {val_images.shape[0]}"
    lpips_value, lpips_reason = M.lpips_distance(val_images, recon)
    out["lpips"] = lpips_value
    if lpips_value is None:
        reasons["lpips"] = lpips_reason
    return out
