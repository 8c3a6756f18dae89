"""Coupled channel groups on DAG models: grouping, masked == pruned, exact merges,
predicted size drops, TFLite parity, and the one-line error for unknown layers."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from dagnets import PATTERNS, add_net, depthwise_net, se_net  # noqa: E402

from core.errors import ConfigError, UnsupportedLayerError  # noqa: E402
from pruner import zoo  # noqa: E402
from pruner.graph import build_graph  # noqa: E402
from pruner.graph.surgery import GroupPlan, apply_plan  # noqa: E402
from pruner.metrics import count_macs, count_params  # noqa: E402

L = keras.layers


def _x(model, n=4, seed=0):
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


def _plan(graph, rng, share=0.4):
    return {
        g.name: GroupPlan(remove=sorted(rng.choice(g.width, max(1, int(share * g.width)),
                                                   replace=False).tolist()))
        for g in graph.groups
        if g.width > 1
    }


def _masked(model, graph, plan):
    """The original model with every reader of a removed channel blind to it."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for group in graph.groups:
        if group.name not in plan:
            continue
        remove = np.asarray(plan[group.name].remove)
        for m in group.readers:
            layer = clone.get_layer(m.layer.name)
            w = layer.get_weights()
            rows = m.rows(remove).reshape(-1)
            if m.params == "dense":
                w[0][rows] = 0.0
            elif m.params == "conv":
                w[0][..., rows, :] = 0.0
            else:
                w[1][:, :, rows, :] = 0.0
            layer.set_weights(w)
    return clone


def test_coupled_groups_are_found():
    graph = build_graph(add_net())
    assert any(g.coupled for g in graph.groups)
    names = {g.name: g for g in graph.groups}
    first = next(g for g in graph.groups if len(g.producers) == 2)
    assert first.width == 6 and not first.mergeable  # conv and its residual partner
    assert any(len(g.producers) == 2 and g.width == 5 for g in names.values())
    se = build_graph(se_net())
    gate = next(g for g in se.groups if g.width == 8)
    assert len(gate.producers) == 2  # the feature conv and the gate conv share channels
    dw = build_graph(depthwise_net())
    assert any(m.params == "depthwise" for g in dw.groups for m in g.members)
    assert all(not g.mergeable for g in dw.groups if g.coupled)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_masked_equals_pruned(pattern):
    model = PATTERNS[pattern]()
    graph = build_graph(model)
    assert graph.groups, pattern
    plan = _plan(graph, np.random.default_rng(0))
    pruned = apply_plan(model, plan)
    x = _x(model)
    want = np.asarray(_masked(model, graph, plan)(x))
    got = np.asarray(pruned(x))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert count_params(pruned) < count_params(model)
    widths = {g.name: g.width for g in build_graph(pruned).groups}
    for g in graph.groups:
        assert widths[g.name] == g.width - len(plan.get(g.name, GroupPlan()).remove)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_steps_on_arrays_equal_steps_on_models(pattern):
    """Two steps on weight arrays (advance, one build at the end) give the model that two
    rebuilt steps give, and the arrays' sizes are the built model's."""
    from pruner.graph.surgery import advance, as_model

    model = PATTERNS[pattern]()
    graph = build_graph(model)
    rng = np.random.default_rng(1)
    first = _plan(graph, rng, share=0.25)
    state = advance(graph, first)
    second = _plan(state, rng, share=0.25)
    final = advance(state, second)
    rebuilt = apply_plan(model, first)
    rebuilt = apply_plan(rebuilt, second)
    built = as_model(final)
    assert as_model(final) is built  # built once
    x = _x(model)
    np.testing.assert_allclose(np.asarray(built(x)), np.asarray(rebuilt(x)), rtol=1e-5, atol=1e-6)
    assert (final.params(), final.macs()) == (count_params(built), count_macs(built))
    assert final.macs() < graph.macs() == count_macs(model)
    assert [g.width for g in final.groups] == [g.width for g in build_graph(built).groups]


