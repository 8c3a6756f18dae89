"""Helpers shared by the agent tests (imported by name: tests/agent is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# agents started as subprocesses import this checkout, quietly
SUBPROCESS_ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")


def make_probes(model_bytes: bytes, n: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """A probe bundle whose reference is the model itself (agreement 1.0)."""
    from agent.runtime import select_runtime

    loaded = select_runtime().load(model_bytes)
    rng = np.random.default_rng(seed)
    shape = loaded.input_shape[1:]
    x = rng.random((n, *shape), dtype=np.float32)
    ref = loaded.predict(x)
    kind = np.array(["clean"] * (n // 2) + ["fgsm"] * (n - n // 2))
    eps = np.where(kind == "clean", 0.0, 0.05).astype(np.float32)
    return {"x": x, "y": ref.argmax(1).astype(np.int64), "kind": kind, "eps": eps,
            "reference": ref.astype(np.float32),
            "meta": np.array('{"seed": 0}')}
