"""Seconds per phase of a pruning run, for the benches: the pruner's functions timed in place.

``phase_timer()`` wraps the functions that make up each phase wherever the pruner's
modules hold them (found by identity, so a function imported under another module's
name is wrapped there too), and yields a dict of exclusive seconds per phase: a phase
called inside another (a model rebuilt inside the refit, an export inside a
measurement) counts for itself only. What no phase claims is scoring: bounds,
saliency, the annealing and the loop itself.

    synthesis    inputs made from the model (pruner.synthesis.synthesize)
    scoring      everything else of the run
    surgery      cutting, the compensating refit or correction, Keras model rebuilds
    measurement  the per-step meter: evaluation, fidelity check set, verdict
    export       TFLite conversions (sizes of the first and last model)
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import sys
import time
from collections.abc import Iterator
from typing import Any

PHASES = ("synthesis", "scoring", "surgery", "measurement", "export")

# (phase, module, attribute): where each phase's functions are defined
TIMED = (
    ("synthesis", "pruner.synthesis", "synthesize"),
    ("export", "pruner.export", "export_tflite"),
    ("measurement", "pruner.meter", "Meter.__call__"),
    ("surgery", "pruner.graph.surgery", "advance"),
    ("surgery", "pruner.graph.surgery", "apply_plan"),
    ("surgery", "pruner.graph.surgery", "as_model"),
    ("surgery", "pruner.compensate", "compensate"),
)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class _Clock:
    """Exclusive wall and CPU seconds per phase: a stack of running phases, inner time
    taken out."""

    def __init__(self) -> None:
        self.seconds = {p: 0.0 for p in PHASES}
        self.cpu = {p: 0.0 for p in PHASES}
        self.stack: list[list[Any]] = []  # [phase, start wall, start cpu, inner wall, cpu]

    def wrap(self, phase: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.stack.append([phase, *_now(), 0.0, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                name, wall0, cpu0, inner_wall, inner_cpu = self.stack.pop()
                wall, cpu = _now()
                self.seconds[name] += wall - wall0 - inner_wall
                self.cpu[name] += cpu - cpu0 - inner_cpu
                if self.stack:
                    self.stack[-1][3] += wall - wall0
                    self.stack[-1][4] += cpu - cpu0

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


def _resolve(module: str, attr: str) -> tuple[Any, str, Any] | None:
    try:
        owner: Any = importlib.import_module(module)
    except ImportError:
        return None
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    fn = getattr(owner, name, None)
    return None if fn is None else (owner, name, fn)


@contextlib.contextmanager
def phase_timer() -> Iterator[dict[str, float]]:
    """Within the block, the pruner's phases are timed; the dict yielded is filled when the
    block ends: wall seconds per phase and ``total``, and ``cpu``, the same in CPU seconds
    of this process (on a shared machine the wall time is mostly waiting for a core;
    ``scoring`` is the block's time less the other phases)."""
    import pruner

    for info in pkgutil.walk_packages(pruner.__path__, "pruner."):  # every holder, up front
        importlib.import_module(info.name)
    clock = _Clock()
    patched: list[tuple[Any, str, Any]] = []
    seen: set[int] = set()
    for phase, module, attr in TIMED:
        found = _resolve(module, attr)
        if found is None:
            raise RuntimeError(f"bench/phases.py: {module}.{attr} no longer exists")
        if id(found[2]) in seen:
            continue
        owner, name, fn = found
        seen.add(id(fn))
        wrapped = clock.wrap(phase, fn)
        # every pruner module that imported the function under its name gets the wrapper
        for mod in [m for k, m in list(sys.modules.items()) if k.split(".")[0] == "pruner"]:
            for key, value in list(vars(mod).items()):
                if value is fn:
                    patched.append((mod, key, value))
                    setattr(mod, key, wrapped)
        if getattr(owner, name) is fn:
            patched.append((owner, name, fn))
            setattr(owner, name, wrapped)
    result: dict[str, Any] = {}
    wall0, cpu0 = _now()
    try:
        yield result
    finally:
        for owner, name, fn in reversed(patched):
            setattr(owner, name, fn)
        wall, cpu = _now()
        for spent, per_phase in ((wall - wall0, clock.seconds), (cpu - cpu0, clock.cpu)):
            per_phase["scoring"] = max(0.0, spent - sum(v for k, v in per_phase.items()
                                                        if k != "scoring"))
        result.update(clock.seconds)
        result["total"] = wall - wall0
        result["cpu"] = {**clock.cpu, "total": cpu - cpu0}
