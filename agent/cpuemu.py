"""Whether this process runs under a CPU emulator (qemu-user), for reports.

qemu-user hides its own mappings from ``/proc/self/maps`` but not from
``/proc/self/smaps``, so a file of the emulator mapped in the one and absent
from the other gives it away, whatever the emulated CPU says about itself.
Latency measured under it is the emulator's, never a device's: reports carry
``BenchmarkResult.cpu_emulator`` so the host does not hold it against budgets.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path


def _paths(text: str) -> set[str]:
    return {line.split()[-1] for line in text.splitlines()
            if "/" in line and line[:1].isalnum() and "-" in line.split()[0]}


def detect(maps: str, smaps: str, qemu_cpu: str | None, machine: str) -> str | None:
    """The emulator, from the texts of /proc/self/maps and /proc/self/smaps."""
    hidden = {p for p in _paths(smaps) - _paths(maps) if "qemu" in p}
    if not hidden:
        return None
    return f"qemu-user {machine} (QEMU_CPU={qemu_cpu or 'max, QEMU_CPU not set'})"


@lru_cache(maxsize=1)
def cpu_emulator() -> str | None:
    """'qemu-user aarch64 (QEMU_CPU=cortex-a72)' when emulated, None on a real CPU."""
    try:
        maps = Path("/proc/self/maps").read_text()
        smaps = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    return detect(maps, smaps, os.environ.get("QEMU_CPU"), platform.machine())
