"""Paoding agent: receives signed models over MQTT, checks them on the device, activates them.

Import-light on purpose: no TensorFlow and no interpreter is imported here;
the interpreter is chosen when a model is first loaded (agent.runtime).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
