"""The prior as a classifier of its own samples: user likelihoods, posterior, and the attributed-sample filter."""

from __future__ import annotations

import pytest
import torch

from vqvae_transformer.inference.attribution import candidates_per_user
from vqvae_transformer.inference.identity_filter import prior_scores, select_attributed, top_per_user
from vqvae_transformer.models.prior import (build_prior, build_prior_config, make_prior_batch,
                                            user_and_null_log_likelihoods, user_log_likelihoods, user_posterior,
                                            user_vs_null_log_ratio, vocabulary_from_config)

K, GRID = 8, (2, 3)


def _user_specific_prior(steps: int = 60) -> torch.nn.Module:
    """A tiny prior trained so that user 0 writes code 1 everywhere, user 1 code 5 (user 2: either)."""
    torch.manual_seed(0)
    prior = build_prior(build_prior_config(K, 3, GRID, n_layer=1, n_embd=32, n_head=4, dropout=0.0))
    vocab = vocabulary_from_config(prior.config)
    tokens = torch.cat([torch.full((8, *GRID), 1), torch.full((8, *GRID), 5),
                        torch.full((4, *GRID), 1), torch.full((4, *GRID), 5)])
    labels = torch.tensor([0] * 8 + [1] * 8 + [2] * 8)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = prior(**make_prior_batch(tokens, labels, vocab, user_dropout=0.2)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return prior.eval()


def test_log_likelihoods_are_the_code_only_sampling_distribution():
    prior = _user_specific_prior(steps=5)
    vocab = vocabulary_from_config(prior.config)
    tokens = torch.randint(0, K, (4, *GRID), generator=torch.Generator().manual_seed(1))
    scores = user_log_likelihoods(prior, tokens, batch_size=5)  # (4, N+1), batches straddle grids
    assert scores.shape == (4, 4)
    # Reference: one prefix at a time, in the prior's token order, softmax over the K codes (what sampling draws
    # from once non-code ids are masked).
    for grid in range(4):
        codes = make_prior_batch(tokens[grid:grid + 1], torch.tensor([0]), vocab, user_dropout=0.0)["input_ids"][0, 1:]
        for prompt in range(4):  # users 0..2, then the null user
            prefix, total = [K + prompt], 0.0
            for code in codes.tolist():
                with torch.no_grad():
                    logits = prior(input_ids=torch.tensor([prefix])).logits[0, -1, :K]
                total += float(torch.log_softmax(logits, dim=-1)[code])
                prefix.append(code)
            assert float(scores[grid, prompt]) == pytest.approx(total, abs=1e-3)
        # Renormalising over the codes only raises each probability above the full-vocabulary one.
        batch = make_prior_batch(tokens[grid:grid + 1], torch.tensor([0]), vocab, user_dropout=0.0)
        with torch.no_grad():
            full = -float(prior(**batch).loss) * codes.numel()
        assert float(scores[grid, 0]) > full
    posterior = user_posterior(scores)
    assert posterior.shape == (4, 3) and torch.allclose(posterior.sum(1), torch.ones(4))
    labels = torch.tensor([0, 2, 1, 0])
    ratio = user_vs_null_log_ratio(prior, tokens, labels, batch_size=3)
    assert torch.allclose(ratio, scores[torch.arange(4), labels] - scores[:, -1], atol=1e-4)


def test_filter_keeps_only_samples_attributed_to_the_intended_user():
    prior = _user_specific_prior()
    ones, fives = torch.full((3, *GRID), 1), torch.full((3, *GRID), 5)
    # Candidates for user 0 (label 0): 3 of its own kind and 3 of user 1's; for user 1 the reverse.
    tokens = torch.cat([fives, ones, ones, fives])
    labels = torch.tensor([0] * 6 + [1] * 6)
    keep, reports = select_attributed(prior, tokens, labels, num_keep=3, user_ids=[4, 9, 11])
    assert bool((tokens[keep[:3]] == 1).all()) and bool((tokens[keep[3:]] == 5).all())
    assert [r.user_id for r in reports] == [4, 9]
    assert [r.attributed for r in reports] == [3, 3] and reports[0].acceptance_rate == pytest.approx(0.5)
    assert all(r.kept == 3 and r.kept_min_posterior > 0.5 for r in reports)
    with pytest.raises(ValueError, match="fewer than num_keep"):
        select_attributed(prior, tokens[:4], labels[:4], num_keep=5, user_ids=[4, 9, 11])


def test_prior_scores_agree_with_the_likelihoods_whichever_rankings_are_asked():
    prior = _user_specific_prior(steps=5)
    tokens = torch.randint(0, K, (5, *GRID), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([2, 0, 1, 1, 0])
    every = user_log_likelihoods(prior, tokens, batch_size=4)  # (5, N+1), null last
    own = every[torch.arange(5), labels]
    two = user_and_null_log_likelihoods(prior, tokens, labels, batch_size=3)  # (5, 2)
    assert torch.allclose(two, torch.stack([own, every[:, -1]], dim=1), atol=1e-4)
    full = prior_scores(prior, tokens, labels, ["posterior", "ratio", "likelihood"], batch_size=4)
    cheap = prior_scores(prior, tokens, labels, ["likelihood", "ratio"], batch_size=4)  # 2 passes, no posterior
    assert list(full) == ["posterior", "ratio", "likelihood"] and list(cheap) == ["likelihood", "ratio"]
    assert torch.allclose(full["posterior"], user_posterior(every)[torch.arange(5), labels])
    for name, expected in (("ratio", own - every[:, -1]), ("likelihood", own)):
        assert torch.allclose(full[name], expected, atol=1e-4) and torch.allclose(cheap[name], expected, atol=1e-4)
    with pytest.raises(ValueError, match="unknown ranking"):
        prior_scores(prior, tokens, labels, ["loss"])


def test_top_per_user_keeps_each_users_best_in_order_and_ties_in_drawing_order():
    scores = torch.tensor([0.1, 0.9, 0.5, 3.0, 2.0, 2.0, 1.0])
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    chosen = top_per_user(scores, labels, num_keep=2)
    assert [label for label, _ in chosen] == [1, 0]  # first-appearance order
    assert chosen[0][1].tolist() == [1, 2] and chosen[1][1].tolist() == [3, 4]  # the tie 2.0 / 2.0 keeps index 4
    with pytest.raises(ValueError, match="fewer than num_keep"):
        top_per_user(scores, labels, num_keep=4)


def test_candidates_per_user():
    assert candidates_per_user(10, 1.0) == 10
    assert candidates_per_user(10, 2.5) == 25
    for bad in (0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            candidates_per_user(10, bad)
