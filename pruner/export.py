"""TFLite export, a host-side TFLite runner, and the operator table of a flatbuffer.

Conversion uses ``tf.lite.TFLiteConverter.from_keras_model`` only (converting
from concrete functions gave wrong models; frozen ones give the same flatbuffer for
the same CPU time). The last conversions are memoised by model object and weights.
Running uses the LiteRT interpreter (``ai_edge_litert``), the same one the device uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError, ExportError, PaodingWarning
from core.files import write_atomic

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
CALIBRATION_SAMPLES = 100
# the last conversions, by model object and weights: a run measures the size of its last
# model and the command then writes the same export (a conversion takes seconds)
MEMO_SIZE = 8
_memo: OrderedDict[tuple, tuple[Any, bytes]] = OrderedDict()


class _DefaultBox:
    lo = 0.0
    hi = 1.0


def export_tflite(
    model: Any,
    path: str | os.PathLike | None = None,
    quantization: str = "float32",
    representative_data: np.ndarray | None = None,
    *,
    box: Any = None,
    per_channel: bool | None = None,
    max_op_versions: Mapping[str, int] | None = None,
    runtime: str = "the target runtime",
) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer; optionally write it to path.

    quantization: ``float32`` (none), ``float16`` (weights), ``dynamic``
    (dynamic-range int8 weights) or ``int8`` (full-integer kernels, float
    input and output). ``int8`` calibrates on ``representative_data``; when
    none is given it uses random inputs from ``box`` (default [0, 1]) and
    warns that it did so.

    per_channel: weight scales per output channel (True) or per tensor
    (False). The default is per tensor for ``dynamic``: the per-channel hybrid
    FULLY_CONNECTED is v12, which tflite-runtime 2.14 cannot load (it stops at
    v10), while per tensor writes v9, which every runtime the profiles name
    loads. ``int8`` stays per channel (its kernels load everywhere).

    max_op_versions: the highest version of each builtin op ``runtime`` (a
    name for messages) can load; an op above its limit, or missing from the
    table, raises ExportError naming it, so nothing unloadable is emitted.
    """
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, "
                          f"got {quantization!r}")
    if per_channel is None:
        per_channel = quantization != "dynamic"
    if quantization == "int8" and representative_data is None:
        warnings.warn(
            f"int8 calibration uses {CALIBRATION_SAMPLES} random inputs from the input "
            "box (no representative data given)",
            PaodingWarning,
            stacklevel=2,
        )
    key = _memo_key(model, quantization, per_channel, representative_data, box)
    hit = _memo.get(key) if key is not None else None
    if hit is not None and hit[0]() is model:
        _memo.move_to_end(key)
        data = hit[1]
    else:
        data = _convert(model, quantization, per_channel, representative_data, box)
        if key is not None:
            _memo[key] = (weakref.ref(model), data)
            while len(_memo) > MEMO_SIZE:
                _memo.popitem(last=False)
    if max_op_versions is not None:
        reason = op_version_problems(tflite_ops(data), max_op_versions, runtime)
        if reason:
            raise ExportError(f"{runtime} cannot load the {quantization} export: {reason}")
    if path is not None:
        write_atomic(path, data)
    return data


def _memo_key(model: Any, quantization: str, per_channel: bool, calib: Any, box: Any
              ) -> tuple | None:
    """The memo key of a conversion: the model object and its weights' digest (weights
    change in place), the options and the calibration inputs; None: not memoised."""
    from pruner.io import model_digest

    try:
        weakref.ref(model)
        digest = model_digest(model)
    except (TypeError, AttributeError, ValueError):
        return None
    extra = b""
    if quantization == "int8":
        extra = (hashlib.sha256(np.ascontiguousarray(calib, np.float32)).digest()
                 if calib is not None else repr((getattr(box, "lo", 0.0),
                                                 getattr(box, "hi", 1.0))).encode())
    return id(model), digest, quantization, per_channel, extra


