"""The runtime op-version table agrees with the real runtimes, for every op the exporter writes.

Test models cover the layers the pruner handles (Dense with each activation,
Conv2D, BatchNormalization, pooling, padding, cropping, up-sampling,
rescaling, reshaping, and the merges: add, subtract, multiply, average,
maximum, minimum, concatenate). Each is exported as every type, plus the per-channel
dynamic-range export that the default avoids. Then:

- tflite-runtime 2.14 (its own venv) loads exactly the exports the table
  accepts, and its outputs match ai-edge-litert's on the host;
- each table entry of an op the exporter writes is the runtime's real limit:
  the op at that version loads, one version above does not;
- ai-edge-litert (no table: it loads what this converter writes) loads every
  export.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import device_profiles as dp
from core.errors import ExportError
from tuner.candidates import OP_MAX_VERSIONS, op_limits, runtime_check

pytestmark = pytest.mark.slow  # exports 4 models x 5 types once per module

TYPES = ("float32", "float16", "dynamic", "dynamic-per-channel", "int8")
TABLE = OP_MAX_VERSIONS[("tflite-runtime", (2, 14))]

LOAD = r"""
import json, sys, numpy as np
from tflite_runtime.interpreter import Interpreter
out = {}
for path in sys.argv[2:]:
    try:
        it = Interpreter(model_path=path)
        if sys.argv[1] == "run":
            it.allocate_tensors()
            inp = it.get_input_details()[0]
            x = np.load(path + ".x.npy")
            it.set_tensor(inp["index"], x)
            it.invoke()
            y = it.get_tensor(it.get_output_details()[0]["index"])
            np.save(path + ".y.npy", y.astype(np.float32))
        out[path] = "OK"
    except Exception as exc:
        out[path] = "FAIL " + (str(exc).splitlines() or [type(exc).__name__])[0]
