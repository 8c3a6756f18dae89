"""Data-free refit of DAG readers (pruner/compensate/refit): on the synthesised inputs the
refitted reader's output is closer to the original's than after removal with the
closed-form bias correction alone, and the pruned model is a function of the weights
and the synthesised inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from pruner import zoo  # noqa: E402
from pruner.api import prune  # noqa: E402
from pruner.bounds import InputBox  # noqa: E402
from pruner.compensate import compensate  # noqa: E402
from pruner.compensate.refit import readers_of, refit  # noqa: E402
from pruner.graph import build_graph  # noqa: E402
from pruner.graph.surgery import GroupPlan, as_model  # noqa: E402
from pruner.synthesis import synthesize  # noqa: E402

REMOVE = [1, 3, 4, 6, 9, 12]


def _bn_after(model, name):
    layer = model.get_layer(name)
    return next(lay for lay in model.layers if lay is not layer and lay.input is layer.output)


def _output(model, name, x):
    """The output of the BatchNormalization after layer ``name`` on x."""
    probe = keras.Model(model.inputs[0], _bn_after(model, name).output)
    return np.asarray(probe(x, training=False))


def _setup():
    model = zoo.ds_cnn((20, 12, 1), classes=5, filters=16, blocks=2)
    x = synthesize(model, InputBox(0.0, 1.0), n=48, steps=10, seed=0)
    graph = build_graph(model)
    group = next(g for g in graph.groups if g.consumer.name == "pw0")
    plan = {group.name: GroupPlan(list(REMOVE))}
    ids = {g.name: np.arange(g.width) for g in graph.groups}
    ids[group.name] = np.delete(ids[group.name], REMOVE)
    return model, x, graph, group, plan, ids


def test_refit_lowers_the_readers_error_on_synthesised_inputs():
    model, x, graph, group, plan, ids = _setup()
    names = readers_of(graph, set(plan))
    assert "pw0" in names
    want = _output(model, "pw0", x)
    corrected = as_model(compensate(graph, plan, "bias"))
    err_bias = np.mean((_output(corrected, "pw0", x) - want) ** 2)
    step = compensate(graph, plan, "bias")
    refitted = as_model(refit(step, x, names, ids))
    err_refit = np.mean((_output(refitted, "pw0", x) - want) ** 2)
    assert err_refit < 0.5 * err_bias
    # the arrays the next step starts from carry the refit
    np.testing.assert_array_equal(step.store.arrays["pw0"][0],
                                  refitted.get_layer("pw0").get_weights()[0])


def test_pruned_model_is_a_function_of_weights_and_synthesised_inputs():
    model, x, *_ = _setup()
    opts = dict(step=0.1, round_to=1, n_random=0, measure_tflite=False, progress=False,
                keep_below_floor=True, synthetic_inputs=x, synthetic=16)
    a = prune(model, 0.2, "paoding", **opts).model
    b = prune(model, 0.2, "paoding", **opts).model
    plain = prune(model, 0.2, "paoding", compensation="bias", **opts).model
    probe = np.random.default_rng(1).uniform(0, 1, (8, 20, 12, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(a(probe)), np.asarray(b(probe)))
    assert not np.allclose(np.asarray(a(probe)), np.asarray(plain(probe)))


def test_dag_fidelity_is_the_verdict_on_held_out_synthesised_inputs():
    """DAG runs measure the chains' check set (a held-out part of the synthesised inputs
    and interpolations): the figure is the verdict's, agreement and KL beside it."""
    model, x, *_ = _setup()
    opts = dict(step=0.1, round_to=1, n_random=0, measure_tflite=False, progress=False,
                keep_below_floor=True, synthetic_inputs=x, synthetic=16)
    records = prune(model, 0.2, "paoding", **opts).trajectory
    assert records[0].fidelity_kl == pytest.approx(0.0, abs=1e-9)
    assert records[0].data_free_fidelity == pytest.approx(1.0)
    last = records[-1]
    assert last.fidelity_kl > 0 and last.verdict["evidence"] == "synthesised"
    assert last.data_free_fidelity == last.verdict["figure"]
