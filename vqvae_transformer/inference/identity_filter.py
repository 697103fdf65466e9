"""Keep the samples the prior itself attributes to their intended user.

Library and ``benchmarks/bench_identity_filter.py`` only: measured without gain on identity (docs/DESIGN.md,
"The prior as a classifier of its own samples"), so ``generate_main.py`` has no flag for it.

The prior is a generative classifier: ``log p(grid | user)`` for every user
(:func:`~vqvae_transformer.models.prior.user_log_likelihoods`) gives, with a uniform prior over users, the
posterior ``p(user | grid)``. Drawing ``oversample`` times as many candidates as asked and keeping, per user,
the ones with the highest posterior of the intended user removes samples that drifted towards another person
or towards the population average. It needs no judge and never sees validation data: the prior was trained on
the training split only.

Per user the report gives the candidates drawn, the share the prior attributes to the intended user (its
arg-max; the *acceptance rate*), and the posterior of the kept samples.

:func:`prior_scores` also ranks by two cheaper scores (2 passes per grid): the user-vs-null log-likelihood ratio
and the likelihood under the user; :func:`top_per_user` keeps the best of any score. Neither was a lever either
(``benchmarks/bench_identity_filter.py --rank``; docs/DESIGN.md §7).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..models.prior import user_and_null_log_likelihoods, user_log_likelihoods, user_posterior

RANKINGS = ("posterior", "ratio", "likelihood")
"""How candidates can be ranked by the prior's own scores (see :func:`prior_scores`)."""


@dataclass(frozen=True)
class UserFilterReport:
    """What the filter did for one user (public 1-based id)."""

    user_id: int
    candidates: int
    attributed: int  # candidates whose most likely user (under the prior) is the intended one
    kept: int
    kept_mean_posterior: float
    kept_min_posterior: float

    @property
    def acceptance_rate(self) -> float:
        """Share of candidates the prior attributes to the intended user."""
        return self.attributed / self.candidates if self.candidates else 0.0

    def to_dict(self) -> dict:
        """JSON-ready record (``generation_info.json``)."""
        return {**asdict(self), "acceptance_rate": self.acceptance_rate}


@torch.no_grad()
def select_attributed(prior, tokens: torch.Tensor, labels: torch.Tensor, num_keep: int,
                      user_ids: list[int], batch_size: int = 256) -> tuple[torch.Tensor, list[UserFilterReport]]:
    """Per user, the ``num_keep`` candidates with the highest prior posterior of their intended user.

    Args:
        prior: the pipeline's prior.
        tokens: ``(M, h, w)`` candidate token grids.
        labels: ``(M,)`` 0-based intended users (each user present at least ``num_keep`` times).
        num_keep: grids to keep per user.
        user_ids: public ids indexed by label (for the report).
        batch_size: sequences per scoring forward pass.

    Returns:
        ``(indices, reports)``: indices into ``tokens``, user by user in the order users first appear in
        ``labels`` and best first within a user; one :class:`UserFilterReport` per user in that order.
    """
    posterior = user_posterior(user_log_likelihoods(prior, tokens, batch_size=batch_size))  # (M, N)
    labels = labels.cpu()
    own = posterior[torch.arange(len(labels)), labels]  # (M,)
    attributed = posterior.argmax(dim=1) == labels  # (M,)
    keep, reports = [], []
    for label, best in top_per_user(own, labels, num_keep):
        idx = (labels == label).nonzero().squeeze(1)
        keep.append(best)
        reports.append(UserFilterReport(
            user_id=int(user_ids[label]), candidates=int(len(idx)), attributed=int(attributed[idx].sum()),
            kept=int(num_keep), kept_mean_posterior=float(own[best].mean()), kept_min_posterior=float(own[best].min())))
    return torch.cat(keep), reports


def top_per_user(scores: torch.Tensor, labels: torch.Tensor, num_keep: int) -> list[tuple[int, torch.Tensor]]:
    """Per user, the indices of its ``num_keep`` highest-scoring candidates.

    Args:
        scores: ``(M,)``, higher is better; labels: ``(M,)`` 0-based intended users.

    Returns:
        ``[(label, indices)]``: users in the order they first appear in ``labels``, indices into ``scores`` best
        first (ties keep the drawing order).

    Raises:
        ValueError: a user has fewer than ``num_keep`` candidates.
    """
    labels = labels.cpu()
    chosen = []
    for label in dict.fromkeys(labels.tolist()):  # users in first-appearance order
        idx = (labels == label).nonzero().squeeze(1)
        if len(idx) < num_keep:
            raise ValueError(f"user label {label} has {len(idx)} candidates, fewer than num_keep={num_keep}")
        chosen.append((label, idx[scores.cpu()[idx].argsort(descending=True, stable=True)[:num_keep]]))
    return chosen


@torch.no_grad()
def prior_scores(prior, tokens: torch.Tensor, labels: torch.Tensor, rankings: tuple[str, ...] | list[str],
                 batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Each candidate's score under the prior, for every ranking asked (higher: more of its intended user).

    - ``posterior``: ``p(intended user | grid)`` among all users (``N + 1`` prior passes per grid);
    - ``ratio``: ``log p(grid | user) - log p(grid | null user)``, how much the user token explains the grid;
    - ``likelihood``: ``log p(grid | user)``, the most typical grids of the user.

    ``ratio`` and ``likelihood`` alone take 2 passes per grid; with ``posterior`` they reuse its passes.

    Args:
        tokens: ``(M, h, w)`` candidate grids; labels: ``(M,)`` 0-based intended users.

    Returns:
        ``{ranking: (M,) float32 on the CPU}`` in the order asked.
    """
    unknown = [r for r in rankings if r not in RANKINGS]
    if unknown:
        raise ValueError(f"unknown ranking(s) {unknown}; choose from {list(RANKINGS)}")
    labels = labels.cpu()
    rows = torch.arange(len(labels))
    if "posterior" in rankings:
        every = user_log_likelihoods(prior, tokens, batch_size=batch_size)  # (M, N + 1), null last
        user, null = every[rows, labels], every[:, -1]
        posterior = user_posterior(every)[rows, labels]  # (M,)
    else:
        both = user_and_null_log_likelihoods(prior, tokens, labels, batch_size)  # (M, 2)
        user, null, posterior = both[:, 0], both[:, 1], None
    computed = {"posterior": posterior, "ratio": user - null, "likelihood": user}
    return {r: computed[r] for r in rankings}