def _merge_net(conv1d: bool):
    """One producer read, through a Concatenate, by a Conv and, after global pooling,
    by a Dense: every reader is linear in the channel."""
    keras.utils.set_random_seed(7)
    conv, pad, pool, gap = (
        (L.Conv1D, L.ZeroPadding1D, L.AveragePooling1D, L.GlobalAveragePooling1D)
        if conv1d
        else (L.Conv2D, L.ZeroPadding2D, L.AveragePooling2D, L.GlobalAveragePooling2D)
    )
    inp = keras.Input((10, 3) if conv1d else (8, 8, 3))
    h = conv(6, 3)(inp)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = pool(2)(pad(1)(h))
    other = conv(3, 3, activation="relu")(inp)
    other = pool(2)(pad(1)(other))
    joined = L.Concatenate()([other, h])
    a = gap()(conv(4, 3, activation="relu")(joined))
    b = gap()(L.Dropout(0.1)(h))
    out = L.Dense(3)(L.Concatenate()([a, L.Dense(5, activation="relu")(b)]))
    return keras.Model(inp, out)


@pytest.mark.parametrize("conv1d", [False, True])
def test_merge_is_exact_through_new_layers(conv1d):
    """Unit 4 = 1.5 * unit 1 (filter, BN statistics): removing 4 and merging it into
    1 changes nothing, through BN, padding, pooling, Concatenate and fan-out."""
    model = _merge_net(conv1d)
    graph = build_graph(model)
    group = next(g for g in graph.groups if g.width == 6)
    assert group.mergeable and len(group.readers) == 2
    prod = group.producer
    k, b = prod.get_weights()
    k[..., 4], b[4] = 1.5 * k[..., 1], 1.5 * b[1]
    prod.set_weights([k, b])
    bn = group.bn
    gamma, beta, mean, var = bn.get_weights()
    gamma[4], var[4], mean[4], beta[4] = gamma[1], var[1], 1.5 * mean[1], 1.5 * beta[1]
    bn.set_weights([gamma, beta, mean, var])
    x = _x(model)
    pruned = apply_plan(model, {group.name: GroupPlan([4], [(1, 4, 1.5)])})
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-5)
    plain = apply_plan(model, {group.name: GroupPlan([4])})
    assert not np.allclose(np.asarray(plain(x)), np.asarray(model(x)), atol=1e-4)


def test_merge_refused_where_channels_are_coupled():
    model = add_net()
    graph = build_graph(model)
    group = next(g for g in graph.groups if len(g.producers) == 2)
    with pytest.raises(ConfigError, match="made by 2 layers.*without merges"):
        apply_plan(model, {group.name: GroupPlan([2], [(0, 2, 1.0)])})
    model = depthwise_net()
    group = next(g for g in build_graph(model).groups if g.coupled)
    with pytest.raises(ConfigError, match="per-channel filters"):
        apply_plan(model, {group.name: GroupPlan([2], [(0, 2, 1.0)])})


def test_size_drops_as_predicted():
    """Removing k channels from every DS-CNN group gives exactly the DS-CNN of width 64 - k."""
    model = zoo.ds_cnn(filters=16)
    graph = build_graph(model)
    assert [g.width for g in graph.groups] == [16] * 5
    pruned = apply_plan(model, {g.name: GroupPlan(list(range(5))) for g in graph.groups})
    small = zoo.ds_cnn(filters=11)
    assert count_params(pruned) == count_params(small)
    assert count_macs(pruned) == count_macs(small) < count_macs(model)


def test_unsupported_layer_is_named_in_one_line():
    inp = keras.Input((6, 4))
    x = L.LayerNormalization(name="ln")(L.Conv1D(3, 1)(inp))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(x)))
    with pytest.raises(UnsupportedLayerError) as err:
        build_graph(model)
    message = str(err.value)
    assert "'ln'" in message and "LayerNormalization" in message and "\n" not in message


def test_frozen_channels_stay():
    """Channels that reach the output or a channel-reordering reshape are not prunable."""
    inp = keras.Input((4, 4, 2))
    x = L.Conv2D(4, 1)(inp)
    y = L.Conv2D(4, 1)(x)
    out = L.Flatten()(L.Add()([x, L.Reshape((4, 4, 4))(L.Permute((2, 1, 3))(y))]))
    graph = build_graph(keras.Model(inp, out))
    assert graph.groups == []


