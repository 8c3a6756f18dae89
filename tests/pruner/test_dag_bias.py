"""Data-free bias correction on DAG models (pruner/compensate/bias): the reader's expected
pre-activation is kept, and the correction is the closed-form expectation of the removed
channels times their kernel sums, nothing else."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from pruner import zoo  # noqa: E402
from pruner.compensate import compensate  # noqa: E402
from pruner.compensate.bias import channel_means, clipped_mean  # noqa: E402
from pruner.graph import build_graph  # noqa: E402
from pruner.graph.surgery import GroupPlan, advance, as_model  # noqa: E402

REMOVE = [1, 3, 4, 6, 9, 12]


def _bn(layer):
    names = [w.path.split("/")[-1] for w in layer.weights]
    return dict(zip(names, layer.get_weights(), strict=True))


def _ds_cnn_step():
    """A DS-CNN, the group pw0 reads, and that group pruned with and without correction."""
    model = zoo.ds_cnn((20, 12, 1), classes=5, filters=16, blocks=2)
    graph = build_graph(model)
    group = next(g for g in graph.groups if g.consumer.name == "pw0")
    plan = {group.name: GroupPlan(list(REMOVE))}
    return model, group, as_model(compensate(graph, plan, "bias")), as_model(advance(graph, plan))


def _after(model, layer):
    """The layer that reads ``layer``'s output."""
    return next(lay for lay in model.layers if lay is not layer and lay.input is layer.output)


def test_reader_keeps_its_expected_pre_activation():
    """Inputs drawn from the depthwise BN's statistics, through the real BN and ReLU:
    the mean of pw0's BN output moves far less with the correction than without."""
    model, group, corrected, plain = _ds_cnn_step()
    bn_dw = _after(model, model.get_layer("dw0"))
    bn_pw = _after(model, model.get_layer("pw0"))
    stats = _bn(bn_dw)
    rng = np.random.default_rng(0)
    x = rng.normal(stats["moving_mean"], np.sqrt(stats["moving_variance"]),
                   (20000, 1, 1, group.width)).astype(np.float32)
    keep = np.setdiff1d(np.arange(group.width), REMOVE)

    def reader_mean(m, inputs):
        y = m.get_layer(bn_dw.name)(inputs, training=False)
        y = keras.ops.relu(y)
        y = m.get_layer(bn_pw.name)(m.get_layer("pw0")(y), training=False)
        return keras.ops.convert_to_numpy(y).reshape(len(inputs), -1).mean(axis=0)

    want = reader_mean(model, x)
    err_plain = np.abs(reader_mean(plain, x[..., keep]) - want).mean()
    err_corr = np.abs(reader_mean(corrected, x[..., keep]) - want).mean()
    assert err_corr < 0.2 * err_plain, (err_corr, err_plain)


def test_correction_is_the_closed_form_expectation_only():
    """Corrected and plain pruning differ only in pw0's BN moving mean, by the removed
    channels' E[relu(N(beta, gamma^2 var/(var+eps)))] (numerical integral) times pw0's
    kernel; the corrected model is the masked original with that mean, exactly."""
    model, group, corrected, plain = _ds_cnn_step()
    bn_pw = _after(model, model.get_layer("pw0"))
    changed = [
        lay.name for lay, lp in zip(corrected.layers, plain.layers, strict=True)
        for a, b in zip(lay.get_weights(), lp.get_weights(), strict=True)
        if not np.array_equal(a, b)
    ]
    assert changed == [bn_pw.name]
    bn_dw = _after(model, model.get_layer("dw0"))
    s = _bn(bn_dw)
    sd = np.abs(s["gamma"]) * np.sqrt(s["moving_variance"] / (s["moving_variance"] + bn_dw.epsilon))
    grid = np.linspace(-12, 12, 200001)
    dens = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    e = np.array([np.trapezoid(np.maximum(b + d * grid, 0) * dens, grid)
                  for b, d in zip(s["beta"], sd, strict=True)])
    w = model.get_layer("pw0").get_weights()[0][0, 0]  # [in, out]
    lost = e[REMOVE] @ w[REMOVE]
    shift = _bn(plain.get_layer(bn_pw.name))["moving_mean"] - _bn(
        corrected.get_layer(bn_pw.name))["moving_mean"]
    np.testing.assert_allclose(shift, lost, rtol=1e-4, atol=1e-5)
    # masked original with the corrected moving mean == the corrected pruned model
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    kernel = masked.get_layer("pw0").get_weights()
    kernel[0][..., REMOVE, :] = 0.0
    masked.get_layer("pw0").set_weights(kernel)
    vals = _bn(masked.get_layer(bn_pw.name))
    vals["moving_mean"] = _bn(corrected.get_layer(bn_pw.name))["moving_mean"]
    masked.get_layer(bn_pw.name).set_weights([vals[w.path.split("/")[-1]]
                                              for w in bn_pw.weights])
    x = np.random.default_rng(1).normal(0, 1, (4, 20, 12, 1)).astype(np.float32)
    np.testing.assert_allclose(masked.predict(x, verbose=0), corrected.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_residual_means_add_and_relu6_clips():
    """MobileNetV2: an Add's channel mean is the sum of its BN inputs' betas, and a
    ReLU6 after a BN gives the clipped-normal mean (checked by sampling)."""
    model = zoo.mobilenet_v2((32, 32, 3), alpha=0.35)
    graph = build_graph(model)
    means = channel_means(graph)
    index = {n.op.name: i for i, n in enumerate(graph.nodes)}
    add = next(i for i, n in enumerate(graph.nodes) if n.key == "Add")
    parents = graph.nodes[add].parents
    betas = [_bn(graph.nodes[p].op)["beta"] for p in parents]
    np.testing.assert_allclose(means[add], np.sum(betas, axis=0), rtol=1e-6)
    relu6 = index["block_1_expand_relu"]
    bn = graph.nodes[graph.nodes[relu6].parents[0]].op
    s = _bn(bn)
    sd = np.abs(s["gamma"]) * np.sqrt(s["moving_variance"] / (s["moving_variance"] + bn.epsilon))
    sample = np.clip(np.random.default_rng(0).normal(s["beta"], sd, (200000, len(sd))), 0, 6)
    np.testing.assert_allclose(means[relu6], sample.mean(axis=0), atol=0.01)
    mu, sd = np.array([-1.0, 3.0, 5.5, 7.0]), np.array([0.5, 2.0, 1.0, 0.0])
    sample = np.clip(np.random.default_rng(1).normal(mu, sd, (400000, 4)), 0, 6)
    np.testing.assert_allclose(clipped_mean(mu, sd, 6.0), sample.mean(axis=0), atol=0.01)


def test_paoding_on_dags_corrects_unless_told_not_to():
    from pruner.api import prune

    model = zoo.ds_cnn((20, 12, 1), classes=5, filters=16, blocks=2)
    kw = dict(n_random=0, measure_tflite=False, progress=False, step=0.25, round_to=1)
    on = prune(model, 0.25, compensation="bias", **kw).model  # closed form only
    off = prune(model, 0.25, compensation="none", **kw).model
    assert [int(w.shape[-1]) for w in on.weights] == [int(w.shape[-1]) for w in off.weights]
    diff = [a.name for a, b in zip(on.layers, off.layers, strict=True)
            if any(not np.array_equal(x, y)
                   for x, y in zip(a.get_weights(), b.get_weights(), strict=True))]
    assert diff and all(type(on.get_layer(n)).__name__ in ("BatchNormalization", "Dense")
                        for n in diff)
