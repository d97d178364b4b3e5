"""XFuse's training loop.

Why not :func:`stfusion.train.loop.fit` (the shared Lightning loop): XFuse trains on an
endless stream of randomly placed, randomly transformed patches (there is no epoch of a
fixed dataset to shuffle), counts progress in optimisation steps, and changes the model
between steps (metagene drop-and-split switches metagenes on and off and edits the
optimiser's moment estimates). Those fit the shared loop's epoch/DataLoader design badly, so
this loop keeps the parts that matter and does them the same way: seeding through
:func:`stfusion.train.seed.seed_everything` (and seeded numpy/torch generators for the
patches), a progress bar (rich; ``progress=False`` shows none and logs a line at every tenth
of the run instead, :mod:`stfusion.train.progress_log`), a wall-clock budget
(``max_time_s``) and a per-step history of the loss and its terms.

Objective: the single-sample reparameterised ELBO of all training sections, estimated from a
mini-batch of B patches as ``w * sum_b [log p(counts_b) + log p(image_b) - KL(q(Z_b) || p(Z))]
- KL(q(L, E, F) || p(L, E, F))`` with ``w`` = (patches covering the sampled tissue of all
sections) / B. The loss is ``-ELBO / N`` with ``N`` the number of sampled pixels, so
learning rates do not depend on the section size.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from stfusion.models.xfuse import data as D
from stfusion.models.xfuse.likelihood import ExpressionModel
from stfusion.models.xfuse.metagenes import area_sums, drop_and_split
from stfusion.models.xfuse.nn import XFuseNet
from stfusion.models.xfuse.predict import draw_areas
from stfusion.models.xfuse.sampling import Batch, PatchSampler
from stfusion.train.progress_log import ProgressLog

log = logging.getLogger("stfusion")
_LOG_2PI = float(np.log(2 * np.pi))
IMAGE_SD_LR_FACTOR = 0.1
EXPR_GROUP = 2  # index of the expression parameter group in make_optimizer
SPLIT_UNTIL = 0.8  # drop-and-split rounds may split metagenes until this fraction of the steps
SCORE_PATCHES_MAX = 32  # cap of the patches a drop-and-split round is judged on
GRAD_CLIP = 10.0  # global gradient-norm clip of the per-pixel loss (guards against rare spikes)


def elbo_terms(net: XFuseNet, expr: ExpressionModel, batch: Batch, weight: float,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """ELBO and its terms for one mini-batch (see the module docstring)."""
    latents = net.encode(batch.image)
    feats = net.features(latents.sample(generator))
    mu, sd = net.image_params(feats)
    ll_img = ((-0.5 * ((batch.image - mu) / sd) ** 2 - torch.log(sd) - 0.5 * _LOG_2PI) * batch.valid).sum()
    kl_z = latents.kl(batch.valid).sum()
    field = net.field_at(batch.place, feats.shape[-2:])
    sa = net.scale(feats, field, batch.image) * net.activities(feats, expr.active, field)
    draw = expr.sample(generator)
    ll_expr = sa.new_zeros(())
    for b, offset in enumerate(expr.area_offsets(batch)):
        A = area_sums(sa[b], batch.labels[b], batch.counts[b].shape[0])
        ll_expr = ll_expr + expr.log_likelihood(A, batch.counts[b], draw, batch.beta[b], offset)
    kl_global = expr.kl() - sum(f.log_prior() for f in (net.field, expr.gene_field) if f is not None)
    elbo = weight * (ll_expr + ll_img - kl_z) - kl_global
    return {"elbo": elbo, "expr_loglik": weight * ll_expr, "image_loglik": weight * ll_img,
            "kl_z": weight * kl_z, "kl_global": kl_global}


def make_optimizer(net: XFuseNet, expr: ExpressionModel, lr: float, expr_lr: float,
                   image_sd_lr_factor: float = IMAGE_SD_LR_FACTOR) -> torch.optim.Adam:
    """Adam: ``expr_lr`` for the expression parameters (L, E, F, their prior SDs) and the
    expression heads (the 1x1 convolutions giving the scale and the metagene logits); ``lr``
    for the networks and the gene baselines t and u; ``lr * image_sd_lr_factor`` for the
    image-SD head.

    The per-section expression field (:mod:`.field`), when present, shares ``expr_lr``.
    The expression heads learn from a few hundred spots only; at the networks' rate they
    take thousands of steps to map features to metagenes, at ``expr_lr`` about a hundred.
    The baselines stay slow: early on, while the image representation is still poor, a
    fast NB logit ``u`` would run to a nearly flat likelihood for genes not yet explained
    (``r`` -> 0, p -> 1), which then stops them from ever being learned. A slower image-SD
    head keeps the image likelihood from being improved mostly by shrinking the SD where
    the mean is already right (the background) and inflating it elsewhere, which starves the
    mean, and so the latent representation, of gradient early on.
    """
    heads = [*net.scale_head.parameters(), *net.metagene_head.parameters()]
    if net.image_scale_head is not None:
        heads += list(net.image_scale_head.parameters())
    if net.field is not None:  # the per-section expression field: fitted like the expression part
        heads += list(net.field.parameters())
    sd_head = list(net.image_sd_head.parameters())
    ids = {id(p) for p in heads + sd_head}
    rest = [p for p in net.parameters() if id(p) not in ids]
    baselines = [expr.t, expr.u]
    fast = [p for name, p in expr.named_parameters() if name not in ("t", "u")]
    return torch.optim.Adam([{"params": rest + baselines, "lr": lr}, {"params": sd_head, "lr": lr * image_sd_lr_factor},
                             {"params": [*heads, *fast], "lr": expr_lr}])


def _progress(enabled: bool, total: int):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("XFuse"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"), disable=not enabled,
                   transient=True)
    return bar, total


def train(
    net: XFuseNet,
    expr: ExpressionModel,
    sampler: PatchSampler,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    expr_lr: float,
    metagene_interval: int,
    split_until: float = SPLIT_UNTIL,
    metagene_drop: bool = True,
    kl_warmup: int = 0,
    expr_warmup: int = 0,
    seed: int = 0,
    max_time_s: float | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Optimise ``net`` and ``expr`` in place; returns (history, metagene history, timed_out).

    Drop-and-split runs every ``metagene_interval`` steps; splits stop after
    ``split_until`` x ``steps`` (drops go on), so the last stretch refines a fixed set;
    ``metagene_drop=False`` never drops (every split metagene is kept).
    ``kl_warmup``: the latent KL's weight in the loss rises linearly from 0 to 1 over these
    steps (the recorded ELBO always has the full KL), so the latents learn to carry the
    image before the prior pulls them in. ``expr_warmup``: the learning rate of the
    expression parameters and heads rises linearly from 0 over these steps, so the scale and
    the metagenes are fitted to an image representation that already tells tissue types
    apart; fitted earlier, the scale can settle near 0 on a tissue type the image model has
    not yet separated from the background, where softplus leaves it almost no gradient.
    """
    opt = make_optimizer(net, expr, lr, expr_lr)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    weight = sampler.patches_per_epoch / batch_size
    n_pix = float(sum(len(s.centres) for s in sampler.sources))
    history: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    fresh: set[int] = set()
    start, timed_out = time.perf_counter(), False
    net.train()
    bar, total = _progress(progress, steps)
    lines = None if progress else ProgressLog("XFuse", steps)
    with bar:
        task = bar.add_task("", total=total)
        for step in range(1, int(steps) + 1):
            terms = elbo_terms(net, expr, sampler.sample(batch_size), weight, gen)
            kl_weight = min(1.0, step / kl_warmup) if kl_warmup else 1.0
            opt.param_groups[EXPR_GROUP]["lr"] = expr_lr * (min(1.0, step / expr_warmup) if expr_warmup else 1.0)
            loss = -(terms["elbo"] + (1.0 - kl_weight) * terms["kl_z"]) / n_pix
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], GRAD_CLIP)
            opt.step()
            row = {"step": step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                   "metagenes": expr.n_active, "seconds": time.perf_counter() - start}
            history.append(row)
            if metagene_interval and step % metagene_interval == 0 and step < steps:
                n_score = scoring_patches(sampler.patches_per_epoch, batch_size)
                event = drop_and_split(net, expr, opt, sampler.sample(n_score), sampler.patches_per_epoch / n_score,
                                       fresh=fresh, allow_split=step < split_until * steps,
                                       allow_drop=metagene_drop, generator=gen)
                fresh = set(event["fresh"])
                events.append({"step": step, **event})
                log.debug("xfuse step %d: metagenes %d -> %d", step, event["before"], event["after"])
            bar.update(task, advance=1, description=f"ELBO/px {-row['loss']:.3f}  metagenes {expr.n_active}")
            if lines is not None:
                lines.update(step, **{"ELBO/px": -row["loss"], "metagenes": expr.n_active})
            if max_time_s is not None and row["seconds"] > max_time_s:
                timed_out = step < steps
                break
    net.eval()
    return history, events, timed_out


