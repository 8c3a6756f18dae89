"""Loading Keras models from .keras and .h5 files, with one-line errors; a model's digest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError

SUFFIXES = (".keras", ".h5", ".hdf5")


def load_model(path: str | os.PathLike) -> Any:
    """Load a model without compiling it; ModelLoadError says what is wrong in one line."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelLoadError(f"not a model file: {p}")
    if p.suffix.lower() not in SUFFIXES:
        raise ModelLoadError(f"unknown model format {p.suffix!r} for {p} (expected .keras or .h5)")
    import keras

    try:
        model = keras.models.load_model(p, compile=False)
    except Exception as exc:  # keras raises many unrelated types for a bad file
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        if len(first) > 200:
            first = first[:197] + "..."
        raise ModelLoadError(f"cannot load {p}: {first}") from exc
    if not hasattr(model, "layers"):
        raise ModelLoadError(f"{p} does not hold a Keras model")
    return model


def model_digest(model: Any) -> str:
    """sha256 of a Keras model's architecture (its config) and weights, moving statistics
    included: one digest for the same model however often it is loaded."""
    import numpy as np

    h = hashlib.sha256()
    try:
        h.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    except (NotImplementedError, TypeError, ValueError):  # a subclassed model: its layers
        h.update(" ".join(type(lay).__qualname__ for lay in model.layers).encode())
    for w in model.get_weights():
        h.update(f"{w.dtype}{w.shape}".encode())
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()