print(json.dumps(out))
"""


def _models():
    import keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    # every weight tensor has >= 1024 elements, so dynamic-range quantises it
    i = keras.Input((64,))
    h = L.Dense(64, activation="relu")(i)
    h = L.Dense(64, activation="tanh")(h)
    h = L.Dense(64, activation="sigmoid")(h)
    h = L.Dense(64, activation="elu")(h)
    h = L.LeakyReLU(0.1)(L.Dense(64)(h))
    mlp = keras.Model(i, L.Dense(10, activation="softmax")(h))

    i = keras.Input((12, 12, 3))
    h = L.ZeroPadding2D(1)(L.Rescaling(1 / 255.0)(i))
    h = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(32, 3, padding="same")(h)))
    h = L.MaxPooling2D(2)(h)
    h = L.UpSampling2D()(L.Conv2D(32, 3, activation="relu")(h))
    h = L.AveragePooling2D(2)(L.Cropping2D(1)(h))
    h = L.Dense(64)(L.GlobalAveragePooling2D()(h))
    cnn = keras.Model(i, L.Dense(4, activation="softmax")(h))

    i = keras.Input((64,))
    h = L.Conv2D(32, 3, activation="relu")(L.Reshape((8, 8, 1))(i))
    h = L.GlobalMaxPooling2D()(L.Conv2D(32, 3, activation="relu")(h))
    h = L.Dense(64, activation="relu")(h)
    flat = keras.Model(i, L.Dense(3)(L.Dropout(0.1)(h)))
    i = keras.Input((64,))
    a = L.Dense(64, activation="relu")(i)
    b = L.Dense(64, activation="relu")(a)
    h = L.Add()([a, b])
    h = L.Subtract()([h, L.Dense(64)(h)])
    h = L.Multiply()([h, L.Dense(64, activation="sigmoid")(h)])
    h = L.Average()([h, L.Maximum()([h, L.Dense(64)(h)])])
    h = L.Minimum()([h, L.Dense(64)(h)])
    h = L.Concatenate()([h, L.Dense(64, activation="relu")(h)])
    merge = keras.Model(i, L.Dense(10, activation="softmax")(h))
    return {"mlp": mlp, "cnn": cnn, "flat": flat, "merge": merge}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, dict]:
    """name-type -> {path, ops, x, host output (ai-edge-litert)} for every model and type."""
    from pruner.export import export_tflite, run_tflite, tflite_ops

    out_dir = tmp_path_factory.mktemp("exports")
    rng = np.random.default_rng(0)
    result = {}
    for name, model in _models().items():
        shape = tuple(model.input_shape[1:])
        calib = rng.uniform(0, 1, (32, *shape)).astype(np.float32)
        x = rng.uniform(0, 1, (1, *shape)).astype(np.float32)
        for kind in TYPES:
            quant, per_channel = (
                ("dynamic", True) if kind == "dynamic-per-channel" else (kind, None)
            )
            blob = export_tflite(
                model, quantization=quant, representative_data=calib, per_channel=per_channel
            )
            path = out_dir / f"{name}-{kind}.tflite"
            path.write_bytes(blob)
            np.save(f"{path}.x.npy", x)
            result[f"{name}-{kind}"] = {
                "path": path, "blob": blob, "ops": tflite_ops(blob), "x": x,
                "host": run_tflite(blob, x),
            }
    return result


def _tflite_runtime(py: Path, mode: str, paths: list[Path]) -> dict[str, str]:
    res = subprocess.run(
        [str(py), "-c", LOAD, mode, *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-800:]
    return json.loads(res.stdout)


def test_exporter_writes_ops_the_table_knows(exports):
    written = {op for e in exports.values() for op, _ in e["ops"]}
    assert written - set(TABLE) == set(), "ops the exporter writes but the table lacks"
    dyn = dict(exports["mlp-dynamic"]["ops"])
    assert dyn["FULLY_CONNECTED"] <= TABLE["FULLY_CONNECTED"] < 12
    assert dict(exports["mlp-dynamic-per-channel"]["ops"])["FULLY_CONNECTED"] == 12


def test_tflite_runtime_2_14_loads_exactly_what_the_table_accepts(
    exports, tflite_runtime_python
):
    zero = dp.load("raspberry-pi-zero-2w")
    got = _tflite_runtime(tflite_runtime_python, "run", [e["path"] for e in exports.values()])
    refused = []
    for key, e in exports.items():
        verdict = runtime_check(zero, e["ops"])
        loaded = got[str(e["path"])]
        assert (verdict is None) == (loaded == "OK"), (key, verdict, loaded)
        if verdict is None:
            # dynamic-range kernels quantise activations at run time, and the two
            # runtimes do it differently (per tensor vs XNNPACK's per row): agreement
            # to the quantisation step there, to 1e-4 elsewhere
            y = np.load(f"{e['path']}.y.npy")
            tol = 2e-2 * float(np.max(np.abs(e["host"]))) if "dynamic" in key else 1e-4
            assert np.max(np.abs(y - e["host"])) <= tol, (key, np.max(np.abs(y - e["host"])))
        else:
            assert "FULLY_CONNECTED" in loaded and "version" in loaded, loaded
            refused.append(key)
    # the only refusals are the per-channel dynamic-range exports the exporter avoids
    assert refused and all(k.endswith("dynamic-per-channel") for k in refused), refused


def test_table_limits_are_the_runtime_limits(exports, tflite_runtime_python, tmp_path):
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    # one export holding each op the exporter writes
    holder: dict[str, tuple[bytes, int]] = {}
    for e in exports.values():
        for idx, (op, _) in enumerate(e["ops"]):
            holder.setdefault(op, (e["blob"], idx))
    files, expect = [], {}
    for op, (blob, idx) in sorted(holder.items()):
        for version in (TABLE[op], TABLE[op] + 1):
            m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(blob, 0))
            code = m.operatorCodes[idx]
            assert names[max(code.builtinCode, code.deprecatedBuiltinCode)] == op
            code.version = version
            b = flatbuffers.Builder(1024)
            b.Finish(m.Pack(b), file_identifier=b"TFL3")
            path = tmp_path / f"{op}.v{version}.tflite"
            path.write_bytes(bytes(b.Output()))
            files.append(path)
            expect[str(path)] = version == TABLE[op]
    got = _tflite_runtime(tflite_runtime_python, "load", files)
    wrong = [
        f"{Path(p).stem}: {got[p]}"
        for p, ok in expect.items()
        if (got[p] == "OK") != ok or (not ok and "find op" not in got[p])
    ]
    assert not wrong, wrong
    assert len(holder) >= 20


def test_ai_edge_litert_loads_every_export(exports):
    from pruner.export import run_tflite

    pi4 = dp.load("raspberry-pi-4")
    assert op_limits(pi4) is None
    for key, e in exports.items():
        assert runtime_check(pi4, e["ops"]) is None, key
        y = run_tflite(e["blob"], e["x"])  # raises ExportError when it cannot load
        assert y.shape == e["host"].shape, key


def test_export_refuses_what_the_runtime_cannot_load():
    from pruner.export import export_tflite, tflite_ops

    model = _models()["mlp"]
    limits = op_limits(dp.load("raspberry-pi-zero-2w"))
    with pytest.raises(ExportError, match=r"tflite-runtime 2.14 cannot load the dynamic "
                       r"export: FULLY_CONNECTED v12 > v10"):
        export_tflite(model, quantization="dynamic", per_channel=True,
                      max_op_versions=limits, runtime="tflite-runtime 2.14")
    blob = export_tflite(model, quantization="dynamic", max_op_versions=limits)
    assert dict(tflite_ops(blob))["FULLY_CONNECTED"] == 9
    with pytest.raises(ExportError, match=r"SOFTMAX \(not in the tiny table\)"):
        export_tflite(model, max_op_versions={"FULLY_CONNECTED": 12, "TANH": 3, "LOGISTIC": 3,
                                              "ELU": 1, "LEAKY_RELU": 2}, runtime="tiny")
