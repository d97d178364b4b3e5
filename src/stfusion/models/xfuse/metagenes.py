"""Metagene drop-and-split (XFuse's expansion strategy).

Training starts with one metagene. Every ``metagene_interval`` steps the ELBO of a fresh
mini-batch is evaluated at the posterior means with each active metagene removed (its
softmax share redistributed over the others, its L row and KL term gone, the reference
implementation's test). A metagene whose removal does not lower the ELBO contributes
nothing and is dropped (greedily, see :func:`drop_and_split`); each contributing one is
split into two children that inherit its parameters (the child's metagene logit equals
the parent's, both lowered by log 2 so their summed activity is the parent's; the two L
rows are the parent's plus and minus the same N(0, 0.1²) noise, which breaks their symmetry;
Adam's moment estimates are copied), until ``max_metagenes`` are active. The halves of a
split get one interval to diverge before they are judged (a fresh pair is nearly identical,
so either half alone would look superfluous). At least one metagene is always kept.

Parameter shapes never change: ``max_metagenes`` rows exist from the start and a boolean
mask selects the active ones (an inactive row gets no gradient).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from stfusion.models.xfuse.likelihood import ExpressionModel
from stfusion.models.xfuse.nn import XFuseNet
from stfusion.models.xfuse.sampling import Batch

SPLIT_NOISE = 0.1  # SD of the opposite nudges of the children's L rows
HEAD_NOISE = 0.1  # SD of the opposite nudges of their metagene-logit weights (features are ~unit scale)


def area_sums(sa: torch.Tensor, labels: torch.Tensor, n_areas: int) -> torch.Tensor:
    """A[k, m] = sum of ``sa[m]`` (M, P, P) over pixels with label k (labels < 0 ignored)."""
    lab = labels.reshape(-1)
    sel = lab >= 0
    vals = sa.reshape(sa.shape[0], -1)[:, sel].T
    return torch.zeros(n_areas, sa.shape[0], dtype=sa.dtype).index_add_(0, lab[sel], vals)


def _expression_loglik(expr: ExpressionModel, s: torch.Tensor, a: torch.Tensor, batch: Batch, draw: dict) -> torch.Tensor:
    total = s.new_zeros(())
    for b in range(s.shape[0]):
        A = area_sums(s[b] * a[b], batch.labels[b], batch.counts[b].shape[0])
        total = total + expr.log_likelihood(A, batch.counts[b], draw, batch.beta[b])
    return total


class _Scorer:
    """ELBO terms that depend on the metagenes, for any subset of them (posterior means).

    The image, the latent KL and the scale do not change when metagenes are removed, so the
    networks run once; a subset ``keep`` (positions among the active rows) renormalises the
    softmax over its logits and uses its L rows and their KL.
    """

    def __init__(self, net: XFuseNet, expr: ExpressionModel, batch: Batch, weight: float) -> None:
        feats = net.features(net.encode(batch.image).sample(mean=True))
        self.s = net.scale(feats)
        self.logits = net.metagene_head(feats)[:, expr.active]
        self.draw = expr.sample(mean=True)
        self.expr, self.batch, self.weight = expr, batch, weight

    def elbo(self, keep: list[int]) -> float:
        sub = {**self.draw, "L": self.draw["L"][keep]}
        act = torch.softmax(self.logits[:, keep], 1)
        ll = _expression_loglik(self.expr, self.s, act, self.batch, sub)
        return float(self.weight * ll - self.expr.kl(keep))

    def contributions(self, keep: list[int], judged: list[int]) -> dict[int, float]:
        """ELBO(keep) - ELBO(keep without m) for each m in ``judged``."""
        if len(keep) == 1:
            return {m: float("inf") for m in judged}
        full = self.elbo(keep)
        return {m: full - self.elbo([k for k in keep if k != m]) for m in judged}


@torch.no_grad()
def contributions(net: XFuseNet, expr: ExpressionModel, batch: Batch, weight: float) -> np.ndarray:
    """ELBO(all) - ELBO(without m) for each active metagene m (posterior means)."""
    keep = list(range(expr.n_active))
    return np.asarray(list(_Scorer(net, expr, batch, weight).contributions(keep, keep).values()))


def _copy_row(opt: torch.optim.Optimizer, param: torch.Tensor, src: int, dst: int) -> None:
    state = opt.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dst] = state[key][src]


def _zero_row(opt: torch.optim.Optimizer, param: torch.Tensor, row: int) -> None:
    state = opt.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][row] = 0


def _rows(net: XFuseNet, expr: ExpressionModel) -> list[torch.Tensor]:
    return [net.metagene_head.weight, net.metagene_head.bias, expr.L_mu, expr.L_log_sd]


@torch.no_grad()
def split(net: XFuseNet, expr: ExpressionModel, opt: torch.optim.Optimizer, parent: int, child: int,
          generator: torch.Generator | None = None) -> None:
    """Split row ``parent`` (absolute index) into itself and the free row ``child``."""
    head = net.metagene_head
    eta = torch.randn(head.weight[parent].shape, generator=generator) * HEAD_NOISE
    head.weight[child] = head.weight[parent] + eta
    head.weight[parent] -= eta
    head.bias[parent] -= math.log(2.0)
    head.bias[child] = head.bias[parent]
    expr.split(parent, child, SPLIT_NOISE, generator)
    for p in _rows(net, expr):
        _copy_row(opt, p, parent, child)


@torch.no_grad()
def drop(net: XFuseNet, expr: ExpressionModel, opt: torch.optim.Optimizer, row: int) -> None:
    expr.active[row] = False
    for p in _rows(net, expr):
        _zero_row(opt, p, row)


@torch.no_grad()
def drop_and_split(
    net: XFuseNet,
    expr: ExpressionModel,
    opt: torch.optim.Optimizer,
    batch: Batch,
    weight: float,
    *,
    fresh: set[int] | frozenset[int] = frozenset(),
    allow_split: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """One drop-and-split round; returns what happened (for ``metagene_history_``).

    Non-contributing metagenes are dropped one at a time, the least contributing first,
    re-scoring the rest after each drop (two redundant metagenes each look superfluous, but
    only one of them is). ``fresh``: rows made by the previous round's splits; they get one
    interval to diverge (neither dropped nor split now). The returned ``"fresh"`` holds this
    round's halves.
    """
    scorer = _Scorer(net, expr, batch, weight)
    rows = torch.nonzero(expr.active).flatten().tolist()
    keep = list(range(len(rows)))
    judged = [i for i in keep if rows[i] not in fresh]
    scores = scorer.contributions(keep, judged)
    first = dict(scores)
    dropped = []
    while scores and len(keep) > 1:
        worst = min(scores, key=scores.get)
        if scores[worst] > 0:
            break
        keep.remove(worst)
        judged.remove(worst)
        dropped.append(rows[worst])
        scores = scorer.contributions(keep, judged)
    for r in dropped:
        drop(net, expr, opt, r)
    splits = []
    if allow_split:
        free = torch.nonzero(~expr.active).flatten().tolist()
        for i in sorted(scores, key=scores.get, reverse=True):
            if scores[i] <= 0 or not free:
                break
            child = free.pop(0)
            split(net, expr, opt, rows[i], child, generator)
            splits.append((rows[i], child))
    return {"before": len(rows), "after": expr.n_active, "dropped": dropped, "splits": splits,
            "contributions": {rows[i]: (v if np.isfinite(v) else None) for i, v in first.items()},
            "fresh": sorted({r for pair in splits for r in pair})}
