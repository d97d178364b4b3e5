"""XFuse's expression model: collapsed negative-binomial likelihood, priors and posteriors.

Per pixel ``x`` and gene ``g`` (the paper's equations):

    r(g, x) = s(x) * exp(t_g + beta . E_g) * sum_m a_m(x) exp(L_mg)
    p_g     = sigmoid(u_g + beta . F_g)

so the expected count (conditional mean expression) is ``nu(g, x) = r(g, x) p_g / (1 - p_g)
= r(g, x) exp(u_g + beta . F_g)``. Counts of an area are the sum over its pixels; a sum of
negative binomials sharing ``p`` is negative binomial with the summed ``r``, so the
likelihood is collapsed: ``A[area, m] = sum over the area of s * a_m`` is computed first (one
number per area and metagene), then ``r(area, g) = exp(t_g + beta . E_g) * (A @ exp(L))[area, g]``.
Memory grows with areas x genes, never with pixels x genes.

``L`` (metagenes x genes), ``E`` and ``F`` (effects x genes) have mean-field Gaussian
posteriors and N(0, sigma_g^2) priors whose variances are learned (one per gene and matrix,
as the reference implementation). ``t`` and
``u`` are point estimates, initialised by a global negative-binomial fit
(:func:`fit_gene_baselines`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_EPS_R = 1e-8
MAX_INIT_LOGIT = 3.0  # bound of the initial NB logits (see fit_gene_baselines)
_INIT_LOG_SD = -3.0  # posterior SD of new L / E / F entries: exp(-3) ~ 0.05


def nb_log_prob(counts: torch.Tensor, r: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Elementwise log NB(counts | r, p = sigmoid(logit)); mean r * exp(logit)."""
    r = r + _EPS_R
    return (
        counts * F.logsigmoid(logit)
        + r * F.logsigmoid(-logit)
        + torch.lgamma(counts + r)
        - torch.lgamma(r)
        - torch.lgamma(counts + 1.0)
    )


