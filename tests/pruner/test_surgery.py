"""Surgery: physical removal equals masking + merging; exact merges; exact size drops."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from prunehelp import convnet, gapnet, mlp, postbn_net  # noqa: E402

from core.errors import ConfigError  # noqa: E402
from pruner.criteria import PairSaliency, UnitView  # noqa: E402
from pruner.graph import (  # noqa: E402
    GroupPlan,
    apply_plan,
    build_graph,  # noqa: E402
)
from pruner.metrics import count_macs, count_params  # noqa: E402


def _random_plan(graph, rng, share=0.4):
    plan = {}
    for group in graph.groups:
        n = group.width
        k = max(1, int(share * n))
        remove = sorted(rng.choice(n, size=k, replace=False).tolist())
        keep = [u for u in range(n) if u not in remove]
        merges = [(int(rng.choice(keep)), b, float(rng.uniform(0, 2))) for b in remove[::2]]
        plan[group.name] = GroupPlan(remove=remove, merges=merges)
    return plan


def _masked_merged(model, graph, plan):
    """The original-size model with removed units' consumer inputs merged, then zeroed."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for group in graph.groups:
        gp = plan[group.name]
        layer = clone.get_layer(group.consumer.name)
        weights = layer.get_weights()
        kernel = weights[0].astype(np.float64)
        c = group.width
        if kernel.ndim == 4:  # Conv2D consumer: input channels on axis 2
            for a, b, g in gp.merges:
                kernel[:, :, a, :] += g * kernel[:, :, b, :]
            kernel[:, :, gp.remove, :] = 0.0
        else:  # Dense: Flatten lays positions out as position * C + channel
            positions = kernel.shape[0] // c
            base = np.arange(positions) * c
            for a, b, g in gp.merges:
                kernel[base + a] += g * kernel[base + b]
            for b in gp.remove:
                kernel[base + b] = 0.0
        weights[0] = kernel.astype(np.float32)
        layer.set_weights(weights)
    return clone


@pytest.mark.parametrize(
    "build",
    [
        lambda: mlp(),
        lambda: mlp(functional=True, activation="tanh"),
        lambda: convnet(),
        lambda: convnet(functional=True),
        lambda: gapnet(),
    ],
    ids=["dense", "dense-functional-tanh", "conv-bn-pool-flatten", "conv-functional", "gap"],
)
def test_pruned_equals_masked_and_merged(build):
    model = build()
    graph = build_graph(model)
    plan = _random_plan(graph, np.random.default_rng(3))
    pruned = apply_plan(model, plan)
    reference = _masked_merged(model, graph, plan)
    x = np.random.default_rng(0).uniform(0, 1, (16, *graph.input_shape)).astype(np.float32)
    np.testing.assert_allclose(pruned(x), reference(x), atol=1e-5)
    assert type(pruned).__name__ == type(model).__name__
    for group in graph.groups:
        new = pruned.get_layer(group.name)
        assert new.get_weights()[0].shape[-1] == group.width - len(plan[group.name].remove)


def test_merge_of_proportional_units_changes_nothing():
    model = mlp(widths=(5, 4), inputs=3)
    dense = model.layers[0]
    kernel, bias = dense.get_weights()
    gamma = 1.7
    kernel[:, 3] = gamma * kernel[:, 1]
    bias[1], bias[3] = 0.2, gamma * 0.2
    dense.set_weights([kernel, bias])
    graph = build_graph(model)
    view = UnitView.of(graph, graph.groups[0], np.arange(5))
    gam, sal = PairSaliency()(view)
    assert gam[1, 3] == pytest.approx(gamma)
    assert sal[1, 3] == pytest.approx(0.0, abs=1e-6)
    pruned = apply_plan(model, {dense.name: GroupPlan([3], [(1, 3, gam[1, 3])])})
    x = np.random.default_rng(1).normal(size=(64, 3)).astype(np.float32)
    np.testing.assert_allclose(pruned(x), model(x), atol=1e-5)
    assert pruned.layers[0].units == 4