def scoring_patches(patches_per_epoch: float, batch_size: int) -> int:
    """Patches a drop-and-split round is judged on: enough to cover the tissue once (at most
    ``SCORE_PATCHES_MAX``), never fewer than a training batch. Judged on one small batch, a
    metagene of a region the batch misses contributes nothing but its KL term and is dropped,
    so on a section much larger than a patch the metagenes collapse to one or two."""
    return int(max(batch_size, min(SCORE_PATCHES_MAX, math.ceil(patches_per_epoch))))


def baseline_sizes(labels: np.ndarray, n_obs: int) -> np.ndarray:
    """Pixels per observation in a training label map (the initial ``sum s * a`` with s = 1)."""
    lab = labels.ravel()
    return np.bincount(lab[lab > 0] - 1, minlength=n_obs).astype(np.float64)[:n_obs]


def refit_fields(net, expr, sections: list, datas: list, seed: int, frame_px: int) -> None:
    """Each training section's field at its MAP given the trained rest (:meth:`GeneField.refit`),
    with the spots' ``s * a`` sums at the posterior means, as prediction computes them."""
    for i, (section, d) in enumerate(zip(sections, datas, strict=True)):
        W = D.area_weights(D.area_spec(section), d.fx, d.fy, d.shape)
        A = draw_areas(net, expr, d, W, 1, seed, frame_px=frame_px, mean=True).A[0]
        expr.gene_field.refit(i, torch.from_numpy(A), torch.from_numpy(d.counts), expr, torch.from_numpy(d.beta))


