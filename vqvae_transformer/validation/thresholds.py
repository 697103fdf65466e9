"""Pass/fail limits of a validation run and the checks of the measured figures against them."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Thresholds:
    """Pass/fail limits of a validation run (CLI flags of the same names override them)."""

    min_real_accuracy: float = 0.90  # the judge itself must be good enough to trust the other figures
    min_gan_test_ratio: float = 0.80  # gan_test_accuracy / real_test_accuracy
    min_cas_ratio: float = 0.70  # cas_accuracy / real_test_accuracy
    max_fid_ratio: float = 3.0  # domain_fid / domain_fid_real
    max_memorization: float = 0.05  # memorization_rate
    min_diversity_ratio: float = 0.7
    max_diversity_ratio: float = 1.3
    min_codebook_usage: float = 0.90


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
