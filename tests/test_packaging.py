"""The install is what it says: light imports, every command registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostcli.main import COMMANDS, build_parser


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return set(out.split())


def test_every_command_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


def test_cli_help_and_pruner_import_do_not_import_tensorflow():
    mods = _modules_after("import pruner, hostcli.main; hostcli.main.build_parser()")
    assert "tensorflow" not in mods
    assert "keras" not in mods


def test_lazy_public_verbs_resolve():
    mods = _modules_after("import pruner; pruner.InputBox; pruner.evaluate.accuracy")
    assert "pruner.bounds" in mods and "pruner.evaluate" in mods


# The installed package is under test, not this checkout.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
HOST_PACKAGES = ("tensorflow", "keras", "sklearn", "matplotlib", "pruner", "fleet", "tuner")


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory):
    """A fresh venv with only `pip install '.[device]'`: what a Raspberry Pi gets."""
    root = Path(__file__).resolve().parent.parent
    venv = tmp_path_factory.mktemp("device-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"{root}[device]"], check=True, timeout=900, capture_output=True,
                   env=CLEAN_ENV)
    return venv


@pytest.mark.slow
def test_device_install_imports_agent_without_host_packages(device_venv):
    py = device_venv / "bin" / "python"
    code = ("import agent.cli, agent.service, agent.states, core.mqtt; import sys; "
            "print('\\n'.join(sys.modules))")
    mods = set(subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True,
                              timeout=120, cwd="/", env=CLEAN_ENV).stdout.split())
    assert "agent.service" in mods
    leaked = sorted(m for m in mods if m.split(".")[0] in HOST_PACKAGES)
    assert not leaked, f"the device install imported host packages: {leaked}"
    missing = subprocess.run([str(py), "-c", "import tensorflow"], capture_output=True,
                             timeout=60, cwd="/", env=CLEAN_ENV)
    assert missing.returncode != 0, "the device install must not bring TensorFlow"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["prune", "probes", "tune", "demo", "console"])
def test_device_install_host_commands_say_which_extra(device_venv, tmp_path, command):
    model = tmp_path / "m.keras"
    model.write_bytes(b"not a model")
    (tmp_path / "fleet.sqlite").write_bytes(b"")
    args = {"prune": [str(model), "-o", str(tmp_path / "o")],
            "probes": [str(model), "--eval-data", "digits28", "-o", str(tmp_path / "p.npz")],
            "tune": [str(model), "--profile", "raspberry-pi-4", "-o", str(tmp_path / "t")],
            "demo": [], "console": ["--db", str(tmp_path / "fleet.sqlite")]}[command]
    r = subprocess.run([str(device_venv / "bin" / "paoding-edge"), command, *args],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                       env=CLEAN_ENV)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "paoding-edge[host]" in lines[0], lines[0]