def one_metagene_warning(n_metagenes: int, steps_run: int, metagene_interval: int | None) -> str | None:
    """Why a fit ended with a single metagene, and what to change; None when it has more.

    With one metagene every spot's expression profile is the same up to its scale, so the
    maps show no tissue structure. Splits happen at multiples of ``metagene_interval`` below
    ``SPLIT_UNTIL`` x the steps: a run shorter than that never splits.
    """
    if n_metagenes > 1:
        return None
    if not metagene_interval:
        why = "metagene_interval is 0, which turns drop-and-split off"
        fix = "set metagene_interval (e.g. steps / 10)"
    elif metagene_interval >= SPLIT_UNTIL * steps_run:
        why = (f"the fit ran {steps_run} steps and drop-and-split splits only at multiples of metagene_interval "
               f"({metagene_interval}) below {SPLIT_UNTIL:.0%} of the steps, so it never split")
        fix = (f"raise steps above {int(metagene_interval / SPLIT_UNTIL) + 1} (or lower metagene_interval below "
               f"{max(1, int(SPLIT_UNTIL * steps_run))})")
    else:
        why = f"every metagene split in {steps_run} steps was dropped again as non-contributing"
        fix = "train longer (steps) so that the image model can tell tissue types apart"
    return (f"xfuse: the fit ended with 1 metagene, so every spot gets the same expression profile up to its scale: "
            f"{why}. To fix: {fix}.")