def test_merge_through_batchnorm_is_exact():
    model = convnet()
    conv, bn = model.layers[0], model.layers[1]
    k, b = conv.get_weights()
    g_bn, beta, mean, var = bn.get_weights()
    gamma = 0.6
    k[..., 4] = gamma * k[..., 2]
    b[4] = gamma * b[2]
    g_bn[4], var[4] = g_bn[2], var[2]
    beta[4], mean[4] = gamma * beta[2], gamma * mean[2]
    conv.set_weights([k, b])
    bn.set_weights([g_bn, beta, mean, var * 1.0])
    # BN folds eps into var; keep the scales equal by matching var exactly (done above)
    graph = build_graph(model)
    view = UnitView.of(graph, graph.groups[0], np.arange(6))
    gam, sal = PairSaliency()(view)
    assert gam[2, 4] == pytest.approx(gamma, rel=1e-6)
    pruned = apply_plan(model, {conv.name: GroupPlan([4], [(2, 4, gam[2, 4])])})
    x = np.random.default_rng(2).uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(pruned(x), model(x), atol=1e-5)


def test_merge_with_batchnorm_after_the_nonlinearity_is_exact():
    model = postbn_net(seed=1)
    graph = build_graph(model)
    x = np.random.default_rng(3).uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
    plan = {}
    for group, (a, b) in zip(graph.groups, [(0, 3), (1, 2), (4, 1)], strict=True):
        k, bias = group.producer.get_weights()
        gamma = 1.3
        k[..., b] = gamma * k[..., a]
        bias[b] = gamma * bias[a]
        group.producer.set_weights([k, bias])
        post = group.post_bn.get_weights()
        post[0][[a, b]] = np.abs(post[0][[a, b]])  # same sign: max pooling stays exact
        group.post_bn.set_weights(post)
        plan[group.name] = GroupPlan([b], [(a, b, gamma)])
    reference = np.asarray(model(x))
    pruned = apply_plan(model, plan)
    np.testing.assert_allclose(pruned(x), reference, atol=1e-5)


def test_params_and_macs_drop_as_predicted_dense():
    model = mlp(widths=(12, 10, 8), inputs=6, classes=3)
    graph = build_graph(model)
    removed = {graph.groups[0].name: 5, graph.groups[1].name: 3, graph.groups[2].name: 2}
    plan = {name: GroupPlan(remove=list(range(k))) for name, k in removed.items()}
    pruned = apply_plan(model, plan)
    w = [6, 12 - 5, 10 - 3, 8 - 2, 3]
    assert count_params(pruned) == sum(a * b + b for a, b in zip(w[:-1], w[1:], strict=True))
    assert count_macs(pruned) == sum(a * b for a, b in zip(w[:-1], w[1:], strict=True))
    assert count_params(model) - count_params(pruned) == (
        sum(a * b + b for a, b in zip([6, 12, 10, 8], [12, 10, 8, 3], strict=True))
        - count_params(pruned)
    )


def test_params_and_macs_drop_as_predicted_conv():
    model = convnet()
    graph = build_graph(model)
    names = [g.name for g in graph.groups]
    plan = {names[0]: GroupPlan([0, 5]), names[1]: GroupPlan([1, 2]), names[2]: GroupPlan([6])}
    pruned = apply_plan(model, plan)
    c1, c2, d = 6 - 2, 5 - 2, 7 - 1
    params = (9 * c1 + c1 + 4 * c1) + (9 * c1 * c2 + c2 + 4 * c2) + (4 * c2 * d + d) + (d * 3 + 3)
    macs = 8 * 8 * 9 * c1 + 2 * 2 * 9 * c1 * c2 + 4 * c2 * d + d * 3
    assert count_params(pruned) == params
    assert count_macs(pruned) == macs


def test_invalid_plans_are_refused():
    model = mlp(widths=(4,), inputs=3)
    graph = build_graph(model)
    name = graph.groups[0].name
    with pytest.raises(ConfigError, match="at least one"):
        apply_plan(model, {name: GroupPlan([0, 1, 2, 3])})
    with pytest.raises(ConfigError, match="not removed"):
        apply_plan(model, {name: GroupPlan([1], [(0, 2, 1.0)])})
    with pytest.raises(ConfigError, match="no prunable layer"):
        apply_plan(model, {"nope": GroupPlan([1])})
