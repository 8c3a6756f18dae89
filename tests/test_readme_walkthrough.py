"""The README's walk-through, run line by line: real Mosquitto, a real agent, real models.

The block under "The operator's path" is read from README.md and each line
runs as written, in a fresh directory holding a small trained `model.keras`
and its `data.npz`. Two things differ from a reader's machine: broker-config
is given free ports (its defaults 8883/8884 may be taken), and the two lines
that leave a process running (`mosquitto ... -d`, `paoding-agent run ... &`)
are started by the test without `-d`/`&`, so that it can stop them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from mosquitto import free_port, mosquitto_binary

from tuner.quiet import NOISE

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.broker, pytest.mark.timeout(1200)]


def walkthrough() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The operator's path"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: no bash block under 'The operator's path'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_is_short_and_has_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    setup = text[text.index("## Set-up"):text.index("## The operator's path")]
    assert re.findall(r"^    (bash scripts/\S+)", setup, re.M) == [
        "bash scripts/demo.sh", "bash scripts/test.sh"]


def small_model(d: Path) -> None:
    """A small MLP that keeps its accuracy when half its units go (3 classes, 8 features)."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.random((400, 8)).astype("float32")
    y = np.argmax(x[:, :3], axis=1).astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(48, activation="relu"),
                              keras.layers.Dense(48, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=60, batch_size=32, verbose=0)
    model.save(d / "model.keras")
    np.savez(d / "data.npz", x=x[:200], y=y[:200])


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text(errors="replace") if path.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{proc.args} did not say {text!r}: "
                                 f"{path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not listen on {port}") from None
            time.sleep(0.05)


def test_readme_walkthrough_runs():
    mosquitto_binary()  # a clear error when it is not installed
    lines = walkthrough()
    # a directory Mosquitto can read when it drops to its own user
    d = Path(tempfile.mkdtemp(prefix="paoding-readme-"))
    d.chmod(0o755)
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "XDG_DATA_HOME": str(d / "xdg")}
    env.pop("PAODING_DB", None)
    env.pop("PAODING_BROKER", None)
    device_port, host_port = free_port(), free_port()
    outputs: dict[str, str] = {}
    try:
        small_model(d)
        for line in lines:
            if line.startswith("paoding-edge broker-config"):
                line = line.split("#")[0].rstrip() + (
                    f" --device-port {device_port} --host-port {host_port}")
            if line.startswith("mosquitto "):
                argv = [a for a in shlex.split(line, comments=True) if a != "-d"]
                log = (d / "mosquitto.out").open("w")
                procs.append(subprocess.Popen(argv, cwd=d, env=env, stdout=log, stderr=log))
                wait_listening(host_port, procs[-1])
                wait_listening(device_port, procs[-1])
                continue
            if line.rstrip().endswith("&"):
                argv = shlex.split(line.rstrip()[:-1], comments=True)
                log_path = d / "agent.log"
                procs.append(subprocess.Popen(argv, cwd=d, env=env, stdout=log_path.open("w"),
                                              stderr=subprocess.STDOUT))
                wait_for(log_path, "connected to", procs[-1])
                continue
            if line.startswith("export "):
                out = subprocess.run(["bash", "-c", f"{line}\nenv -0"], cwd=d, env=env,
                                     capture_output=True, text=True, check=True)
                env = dict(kv.split("=", 1) for kv in out.stdout.split("\0") if "=" in kv)
                continue
            run = subprocess.run(["bash", "-c", line], cwd=d, env=env, capture_output=True,
                                 text=True, timeout=900)
            text = run.stdout + run.stderr
            outputs[line] = text
            assert run.returncode == 0, f"README line failed: {line}\n{text[-3000:]}"
            assert "Traceback" not in text, f"{line}\n{text}"
            noise = [t for t in text.splitlines() if NOISE.match(t)]  # library log lines
            assert not noise, f"{line}\n{noise}"
        for line, text in outputs.items():  # the profile's budgets are the thresholds
            if line.startswith(("paoding-edge deploy", "paoding-edge rollout")):
                assert "thresholds from raspberry-pi-4's budgets: p90 <=" in text, text
                assert "clean accuracy >=" in text and "robust accuracy >=" in text, text
        fleet = outputs[lines[-1]]
        assert lines[-1] == "paoding-edge fleet"
        rows = [r for r in fleet.splitlines() if r.startswith("20") and "pi-01" in r]
        sources = {r.split()[3] for r in rows}  # date, time, device, by
        assert "deploy" in sources and "tune" in sources, fleet
        assert any(s.startswith("r") for s in sources), fleet  # the rollout
        assert all(" active " in r for r in rows), fleet
        device = next(r for r in fleet.splitlines() if r.startswith("pi-01 "))
        assert re.search(r" yes +[0-9a-f]{16} +\d+\.\d{3} +\d\.\d{3} ", device), fleet
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)
