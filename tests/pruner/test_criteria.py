"""Criteria: pair saliency against its definition, entropy, per-unit scores."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from prunehelp import mlp  # noqa: E402

from core.errors import ConfigError  # noqa: E402
from pruner.criteria import (  # noqa: E402
    L1Magnitude,
    PairSaliency,
    RandomScore,
    UnitView,
    interval_entropy,
)
from pruner.graph import build_graph  # noqa: E402


@pytest.fixture(scope="module")
def relu_view():
    graph = build_graph(mlp(widths=(7, 5), inputs=4))
    return UnitView.of(graph, graph.groups[0], np.arange(7))


def test_pair_saliency_matches_the_definition(relu_view):
    gamma, sal = PairSaliency()(relu_view)
    w, o = relu_view.w_in, relu_view.w_out
    for a in range(7):
        for b in range(7):
            if a == b:
                assert np.isinf(sal[a, b])
                continue
            g = max(0.0, w[a] @ w[b] / (w[a] @ w[a]))
            s = np.linalg.norm(w[b] - g * w[a]) * np.linalg.norm(o[b])
            assert gamma[a, b] == pytest.approx(g)
            assert sal[a, b] == pytest.approx(s, rel=1e-6, abs=1e-9)


def test_gamma_is_one_for_sigmoid_and_for_srinivas_babu(relu_view):
    graph = build_graph(mlp(widths=(6, 5), inputs=4, activation="sigmoid"))
    view = UnitView.of(graph, graph.groups[0], np.arange(6))
    gamma, _ = PairSaliency()(view)
    assert np.all(gamma == 1.0)
    gamma1, sal1 = PairSaliency(gamma="one")(relu_view)
    assert np.all(gamma1 == 1.0)
    w, o = relu_view.w_in, relu_view.w_out
    assert sal1[0, 1] == pytest.approx(np.linalg.norm(w[1] - w[0]) * np.linalg.norm(o[1]))
    with pytest.raises(ConfigError, match="'auto' or 'one'"):
        PairSaliency(gamma="two")


def test_interval_entropy_extremes():
    same = np.tile([[0.0, 1.0]], (1, 1))
    lo = np.zeros((1, 4))
    hi = np.ones((1, 4))
    assert interval_entropy(lo, hi)[0] == pytest.approx(0.0)
    lo2 = np.array([[0.0, 10.0, 20.0, 30.0]])
    assert interval_entropy(lo2, lo2 + 1.0)[0] == pytest.approx(1.0)
    assert interval_entropy(same[:, :1], same[:, 1:])[0] == 0.0


def test_l1_and_random_scores(relu_view):
    l1 = L1Magnitude()(relu_view)
    kernel = relu_view.group.producer.get_weights()[0]
    np.testing.assert_allclose(l1, np.abs(kernel).sum(axis=0), rtol=1e-6)
    first = RandomScore(np.random.default_rng(5))(relu_view)
    again = RandomScore(np.random.default_rng(5))(relu_view)
    np.testing.assert_array_equal(first, again)
