"""A per-section, per-gene Gaussian-process random effect on XFuse's expression rates (``gene_field``).

The paper's model explains a gene's spatial pattern only through the metagene activities,
which the decoder reads from the latent tissue state, whose posterior an encoder infers from
the image alone. What the measured spots of a section say about the tissue between them
reaches an unmeasured spot only through weights shared by the whole section. On the MOB 50%
spot hold-out that leaves it below a Gaussian process over the spots
(``benchmarks/xfuse/README.md``).

With ``gene_field=True`` each training section gets, for every gene g, a spatial random
effect f_g on the gene's log rate:

    r(g, area) = exp(t_g + beta . E_g + f_g(area)) * sum_m A[area, m] exp(L_mg)

The prior of f_g is a Gaussian process over the section, squared-exponential with a small
nugget, whose length scale and signal variance are the gene's own: the maximum
marginal-likelihood values of the Gaussian-process baseline (:func:`stfusion.baselines.gp.fit_hyperparameters`)
on the section's log1p(counts / spot total x 1e4), fitted once before training. Its values
at the training spots are parameters (whitened, ``f = sd * U sqrt(lambda) z`` with the
kernel's eigendecomposition and a N(0, I) prior on ``z``), point (MAP) estimates fitted
with the expression parameters. The counts of an area stay the collapsed negative binomial
(memory grows with areas x genes, never with pixels x genes). Any other area (a held-out
spot, a grid cell, a mask) gets the kriging mean of f_g at its centroid. The image model
carries what histology shows, the field what the neighbouring spots show beyond it: a
regression-kriging inside the generative model. After training on patches, each section's
field is refitted full batch to its MAP given the rest of the model (:meth:`GeneField.refit`;
on patches it converges slowly, as its spots are sampled only now and then). A section not trained on (an H&E-only slide
included) gets no field (f = 0).

Cost: one eigendecomposition of a spots x spots kernel per distinct length scale (at most
16) and section, the prior fit's own (reused, not computed again), kept in float32 (16 x 64
MB for a Visium section of 4,000 spots), and per step a (spots in the batch) x spots x genes
product; kriging means by :mod:`.kriging` (truncated kernels, long length scales
interpolated); ``benchmarks/xfuse/gene_field_scale.py`` times it at Visium size.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from torch import nn

from stfusion.baselines.gp import fit_hyperparameters, sq_exp_kernel
from stfusion.models.xfuse.field import section_index
from stfusion.models.xfuse.kriging import kriging_mean

NUGGET = 1e-2  # independent share of the unit-amplitude kernel (keeps it well conditioned)


def area_centres_um(W: sparse.spmatrix, width: int, fx: float, fy: float, mpp: float) -> np.ndarray:
    """Centroids (x, y) in µm of the areas of ``W`` (areas x working pixels of an image
    ``width`` pixels wide; ``fx``/``fy`` working per full-resolution pixel, ``mpp`` µm per
    full-resolution pixel). NaN for empty areas."""
    W = sparse.csr_matrix(W)
    ii, jj = np.divmod(np.arange(W.shape[1], dtype=np.int64), int(width))
    size = np.asarray(W.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (W @ ((jj + 0.5) / fx)) / size * mpp
        y = (W @ ((ii + 0.5) / fy)) / size * mpp
    return np.column_stack([x, y])


class GeneField(nn.Module):
    """Per-section, per-gene Gaussian-process log-rate offsets (see the module docstring).

    ``maps[i]`` (spots of section i x genes) holds the whitened values; buffers
    ``coords_i`` (µm), ``lengthscale_i`` (µm) and ``sd_i`` hold each section's spot
    centres and each gene's prior (saved with the weights).
    """

    def __init__(self, names: list[str], shapes: list[tuple[int, int]], n_obs: list[int], n_genes: int,
                 nugget: float = NUGGET) -> None:
        super().__init__()
        self.names = [str(n) for n in names]
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.n_obs, self.n_genes, self.nugget = [int(n) for n in n_obs], int(n_genes), float(nugget)
        self.maps = nn.ParameterList([nn.Parameter(torch.zeros(n, self.n_genes)) for n in self.n_obs])
        for i, n in enumerate(self.n_obs):
            self.register_buffer(f"coords_{i}", torch.zeros(n, 2, dtype=torch.float64))
            self.register_buffer(f"lengthscale_{i}", torch.ones(self.n_genes, dtype=torch.float64))
            self.register_buffer(f"sd_{i}", torch.zeros(self.n_genes))
        self._bases: dict[int, list] = {}
        self.register_state_dict_post_hook(_save_values)
        self.register_load_state_dict_pre_hook(_load_values)

    def spec(self) -> dict:
        return {"names": self.names, "shapes": [list(s) for s in self.shapes], "n_obs": self.n_obs,
                "genes": self.n_genes, "nugget": self.nugget}

    @classmethod
    def from_spec(cls, spec: dict) -> GeneField:
        return cls(spec["names"], [tuple(s) for s in spec["shapes"]], spec["n_obs"], spec["genes"], spec["nugget"])

    def index(self, name: str, shape: tuple[int, int]) -> int | None:
        """The section's index if the field was trained on it (same id and working shape)."""
        return section_index(self.names, self.shapes, name, shape)

    def set_prior(self, i: int, coords_um: np.ndarray, lengthscale_um: np.ndarray, sd: np.ndarray) -> None:
        """Section ``i``'s spot centres (µm) and each gene's length scale (µm) and prior SD."""
        with torch.no_grad():
            getattr(self, f"coords_{i}").copy_(torch.as_tensor(np.asarray(coords_um, dtype=np.float64)))
            getattr(self, f"lengthscale_{i}").copy_(torch.as_tensor(np.asarray(lengthscale_um, dtype=np.float64)))
            getattr(self, f"sd_{i}").copy_(torch.as_tensor(np.asarray(sd, dtype=np.float32)))
        self._bases.pop(i, None)

    def seed_basis(self, i: int, eigs: dict[float, tuple[np.ndarray, np.ndarray]]) -> None:
        """Use eigendecompositions already computed for section ``i``'s kernels (the prior fit's,
        :func:`fit_hyperparameters` ``eigs``) instead of computing them again."""
        ls_all = getattr(self, f"lengthscale_{i}").numpy()
        if set(np.unique(ls_all).tolist()) <= set(eigs):
            self._bases[i] = [self._group(ls_all, ls, *eigs[ls]) for ls in np.unique(ls_all).tolist()]

    def _group(self, ls_all: np.ndarray, ls: float, lam: np.ndarray, u: np.ndarray) -> tuple:
        genes = torch.from_numpy(np.flatnonzero(ls_all == ls))
        root = np.sqrt(np.clip(lam, 0.0, None) + self.nugget).astype(np.float32)
        return genes, float(ls), torch.from_numpy(np.asarray(u, dtype=np.float32)), torch.from_numpy(root)

    def _basis(self, i: int) -> list[tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]]:
        """Per distinct length scale: (genes, length scale, eigenvectors U, sqrt(eigenvalues)) of
        the kernel plus nugget, float32 (one spots x spots matrix per length scale is what the
        field keeps in memory). Any orthonormal eigenbasis will do: saved fields carry their
        values, from which the parameters are rebuilt where the basis differs (``_load_values``)."""
        if i not in self._bases:
            xy = getattr(self, f"coords_{i}").numpy()
            ls_all = getattr(self, f"lengthscale_{i}").numpy()
            self._bases[i] = [self._group(ls_all, ls, *np.linalg.eigh(sq_exp_kernel(xy, xy, ls)))
                              for ls in np.unique(ls_all).tolist()]
        return self._bases[i]

    def values(self, i: int, rows: np.ndarray | None = None) -> torch.Tensor:
        """f at section ``i``'s training spots ``rows`` (default: all; rows x genes). Only the
        requested rows of the basis are multiplied: a patch's few spots cost rows x spots x genes."""
        z, sd = self.maps[i], getattr(self, f"sd_{i}")
        idx = None if rows is None else torch.from_numpy(np.asarray(rows, dtype=np.int64))
        out = z.new_zeros((z.shape[0] if idx is None else len(idx), z.shape[1]))
        for genes, _, u, root in self._basis(i):
            ur = u if idx is None else u.index_select(0, idx)
            out = out.index_copy(1, genes, (ur @ (root[:, None] * z[:, genes])) * sd[genes])
        return out

    def training_offsets(self, sections: np.ndarray, obs: list[np.ndarray]) -> list[torch.Tensor]:
        """Offsets (1 + len(obs[b]), genes) of each training patch's count rows: the background
        (row 0, offset 0) and observations ``obs[b]`` of training section ``sections[b]``.
        Each section's values are computed once per call, at the rows its patches need."""
        sections = np.asarray(sections)
        out: list[torch.Tensor | None] = [None] * len(obs)
        for i in np.unique(sections):
            members = np.flatnonzero(sections == i)
            rows = [np.asarray(obs[b], dtype=np.int64) for b in members]
            needed, inverse = np.unique(np.concatenate(rows), return_inverse=True)
            f = self.values(int(i), needed)
            start = 0
            for b, r in zip(members, rows, strict=True):
                sel = torch.from_numpy(inverse[start:start + len(r)].astype(np.int64))
                out[b] = torch.cat([f.new_zeros(1, self.n_genes), f[sel]])
                start += len(r)
        return out

    def whiten(self, i: int, values: torch.Tensor) -> torch.Tensor:
        """The whitened parameters of section ``i`` whose :meth:`values` are ``values``."""
        sd = getattr(self, f"sd_{i}")
        z = values.new_zeros(values.shape)
        for genes, _, u, root in self._basis(i):
            scaled = values[:, genes] / torch.where(sd[genes] > 0, sd[genes], 1.0)
            z = z.index_copy(1, genes, (u.T @ scaled) / root[:, None])
        return z

    @torch.no_grad()
    def area_offsets(self, i: int, centres_um: np.ndarray, genes: np.ndarray) -> np.ndarray:
        """Kriging mean of f at area centroids ``centres_um`` (areas x 2; NaN rows: 0) for
        gene indices ``genes``: (areas x len(genes)) float32. The weights K^-1 f are solved in
        float64; the means are computed by :func:`stfusion.models.xfuse.kriging.kriging_mean`
        (float32 kernels, truncated at 7 length scales, long length scales interpolated from a
        grid of nodes when there are many areas; ``benchmarks/xfuse/gene_field_scale.py``
        compares it with the direct float64 sum: differences below 1e-3 on log-rate offsets of
        order 1)."""
        genes = np.asarray(genes, dtype=np.int64)
        weights = self._kriging_weights(i, genes)
        spots = getattr(self, f"coords_{i}").numpy().astype(np.float64)
        return kriging_mean(np.asarray(centres_um, dtype=np.float64), spots, weights, len(genes))

    def _kriging_weights(self, i: int, genes: np.ndarray) -> list[tuple[list[int], float, torch.Tensor]]:
        """Per length scale: output columns, length scale and K^-1 f (spots x genes, float32)."""
        z = self.maps[i].detach().double().numpy()
        sd = getattr(self, f"sd_{i}").double().numpy()
        pos = {g: k for k, g in enumerate(genes.tolist())}
        weights = []
        for members, ls, u, root in self._basis(i):
            sel = [g for g in members.tolist() if g in pos]
            if sel:  # K^-1 f = U diag(1 / sqrt(lambda)) sd z; the mean at x is k(x, S) K^-1 f
                alpha = u.double().numpy() @ (z[:, sel] / root.double().numpy()[:, None]) * sd[sel]
                weights.append(([pos[g] for g in sel], ls, torch.from_numpy(alpha.astype(np.float32))))
        return weights

    def refit(self, i: int, A: torch.Tensor, counts: torch.Tensor, expr, beta: torch.Tensor, iters: int = 200) -> None:
        """MAP of section ``i``'s field given the fitted rest of the model, full batch (L-BFGS):
        ``A`` (spots x active metagenes) the spots' summed ``s * a`` at the posterior means,
        ``counts`` (spots x genes), ``expr`` the :class:`.likelihood.ExpressionModel` (posterior
        means of L, E, F). Trained on patches, the field moves only when its spots are
        sampled and converges slowly; given the rest, its optimum is a smooth problem."""
        draw = {k: v.detach() for k, v in expr.sample(mean=True).items()}
        z = self.maps[i]
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=int(iters), line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = -expr.log_likelihood(A, counts, draw, beta, self.values(i)) + 0.5 * (z**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        for p in expr.parameters():  # the closure's gradients reached them too; they were not changed
            p.grad = None

    def log_prior(self) -> torch.Tensor:
        """Log prior of the whitened values (up to a constant)."""
        return -0.5 * sum((m**2).sum() for m in self.maps)


def _values_key(prefix: str, i: int) -> str:
    return f"{prefix}values_at_spots.{i}"


def _save_values(field: GeneField, state: dict, prefix: str, _metadata) -> None:
    """Save each section's field values at its spots beside the whitened parameters: these are
    coordinates in an eigenbasis that another machine's LAPACK may choose differently (signs,
    rotations within repeated eigenvalues of a regular lattice)."""
    with torch.no_grad():
        for i in range(len(field.maps)):
            state[_values_key(prefix, i)] = field.values(i).detach().clone()


def _load_values(field: GeneField, state: dict, prefix: str, *_args) -> None:
    """Keep the saved whitened parameters where this machine's eigenbasis turns them into the
    saved values (exactly the same predictions); otherwise whiten the saved values anew."""
    for i in range(len(field.maps)):
        saved = state.pop(_values_key(prefix, i), None)
        if saved is None:  # saved by an earlier version: parameters only
            continue
        for name in ("coords", "lengthscale", "sd"):
            getattr(field, f"{name}_{i}").copy_(state[f"{prefix}{name}_{i}"])
        field._bases.pop(i, None)
        with torch.no_grad():
            z = state[f"{prefix}maps.{i}"]
            field.maps[i].copy_(z)
            if not torch.allclose(field.values(i), saved, rtol=1e-4, atol=1e-5):
                state[f"{prefix}maps.{i}"] = field.whiten(i, saved)


def build_field(sections: list, datas: list, genes: list[str]) -> GeneField:
    """A gene field over training ``sections`` (AnnData) and their working ``datas``, each
    gene's prior fitted on each section by the Gaussian-process baseline's marginal likelihood."""
    from stfusion.baselines.interpolation import stacked_targets
    from stfusion.data.section import spot_coords

    field = GeneField([d.name for d in datas], [d.shape for d in datas], [d.counts.shape[0] for d in datas], len(genes))
    for i, (section, d) in enumerate(zip(sections, datas, strict=True)):
        xy = spot_coords(section) * d.mpp
        eigs: dict = {}
        prior = fit_hyperparameters(xy, stacked_targets([section], genes), eigs=eigs)
        field.set_prior(i, xy, prior["lengthscale"], np.sqrt(prior["signal"]))
        field.seed_basis(i, eigs)
    return field
