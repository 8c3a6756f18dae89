"""Paoding pruner: data-free, robustness-preserving structured pruning of Keras models.

The public verbs are re-exported here lazily, so that importing ``pruner``
(for the command line, say) does not import TensorFlow until a verb is used.
"""

from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {
    # name: module that defines it
    "prune": "pruner.api",
    "PruneResult": "pruner.api",
    "PruneConfig": "pruner.config",
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

__getattr__ = lazy_getattr(__name__, _EXPORTS, submodules=True)
