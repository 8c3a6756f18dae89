"""Graph: prunable groups of supported models, clear refusals for the rest."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from prunehelp import convnet, mlp, postbn_net  # noqa: E402

from core.errors import UnsupportedLayerError  # noqa: E402
from pruner.graph import build_graph  # noqa: E402

L = keras.layers


def test_dense_groups_skip_the_output_layer():
    model = mlp(widths=(12, 10, 8))
    graph = build_graph(model)
    assert [g.width for g in graph.groups] == [12, 10, 8]
    assert graph.groups[-1].consumer is model.layers[-1]
    assert all(g.homogeneous for g in graph.groups)
    assert graph.groups[0].incoming().shape == (12, 6 + 1)
    assert graph.groups[0].outgoing().shape == (12, 10)


def test_conv_groups_find_batchnorm_and_flatten_positions():
    graph = build_graph(convnet())
    first, second, dense = graph.groups
    assert first.bn is not None and second.bn is not None and dense.bn is None
    (reader,) = second.readers  # the Dense after a Flatten of 2x2 positions
    np.testing.assert_array_equal(reader.rows(np.array([1])), [[1, 6, 11, 16]])
    assert second.outgoing().shape == (5, 4 * 7)


def test_non_homogeneous_activation_is_marked():
    graph = build_graph(mlp(activation="tanh"))
    assert not any(g.homogeneous for g in graph.groups)


def _functional(make):
    inp = keras.Input((6,))
    a = L.Dense(4, name="left")(inp)
    b = L.Dense(4, name="right")(inp)
    return keras.Model(inp, L.Dense(2)(make(a, b)))


def test_add_and_concatenate_couple_or_offset_channels():
    added = build_graph(_functional(lambda a, b: L.Add(name="the_add")([a, b])))
    (group,) = added.groups
    assert group.coupled and {m.layer.name for m in group.producers} == {"left", "right"} and not group.mergeable
    joined = build_graph(_functional(lambda a, b: L.Concatenate(name="cat")([a, b])))
    left, right = joined.groups
    assert left.mergeable and right.mergeable
    assert [m.offset for m in left.readers + right.readers] == [0, 4]


def test_unsupported_layers_are_named():
    model = keras.Sequential([keras.Input((5, 3)), L.LSTM(4, name="rnn"), L.Dense(2)])
    with pytest.raises(UnsupportedLayerError, match=r"'rnn' \(LSTM\)"):
        build_graph(model)


def test_batchnorm_after_the_nonlinearity_is_a_post_affine_map():
    graph = build_graph(postbn_net())
    assert all(g.post_bn is not None and g.bn is None for g in graph.groups)
    assert graph.groups[0].post_max and not graph.groups[1].post_max
    model = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(5, activation="relu"),
            L.BatchNormalization(name="late_bn"),
            L.ReLU(),
            L.Dense(2),
        ]
    )
    (group,) = build_graph(model).groups  # a nonlinearity after the BN: plain removal only
    assert group.width == 5 and not group.mergeable


def test_input_preprocessing_is_allowed_only_before_the_first_layer():
    model = keras.Sequential(
        [keras.Input((4, 4)), L.Rescaling(0.5, 0.1), L.Reshape((16,)), L.Dense(5), L.Dense(2)]
    )
    assert [g.width for g in build_graph(model).groups] == [5]
    late = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(6),
            L.Reshape((3, 2), name="late_reshape"),
            L.Flatten(),
            L.Dense(2),
        ]
    )
    assert build_graph(late).groups == []  # the reshape reorders channels: frozen


def test_branching_model_is_refused():
    inp = keras.Input((4,))
    h = L.Dense(5, name="trunk")(inp)
    model = keras.Model(inp, [L.Dense(2)(h), L.Dense(3)(h)])
    with pytest.raises(UnsupportedLayerError, match="outputs"):
        build_graph(model)
