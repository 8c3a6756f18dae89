"""The tuner's choices for a tflite-runtime 2.14 profile load in the real runtime.

The runtime runs in an environment of its own (the ``tflite_runtime_python``
fixture of conftest.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tunehelp import TUNE_KW

import tuner as tn

RUN = r"""
import sys, numpy as np
from tflite_runtime.interpreter import Interpreter
try:
    it = Interpreter(model_path=sys.argv[1])
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
    it.invoke()
    out = it.get_tensor(it.get_output_details()[0]["index"])
    print("OK", out.shape)
except Exception as exc:
    print("FAIL", str(exc).splitlines()[0])
"""


def _load(py: Path, blob: bytes, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(blob)
    res = subprocess.run(
        [str(py), "-c", RUN, str(path)], capture_output=True, text=True, timeout=120
    )
    return res.stdout.strip() or res.stderr.strip()[-300:]


@pytest.mark.slow
def test_chosen_model_loads_in_tflite_runtime_2_14(
    search, make_profile, tflite_runtime_python, tmp_path
):
    pid = make_profile(
        "zero-like",
        base="raspberry-pi-zero-2w",
        budgets__p90_latency_ms=1000,
        budgets__model_size_kb=10_000,
        budgets__min_accuracy_retention=0.5,
        budgets__min_robust_retention=0.1,
    )
    r = tn.tune(search.model, pid, search=search, **TUNE_KW)
    assert r.chosen is not None
    assert _load(tflite_runtime_python, r.model_bytes, tmp_path, "chosen").startswith("OK")
    # every candidate the rule accepts loads; every one it refuses fails to load
    for c in r.candidates:
        step = next(s for s in search.steps[(c.mode, c.seed)] if s.step == c.step)
        got = _load(tflite_runtime_python, search.export(step, c.export), tmp_path, "c")
        if c.runtime_error:
            assert got.startswith("FAIL") and "version" in got, (c.key, got)
        else:
            assert got.startswith("OK"), (c.key, got)
    # dynamic-range is exported per tensor, which 2.14 loads: offered, not refused
    dyn = [c for c in r.candidates if c.export == "dynamic"]
    assert dyn and not any(c.runtime_error for c in dyn), [c.runtime_error for c in dyn]
