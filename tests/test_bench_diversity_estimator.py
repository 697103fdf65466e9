"""benchmarks/bench_diversity_estimator.py: both estimators on splits of one distribution, and its one-line error."""

import pytest
import torch

from benchmarks.bench_diversity_estimator import main, split_estimates


def test_split_estimates_show_the_average_of_ratios_bias_and_not_the_ratio_of_averages():
    g = torch.Generator().manual_seed(0)
    users, per_user = 31, 19  # the users'-shape training split
    scales = torch.rand(users, generator=g) * 1.5 + 0.5
    feats = (torch.randn(users, per_user, 2, generator=g) * scales[:, None, None]).reshape(-1, 2)
    labels = torch.arange(users).repeat_interleave(per_user)
    result = split_estimates(feats, labels, splits=100, generated=10, real=5, seed=0)
    assert set(result) == {"ratio_of_averages", "average_of_ratios"} and all(len(v) == 100 for v in result.values())
    ratio_of_averages = sum(result["ratio_of_averages"]) / 100
    average_of_ratios = sum(result["average_of_ratios"]) / 100
    assert abs(ratio_of_averages - 1.0) < 0.02 and average_of_ratios > ratio_of_averages + 0.03
    assert split_estimates(feats, labels, 3, 10, 5, seed=1) == split_estimates(feats, labels, 3, 10, 5, seed=1)
    with pytest.raises(SystemExit, match="no user has 20 training images"):
        split_estimates(feats, labels, 1, 15, 5, seed=0)


def test_a_model_without_a_cached_judge_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no cached judge in .*run python validate_main.py"):
        main(["--model_dirs", str(tmp_path)])
