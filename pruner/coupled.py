"""Criteria and selection for coupled channel groups (models that are not chains).

GroupSaliency scores every channel of a group over all its coupled layers,
data-free, in the spirit of DFPC (Narshana et al., 2023): what flows into
the channel (each producer's folded filter norm, times the per-channel
scales of the depthwise filters and BatchNormalizations it passes) times
what flows out of it (the norm of every reader's kernel rows). Channels
produced by several layers at an Add add their producers' terms, so the
score is the group's summed saliency. Low means remove first.

BoundSaliency is its robustness-aware form (Paoding's sound bounds): the
channel's range over the whole input box (interval bounds through the DAG)
replaces the weights-only inflow, so the score bounds the change removal can
cause at the readers for any input in the box.

CoupledSelection is the paoding/greedy strategy on such graphs: exact
pair merges (PairSaliency, lowest first) in ``mergeable`` groups, plain
removal by GroupSaliency elsewhere (BoundSaliency with ``dag_saliency="bounds"``:
on a trained DS-CNN it kept less accuracy than GroupSaliency, see
bench/results/dag.md, so it is not the default).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruner.criteria import PairSaliency, UnitView
from pruner.dag import ChannelGroup, bn_channels, producer_kernel
from pruner.strategies import OneShotPairs, OneShotRanking
from pruner.surgery import GroupPlan


class GroupSaliency:
    """Per-channel saliency summed over a coupled group (see the module docstring)."""

    def __call__(self, view: UnitView) -> np.ndarray:
        group = view.group
        if not isinstance(group, ChannelGroup):  # a chain group: in-norm times out-norm
            return np.linalg.norm(view.w_in, axis=1) * np.linalg.norm(view.w_out, axis=1)
        n = group.width
        inflow = np.zeros(n)
        for m in group.producers:
            kernel, _ = producer_kernel(m.layer, group.store(m.layer))
            inflow += np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]).T, axis=1)
        gain = np.ones(n)
        for m in group.members:
            if m.role != "chan":
                continue
            if m.params == "bn":
                gain *= np.abs(bn_channels(m.layer, m.offset, n, group.store(m.layer))[0])
            else:  # depthwise filter of each channel
                k = group.store(m.layer)[0][:, :, m.offset : m.offset + n, :]
                gain *= np.linalg.norm(np.moveaxis(k, 2, 0).reshape(n, -1), axis=1)
        return inflow * gain * np.linalg.norm(view.w_out, axis=1)


class BoundSaliency:
    """Sound bound on what removing a channel changes, over every input in the box.

    Channel u of the group lies in [lo_u, hi_u] at each reader's input (``view.bounds``:
    dag_interval_bounds), so removing it changes that reader's pre-activations by at
    most sum over positions of max(|lo_u|, |hi_u|) times the L1 norm of its kernel rows
    (a SeparableConv2D: depthwise times pointwise norms), in L1. The score is that bound
    summed over the readers; the logits' change is a group-wide constant times it for
    a one-reader group. Without bounds it falls back to GroupSaliency."""

    def __call__(self, view: UnitView) -> np.ndarray:
        group = view.group
        if view.bounds is None or not isinstance(group, ChannelGroup):
            return GroupSaliency()(view)
        n = group.width
        source = {id(node.op): node.parents[0] for node in view.graph.nodes[1:]}
        units = np.arange(n)
        total = np.zeros(n)
        for m in group.readers:
            lo, hi = view.bounds[source[id(m.layer)]]
            mag = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64).reshape(-1, m.total)
            mag = mag[:, m.offset : m.offset + n]  # [positions, n]
            w = group.store(m.layer)
            if m.params == "dense":
                rows = w[0][m.rows(units)]  # [n, positions of a Flatten, k]
                row_l1 = np.abs(rows).sum(axis=-1).T  # [positions, n]
                if row_l1.shape[0] == 1:  # one kernel row read at every position
                    total += mag.sum(axis=0) * row_l1[0]
                else:
                    total += (mag * row_l1).sum(axis=0)
            elif m.params == "conv":
                k = np.moveaxis(w[0], -2, 0)[m.offset + units].reshape(n, -1)
                total += mag.sum(axis=0) * np.abs(k).sum(axis=1)
            else:  # separable
                dw = np.moveaxis(w[0], 2, 0)[m.offset + units].reshape(n, -1)
                pw = w[1][0, 0][m.offset + units]
                total += mag.sum(axis=0) * np.abs(dw).sum(axis=1) * np.abs(pw).sum(axis=1)
        return total


class ActivationSaliency:
    """What removing a channel leaves at its readers on synthesised inputs.

    Per reader, channel u's input statistic times the squared norm of the reader's
    kernel rows for u (a SeparableConv2D: depthwise times pointwise), summed over
    the group's readers: the expected squared change of the readers'
    pre-activations, exact per position for a 1x1 or Dense reader. ``statistic``:
    ``energy`` is E[a_u^2] (nothing compensates); ``refit`` is a_u's variance left
    once the reader's other input channels predict it linearly (what the ridge
    refit of pruner.dag_refit cannot undo; OBS for a linear reader). The
    statistics come from ``observe`` (pruner.dag_stats, once per step); without
    them, GroupSaliency."""

    def __init__(self, statistic: str = "refit", ridge: float = 1e-2) -> None:
        self.statistic, self.ridge = statistic, ridge
        self.stats: dict[str, Any] = {}
        self._var: dict[str, np.ndarray] = {}

    def observe(self, graph: Any, x: np.ndarray) -> None:
        from pruner.dag_stats import reader_stats

        self.stats, self._var = reader_stats(graph, x), {}

    def _statistic(self, name: str) -> np.ndarray:
        if name not in self._var:
            st = self.stats[name]
            if self.statistic == "energy":
                self._var[name] = np.diag(st.cov) + st.mean**2
            else:
                self._var[name] = st.conditional_variance(self.ridge)
        return self._var[name]

    def __call__(self, view: UnitView) -> np.ndarray:
        group = view.group
        if not isinstance(group, ChannelGroup) or any(
            m.layer.name not in self.stats for m in group.readers
        ) or not group.readers:
            return GroupSaliency()(view)
        n = group.width
        units = np.arange(n)
        total = np.zeros(n)
        for m in group.readers:
            var = self._statistic(m.layer.name)
            w = group.store(m.layer)
            if m.params == "dense":
                idx = m.rows(units)  # [n, positions]
                total += (var[idx] * (w[0][idx] ** 2).sum(axis=-1)).sum(axis=1)
            elif m.params == "conv":
                k = np.moveaxis(w[0], -2, 0)[m.offset + units].reshape(n, -1)
                total += var[m.offset + units] * (k**2).sum(axis=1)
            else:  # separable
                dw = np.moveaxis(w[0], 2, 0)[m.offset + units].reshape(n, -1)
                pw = w[1][0, 0][m.offset + units]
                total += var[m.offset + units] * (dw**2).sum(axis=1) * (pw**2).sum(axis=1)
        return total


class GroupL1:
    """L1 norm of each channel's filters, summed over the group's producers (magnitude)."""

    def __call__(self, view: UnitView) -> np.ndarray:
        group = view.group
        if not isinstance(group, ChannelGroup):
            return np.abs(view.w_in[:, :-1]).sum(axis=1)
        total = np.zeros(group.width)
        for m in group.producers:
            kernel, _ = producer_kernel(m.layer, group.store(m.layer))
            total += np.abs(kernel.reshape(-1, kernel.shape[-1])).sum(axis=0)
        return total


def coupled_strategy(mode: str, rng: np.random.Generator, saliency: str = "group") -> Any:
    """The strategy of ``mode`` for a graph of coupled channel groups; ``saliency`` ranks
    paoding's removals (``group``: GroupSaliency, ``bounds``: BoundSaliency,
    ``activations``/``energy``: ActivationSaliency with the refit/energy statistic)."""
    from pruner.criteria import RandomScore

    if mode in ("paoding", "greedy"):
        ranking = {"bounds": BoundSaliency, "activations": ActivationSaliency,
                   "energy": lambda: ActivationSaliency("energy")}.get(saliency, GroupSaliency)()
        return CoupledSelection(ranking=OneShotRanking(ranking))
    if mode == "baseline":
        return CoupledSelection(OneShotPairs())
    if mode == "magnitude":
        return OneShotRanking(GroupL1())
    return OneShotRanking(RandomScore(rng))


class LowestPairs:
    """Pairs (keep a, remove b) lowest PairSaliency first, each unit in one pair at most
    per step: OneShotPairs' walk over only the low end of the pair matrix
    (``np.argpartition``, widened until the quota is met), so wide layers do not
    sort n^2 pairs."""

    def __init__(self, saliency: PairSaliency | None = None) -> None:
        self.saliency = saliency or PairSaliency(gamma="auto")

    def select(self, view: UnitView, quota: int, step: int) -> GroupPlan:
        n = view.n
        gamma, sal = self.saliency(view)
        flat = sal.ravel()
        k = min(flat.size, max(256, 16 * quota * 2))
        while True:
            idx = np.argpartition(flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
            idx = idx[np.argsort(flat[idx], kind="stable")]
            idx = idx[np.isfinite(flat[idx])]
            used = np.zeros(n, bool)
            plan = GroupPlan()
            for a, b in zip((idx // n).tolist(), (idx % n).tolist(), strict=True):
                if len(plan.remove) >= quota:
                    break
                if used[a] or used[b]:
                    continue
                used[a] = used[b] = True
                plan.remove.append(b)
                plan.merges.append((a, b, float(gamma[a, b])))
            if len(plan.remove) >= quota or k >= flat.size:
                return plan
            k = min(flat.size, 4 * k)


class CoupledSelection:
    """Merges where exact (one producer, linear readers), plain removal elsewhere."""

    def __init__(self, pairs: Any = None, ranking: Any = None) -> None:
        self.pairs = pairs or LowestPairs()
        self.ranking = ranking or OneShotRanking(GroupSaliency())

    def select(self, view: UnitView, quota: int, step: int) -> GroupPlan:
        group = view.group
        if getattr(group, "mergeable", True):
            plan = self.pairs.select(view, quota, step)
            if len(plan.remove) >= quota:
                return plan
        return self.ranking.select(view, quota, step)

    def observe(self, graph: Any, x: np.ndarray) -> None:
        """Hand a step's graph and synthesised inputs to a ranking that reads activations."""
        criterion = getattr(self.ranking, "criterion", None)
        if hasattr(criterion, "observe"):
            criterion.observe(graph, x)
