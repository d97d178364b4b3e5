"""Metagene drop-and-split (XFuse's expansion strategy).

Training starts with one metagene. Every ``metagene_interval`` steps the ELBO of a fresh
mini-batch is evaluated at the posterior means with each active metagene removed (its
softmax share redistributed over the others, its L row and KL term gone, the reference
implementation's test). A metagene whose removal does not lower the ELBO contributes
nothing and is dropped (greedily, see :func:`drop_and_split`); each contributing one is
split into two children that inherit its parameters (the child's metagene logit equals
the parent's, both lowered by log 2 so their summed activity is the parent's, with opposite
small nudges of the logit weights; Adam's moment estimates are copied), until
``max_metagenes`` are active. Where the reference copies the parent exactly and waits for
sampling noise to separate the children, ours start apart: the two L rows move in opposite
directions along the main axis of the parent's residuals (the first principal axis of
log((counts + 1) / (nu + 1)) over areas, weighted by the parent's share of each area, times
its SD; half a unit along it, at most 1 per gene, plus N(0, 0.1²) noise). A metagene that
stands for two subtypes under-predicts one's markers where that one dominates and the
other's elsewhere, so the axis separates them; on a CPU budget of a few hundred steps this
is what lets every subtype get its own metagene. The halves of a
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

SPLIT_NOISE = 0.1  # SD of the random opposite nudges of the children's L rows
SPLIT_STEP = 0.5  # how far the children's L rows move (in opposite ways) along the parent's residual direction
SPLIT_MAX = 1.0  # ... at most, per gene (log scale)
HEAD_NOISE = 0.1  # SD of the opposite nudges of their metagene-logit weights (features are ~unit scale)


def area_sums(sa: torch.Tensor, labels: torch.Tensor, n_areas: int) -> torch.Tensor:
    """A[k, m] = sum of ``sa[m]`` (M, P, P) over pixels with label k (labels < 0 ignored)."""
    lab = labels.reshape(-1)
    sel = lab >= 0
    vals = sa.reshape(sa.shape[0], -1)[:, sel].T
    return torch.zeros(n_areas, sa.shape[0], dtype=sa.dtype).index_add_(0, lab[sel], vals)


def _expression_loglik(expr: ExpressionModel, s: torch.Tensor, a: torch.Tensor, batch: Batch, draw: dict,
                       offsets: list) -> torch.Tensor:
    total = s.new_zeros(())
    for b in range(s.shape[0]):
        A = area_sums(s[b] * a[b], batch.labels[b], batch.counts[b].shape[0])
        total = total + expr.log_likelihood(A, batch.counts[b], draw, batch.beta[b], offsets[b])
    return total


def _principal_axis(resid: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """First principal axis of the rows of ``resid`` (areas x genes) under ``weight``
    (areas), times its SD; zeros when there is nothing to split."""
    w = weight / weight.sum().clamp_min(1e-12)
    if resid.shape[0] < 2 or float(weight.sum()) <= 0:
        return torch.zeros(resid.shape[1])
    centred = (resid - (w[:, None] * resid).sum(0)) * w.sqrt()[:, None]
    _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[0] * sv[0]


class _Scorer:
    """ELBO terms that depend on the metagenes, for any subset of them (posterior means).

    The image, the latent KL and the scale do not change when metagenes are removed, so the
    networks run once; a subset ``keep`` (positions among the active rows) renormalises the
    softmax over its logits and uses its L rows and their KL.
    """

    def __init__(self, net: XFuseNet, expr: ExpressionModel, batch: Batch, weight: float) -> None:
        feats = net.features(net.encode(batch.image).sample(mean=True))
        field = net.field_at(batch.place, feats.shape[-2:])
        self.s = net.scale(feats, field, batch.image)
        self.logits = net.metagene_logits(feats, expr.active, field)
        self.draw = expr.sample(mean=True)
        self.offsets = expr.area_offsets(batch)
        self.expr, self.batch, self.weight = expr, batch, weight

    def elbo(self, keep: list[int]) -> float:
        sub = {**self.draw, "L": self.draw["L"][keep]}
        act = torch.softmax(self.logits[:, keep], 1)
        ll = _expression_loglik(self.expr, self.s, act, self.batch, sub, self.offsets)
        return float(self.weight * ll - self.expr.kl(keep))

    def residual_directions(self) -> torch.Tensor:
        """Per active metagene, the main axis of its residual variation (metagenes x genes).

        Residuals are log((counts + 1) / (nu + 1)) per area; for metagene m they are weighted
        by its share of each area's activity, centred, and the first principal axis is taken,
        scaled by its SD. A metagene that stands for two subtypes under-predicts the first's
        markers where the first dominates and the second's elsewhere: the axis points from
        one to the other, which is where its two children should go.
        """
        resid, share = [], []
        act = torch.softmax(self.logits, 1)
        for b in range(act.shape[0]):
            A = area_sums(self.s[b] * act[b], self.batch.labels[b], self.batch.counts[b].shape[0])
            nu = self.expr.expected_counts(A, self.draw, self.batch.beta[b], self.offsets[b])
            resid.append(torch.log1p(self.batch.counts[b]) - torch.log1p(nu))
            share.append(A / A.sum(1, keepdim=True).clamp_min(1e-12))
        R, W = torch.cat(resid), torch.cat(share)
        return torch.stack([_principal_axis(R, W[:, m]) for m in range(W.shape[1])])

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
    fields = list(net.field.maps) if net.field is not None else []  # rows 0..M-1 are metagenes
    return [net.metagene_head.weight, net.metagene_head.bias, expr.L_mu, expr.L_log_sd, *fields]


@torch.no_grad()
def split(net: XFuseNet, expr: ExpressionModel, opt: torch.optim.Optimizer, parent: int, child: int,
          direction: torch.Tensor | None = None, generator: torch.Generator | None = None) -> None:
    """Split row ``parent`` (absolute index) into itself and the free row ``child``.

    ``direction`` (genes): the main axis of the parent's residuals; the child's L row moves
    ``SPLIT_STEP`` along it (each gene by at most ``SPLIT_MAX``) and the parent's the
    other way, plus opposite N(0, SPLIT_NOISE^2) nudges.
    """
    head = net.metagene_head
    eta = torch.randn(head.weight[parent].shape, generator=generator) * HEAD_NOISE
    head.weight[child] = head.weight[parent] + eta
    head.weight[parent] -= eta
    head.bias[parent] -= math.log(2.0)
    head.bias[child] = head.bias[parent]
    for field in (net.field.maps if net.field is not None else []):
        field[child] = field[parent]
    shift = torch.randn(expr.L_mu.shape[1], generator=generator) * SPLIT_NOISE
    if direction is not None:
        shift = shift + (SPLIT_STEP * direction).clamp(-SPLIT_MAX, SPLIT_MAX)
    expr.split(parent, child, shift)
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
    allow_drop: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """One drop-and-split round; returns what happened (for ``metagene_history_``).

    Non-contributing metagenes are dropped one at a time, the least contributing first,
    re-scoring the rest after each drop (two redundant metagenes each look superfluous, but
    only one of them is); ``allow_drop=False`` keeps them all. ``fresh``: rows made by the
    previous round's splits; they get one interval to diverge (neither dropped nor split
    now). The returned ``"fresh"`` holds this round's halves.
    """
    scorer = _Scorer(net, expr, batch, weight)
    rows = torch.nonzero(expr.active).flatten().tolist()
    keep = list(range(len(rows)))
    judged = [i for i in keep if rows[i] not in fresh]
    scores = scorer.contributions(keep, judged)
    first = dict(scores)
    dropped = []
    while allow_drop and scores and len(keep) > 1:
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
        directions = scorer.residual_directions()
        free = torch.nonzero(~expr.active).flatten().tolist()
        for i in sorted(scores, key=scores.get, reverse=True):
            if scores[i] <= 0 or not free:
                break
            child = free.pop(0)
            split(net, expr, opt, rows[i], child, directions[i], generator)
            splits.append((rows[i], child))
    return {"before": len(rows), "after": expr.n_active, "dropped": dropped, "splits": splits,
            "contributions": {rows[i]: (v if np.isfinite(v) else None) for i, v in first.items()},
            "fresh": sorted({r for pair in splits for r in pair})}
