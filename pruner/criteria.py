"""Criteria: they score units or pairs of units, and never choose or cut.

A pair (a, b) means "keep a, remove b and fold b's outgoing weights into a"
with factor gamma. Matrices are indexed [a, b].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import ConfigError
from pruner.bounds import conv2d, propagate_deviation, step_deviation
from pruner.graph import (
    Group,
    PruneGraph,
    incoming,
    kernel_bias,
    merge_terms,
    outgoing,
    post_affine,
)


@dataclass
class UnitView:
    """What criteria may read about one group at one step."""

    graph: PruneGraph
    group: Group
    w_in: np.ndarray  # [n, fan_in + 1], BatchNormalization folded
    w_out: np.ndarray  # [n, k]
    orig_ids: np.ndarray  # original unit index of every current unit
    bounds: list[tuple[np.ndarray, np.ndarray]] | None = None
    acts: np.ndarray | None = None  # [rows, n]: the consumer's input on synthesised inputs

    @classmethod
    def of(
        cls,
        graph: PruneGraph,
        group: Group,
        orig_ids: np.ndarray,
        bounds: list[tuple[np.ndarray, np.ndarray]] | None = None,
        acts: np.ndarray | None = None,
    ) -> UnitView:
        return cls(
            graph, group, incoming(group), outgoing(group), np.asarray(orig_ids), bounds, acts
        )

    @property
    def n(self) -> int:
        return self.w_in.shape[0]


class PairSaliency:
    """gamma(a,b) = max(0, <w_a,w_b>/||w_a||^2) and s(a,b) = ||w_b - gamma w_a|| * ||o_b||.

    ``gamma="auto"`` uses the ratio for positively homogeneous activations
    (ReLU, linear) and 1 otherwise; ``gamma="one"`` always uses 1 (Srinivas &
    Babu). The diagonal is +inf.
    """

    def __init__(self, gamma: str = "auto") -> None:
        if gamma not in ("auto", "one"):
            raise ConfigError(f"gamma must be 'auto' or 'one', got {gamma!r}")
        self.gamma = gamma

    def __call__(self, view: UnitView) -> tuple[np.ndarray, np.ndarray]:
        if view.acts is not None and self.gamma == "auto":
            return self.from_activations(view)
        w = view.w_in
        gram = w @ w.T
        sq = np.diag(gram).copy()
        if self.gamma == "auto" and view.group.homogeneous:
            with np.errstate(divide="ignore", invalid="ignore"):
                gamma = np.where(sq[:, None] > 0, gram / sq[:, None], 0.0)
            gamma = np.maximum(gamma, 0.0)
        else:
            gamma = np.ones_like(gram)
        # ||w_b - g w_a||^2 = ||w_b||^2 - 2 g <w_a, w_b> + g^2 ||w_a||^2
        dist2 = sq[None, :] - 2.0 * gamma * gram + gamma**2 * sq[:, None]
        out_norm = np.linalg.norm(view.w_out, axis=1)
        saliency = np.sqrt(np.maximum(dist2, 0.0)) * out_norm[None, :]
        group = view.group
        if group.post_bn is not None:  # the merge divides by s_a; max pooling needs k >= 0
            scale, _ = post_affine(group)
            bad = np.broadcast_to(scale[:, None] == 0, saliency.shape)
            if group.post_max:
                bad = bad | (gamma * scale[None, :] * scale[:, None] < 0)
            saliency = np.where(bad, np.inf, saliency)
        np.fill_diagonal(saliency, np.inf)
        return gamma, saliency


    def from_activations(self, view: UnitView) -> tuple[np.ndarray, np.ndarray]:
        """The same pair score from what the consumer actually reads, u (on synthesised
        inputs): u_b ~ k*u_a with k = max(0, cov(a,b)/var(a)), and
        s(a,b) = std(u_b - k*u_a) * ||o_b|| (o_b the consumer's raw weights). The
        means are left to bias correction. Returned gamma is the factor the surgery
        expects (k rescaled by a BatchNormalization after the nonlinearity)."""
        u = view.acts.astype(np.float64)
        if u.ndim != 2 or u.shape[1] != view.n:  # maps (or a flattened map): each position
            u = u.reshape(-1, view.n)  # is one more sample of every unit (channels last)
        cov = np.cov(u, rowvar=False).reshape(view.n, view.n)
        var = np.diag(cov).copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.where(var[:, None] > 1e-12, cov / var[:, None], 0.0)
        k = np.maximum(k, 0.0)
        resid = var[None, :] - 2.0 * k * cov + k**2 * var[:, None]
        scale, _ = post_affine(view.group)
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = view.w_out / np.where(scale == 0, np.inf, scale)[:, None]
            gamma = k * scale[:, None] / scale[None, :]
        saliency = np.sqrt(np.maximum(resid, 0.0)) * np.linalg.norm(raw, axis=1)[None, :]
        saliency = np.where(np.isfinite(gamma), saliency, np.inf)
        gamma = np.where(np.isfinite(gamma), gamma, 0.0)
        np.fill_diagonal(saliency, np.inf)
        return gamma, saliency


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def interval_entropy(lo: np.ndarray, hi: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Normalised entropy of the clusters of similar intervals, one value per row.

    Intervals sorted by lower end join their predecessor's cluster when the two
    overlap by at least ``threshold`` of their union; all-similar gives 0,
    all-different gives 1.
    """
    m, k = lo.shape
    if k < 2:
        return np.zeros(m)
    order = np.argsort(lo, axis=1, kind="stable")
    lo_s = np.take_along_axis(lo, order, axis=1)
    hi_s = np.take_along_axis(hi, order, axis=1)
    inter = np.minimum(hi_s[:, 1:], hi_s[:, :-1]) - np.maximum(lo_s[:, 1:], lo_s[:, :-1])
    union = np.maximum(hi_s[:, 1:], hi_s[:, :-1]) - np.minimum(lo_s[:, 1:], lo_s[:, :-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(union > 0, np.maximum(inter, 0.0) / union, 1.0)
    new = np.concatenate([np.zeros((m, 1), dtype=np.int64), (sim < threshold).astype(np.int64)], 1)
    cluster = np.cumsum(new, axis=1)
    counts = (cluster[:, :, None] == np.arange(k)[None, None, :]).sum(axis=1)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return ent / np.log(k)


def difference_bounds(
    view: UnitView, a: np.ndarray, b: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of y_b - (k*y_a + c) at the consumer's input, [m, positions] each
    (y = h, k = gamma and c = 0 unless a BatchNormalization follows the nonlinearity).

    The pre-activation difference is linear in the producer's input; a monotone
    activation f with Lipschitz constant L maps a difference d of its inputs into
    L*[min(0, d), max(0, d)] (gamma*f(z) = f(gamma*z) for the homogeneous ones,
    and gamma = 1 otherwise).
    """
    graph, group = view.graph, view.group
    lo_x, hi_x = view.bounds[group.producer_op]
    xc = ((lo_x + hi_x) / 2).astype(np.float64)
    xr = ((hi_x - lo_x) / 2).astype(np.float64)
    diff = view.w_in[b] - gamma[:, None] * view.w_in[a]  # [m, fan_in + 1]
    weights, bias = diff[:, :-1], diff[:, -1]
    if type(group.producer).__name__ == "Dense":
        center = xc @ weights.T + bias  # [..., m]
        radius = xr @ np.abs(weights).T
    else:
        layer = group.producer
        kernel = weights.T.reshape(*layer.kernel_size, xc.shape[-1], len(a))
        center = conv2d(layer, xc[None], kernel)[0] + bias
        radius = conv2d(layer, xr[None], np.abs(kernel))[0]
    lo = np.moveaxis(center - radius, -1, 0)[..., None].astype(np.float32)  # [m, ..., 1]
    hi = np.moveaxis(center + radius, -1, 0)[..., None].astype(np.float32)
    start = group.producer_op + 1
    if group.bn is not None:  # already folded into w_in
        start = next(i for i in range(start, group.consumer_op) if graph.ops[i].layer is group.bn)
        start += 1
    for op in graph.ops[start : group.consumer_op]:
        if op.layer is group.post_bn and group.post_bn is not None:
            # y_b - (k*y_a + c) = s_b * (h_b - gamma*h_a)
            scale = post_affine(group)[0][b].reshape(-1, *([1] * (lo.ndim - 1)))
            lo, hi = np.minimum(scale * lo, scale * hi), np.maximum(scale * lo, scale * hi)
            lo, hi = lo.astype(np.float32), hi.astype(np.float32)
        else:
            lo, hi = step_deviation(op, lo, hi)
    return lo.reshape(len(a), -1), hi.reshape(len(a), -1)


class RobustnessImpact:
    """Data-free robustness impact of merges, from sound interval bounds.

    Removing b (keeping a with gamma) changes the consumer's input by
    gamma*h_a - h_b in [gamma*lo_a - hi_b, gamma*hi_a - lo_b] (with a
    BatchNormalization after the nonlinearity: k*y_a + c - y_b); that deviation is
    carried soundly to the logits. With ``tight`` (the default) it is intersected
    with a second sound bound that follows the pair's own weights: the
    pre-activation difference z_b - gamma*z_a = (w_b - gamma*w_a).[x, 1] is bounded
    over the layer's input bounds, then carried through the monotone,
    1-Lipschitz activation and pooling between the two layers. score = alpha*sig(L/L_ref) + beta*sig(ENT),
    L = L1 width of the logit deviation, ENT its interval entropy. Lower is better.
    """

    def __init__(
        self,
        alpha: float = 0.75,
        beta: float = 0.25,
        entropy_threshold: float = 0.9,
        batch: int = 256,
        tight: bool = True,
    ) -> None:
        if alpha < 0 or beta < 0 or alpha + beta <= 0:
            raise ConfigError(
                f"alpha and beta must be >= 0 with a positive sum, got {alpha}, {beta}"
            )
        if not 0.0 < entropy_threshold <= 1.0:
            raise ConfigError(f"entropy_threshold must be in (0, 1], got {entropy_threshold}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.entropy_threshold = float(entropy_threshold)
        self.batch = int(batch)
        self.tight = bool(tight)

    def deviation(
        self, view: UnitView, a: np.ndarray, b: np.ndarray, gamma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of the logits' change for every pair: ([m, n_out], [m, n_out])."""
        if view.bounds is None:
            raise ConfigError("robustness impact needs interval bounds")
        group = view.group
        if hasattr(view.graph, "nodes"):  # a DAG: node by node (a < 0: plain removal)
            return self.dag_deviation(view, a, b, gamma)
        c = group.consumer_op
        lo_in, hi_in = view.bounds[c]
        shape = lo_in.shape
        n = view.n
        lo2 = lo_in.reshape(-1, n).astype(np.float32)  # [positions, units]
        hi2 = hi_in.reshape(-1, n).astype(np.float32)
        gamma = gamma.astype(np.float32)
        op = view.graph.ops[c]
        rows_direct = type(group.consumer).__name__ == "Dense" and (
            group.flatten_positions > 0 or lo_in.ndim == 1
        )
        outs_lo, outs_hi = [], []
        for i in range(0, len(a), self.batch):
            ai, bi, gi = a[i : i + self.batch], b[i : i + self.batch], gamma[i : i + self.batch]
            m = len(ai)
            k, off = merge_terms(group, ai, bi, gi)
            k = k.astype(np.float32)[:, None]
            off = off.astype(np.float32)[:, None]
            ka_lo = np.minimum(k * lo2[:, ai].T, k * hi2[:, ai].T)  # [m, positions]
            ka_hi = np.maximum(k * lo2[:, ai].T, k * hi2[:, ai].T)
            d_lo = ka_lo + off - hi2[:, bi].T
            d_hi = ka_hi + off - lo2[:, bi].T
            if self.tight:  # intersect with the bound through the pair's own weights
                t_lo, t_hi = difference_bounds(view, ai, bi, gi)
                d_lo, d_hi = np.maximum(d_lo, -t_hi), np.minimum(d_hi, -t_lo)
            if rows_direct:  # b's consumer rows only: no need to expand to the full input
                kernel = op.arrays()["kernel32"][group.consumer_rows(bi)]  # [m, positions, k]
                center = np.einsum("mp,mpk->mk", (d_lo + d_hi) / 2, kernel)
                radius = np.einsum("mp,mpk->mk", (d_hi - d_lo) / 2, np.abs(kernel))
                o_lo, o_hi = propagate_deviation(
                    view.graph, c + 1, center - radius, center + radius, self.batch
                )
            elif type(group.consumer).__name__ == "Conv2D":  # one input channel per pair
                kernel = op.arrays()["kernel32"]
                d_c = ((d_lo + d_hi) / 2).reshape(m, *shape[:-1], 1)
                d_r = ((d_hi - d_lo) / 2).reshape(m, *shape[:-1], 1)
                center = radius = None
                for u in np.unique(bi).tolist():
                    sel = bi == u
                    k_u = kernel[:, :, u : u + 1, :]
                    c_u = conv2d(group.consumer, d_c[sel], k_u)
                    r_u = conv2d(group.consumer, d_r[sel], np.abs(k_u))
                    if center is None:
                        center = np.empty((m, *c_u.shape[1:]), np.float32)
                        radius = np.empty((m, *c_u.shape[1:]), np.float32)
                    center[sel], radius[sel] = c_u, r_u
                o_lo, o_hi = propagate_deviation(
                    view.graph, c + 1, center - radius, center + radius, self.batch
                )
            else:
                full_lo = np.zeros((m, lo2.shape[0], n), np.float32)
                full_hi = np.zeros((m, lo2.shape[0], n), np.float32)
                full_lo[np.arange(m), :, bi] = d_lo
                full_hi[np.arange(m), :, bi] = d_hi
                o_lo, o_hi = propagate_deviation(
                    view.graph,
                    c,
                    full_lo.reshape(m, *shape),
                    full_hi.reshape(m, *shape),
                    self.batch,
                )
            outs_lo.append(o_lo)
            outs_hi.append(o_hi)
        if not outs_lo:
            return np.zeros((0, 1)), np.zeros((0, 1))
        return np.concatenate(outs_lo).astype(np.float64), np.concatenate(outs_hi).astype(
            np.float64
        )

    def dag_deviation(
        self, view: UnitView, a: np.ndarray, b: np.ndarray, gamma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """bounds.dag_deviation for every candidate, in batches; a[i] < 0 removes b[i]."""
        from pruner.bounds import dag_deviation

        a, b = np.asarray(a), np.asarray(b)
        merge = a >= 0
        k = np.zeros(len(b))
        c = np.zeros(len(b))
        if merge.any():
            k[merge], c[merge] = merge_terms(view.group, a[merge], b[merge], gamma[merge])
        size = min(self.batch, 32)  # whole feature maps per candidate
        parts = [
            dag_deviation(view.graph, view.bounds, view.group, b[i : i + size],
                          a[i : i + size], k[i : i + size], c[i : i + size])
            for i in range(0, len(b), size)
        ]
        if not parts:
            return np.zeros((0, 1)), np.zeros((0, 1))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def terms(
        self, view: UnitView, a: np.ndarray, b: np.ndarray, gamma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(L, ENT) for every pair."""
        lo, hi = self.deviation(view, a, b, gamma)
        return (hi - lo).sum(axis=1), interval_entropy(lo, hi, self.entropy_threshold)

    def score(self, width: np.ndarray, entropy: np.ndarray, l_ref: float) -> np.ndarray:
        """alpha*sig(L/L_ref) + beta*sig(ENT)."""
        l_ref = l_ref if l_ref > 0 else 1.0
        return self.alpha * _sigmoid(width / l_ref) + self.beta * _sigmoid(entropy)

    def get_config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "entropy_threshold": self.entropy_threshold,
        }


class L1Magnitude:
    """Per-unit L1 norm of the incoming kernel (Li et al. 2017); low means remove first."""

    def __call__(self, view: UnitView) -> np.ndarray:
        kernel, _ = kernel_bias(view.group.producer)
        return np.abs(kernel.reshape(-1, kernel.shape[-1])).sum(axis=0).astype(np.float64)


class RandomScore:
    """Seeded random per-unit scores, drawn once per original unit so a run is a fixed order."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._scores: dict[str, np.ndarray] = {}

    def __call__(self, view: UnitView) -> np.ndarray:
        name = view.group.name
        if name not in self._scores:
            size = int(view.orig_ids.max()) + 1 if view.orig_ids.size else 0
            self._scores[name] = self.rng.random(size)
        return self._scores[name][view.orig_ids]
