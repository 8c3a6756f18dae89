"""The conformance kit: plays the host against one agent of any implementation.

``run_kit(KitConfig(...))`` connects to a real broker, deploys the kit's own
models (``conformance/assets``) with messages built from ``core`` alone, and
checks what docs/protocol.md and docs/asyncapi.yaml promise; each check is
one ``Result`` line. ``paoding-edge conformance`` is its command line.
"""

from conformance.kit import CHECKS, KitConfig, Result, run_kit

__all__ = ["CHECKS", "KitConfig", "Result", "run_kit"]
