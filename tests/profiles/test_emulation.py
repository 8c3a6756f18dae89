"""Host emulation applied in a child process: CPU set, memory limit, quota, slowdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

import device_profiles as dp

CHILD = """
import json, os, resource, sys
from agent import emulation
slowdown, text = emulation.apply(sys.argv[1])
print(json.dumps({"slowdown": slowdown, "text": text,
                  "cpus": sorted(os.sched_getaffinity(0)),
                  "as": resource.getrlimit(resource.RLIMIT_AS)[0]}))
try:
    bytearray(300 * 1024 * 1024)
    print("allocated")
except MemoryError:
    print("memory-error")
"""


def _run(profile: str, env: dict) -> tuple[dict, str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, profile], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    return json.loads(first), second


def test_emulation_applies_profile(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    data = yaml.safe_load((dp.PACKAGE_DIR / "raspberry-pi-zero-2w-emulated.yaml").read_text())
    data["id"] = "tiny-emulated"
    data["emulation"].update(
        cpuset=[cpus[-1]], memory_limit_mb=256, cpu_quota=0.5, quota_period_us=100000, slowdown=4.0
    )
    (tmp_path / "tiny-emulated.yaml").write_text(yaml.safe_dump(data))
    env = dict(os.environ, PAODING_PROFILES=str(tmp_path))
    info, alloc = _run("tiny-emulated", env)
    assert info["slowdown"] == 4.0
    assert info["cpus"] == [cpus[-1]]
    assert info["as"] == 256 * 1024 * 1024
    assert alloc == "memory-error"
    assert "CPU quota 0.5" in info["text"]
    assert "slowdown of 4" in info["text"]
    # either the cgroup quota was applied or the description says it was not
    assert ("via cgroup" in info["text"]) or ("NOT applied" in info["text"])


def test_profile_without_emulation_is_refused():
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "raspberry-pi-4"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "has no emulation section" in out.stderr


def test_missing_cpu_is_mapped_onto_the_host(tmp_path):
    data = yaml.safe_load((dp.PACKAGE_DIR / "raspberry-pi-4-emulated.yaml").read_text())
    data["id"] = "far-emulated"
    data["emulation"].update(cpuset=[4095], priority="normal")
    (tmp_path / "far-emulated.yaml").write_text(yaml.safe_dump(data))
    env = dict(os.environ, PAODING_PROFILES=str(tmp_path))
    info, _ = _run("far-emulated", env)
    assert len(info["cpus"]) == 1 and info["cpus"][0] in os.sched_getaffinity(0)
    assert "[4095] are not on this host" in info["text"]
    data["emulation"]["cpuset"] = list(range(4096, 4096 + len(os.sched_getaffinity(0)) + 1))
    (tmp_path / "far-emulated.yaml").write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "far-emulated"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode != 0 and "CPUs, this process may use" in out.stderr