def _convert(model: Any, quantization: str, per_channel: bool,
             representative_data: np.ndarray | None, box: Any) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization in ("dynamic", "int8") and not per_channel:
        # The documented switch of TFLiteConverter (lite.py) for per-tensor weight scales.
        converter._experimental_disable_per_channel = True
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative_data is None:
            from pruner.evaluate import random_inputs

            box = box if box is not None else _DefaultBox()
            representative_data = random_inputs(
                box, tuple(model.input_shape[1:]), CALIBRATION_SAMPLES, seed=0
            )
        calib = np.asarray(representative_data, np.float32)

        def gen():
            for i in range(len(calib)):
                yield [calib[i : i + 1]]

        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        # Keras prints the SavedModel signature to stdout while converting.
        with contextlib.redirect_stdout(io.StringIO()), _native_stderr_dropped(), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            data = bytes(converter.convert())
    except Exception as exc:  # the converter raises many unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"TFLite conversion ({quantization}) failed: {first}") from exc
    return data


@contextlib.contextmanager
def _native_stderr_dropped() -> Any:
    """Drop what native code writes to fd 2 meanwhile (the converter's "fully_quantize: 0,
    inference_type: 6 ..." lines); Python errors still raise with their messages."""
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded); nothing to drop
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def op_version_problems(
    ops: Sequence[tuple[str, int]], limits: Mapping[str, int], runtime: str = "the runtime"
) -> str | None:
    """The ops above their limit (or without one) as one line, or None when all fit."""
    bad = []
    for op, version in ops:
        limit = limits.get(op)
        if limit is None:
            bad.append(f"{op} (not in the {runtime} table)")
        elif version > limit:
            bad.append(f"{op} v{version} > v{limit}")
    return ", ".join(bad) or None


def _interpreter(tflite_bytes: bytes, num_threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    try:
        return Interpreter(model_content=bytes(tflite_bytes), num_threads=num_threads)
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"the TFLite interpreter cannot load the model: {exc}") from exc


def run_tflite(
    tflite_bytes: bytes, x: np.ndarray, num_threads: int = 1, batch_size: int = 256
) -> np.ndarray:
    """Outputs of a single-input, single-output TFLite model on x (float32 [N, C]).

    Batches by resizing the input tensor; quantised inputs and outputs are
    converted with the tensors' scale and zero point.
    """
    interp = _interpreter(tflite_bytes, num_threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    x = np.asarray(x, np.float32)
    expected = tuple(int(d) for d in inp["shape_signature"][1:])
    if x.ndim < 1 or len(x.shape[1:]) != len(expected) or any(
        e not in (-1, d) for e, d in zip(expected, x.shape[1:], strict=True)
    ):
        raise DataError(f"input of shape {x.shape[1:]} does not fit the model's {expected}")
    results = []
    current = None
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        if xb.shape != current:
            interp.resize_tensor_input(inp["index"], list(xb.shape), strict=False)
            interp.allocate_tensors()
            current = xb.shape
        if inp["dtype"] in (np.int8, np.uint8):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            xb = np.clip(np.round(xb / scale + zero), info.min, info.max)
        interp.set_tensor(inp["index"], xb.astype(inp["dtype"]))
        interp.invoke()
        yb = interp.get_tensor(out["index"])
        if out["dtype"] in (np.int8, np.uint8):
            scale, zero = out["quantization"]
            yb = (yb.astype(np.float32) - zero) * scale
        results.append(np.asarray(yb, np.float32))
    if not results:
        raise DataError("no samples to run")
    return np.concatenate(results, axis=0)


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - TensorFlow ships the same module
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def tflite_ops(tflite_bytes: bytes) -> list[tuple[str, int]]:
    """The operator codes of a flatbuffer as (name, version), in table order.

    The name is the builtin operator (``FULLY_CONNECTED``), or
    ``CUSTOM:<code>`` for custom operators.
    """
    schema = _schema()
    buf = bytearray(tflite_bytes)
    if len(buf) < 8 or bytes(buf[4:8]) != b"TFL3":
        raise ExportError("not a TFLite flatbuffer (no TFL3 identifier)")
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(buf, 0)
    ops = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # builtin_code holds codes >= 127; older files only have the deprecated byte.
        op = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        name = names.get(op, f"BUILTIN_{op}")
        if name == "CUSTOM":
            custom = code.CustomCode()
            name = f"CUSTOM:{custom.decode() if custom else ''}"
        ops.append((name, int(code.Version())))
    return ops
