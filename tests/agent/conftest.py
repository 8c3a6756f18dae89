"""Fixtures for the agent: real TFLite models, keys, probe bundles, agents in and out of process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if sys.path[0] != str(ROOT):  # tests/agent must never shadow the agent package
    sys.path.insert(0, str(ROOT))

from agenthelp import SUBPROCESS_ENV  # noqa: E402
from tflitehelp import dense_tflite, unloadable  # noqa: E402

from core.mqtt import Broker, MqttClient  # noqa: E402
from core.signing import TrustStore, write_key_pair  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> bytes:
    return dense_tflite((8,), seed=1)[0]


@pytest.fixture(scope="session")
def small_model() -> bytes:
    return dense_tflite((32,), seed=2)[0]


@pytest.fixture(scope="session")
def medium_model() -> bytes:
    """About 1 MB: many chunks of 16 KB."""
    return dense_tflite((2048, 96), inputs=32, seed=3)[0]


@pytest.fixture(scope="session")
def deployed_model() -> tuple[bytes, str]:
    """A model pruned by pruner.api (a small Keras model if the pruner is absent); (bytes, what)."""
    try:
        from pruner.api import prune
    except ImportError:
        return dense_tflite((48,), seed=4)[0], "keras"
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    result = prune(model, target=0.5, mode="paoding", seed=0, progress=False,
                   synthetic=0, keep_below_floor=True)
    return tf.lite.TFLiteConverter.from_keras_model(result.model).convert(), "pruned"


@pytest.fixture(scope="session")
def unloadable_model(tiny_model: bytes) -> bytes:
    """A model whose operator version no interpreter has: loading it fails."""
    return unloadable(tiny_model)


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("keys")
    priv, pub = write_key_pair(d)
    from core.signing import load_signing_key

    key = load_signing_key(priv)
    return {"dir": d, "private": priv, "public": pub, "key": key,
            "trust": TrustStore([key.public_key()])}


@pytest.fixture
def collector(request) -> Callable[..., tuple[MqttClient, list[tuple[str, bytes]]]]:
    """Subscribe a plain client to a topic filter; returns (client, messages)."""
    clients: list[MqttClient] = []

    def make(broker, topic_filter: str = "#"):
        got: list[tuple[str, bytes]] = []
        c = MqttClient(Broker(port=broker.port), f"collector-{len(clients)}-{time.time_ns()}",
                       clean_session=True)
        c.subscribe(topic_filter, lambda t, p: got.append((t, p)))
        c.connect()
        clients.append(c)
        return c, got

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def inproc_agent(tmp_path) -> Iterator[Callable[..., object]]:
    """Start agents in this process; all are stopped after the test."""
    from agent.service import Agent, AgentSettings

    agents = []

    def start(broker, *, device_id: str = "pi-kitchen-01", trust=None, state_dir=None,
              protocol: str = "3.1.1", **kw):
        settings = AgentSettings(device_id=device_id,
                                 broker=Broker(port=broker.port, protocol=protocol),
                                 state_dir=Path(state_dir or tmp_path / f"state-{device_id}"),
                                 trust=trust, **kw)
        a = Agent(settings)
        a.start(wait_connected=10)
        agents.append(a)
        return a

    yield start
    for a in agents:
        try:
            a.stop()
        except Exception:  # noqa: BLE001
            pass


class AgentProcess:
    """``paoding-agent run`` in a subprocess (killed at teardown)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *self.args],
                                     cwd=ROOT, env=SUBPROCESS_ENV, stdout=self._logf,
                                     stderr=subprocess.STDOUT)
        return self

    def wait_log(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"agent exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"agent log never said {text!r}: {self.log.read_text()[-2000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_logf", None):
            self._logf.close()


@pytest.fixture
def agent_process(tmp_path) -> Iterator[Callable[..., AgentProcess]]:
    procs: list[AgentProcess] = []

    def make(broker, *, device_id: str = "pi-kitchen-01", state_dir: Path | None = None,
             trust_key: Path | None = None, extra: list[str] | None = None) -> AgentProcess:
        args = ["run", "--device-id", device_id, "--profile", "raspberry-pi-4",
                "--broker", broker.url, "--state-dir", str(state_dir or tmp_path / "state"),
                "--log-level", "INFO"]
        args += ["--trust-key", str(trust_key)] if trust_key else ["--allow-unsigned"]
        args += extra or []
        p = AgentProcess(args, tmp_path / f"agent-{device_id}-{len(procs)}.log")
        procs.append(p)
        return p.start()

    yield make
    for p in procs:
        p.kill()


@pytest.fixture(scope="session")
def nan_model() -> bytes:
    """A model (same shapes as tiny_model) whose outputs are all NaN."""
    import numpy as np
    import tensorflow as tf

    _bytes, model = dense_tflite((8,), seed=1)
    last = model.layers[-1]
    w, b = last.get_weights()
    last.set_weights([w, np.full_like(b, np.nan)])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()
