"""Reports say when the agent's CPU was emulated (qemu-user); here, on the host, it is not."""

from __future__ import annotations

from agent.cpuemu import cpu_emulator, detect

MAPS = """\
aaaab0000000-aaaab0100000 r-xp 00000000 fe:01 123 /usr/bin/python3.11
ffff80000000-ffff80100000 r-xp 00000000 fe:01 456 /usr/lib/aarch64-linux-gnu/libc.so.6
"""
QEMU = "555555554000-555555a00000 r-xp 00000000 fe:01 789 /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n"
SMAPS_FIELDS = "Size:                  4 kB\nRss:                   4 kB\n"


def _smaps(maps: str) -> str:
    return "".join(line + "\n" + SMAPS_FIELDS for line in maps.splitlines())


def test_emulator_hidden_from_maps_is_found():
    got = detect(MAPS, _smaps(MAPS + QEMU), "cortex-a53", "aarch64")
    assert got == "qemu-user aarch64 (QEMU_CPU=cortex-a53)"
    assert "QEMU_CPU not set" in detect(MAPS, _smaps(MAPS + QEMU), None, "aarch64")


def test_real_cpu_is_not_emulated():
    assert detect(MAPS, _smaps(MAPS), "cortex-a53", "aarch64") is None
    # a qemu file the process maps openly (not the emulator itself) does not count
    assert detect(MAPS + QEMU, _smaps(MAPS + QEMU), None, "x86_64") is None
    assert cpu_emulator() is None  # this host runs its own instructions
