"""The latency and memory model of a device profile.

Latency (p90, ms) = ``overhead_ms`` + sum over features of coefficient * feature,
where the features of a TFLite model are counted per op and per kernel class:

- ``dense_macs.<class>``: multiply-accumulates of FULLY_CONNECTED / BATCH_MATMUL;
- ``conv_macs.<class>``: multiply-accumulates of CONV_2D / DEPTHWISE_CONV_2D;
- ``dw_macs.<class>``: the DEPTHWISE_CONV_2D share of ``conv_macs`` (counted in
  both: its coefficient is the extra cost of a depthwise MAC, which reuses no
  weights and runs memory-bound, over a standard one);
- ``pad16_macs.<class>``: the MACs CONV_2D / FULLY_CONNECTED would add if their
  output channels were rounded up to a multiple of 16 (GEMM kernels compute
  whole channel tiles, 16 wide on this host's AVX-512 f32 kernels, 8 on NEON:
  a pruned width of 21 costs about what 32 does here);
- ``conv_elements.<class>``: output elements of the convolutions (their
  per-pixel cost, which dominates convolutions with few channels);
- ``elements.<class>``: output elements of every other op (activations, pooling,
  reshapes, softmax, quantise/dequantise);
- ``conv_ops.<class>`` and ``ops.<class>``: the number of convolutions and of
  other ops (their fixed set-up and dispatch cost).

A coefficient a profile does not give is derived from the float one
(``DEFAULT_CLASS_RATIO``), or is 0 when that is missing too.

The kernel class of an op is ``float`` (float weights and inputs; float16
weights are dequantised at load time), ``hybrid`` (int8 weights, float
inputs: dynamic-range quantisation) or ``int8`` (integer inputs).

Peak memory (MB) = ``base_mb`` + ``model_factor`` * model MB + ``arena_factor``
* activation MB. ``fit`` refits both from measurements by non-negative least
squares on relative error, pulled gently towards the previous coefficients
times the median measured / predicted ratio, so that features the measurements
never exercise keep their prior proportions.

Features are read from the .tflite bytes with whichever interpreter is
installed (ai-edge-litert, tflite-runtime, TensorFlow Lite): no TensorFlow
import is needed on a device.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_profiles.schema import FEATURES, KERNEL_CLASS, LatencyModel, MemoryModel

CLASSES: tuple[str, ...] = ("float", "hybrid", "int8")
_DENSE = {"FULLY_CONNECTED", "BATCH_MATMUL"}
_CONV = {"CONV_2D", "DEPTHWISE_CONV_2D"}
_SKIP = {"DELEGATE"}
TILE = 16  # output-channel tile of pad16_macs
# Used when a profile has no coefficient for a class: relative to float.
DEFAULT_CLASS_RATIO = {"float": 1.0, "hybrid": 0.8, "int8": 0.6}
MIN_MEASUREMENTS = 3  # the fewest measurements ``fit`` refits from


@dataclass(frozen=True)
class ModelFeatures:
    """What the latency and memory models read from one .tflite model."""

    counts: dict[str, float]  # "<feature>.<class>" -> amount
    model_bytes: int
    activation_bytes: int
    op_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "model_bytes": self.model_bytes,
            "activation_bytes": self.activation_bytes,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelFeatures:
        try:
            return cls(
                counts={str(k): float(v) for k, v in d["counts"].items()},
                model_bytes=int(d["model_bytes"]),
                activation_bytes=int(d["activation_bytes"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"bad model features record: {exc!r}") from None


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        except ImportError:
            import tensorflow as tf  # last resort, host only

            Interpreter = tf.lite.Interpreter  # type: ignore[misc]  # noqa: N806
    return Interpreter


def _op_class(op: str, dtypes: list[str]) -> str:
    """Kernel class of one op from the dtypes of its inputs (data first, weights second)."""
    if not dtypes:
        return "float"
    data = dtypes[0]
    if data in ("int8", "uint8", "int16"):
        return "int8"
    if (op in _DENSE or op in _CONV) and len(dtypes) > 1 and dtypes[1] in ("int8", "uint8"):
        return "hybrid"
    return "float"


def features_from_tflite(model: bytes) -> ModelFeatures:
    """Count MACs, elements and ops per kernel class in a .tflite model."""
    interp = _interpreter_class()(model_content=bytes(model))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    counts = {f"{f}.{c}": 0.0 for f in FEATURES for c in CLASSES}
    activation = 0
    names: list[str] = []
    for op in interp._get_ops_details():
        name = op["op_name"]
        if name in _SKIP:
            continue
        ins = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
        outs = [tensors[i] for i in op["outputs"] if i >= 0 and i in tensors]
        dtypes = [np.dtype(t["dtype"]).name for t in ins]
        if name == "DEQUANTIZE" and dtypes and dtypes[0] == "float16":
            continue  # a constant weight dequantised once, at load time
        names.append(name)
        kclass = _op_class(name, dtypes)
        out_elems = sum(int(np.prod(t["shape"])) if len(t["shape"]) else 1 for t in outs)
        activation += sum(
            (int(np.prod(t["shape"])) if len(t["shape"]) else 1) * np.dtype(t["dtype"]).itemsize
            for t in outs
        )
        counts[f"{'conv_ops' if name in _CONV else 'ops'}.{kclass}"] += 1
        if name in _CONV:
            counts[f"conv_elements.{kclass}"] += float(out_elems)
        if name in _DENSE and len(ins) > 1:
            w = ins[1]["shape"]
            rows = out_elems // max(int(w[0]), 1) if len(w) else 1
            counts[f"dense_macs.{kclass}"] += float(rows * int(np.prod(w)))
            if len(w) == 2:
                counts[f"pad16_macs.{kclass}"] += float(rows * _pad(int(w[0])) * int(w[1]))
        elif name == "CONV_2D" and len(ins) > 1:
            w = ins[1]["shape"]  # [out_c, kh, kw, in_c]
            counts[f"conv_macs.{kclass}"] += float(out_elems * int(np.prod(w[1:])))
            pixels = out_elems // max(int(w[0]), 1)
            counts[f"pad16_macs.{kclass}"] += float(pixels * _pad(int(w[0])) * int(np.prod(w[1:])))
        elif name == "DEPTHWISE_CONV_2D" and len(ins) > 1:
            w = ins[1]["shape"]  # [1, kh, kw, c * m]
            counts[f"conv_macs.{kclass}"] += float(out_elems * int(w[1]) * int(w[2]))
            counts[f"dw_macs.{kclass}"] += float(out_elems * int(w[1]) * int(w[2]))
        else:
            counts[f"elements.{kclass}"] += float(out_elems)
    return ModelFeatures(counts, len(model), int(activation), names)


def export_type(model: bytes) -> str:
    """The export type of a .tflite model: int8, dynamic, float16 or float32."""
    interp = _interpreter_class()(model_content=bytes(model))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    classes = set()
    for op in interp._get_ops_details():
        ins = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
        classes.add(_op_class(op["op_name"], [np.dtype(t["dtype"]).name for t in ins]))
    if "int8" in classes:
        return "int8"
    if "hybrid" in classes:
        return "dynamic"
    if any(np.dtype(t["dtype"]) == np.float16 for t in tensors.values()):
        return "float16"
    return "float32"


def _pad(channels: int) -> int:
    """Channels a kernel computes but discards when it works in whole tiles of TILE."""
    return -channels % TILE


def _coef(lm: LatencyModel, key: str) -> float:
    if key in lm.coefficients:
        return lm.coefficients[key]
    feature, _, kclass = key.partition(".")
    return lm.coefficients.get(f"{feature}.float", 0.0) * DEFAULT_CLASS_RATIO[kclass]


def predict_latency_ms(lm: LatencyModel, feats: ModelFeatures) -> float:
    """Predicted p90 latency in milliseconds."""
    return lm.overhead_ms + sum(_coef(lm, k) * v for k, v in feats.counts.items() if v)


def predict_memory_mb(lm: LatencyModel, feats: ModelFeatures) -> float:
    """Predicted peak resident memory of the runtime process in MB."""
    m = lm.memory
    mb = 1024.0 * 1024.0
    return (
        m.base_mb
        + m.model_factor * feats.model_bytes / mb
        + m.arena_factor * (feats.activation_bytes / mb)
    )


def export_class(export: str) -> str:
    """The kernel class an export type mostly runs on."""
    return KERNEL_CLASS[export]


@dataclass(frozen=True)
class Measurement:
    """One measured model on one device: features and what the agent reported."""

    features: ModelFeatures
    p90_ms: float
    peak_memory_mb: float | None = None
    emulated: bool = False
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features.to_dict(),
            "p90_ms": self.p90_ms,
            "peak_memory_mb": self.peak_memory_mb,
            "emulated": self.emulated,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        try:
            p90 = float(d["p90_ms"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("measurement record needs a numeric 'p90_ms'") from None
        if p90 <= 0:
            raise ValueError(f"measurement p90_ms must be > 0, got {p90}")
        mem = d.get("peak_memory_mb")
        return cls(
            features=ModelFeatures.from_dict(d.get("features") or {}),
            p90_ms=p90,
            peak_memory_mb=float(mem) if mem is not None else None,
            emulated=bool(d.get("emulated", False)),
            label=str(d.get("label", "")),
        )


def _nnls_ridge(a: np.ndarray, b: np.ndarray, lam: float, max_iter: int = 50,
                target: np.ndarray | None = None) -> np.ndarray:
    """min ||A s - b||^2 + lam ||s - target||^2 subject to s >= 0 (a small active-set loop);
    ``target`` defaults to 1 (the prior)."""
    n = a.shape[1]
    a_aug = np.vstack([a, np.sqrt(lam) * np.eye(n)])
    b_aug = np.concatenate([b, np.sqrt(lam) * (np.ones(n) if target is None else target)])
    active = np.ones(n, dtype=bool)
    s = np.zeros(n)
    for _ in range(max_iter):
        s = np.zeros(n)
        if active.any():
            s[active] = np.linalg.lstsq(a_aug[:, active], b_aug, rcond=None)[0]
        neg = active & (s < 0)
        if not neg.any():
            break
        active &= ~neg
    return np.clip(s, 0.0, None)


def relative_errors(lm: LatencyModel, data: Iterable[Measurement]) -> np.ndarray:
    """(predicted - measured) / measured for each measurement."""
    return np.array([(predict_latency_ms(lm, m.features) - m.p90_ms) / m.p90_ms for m in data])


def error_summary(errors: np.ndarray, tolerance: float = 0.15) -> dict[str, float]:
    """Median and p90 absolute relative error, and the share within the tolerance."""
    if errors.size == 0:
        return {"n": 0.0}
    abs_e = np.abs(errors)
    return {
        "n": float(errors.size),
        "median_abs": round(float(np.median(abs_e)), 4),
        "p90_abs": round(float(np.percentile(abs_e, 90)), 4),
        "max_abs": round(float(abs_e.max()), 4),
        "within_15pct": round(float(np.mean(abs_e <= tolerance)), 4),
    }


def fit(
    prior: LatencyModel,
    data: list[Measurement],
    *,
    source: str,
    ridge: float = 1e-3,
    fit_overhead: bool = True,
) -> LatencyModel:
    """Refit the latency (and, when measured, memory) model from measurements.

    Minimises relative error (each row divided by its measured latency), with
    non-negative coefficients expressed as scale factors on the prior. With
    ``fit_overhead=False`` the prior's fixed overhead is kept (for measurements of
    large models only, which cannot tell a per-inference overhead from their cost).
    """
    if len(data) < MIN_MEASUREMENTS:
        raise ValueError(
            f"need at least {MIN_MEASUREMENTS} measurements to calibrate, got {len(data)}")
    keys = sorted({k for m in data for k, v in m.features.counts.items() if v})
    x = np.array([[m.features.counts.get(k, 0.0) for k in keys] + [1.0] for m in data])
    y = np.array([m.p90_ms for m in data])
    if not fit_overhead:
        x[:, -1] = 0.0
        y = y - prior.overhead_ms
    # Scale of each parameter: the prior, or (when the prior is 0) what the feature
    # alone would need to explain an equal share of the typical latency.
    typical = [
        float(np.median(y[x[:, j] > 0] / x[x[:, j] > 0, j])) / (len(keys) + 1)
        for j in range(len(keys))
    ]
    prior_vals = np.array(
        [_coef(prior, k) if _coef(prior, k) > 0 else t for k, t in zip(keys, typical, strict=True)]
        + [max(prior.overhead_ms, float(np.min(y)) / 4)]
    )
    # pulled towards the prior's own values (0 where it says 0), in units of these scales
    own = np.array([_coef(prior, k) for k in keys] + [prior.overhead_ms])
    target = np.divide(own, prior_vals, out=np.zeros_like(own), where=prior_vals > 0)
    # The simplest account of a few measurements is a device uniformly faster or slower
    # than the prior says: the coefficients are pulled towards the prior times the median
    # measured / predicted ratio, so features few measurements tell apart keep their ratios.
    ratio = np.array([m.p90_ms / max(predict_latency_ms(prior, m.features), 1e-9) for m in data])
    prior_vals = prior_vals * float(np.median(ratio))
    a = x * prior_vals / y[:, None]
    scale = _nnls_ridge(a, np.ones(len(y)), ridge, target=target)
    values = scale * prior_vals
    if not fit_overhead:
        values[-1] = prior.overhead_ms
    coefficients = dict(prior.coefficients)
    coefficients.update({k: float(f"{v:.6g}") for k, v in zip(keys, values[:-1], strict=True)})

    memory = prior.memory
    mem_data = [m for m in data if m.peak_memory_mb is not None]
    if len(mem_data) >= 3:
        mb = 1024.0 * 1024.0
        xm = np.array(
            [[1.0, m.features.model_bytes / mb, m.features.activation_bytes / mb] for m in mem_data]
        )
        ym = np.array([m.peak_memory_mb for m in mem_data], dtype=float)
        pm = np.array(
            [max(memory.base_mb, 1.0), max(memory.model_factor, 0.1), max(memory.arena_factor, 0.1)]
        )
        sm = _nnls_ridge(xm * pm / ym[:, None], np.ones(len(ym)), 1e-2)
        base, mf, af = (float(f"{v:.4g}") for v in sm * pm)
        memory = MemoryModel(base_mb=base, model_factor=mf, arena_factor=af)

    draft = prior.model_copy(
        update={
            "coefficients": coefficients,
            "overhead_ms": float(f"{values[-1]:.6g}"),
            "memory": memory,
        }
    )
    summary = error_summary(relative_errors(draft, data))
    return LatencyModel(
        provenance="calibrated",
        source=source,
        calibrated_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        calibration_reports=len(data),
        calibration_error=summary,
        overhead_ms=draft.overhead_ms,
        coefficients=coefficients,
        memory=memory,
    )
