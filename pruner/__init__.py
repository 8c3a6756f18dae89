"""Paoding pruner: data-free, robustness-preserving structured pruning of Keras models.

The public verbs are re-exported here lazily, so that importing ``pruner``
(for the command line, say) does not import TensorFlow until a verb is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # name: module that defines it
    "prune": "pruner.api",
    "PruneResult": "pruner.api",
    "Schedule": "pruner.schedule",
    "StopCriteria": "pruner.schedule",
    "InputBox": "pruner.bounds",
    "prune_steps": "pruner.api",
    "StepRecord": "pruner.api",
    "load_model": "pruner.io",
    "export_tflite": "pruner.export",
    "build_probes": "pruner.probes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        return getattr(importlib.import_module(module), name)
    try:  # a submodule, e.g. pruner.evaluate or pruner.export
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'pruner' has no attribute {name!r}")
