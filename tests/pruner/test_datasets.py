"""The bundled data sets: shapes, ranges, determinism."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from core.errors import ConfigError  # noqa: E402
from pruner import datasets  # noqa: E402


def test_digits28_shapes_range_and_determinism():
    x_tr, y_tr, x_te, y_te = datasets.digits28(0)
    assert x_tr.shape[1:] == (784,) and x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert len(x_tr) + len(x_te) == 1797 and len(x_te) == 360
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0 and x_te.max() <= 1.0
    assert set(np.unique(y_te)) == set(range(10))
    again = datasets.digits28(0)
    for a, b in zip((x_tr, y_tr, x_te, y_te), again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = datasets.digits28(1)
    assert not np.array_equal(other[1], y_tr)
    img = datasets.digits28(0, flatten=False)[0]
    assert img.shape[1:] == (28, 28, 1)
    np.testing.assert_array_equal(img.reshape(len(img), -1), x_tr)


def test_upsample_keeps_corners_and_constants():
    src = np.arange(64, dtype=float).reshape(1, 8, 8)
    up = datasets.upsample(src)
    assert up.shape == (1, 28, 28)
    assert up[0, 0, 0] == 0 and up[0, -1, -1] == 63 and up[0, 0, -1] == 7
    np.testing.assert_allclose(datasets.upsample(np.ones((2, 8, 8))), 1.0)


def test_breast_cancer_scaled_by_train_split():
    x_tr, y_tr, x_te, y_te = datasets.breast_cancer(0)
    assert x_tr.shape[1] == 30 and len(x_tr) + len(x_te) == 569
    np.testing.assert_allclose(x_tr.min(axis=0), 0.0)
    np.testing.assert_allclose(x_tr.max(axis=0), 1.0)
    assert x_te.min() >= 0.0 and x_te.max() <= 1.0
    assert set(np.unique(y_tr)) == {0, 1} and y_te.dtype == np.int64
    np.testing.assert_array_equal(datasets.breast_cancer(0)[2], x_te)


def test_bad_fraction():
    with pytest.raises(ConfigError, match="test_fraction"):
        datasets.digits28(0, test_fraction=1.5)
