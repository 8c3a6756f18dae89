"""Interval bounds are sound; the merge deviation bound contains the real deviation."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from prunehelp import convnet, mlp, postbn_net  # noqa: E402

from core.errors import ConfigError  # noqa: E402
from pruner.bounds import InputBox, deviation, interval_bounds  # noqa: E402
from pruner.criteria import PairSaliency, RobustnessImpact, UnitView  # noqa: E402
from pruner.graph import GroupPlan, apply_plan, build_graph  # noqa: E402


@pytest.fixture(scope="module")
def conv():
    return convnet(seed=1)


@pytest.fixture(scope="module")
def post():
    return postbn_net(seed=2)


@pytest.fixture(scope="module")
def tanh():
    return mlp(widths=(8, 6), inputs=5, seed=3, activation="tanh")


@pytest.fixture(scope="module")
def elu():
    return mlp(widths=(8, 6), inputs=5, seed=4, activation="elu")


@pytest.fixture(scope="module")
def dense():
    return mlp(widths=(9, 7), inputs=5, seed=2)


def _intermediates(model, x):
    """Input of every layer and the final output."""
    outs = [x]
    h = x
    for layer in model.layers:
        h = np.asarray(layer(h, training=False))
        outs.append(h)
    return outs


@pytest.mark.parametrize("which", ["dense", "conv", "post", "tanh"])
def test_ibp_bounds_hold_for_points_in_the_box(which, request):
    model = request.getfixturevalue(which)
    graph = build_graph(model)
    box = InputBox(-0.5, 1.0)
    bounds = interval_bounds(graph, box)
    x = np.random.default_rng(0).uniform(-0.5, 1.0, (200, *graph.input_shape)).astype("f4")
    lo, hi = bounds[graph.output]  # the model's output
    y = np.asarray(model(x))
    assert np.all(y >= lo - 1e-4) and np.all(y <= hi + 1e-4)
    acts = _intermediates(model, x)  # every layer's output (a chain: node i is layer i)
    for node, h, (lo, hi) in zip(graph.nodes[1:], acts[1:], bounds[1:], strict=True):
        assert np.all(h >= lo - 1e-4) and np.all(h <= hi + 1e-4), node.op.name
    assert np.all(bounds[-1][0] <= bounds[-1][1])


@pytest.mark.parametrize("which", ["dense", "conv", "post", "tanh", "elu"])
def test_deviation_bound_contains_the_real_deviation(which, request):
    model = request.getfixturevalue(which)
    graph = build_graph(model)
    box = InputBox(0.0, 1.0)
    bounds = interval_bounds(graph, box)
    x = np.random.default_rng(1).uniform(0, 1, (200, *graph.input_shape)).astype("f4")
    impact = RobustnessImpact()
    for group in graph.groups:
        view = UnitView.of(graph, group, np.arange(group.width), bounds)
        gamma, _ = PairSaliency()(view)
        a = np.array([0, 2, 1])
        b = np.array([1, 0, 3])
        lo, hi = impact.deviation(view, a, b, gamma[a, b])
        for i in range(len(a)):
            plan = {group.name: GroupPlan([int(b[i])], [(int(a[i]), int(b[i]), gamma[a[i], b[i]])])}
            pruned = apply_plan(model, plan)
            dev = np.asarray(pruned(x)) - np.asarray(model(x))
            assert np.all(dev >= lo[i] - 1e-4) and np.all(dev <= hi[i] + 1e-4)
        width, ent = impact.terms(view, a, b, gamma[a, b])
        assert np.all(width >= 0) and np.all((ent >= 0) & (ent <= 1))


def test_input_box_validates_and_round_trips():
    with pytest.raises(ConfigError, match="lo <= hi"):
        InputBox(1.0, 0.0)
    box = InputBox([0.0, -1.0], [1.0, 1.0])
    assert InputBox.from_config(box.get_config()).get_config() == box.get_config()
    lo, hi = box.arrays((3, 2))
    assert lo.shape == (3, 2) and hi[0, 1] == 1.0
    with pytest.raises(ConfigError, match="does not fit"):
        box.arrays((3,))


def _dag_models():
    from dagnets import PATTERNS

    from pruner import zoo

    return {**PATTERNS, "ds_cnn": lambda: zoo.ds_cnn(filters=8),
            "mobilenet_v3_small": lambda: zoo.mobilenet_v3_small((32, 32, 3), alpha=0.75)}


@pytest.mark.parametrize("name", ["add", "concatenate", "multiply_se", "depthwise", "separable",
                                  "sequential", "ds_cnn", "mobilenet_v3_small"])
def test_dag_bounds_hold_every_node(name):
    """Every node's value on inputs from the box lies inside its bounds; an Add's bounds
    are the sum of its inputs' and a Multiply's hold the interval product."""
    model = _dag_models()[name]()
    graph = build_graph(model)
    bounds = interval_bounds(graph, InputBox(0.0, 1.0))
    probe = keras.Model(model.inputs, [n.op.output for n in graph.nodes[1:]])
    x = np.random.default_rng(0).uniform(0, 1, (64, *graph.input_shape)).astype(np.float32)
    x[:2] = [np.zeros(graph.input_shape), np.ones(graph.input_shape)]  # the corners too
    for node, value, (lo, hi) in zip(graph.nodes[1:], probe(x), bounds[1:], strict=True):
        value = np.asarray(value)
        tol = 1e-4 * (1 + np.abs(value))
        assert np.all(value >= lo - tol) and np.all(value <= hi + tol), node.op.name
        if node.key == "Add":
            parts = [bounds[p] for p in node.parents]
            np.testing.assert_allclose(lo, sum(p[0] for p in parts), rtol=1e-6, atol=1e-6)


def _residual_concat_net():
    """BN after a convolution, a depthwise block added back (Add), a branch concatenated."""
    from pruner import zoo

    layers = keras.layers
    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 3))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(6, 3, padding="same")(inp)))
    y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same")(x)))
    y = layers.BatchNormalization()(layers.Conv2D(6, 1)(y))
    x = layers.Add()([x, y])
    z = layers.Conv2D(4, 1, activation="relu")(x)
    x = layers.Concatenate()([x, z])
    x = layers.GlobalAveragePooling2D()(x)
    return zoo.randomize_bn(keras.Model(inp, layers.Dense(3)(x)), 7)


@pytest.mark.parametrize("name", ["residual_concat", "add", "concatenate", "multiply_se",
                                  "depthwise", "separable", "sequential"])
def test_dag_deviation_contains_the_real_change(name):
    """For every group, removing a channel (and, in mergeable groups, merging one pair)
    changes the logits on inputs from the box by no more than the deviation bounds."""
    models = {"residual_concat": _residual_concat_net, **_dag_models()}
    model = models[name]()
    graph = build_graph(model)
    bounds = interval_bounds(graph, InputBox(0.0, 1.0))
    x = np.random.default_rng(1).uniform(0, 1, (128, *graph.input_shape)).astype(np.float32)
    x[:2] = [np.zeros(graph.input_shape), np.ones(graph.input_shape)]
    y0 = np.asarray(model(x))
    checked = moved = 0
    for group in graph.groups:
        cases = [GroupPlan(remove=[u]) for u in {0, group.width - 1}]
        if group.mergeable:
            cases.append(GroupPlan(remove=[1], merges=[(0, 1, 0.7)]))
        for gp in cases:
            b = np.array(gp.remove)
            if gp.merges:
                a, gamma = np.array([0]), np.array([0.7])
                k, c = group.merge_terms(a, b, gamma)
                lo, hi = deviation(graph, bounds, group, b, a, k, c)
            else:
                lo, hi = deviation(graph, bounds, group, b)
            change = np.asarray(apply_plan(model, {group.name: gp})(x)) - y0
            tol = 1e-4 * (1 + np.abs(y0))
            assert np.all(change >= lo - tol) and np.all(change <= hi + tol), (group.name, gp)
            assert np.all(hi - lo < 1e6)  # a bound, not infinity
            moved += bool(np.abs(change).max() > 0)  # a dead channel changes nothing
            checked += 1
    assert checked >= 2 and moved >= 1  # a bound of zero would fail
