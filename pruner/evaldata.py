"""Evaluation data and the checks every command applies to it: one reader, one set of rules.

The labelled evaluation set only measures and stops pruning; it never trains.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError

BUNDLED = ("digits28", "breast-cancer")


def check_eps(eps: Sequence[float]) -> tuple[float, ...]:
    if not eps or any(not np.isfinite(e) or e <= 0 for e in eps):
        raise ConfigError(f"--eps values must be > 0, got {list(eps)}")
    return tuple(float(e) for e in eps)


def check_range(lo: float, hi: float) -> tuple[float, float]:
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ConfigError(f"--input-range needs LO < HI, got {lo} {hi}")
    return float(lo), float(hi)


def load_eval_data(spec: str | os.PathLike, input_shape: tuple[int, ...] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """x (float32) and y (int64 labels) from an .npz (read with allow_pickle=False),
    or the test split of a bundled data set (``digits28``, ``breast-cancer``) shaped
    for ``input_shape``."""
    import zipfile

    if str(spec) in BUNDLED:
        from pruner import datasets

        if str(spec) == "digits28":
            flat = input_shape is not None and len(input_shape) == 1
            _, _, x, y = datasets.digits28(flatten=flat)
        else:
            _, _, x, y = datasets.breast_cancer()
        return np.asarray(x, np.float32), np.asarray(y, np.int64)
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"evaluation data {path} does not exist (an .npz with x and y, "
                        f"or one of {', '.join(BUNDLED)})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise DataError(f"evaluation data {path} must be an .npz with arrays x and y")
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise DataError(f"evaluation data {path} lacks array(s) {', '.join(missing)}")
            x, y = npz["x"], npz["y"]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"evaluation data {path} is unreadable: {first}") from None
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2 or len(x) == 0:
        raise DataError(f"evaluation data x must be numeric [N, *input], got {x.dtype} {x.shape}")
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1) if y.ndim == 2 else y
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"evaluation data y must hold {len(x)} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError("evaluation data y must hold integer class labels")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError("evaluation data x holds non-finite values")
    return x, y.astype(np.int64)


def check_fits(model: Any, x: np.ndarray, y: np.ndarray) -> None:
    """DataError unless x matches the model's input and y its classes."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise DataError(f"the model has {len(shape)} inputs; one is supported")
    want = tuple(shape[1:])
    got = tuple(x.shape[1:])
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got,
                                                                           strict=False)):
        model_shape = "(N, " + ", ".join("?" if w is None else str(w) for w in want) + ")"
        raise DataError(f"evaluation data x has shape {x.shape} but the model takes "
                        f"{model_shape}")
    classes = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if classes and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"evaluation labels must be in [0, {classes}), got {y.min()}..{y.max()}")


def check_in_range(x: np.ndarray, lo: float, hi: float) -> None:
    """DataError when evaluation inputs lie outside the input box (say, 0..255 pixels)."""
    tol = 1e-6 * max(1.0, hi - lo)
    if x.min() < lo - tol or x.max() > hi + tol:
        raise DataError(f"evaluation data x spans [{x.min():g}, {x.max():g}], outside "
                        f"--input-range {lo:g} {hi:g}")