FAMILIES = {
    "ds_cnn": lambda: zoo.ds_cnn(filters=16),
    "resnet": lambda: zoo.resnet(),
    "mobilenet_v2": lambda: zoo.mobilenet_v2((32, 32, 3)),
    "mobilenet_v3_small": lambda: zoo.mobilenet_v3_small((32, 32, 3), alpha=0.75),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_family_prunes_shrinks_and_exports(family):
    """30% pruned by paoding: fewer params and MACs, and LiteRT matches Keras to 1e-4."""
    pytest.importorskip("ai_edge_litert")
    from pruner.api import prune
    from pruner.export import export_tflite, run_tflite

    model = FAMILIES[family]()  # untrained weights: the verdict is not this test's subject
    result = prune(model, 0.3, "paoding", step=0.3, n_random=0, measure_tflite=False,
                   progress=False, keep_below_floor=True)
    pruned, first, last = result.model, result.trajectory[0], result.final
    assert last.ratio >= 0.2
    assert last.params < first.params and last.macs < first.macs
    assert (last.params, last.macs) == (count_params(pruned), count_macs(pruned))
    x = _x(pruned, n=3)
    want = np.asarray(pruned(x))
    got = run_tflite(export_tflite(pruned), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_post_bn_merges_need_nothing_but_linear_maps_after_the_bn():
    """A BatchNormalization after the ReLU keeps merges exact (the surgery moves its shift
    difference into the reader's bias); a second ReLU after it does not, and its group
    refuses merges."""
    from pruner.graph import build_graph as build_dag

    inp = keras.Input((6, 6, 1))
    x = L.BatchNormalization()(L.Conv2D(4, 3, activation="relu", name="lin")(inp))
    x = L.MaxPooling2D()(x)
    out = L.Dense(2)(L.Flatten()(L.Conv2D(3, 1, name="mid")(x)))
    linear = keras.Model(inp, out)
    group = build_dag(linear).group("lin")
    assert group.mergeable and group.post_bn is not None and group.post_max
    inp = keras.Input((6, 6, 1))
    x = L.BatchNormalization()(L.Conv2D(4, 3, activation="relu", name="bent")(inp))
    out = L.Dense(2)(L.Flatten()(L.Conv2D(3, 1)(L.ReLU()(x))))
    bent = keras.Model(inp, out)
    group = build_dag(bent).group("bent")
    assert not group.mergeable
    with pytest.raises(ConfigError, match="without merges"):
        apply_plan(bent, {"bent": GroupPlan([1], [(0, 1, 1.0)])})


def test_robustness_annealing_scores_dag_candidates_and_removes_where_merges_cannot_go():
    """paoding: the impact is the deviation bound (a channel no reader reads scores
    L = 0, the lowest), groups that cannot merge lose channels by plain removal, and a
    run is reproducible from its seed."""
    from pruner.api import prune
    from pruner.bounds import InputBox, interval_bounds
    from pruner.criteria import GroupSaliency, RobustnessImpact, UnitView
    from pruner.graph import build_graph as build_dag
    from pruner.strategies import Annealing

    model = add_net()
    graph = build_dag(model)
    group = next(g for g in graph.groups if not g.mergeable)
    reader = next(m for m in group.readers if m.params == "conv")
    w = reader.layer.get_weights()
    w[0][:, :, reader.offset + 2, :] = 0.0  # nobody reads channel 2 through this reader
    others = [m for m in group.readers if m is not reader]
    reader.layer.set_weights(w)
    for m in others:
        ws = m.layer.get_weights()
        if m.params == "dense":
            ws[0][m.rows([2])] = 0.0
        else:
            ws[0][..., m.offset + 2, :] = 0.0
        m.layer.set_weights(ws)
    bounds = interval_bounds(graph, InputBox(0.0, 1.0))
    view = UnitView.of(graph, group, np.arange(group.width), bounds)
    units = np.arange(group.width)
    width, _ = RobustnessImpact().terms(view, np.full(group.width, -1), units,
                                        np.zeros(group.width))
    assert width[2] == 0.0 and np.all(np.delete(width, 2) > 0)
    picked = Annealing(np.random.default_rng(0), t0=0.0, tau_start="best",
                       ranking=GroupSaliency()).select(view, 1, 0)
    assert picked.remove == [2] and picked.merges == []

    kwargs = dict(target=0.4, step=0.2, mode="paoding",
                  synthetic=0, seed=3, keep_below_floor=True, progress=False)
    first, again = prune(add_net(), **kwargs), prune(add_net(), **kwargs)
    assert first.trajectory[-1].ratio > 0.3
    for a, b in zip(first.model.get_weights(), again.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
