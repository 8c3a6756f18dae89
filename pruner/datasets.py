"""Small real data sets that ship inside scikit-learn (no download needed).

Both loaders are deterministic for a given seed: the same split, the same
scaling, the same arrays, float32 inputs in [0, 1] and int64 labels.
"""

from __future__ import annotations

import numpy as np

from core.errors import ConfigError

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear (align-corners) interpolation weights, shape (n_out, n_in)."""
    pos = np.linspace(0.0, n_in - 1, n_out)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1.0 - frac
    m[np.arange(n_out), hi] += frac
    return m


def upsample(images: np.ndarray, size: int = 28) -> np.ndarray:
    """Bilinearly resize square images [N, h, h] to [N, size, size]."""
    m = _interp_matrix(size, images.shape[-1])
    return np.einsum("ij,njk,lk->nil", m, images, m)


def digits28(
    seed: int = 0, *, flatten: bool = True, test_fraction: float = 0.2
) -> Split:
    """scikit-learn's 8x8 digits upsampled to 28x28, values in [0, 1].

    Returns ``(x_train, y_train, x_test, y_test)``; x is [N, 784] when
    ``flatten`` else [N, 28, 28, 1]. The split is stratified and seeded.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_fraction(test_fraction)
    data = load_digits()
    images = upsample(data.images / 16.0)
    images = np.clip(images, 0.0, 1.0).astype(np.float32)
    x = images.reshape(len(images), -1) if flatten else images[..., None]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def breast_cancer(seed: int = 0, *, test_fraction: float = 0.25) -> Split:
    """scikit-learn's breast cancer set (30 features, 2 classes) scaled to [0, 1].

    The min/max come from the training split only; test values are clipped
    to [0, 1] so that they stay inside the default input box.
    """
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    _check_fraction(test_fraction)
    data = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data, data.target, test_size=test_fraction, random_state=seed,
        stratify=data.target,
    )
    lo = x_tr.min(axis=0)
    span = np.maximum(x_tr.max(axis=0) - lo, 1e-12)
    x_tr = ((x_tr - lo) / span).astype(np.float32)
    x_te = np.clip((x_te - lo) / span, 0.0, 1.0).astype(np.float32)
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)
