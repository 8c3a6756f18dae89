"""One graph for every model: a chain and a DAG take the same path through the pruner."""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

from dagnets import add_net  # noqa: E402
from prunehelp import mlp  # noqa: E402

import pruner.criteria.robustness as robustness  # noqa: E402
from pruner.api import prune  # noqa: E402
from pruner.graph import Graph, build_graph  # noqa: E402

FAST = dict(step=0.15, synthetic=0, progress=False, measure_tflite=False, n_random=0,
            keep_below_floor=True, seed=0)


def test_a_chain_and_a_dag_are_scored_by_the_same_robustness_criterion(monkeypatch):
    """A Sequential MLP and a residual net: build_graph gives the same Graph, and paoding
    scores both with RobustnessImpact through the node-by-node deviation bound (merges in
    the chain; plain removals too in the residual net's coupled group)."""
    seen: dict[str, list[tuple[type, bool]]] = {}
    real = robustness.deviation

    def spy(graph, bounds, group, b, a=None, k=None, c=None, gamma=None):
        seen.setdefault(graph.model.name, []).append((type(graph), bool((a < 0).any())))
        return real(graph, bounds, group, b, a, k, c, gamma)

    monkeypatch.setattr(robustness, "deviation", spy)
    chain, dag = mlp(widths=(12, 10), inputs=6, seed=1), add_net()
    for model in (chain, dag):
        assert type(build_graph(model)) is Graph
        result = prune(model, 0.3, "paoding", **FAST)
        assert result.final.ratio > 0.2
    assert {t for t, _ in seen[chain.name]} == {t for t, _ in seen[dag.name]} == {Graph}
    assert not any(removal for _, removal in seen[chain.name])  # a chain: merges only
    assert any(removal for _, removal in seen[dag.name])  # coupled channels: removals
