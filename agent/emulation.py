"""Emulate a device class on a development host (``paoding-agent run --emulate ID``).

``apply(profile_id)`` restricts the current process as the profile's
``emulation`` section says and returns ``(slowdown, description)``:

- CPU set: ``os.sched_setaffinity`` on every thread of the process;
- memory: ``RLIMIT_AS`` (address space) via ``resource.setrlimit``;
- CPU quota: a cgroup of its own with ``cpu.max`` (cgroup v2) or
  ``cpu.cfs_quota_us`` (cgroup v1) when the hierarchy is writable; otherwise
  the description says the quota was not applied;
- slowdown: a deterministic factor the benchmark multiplies its timings by,
  for the part of a device's speed a host cannot reproduce.

The description is meant for reports: latency measured under emulation is
always labelled as such. Imports nothing heavy.
"""

from __future__ import annotations

import atexit
import os
import resource
from pathlib import Path

import device_profiles
from device_profiles.schema import Emulation

CGROUP_ROOT = Path("/sys/fs/cgroup")


class EmulationError(RuntimeError):
    """The profile cannot be emulated here (no emulation section, CPUs missing)."""


def _set_affinity(cpus: list[int]) -> None:
    available = sorted(os.sched_getaffinity(0))
    missing = [c for c in cpus if c not in available]
    if missing:
        raise EmulationError(f"CPUs {missing} are not available on this host (have {available})")
    tids = (
        [int(t) for t in os.listdir("/proc/self/task")] if Path("/proc/self/task").is_dir() else [0]
    )
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass  # a thread that ended meanwhile
    os.sched_setaffinity(0, cpus)


def _set_memory_limit(limit_mb: int) -> str:
    limit = limit_mb * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return f"address space limited to {limit // (1024 * 1024)} MB (RLIMIT_AS)"


def _own_cgroup(hierarchy: str) -> str | None:
    """This process's cgroup path in a v1 controller hierarchy, or '' for v2."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if hierarchy == "v2" and controllers == "":
            return path
        if hierarchy != "v2" and hierarchy in controllers.split(","):
            return path
    return None


def _cleanup(group: Path, parent_procs: Path) -> None:
    try:
        parent_procs.write_text(str(os.getpid()))
        group.rmdir()
    except OSError:
        pass


def _remove_stale(parent: Path) -> None:
    """Remove empty cgroups left by earlier emulated agents that were killed."""
    for d in parent.glob("paoding-emulate-*"):
        try:
            if not (d / "cgroup.procs").read_text().strip():
                d.rmdir()
        except OSError:
            pass


def _try_v2(quota: float, period: int) -> str | None:
    rel = _own_cgroup("v2")
    if rel is None:
        return None
    for mount in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        parent = mount / rel.lstrip("/")
        if not (parent / "cgroup.controllers").is_file():
            continue
        if "cpu" not in (parent / "cgroup.controllers").read_text().split():
            continue
        try:
            _remove_stale(parent)
            sub = (parent / "cgroup.subtree_control").read_text().split()
            if "cpu" not in sub:
                (parent / "cgroup.subtree_control").write_text("+cpu")
            group = parent / f"paoding-emulate-{os.getpid()}"
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{int(quota * period)} {period}")
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            continue
        atexit.register(_cleanup, group, parent / "cgroup.procs")
        return f"CPU quota {quota:g} CPU via cgroup v2 cpu.max ({group})"
    return None


def _try_v1(quota: float, period: int) -> str | None:
    rel = _own_cgroup("cpu")
    if rel is None:
        return None
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        parent = CGROUP_ROOT / name / rel.lstrip("/")
        if not (parent / "cpu.cfs_quota_us").is_file():
            continue
        try:
            _remove_stale(parent)
            group = parent / f"paoding-emulate-{os.getpid()}"
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(int(quota * period)))
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            continue
        atexit.register(_cleanup, group, parent / "cgroup.procs")
        return f"CPU quota {quota:g} CPU via cgroup v1 cpu.cfs_quota_us ({group})"
    return None


def _set_cpu_quota(emu: Emulation) -> str:
    if emu.cpu_quota >= len(emu.cpuset):
        return f"no CPU quota needed ({emu.cpu_quota:g} >= {len(emu.cpuset)} CPUs in the set)"
    done = _try_v2(emu.cpu_quota, emu.quota_period_us) or _try_v1(
        emu.cpu_quota, emu.quota_period_us
    )
    if done:
        return done
    return (
        f"CPU quota {emu.cpu_quota:g} NOT applied (no writable cgroup cpu controller); "
        "latency reflects the CPU set and slowdown only"
    )


def apply(profile_id: str) -> tuple[float, str]:
    """Restrict this process like the profile's device; return (slowdown, description)."""
    profile = device_profiles.load(profile_id)
    emu = profile.emulation
    if emu is None:
        raise EmulationError(f"profile {profile.id!r} has no emulation section")
    _set_affinity(emu.cpuset)
    parts = [
        f"emulating {emu.emulates or profile.id} with profile {profile.id}",
        f"CPUs {emu.cpuset} (sched_setaffinity)",
        _set_cpu_quota(emu),
        _set_memory_limit(emu.memory_limit_mb),
        f"timings multiplied by a deterministic slowdown of {emu.slowdown:g}",
    ]
    return emu.slowdown, "; ".join(parts)
