"""The budget tuner: from a model and a device profile to a candidate that meets every budget.

Public verbs, re-exported lazily (so ``import tuner`` stays light):
``tune``, ``Search``, ``verify``, ``mqtt_deployer``, ``choose``,
``raise_if_impossible``, ``table`` and ``save`` (the report).
"""

from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {
    "EXPORTS": "tuner.candidates",
    "OUTPUT_FILES": "tuner.candidates",
    "Candidate": "tuner.candidates",
    "TuneResult": "tuner.candidates",
    "runtime_check": "tuner.candidates",
    "choose": "tuner.choice",
    "raise_if_impossible": "tuner.choice",
    "Search": "tuner.search",
    "tune": "tuner.search",
    "verify": "tuner.closed_loop",
    "mqtt_deployer": "tuner.closed_loop",
    "report_measurement": "tuner.closed_loop",
    "Deployer": "tuner.closed_loop",
    "table": "tuner.report",
    "save": "tuner.report",
    "plot": "tuner.report",
    "format_table": "tuner.report",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
