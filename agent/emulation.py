"""Emulate a device class on a development host (``paoding-agent run --emulate ID``).

``apply(profile_id)`` restricts the current process as the profile's
``emulation`` section says and returns ``(slowdown, description)``:

- CPU set: ``os.sched_setaffinity`` on every thread of the process;
- memory: ``RLIMIT_AS`` (address space) via ``resource.setrlimit``;
- CPU quota: a cgroup of its own with ``cpu.max`` (cgroup v2) or
  ``cpu.cfs_quota_us`` (cgroup v1) when the hierarchy is writable; otherwise
  the description says the quota was not applied;
- slowdown: a deterministic factor the benchmark multiplies its timings by,
  for the part of a device's speed a host cannot reproduce;
- priority ``realtime``: SCHED_FIFO (priority 1) for every thread, so that
  other load on a shared host does not land in the measured latency; the
  CPU quota is then applied as cgroup v1 RT bandwidth (``cpu.rt_runtime_us``),
  since a CFS quota does not limit a realtime task. The kernel's global RT
  throttling (95% by default) still leaves the CPU to others in bursts.

The description is meant for reports: latency measured under emulation is
always labelled as such. Imports nothing heavy.
"""

from __future__ import annotations

import atexit
import os
import resource
from pathlib import Path

import device_profiles
from core.errors import EmulationError
from device_profiles.schema import Emulation

CGROUP_ROOT = Path("/sys/fs/cgroup")



def _set_affinity(cpus: list[int]) -> str:
    """Pin every thread to the CPU set; CPUs this host lacks are mapped onto those it has."""
    available = sorted(os.sched_getaffinity(0))
    missing = [c for c in cpus if c not in available]
    text = f"CPUs {cpus} (sched_setaffinity)"
    if missing:
        if len(cpus) > len(available):
            raise EmulationError(
                f"the profile needs {len(cpus)} CPUs, this process may use {len(available)} "
                f"({available})"
            )
        cpus = sorted({available[c % len(available)] for c in cpus})
        text = (
            f"CPUs {cpus} (sched_setaffinity; the profile's CPUs {missing} are not on this "
            f"host, mapped onto {available})"
        )
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass  # a thread that ended meanwhile
    os.sched_setaffinity(0, cpus)
    return text


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


def _try_v1_rt(quota: float, period: int) -> str | None:
    rel = _own_cgroup("cpu")
    if rel is None:
        return None
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        parent = CGROUP_ROOT / name / rel.lstrip("/")
        if not (parent / "cpu.rt_runtime_us").is_file():
            continue
        group = parent / f"paoding-emulate-{os.getpid()}"
        try:
            _remove_stale(parent)
            group.mkdir(exist_ok=True)
            (group / "cpu.rt_period_us").write_text(str(period))
            (group / "cpu.rt_runtime_us").write_text(str(int(quota * period)))
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            try:
                group.rmdir()
            except OSError:
                pass
            continue
        atexit.register(_cleanup, group, parent / "cgroup.procs")
        return f"CPU quota {quota:g} CPU via cgroup v1 RT bandwidth cpu.rt_runtime_us ({group})"
    return None


def _threads() -> list[int]:
    task = Path("/proc/self/task")
    return [int(t) for t in os.listdir(task)] if task.is_dir() else [0]


def _set_realtime() -> str | None:
    """SCHED_FIFO priority 1 for every thread; None when not permitted."""
    try:
        for tid in _threads():
            try:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))
            except ProcessLookupError:
                pass
    except (OSError, AttributeError):
        return None
    return "realtime priority (SCHED_FIFO 1): other host load kept out of the timings"


def _set_priority_and_quota(emu: Emulation) -> list[str]:
    needs_quota = emu.cpu_quota < len(emu.cpuset)
    if emu.priority == "realtime":
        quota_text = None
        if needs_quota:
            quota_text = _try_v1_rt(emu.cpu_quota, emu.quota_period_us)
        rt = _set_realtime() if (quota_text or not needs_quota) else None
        if rt is not None:
            if not needs_quota:
                quota_text = (
                    f"no CPU quota needed ({emu.cpu_quota:g} >= {len(emu.cpuset)} CPUs in the set)"
                )
            return [rt, quota_text or ""]
        note = "realtime priority NOT applied (not permitted or no RT bandwidth for the quota)"
        return [note, _set_cpu_quota(emu)]
    return [_set_cpu_quota(emu)]


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
    affinity = _set_affinity(emu.cpuset)
    parts = [
        f"emulating {emu.emulates or profile.id} with profile {profile.id}",
        affinity,
        *_set_priority_and_quota(emu),
        _set_memory_limit(emu.memory_limit_mb),
        f"timings multiplied by a deterministic slowdown of {emu.slowdown:g}",
    ]
    return emu.slowdown, "; ".join(parts)
