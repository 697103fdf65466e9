"""Pass/fail limits of a validation run and the checks of the measured figures against them."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Thresholds:
    """Pass/fail limits of a validation run (CLI flags of the same names override them)."""

    # The judge itself must be good enough to trust the other figures. None: follows the validation split
    # (real_accuracy_limit): 0.90, or 0.80 with at most 5 validation images per user, where one image is 0.2 of a
    # user's accuracy.
    min_real_accuracy: float | None = None
    min_gan_test_ratio: float = 0.80  # gan_test_accuracy / real_test_accuracy
    min_cas_ratio: float = 0.70  # cas_accuracy / real_test_accuracy
    max_fid_ratio: float = 3.0  # domain_fid / domain_fid_real
    max_memorization: float = 0.05  # memorization_rate
    min_diversity_ratio: float = 0.7
    max_diversity_ratio: float = 1.3
    min_codebook_usage: float = 0.90


REAL_ACCURACY_LIMIT = 0.90
SMALL_VALIDATION_PER_USER = 5
SMALL_VALIDATION_REAL_ACCURACY_LIMIT = 0.80


def real_accuracy_limit(validation_per_user: float) -> tuple[float, str]:
    """The default ``min_real_accuracy`` for a validation split of ``validation_per_user`` images per user (median).

    Returns:
        ``(limit, reason)``: :data:`SMALL_VALIDATION_REAL_ACCURACY_LIMIT` at most
        :data:`SMALL_VALIDATION_PER_USER` images per user, else :data:`REAL_ACCURACY_LIMIT`.
    """
    if validation_per_user <= SMALL_VALIDATION_PER_USER:
        return SMALL_VALIDATION_REAL_ACCURACY_LIMIT, (
            f"{validation_per_user:g} validation images per user <= {SMALL_VALIDATION_PER_USER}: "
            f"min_real_accuracy {SMALL_VALIDATION_REAL_ACCURACY_LIMIT}")
    return REAL_ACCURACY_LIMIT, (f"{validation_per_user:g} validation images per user > {SMALL_VALIDATION_PER_USER}: "
                                 f"min_real_accuracy {REAL_ACCURACY_LIMIT}")


def resolve_thresholds(thresholds: Thresholds, validation_per_user: float) -> tuple[Thresholds, str | None]:
    """Fill a ``min_real_accuracy`` of None from :func:`real_accuracy_limit`; returns the thresholds and the rule's
    reason (None when the limit was given)."""
    if thresholds.min_real_accuracy is not None:
        return thresholds, None
    limit, reason = real_accuracy_limit(validation_per_user)
    return dataclasses.replace(thresholds, min_real_accuracy=limit), reason


def check_thresholds(values: dict, thresholds: Thresholds) -> list[dict]:
    """One check per threshold: ``{name, metric, value, limit, passed}``; ``passed`` is None when unmeasured."""
    t = thresholds
    specs = [
        ("min_real_accuracy", "real_test_accuracy", ">=", t.min_real_accuracy),
        ("min_gan_test_ratio", "gan_test_ratio", ">=", t.min_gan_test_ratio),
        ("min_cas_ratio", "cas_ratio", ">=", t.min_cas_ratio),
        ("max_fid_ratio", "fid_ratio", "<=", t.max_fid_ratio),
        ("max_memorization", "memorization_rate", "<=", t.max_memorization),
        ("min_diversity_ratio", "diversity_ratio", ">=", t.min_diversity_ratio),
        ("max_diversity_ratio", "diversity_ratio", "<=", t.max_diversity_ratio),
        ("min_codebook_usage", "codebook_usage", ">=", t.min_codebook_usage),
    ]
    checks = []
    for name, metric, op, limit in specs:
        value = values.get(metric)
        passed = None if value is None else (value >= limit if op == ">=" else value <= limit)
        checks.append({"name": name, "metric": metric, "value": value, "op": op, "limit": limit, "passed": passed})
    return checks