def _gauss_kl(mu: torch.Tensor, log_sd: torch.Tensor, log_prior_sd: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sd) || N(0, prior_sd)) summed."""
    var_ratio = torch.exp(2 * (log_sd - log_prior_sd))
    return 0.5 * (var_ratio + mu**2 * torch.exp(-2 * log_prior_sd) - 1.0 - 2 * (log_sd - log_prior_sd)).sum()


class ExpressionModel(nn.Module):
    """Gene baselines, metagene profiles L and covariate effects E, F (see module docstring).

    Rows of ``L`` exist for ``max_metagenes`` metagenes; the boolean buffer ``active`` says
    which take part (drop-and-split switches rows on and off; parameter shapes never change).
    """

    def __init__(self, n_genes: int, max_metagenes: int, n_effects: int) -> None:
        super().__init__()
        g, m, k = int(n_genes), int(max_metagenes), int(n_effects)
        self.t = nn.Parameter(torch.zeros(g))
        self.u = nn.Parameter(torch.zeros(g))
        self.L_mu = nn.Parameter(torch.zeros(m, g))
        self.L_log_sd = nn.Parameter(torch.full((m, g), _INIT_LOG_SD))
        self.E_mu = nn.Parameter(torch.zeros(k, g))
        self.E_log_sd = nn.Parameter(torch.full((k, g), _INIT_LOG_SD))
        self.F_mu = nn.Parameter(torch.zeros(k, g))
        self.F_log_sd = nn.Parameter(torch.full((k, g), _INIT_LOG_SD))
        self.log_prior_sd = nn.Parameter(torch.zeros(3, g))  # per gene, for L, E and F
        active = torch.zeros(m, dtype=torch.bool)
        active[0] = True
        self.register_buffer("active", active)
        self.gene_field = None  # per-section gene field (:class:`.gene_field.GeneField`), when trained with one

    def area_offsets(self, batch) -> list[torch.Tensor | None]:
        """The gene field's log-rate offsets of each patch's count rows (None without a field)."""
        if self.gene_field is None or batch.obs is None:
            return [None] * len(batch.counts)
        return self.gene_field.training_offsets(batch.section, batch.obs)

    @property
    def n_effects(self) -> int:
        return int(self.E_mu.shape[0])

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    def sample(self, generator: torch.Generator | None = None, mean: bool = False) -> dict[str, torch.Tensor]:
        """A draw of L (active rows), E and F from the posterior (or its means)."""
        out = {}
        for name in ("L", "E", "F"):
            mu, log_sd = getattr(self, f"{name}_mu"), getattr(self, f"{name}_log_sd")
            if name == "L":
                mu, log_sd = mu[self.active], log_sd[self.active]
            if mean:
                out[name] = mu
            else:
                eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
                out[name] = mu + torch.exp(log_sd) * eps
        return out

    def kl(self, keep: list[int] | None = None) -> torch.Tensor:
        """KL of the global posteriors: the active L rows (``keep``: only these of them, by
        position among the active rows), E and F."""
        rows = torch.nonzero(self.active).flatten()
        if keep is not None:
            rows = rows[keep]
        lp = self.log_prior_sd
        total = _gauss_kl(self.L_mu[rows], self.L_log_sd[rows], lp[0])
        if self.n_effects:
            total = total + _gauss_kl(self.E_mu, self.E_log_sd, lp[1]) + _gauss_kl(self.F_mu, self.F_log_sd, lp[2])
        return total

    def log_rate_and_logit(self, draw: dict[str, torch.Tensor], beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-gene log rate offset ``t + beta E`` (G,) and NB logit ``u + beta F`` (G,)."""
        offset, logit = self.t, self.u
        if self.n_effects:
            offset = offset + beta @ draw["E"]
            logit = logit + beta @ draw["F"]
        return offset, logit

    def rates(self, A: torch.Tensor, draw: dict[str, torch.Tensor], beta: torch.Tensor,
              area_offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """NB ``r`` (areas x genes) from ``A`` (areas x active metagenes), and the logit (G,).
        ``area_offset`` (areas x genes): added log rates (the gene field, :mod:`.gene_field`)."""
        offset, logit = self.log_rate_and_logit(draw, beta)
        log_offset = offset if area_offset is None else offset + area_offset
        r = (A @ torch.exp(draw["L"])) * torch.exp(log_offset)
        return r, logit

    def expected_counts(self, A: torch.Tensor, draw: dict[str, torch.Tensor], beta: torch.Tensor,
                        area_offset: torch.Tensor | None = None) -> torch.Tensor:
        """nu = r * p / (1 - p) (areas x genes)."""
        r, logit = self.rates(A, draw, beta, area_offset)
        return r * torch.exp(logit)

    def log_likelihood(self, A: torch.Tensor, counts: torch.Tensor, draw: dict[str, torch.Tensor], beta: torch.Tensor,
                       area_offset: torch.Tensor | None = None) -> torch.Tensor:
        """Collapsed NB log-likelihood of ``counts`` (areas x genes) summed."""
        r, logit = self.rates(A, draw, beta, area_offset)
        return nb_log_prob(counts, r, logit).sum()

    def split(self, parent: int, child: int, shift: torch.Tensor) -> None:
        """Copy row ``parent`` of L into the free row ``child`` and activate it; the child's
        posterior mean moves by ``+shift`` and the parent's by ``-shift`` (per gene)."""
        with torch.no_grad():
            self.L_mu[child] = self.L_mu[parent] + shift
            self.L_mu[parent] -= shift
            self.L_log_sd[child] = self.L_log_sd[parent]
            self.active[child] = True


def fit_gene_baselines(counts: np.ndarray, size: np.ndarray, iters: int = 200,
                       max_abs_logit: float = MAX_INIT_LOGIT) -> tuple[np.ndarray, np.ndarray]:
    """Global negative-binomial fit per gene: counts_ig ~ NB(size_i exp(t_g), sigmoid(u_g)).

    ``counts``: observed areas x genes; ``size``: each area's sum of the initial ``s * a``
    (its pixel count when s = 1). Returns ``(t, u)`` (float32), fitted by L-BFGS from the
    moment estimate of the mean with ``|u| <= max_abs_logit`` (``u = max * tanh(v)``).

    The bound matters: before the model explains anything, all spatial variation looks like
    noise, and the unbounded fit finds a nearly flat NB (``r`` ~ 0.1 per spot, p ~ 1) under
    which the mean hardly changes the likelihood, so training would never move from it. With
    |u| <= 3 the variance starts at most ~21x the mean; training then refines ``u`` freely.
    """
    x = torch.as_tensor(np.asarray(counts, dtype=np.float32))
    n = torch.as_tensor(np.asarray(size, dtype=np.float32))[:, None]
    rate = (x.sum(0) / n.sum()).clamp_min(1e-6)  # mean count per unit size
    v = torch.zeros_like(rate, requires_grad=True)  # u = 0: p = 1/2, variance twice the mean
    t = torch.log(rate).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([t, v], lr=0.5, max_iter=int(iters), line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        u = max_abs_logit * torch.tanh(v)
        loss = -nb_log_prob(x, n * torch.exp(t), u).sum() / x.shape[0] + 1e-3 * (v**2).sum()  # keeps v finite
        loss.backward()
        return loss

    start = (t.detach().clone(), v.detach().clone())
    try:
        opt.step(closure)
    except RuntimeError:  # a diverging line search: keep the moment estimate
        pass
    if not (torch.isfinite(t).all() and torch.isfinite(v).all()):
        t, v = start
    u = max_abs_logit * torch.tanh(v)
    return t.detach().numpy().astype(np.float32), u.detach().numpy().astype(np.float32)
