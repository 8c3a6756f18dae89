"""The gate: the verdict of every step, labelled data deciding."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from pruner.fidelity import Gate  # noqa: E402


@pytest.fixture(scope="module")
def net():
    keras.utils.set_random_seed(3)
    inp = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu")(inp)
    return keras.Model(inp, keras.layers.Dense(4)(h))


def _damaged(net, scale):
    out = keras.models.clone_model(net)
    out.set_weights([w * (scale if i == 0 else 1.0) for i, w in enumerate(net.get_weights())])
    return out


def _rec(**kw):
    return SimpleNamespace(**{"accuracy": None, "fidelity_random": None,
                              "fidelity_synthetic": None, "fidelity_kl": None, **kw})


def test_gate_passes_the_original_and_refuses_a_collapse(net):
    x = np.random.default_rng(2).random((192, 6)).astype(np.float32)
    gate = Gate(net, 0.9, x)
    rec = _rec()
    same = gate(net, rec)
    assert same.figure == pytest.approx(1.0) and same.passed and same.evidence == "synthesised"
    assert rec.fidelity_synthetic == 1.0 and rec.fidelity_kl == pytest.approx(0.0, abs=1e-9)
    rec = _rec()
    broken = gate(_damaged(net, -1.0), rec)  # the first layer's weights negated
    assert not broken.passed and broken.upper < 0.9 and rec.fidelity_kl > 0


def test_labelled_data_decides_with_the_data_free_figure_beside(net):
    x = np.random.default_rng(2).random((192, 6)).astype(np.float32)
    gate = Gate(net, 0.999, x, labelled=400)
    base = gate(net, _rec(accuracy=0.95))
    assert base.evidence == "labelled" and base.floor == pytest.approx(0.92)
    hurt = gate(_damaged(net, 0.5), _rec(accuracy=0.95))  # fidelity may fall, accuracy held
    assert hurt.passed and hurt.fidelity is not None and hurt.fidelity < 1.0
    assert not gate(net, _rec(accuracy=0.80)).passed  # measured loss refuses


def test_representative_evidence_is_named(net):
    x = np.random.default_rng(4).random((50, 6)).astype(np.float32)
    v = Gate(net, 0.8, x, "representative")(net, _rec())
    assert v.evidence == "representative" and v.samples == 50
