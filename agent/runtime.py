"""Interpreter selection: ai-edge-litert, else tflite-runtime, else tf.lite (last resort).

Nothing is imported until ``select_runtime()`` is called, and TensorFlow only
when neither of the small interpreters is installed. ``PAODING_AGENT_RUNTIME``
(ai-edge-litert, tflite-runtime, tensorflow) forces one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import RuntimeLoadError
from core.protocol import RuntimeInfo

if TYPE_CHECKING:
    import numpy as np

_CANDIDATES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow", "tensorflow", "tensorflow"),
)


@dataclass(frozen=True)
class Runtime:
    """One interpreter implementation: its name, version and Interpreter class."""

    name: str
    version: str
    interpreter_class: Any

    @property
    def info(self) -> RuntimeInfo:
        return RuntimeInfo(name=self.name, version=self.version)

    def load(self, model: Path | bytes, threads: int | None = None,
             memory_limit_mb: float | None = None) -> Model:
        """Create and allocate an interpreter; RuntimeLoadError carries the interpreter's text.

        With ``memory_limit_mb`` the tensors the model declares are added up
        before anything is allocated: a model declaring more is refused (a
        2 KB model may declare a 2 GiB input).
        """
        kwargs: dict[str, Any] = {}
        if isinstance(model, bytes | bytearray):
            kwargs["model_content"] = bytes(model)
        else:
            kwargs["model_path"] = str(model)
        if threads:
            kwargs["num_threads"] = threads
        try:
            interp = self.interpreter_class(**kwargs)
            if memory_limit_mb is not None:
                declared = declared_tensor_mb(interp)
                if declared > memory_limit_mb:
                    raise RuntimeLoadError(
                        f"the model declares {declared:,.0f} MB of tensors, over the memory "
                        f"limit of {memory_limit_mb:,.0f} MB")
            interp.allocate_tensors()
        except RuntimeLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - the interpreter raises many kinds
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise RuntimeLoadError(f"{self.name} {self.version} cannot load the model: "
                                   f"{text}") from None
        return Model(interp)


def declared_tensor_mb(interp: Any) -> float:
    """MB of every tensor the model declares (an unknown dimension counts as 1)."""
    import numpy as np

    total = 0
    for t in interp.get_tensor_details():
        n = 1
        for d in t["shape"]:
            n *= max(int(d), 1)
        total += n * np.dtype(t["dtype"]).itemsize
    return total / 2**20


def _version(dist: str, module: Any) -> str:
    v = getattr(module, "__version__", None)
    if v:
        return str(v)
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return "unknown"


def detect_runtime(preferred: str | None = None) -> RuntimeInfo:
    """The runtime ``select_runtime`` would choose, without importing it (for status)."""
    from importlib.metadata import PackageNotFoundError, version

    preferred = preferred or os.environ.get("PAODING_AGENT_RUNTIME") or None
    for name, module_name, dist in _CANDIDATES:
        if preferred and name != preferred:
            continue
        try:
            if importlib.util.find_spec(module_name.split(".")[0]) is None:
                continue
            return RuntimeInfo(name=name, version=version(dist))
        except (PackageNotFoundError, ValueError, ImportError):
            continue
    raise RuntimeLoadError("no TFLite interpreter is installed (pip install ai-edge-litert)")


@lru_cache(maxsize=4)
def select_runtime(preferred: str | None = None) -> Runtime:
    """The first interpreter that imports (or ``preferred``/$PAODING_AGENT_RUNTIME)."""
    preferred = preferred or os.environ.get("PAODING_AGENT_RUNTIME") or None
    names = [c[0] for c in _CANDIDATES]
    if preferred and preferred not in names:
        raise RuntimeLoadError(f"unknown runtime {preferred!r}: choose from {', '.join(names)}")
    errors = []
    for name, module_name, dist in _CANDIDATES:
        if preferred and name != preferred:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if name == "tensorflow":
            cls = module.lite.Interpreter
            top = module
        else:
            cls = module.Interpreter
            top = importlib.import_module(module_name.split(".")[0])
        return Runtime(name, _version(dist, top), cls)
    raise RuntimeLoadError("no TFLite interpreter is installed (pip install ai-edge-litert): "
                           + "; ".join(errors))


class Model:
    """A loaded interpreter with one input and one output (batch of one)."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self.inputs = interpreter.get_input_details()
        self.outputs = interpreter.get_output_details()
        if not self.inputs or not self.outputs:
            raise RuntimeLoadError("the model has no input or no output tensor")
        self.input = self.inputs[0]
        self.output = self.outputs[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"])

    def random_input(self, rng: np.random.Generator) -> np.ndarray:
        import numpy as np

        shape, dtype = self.input_shape, np.dtype(self.input["dtype"])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        return rng.random(shape, dtype=np.float32).astype(dtype)

    def set_input(self, x: np.ndarray) -> None:
        self.interpreter.set_tensor(self.input["index"], x)

    def invoke(self, x: np.ndarray | None = None) -> None:
        if x is not None:
            self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """float inputs -> the input tensor's dtype (applies its quantisation)."""
        import numpy as np

        dtype = np.dtype(self.input["dtype"])
        if np.issubdtype(dtype, np.integer):
            scale, zero = self.input.get("quantization", (0.0, 0))
            if scale:
                x = np.round(x / scale + zero)
            info = np.iinfo(dtype)
            return np.clip(x, info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def output_float(self) -> np.ndarray:
        import numpy as np

        y = self.interpreter.get_tensor(self.output["index"])
        if np.issubdtype(y.dtype, np.integer):
            scale, zero = self.output.get("quantization", (0.0, 0))
            if scale:
                return (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for a batch ``x`` [N, *input], one sample at a time -> float32 [N, C]."""
        import numpy as np

        batch = self.input_shape[0] if self.input_shape else 1
        want = self.input_shape[1:]
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"inputs of shape {tuple(x.shape[1:])} do not fit the model's "
                             f"input {want}")
        outs = []
        for i in range(0, len(x), max(batch, 1)):
            xi = self.quantize_input(x[i:i + batch])
            if len(xi) != batch:  # pad the last partial batch
                pad = np.zeros((batch - len(xi), *want), dtype=xi.dtype)
                xi = np.concatenate([xi, pad])
                self.invoke(xi)
                outs.append(self.output_float()[: len(x) - i])
            else:
                self.invoke(xi)
                outs.append(self.output_float())
        y = np.concatenate(outs) if outs else np.zeros((0,), np.float32)
        return y.reshape(len(x), -1)
