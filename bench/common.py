"""Shared pieces of the benchmarks: data sets, model paths, machine description.

Data comes from scikit-learn's bundled sets through ``pruner.datasets`` (no
download): the 8x8 digits upsampled to 28x28 in [0, 1], and breast cancer
min-max scaled to [0, 1], with a fixed split seed.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
MODELS = BENCH / "models"
RESULTS = BENCH / "results"
SEED = 7
SPLIT_SEED = 0

MODEL_FILES = {
    "digits_mlp": MODELS / "digits_mlp.keras",
    "digits_cnn": MODELS / "digits_cnn.keras",
    "cancer_mlp": MODELS / "cancer_mlp.keras",
    "cnn_bn_before": MODELS / "cnn_bn_before.keras",
    "cnn_bn_after": MODELS / "cnn_bn_after.keras",
    "cnn_no_bn": MODELS / "cnn_no_bn.keras",
    "mlp_256": MODELS / "mlp_256.keras",
}


def dataset_for(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The data of a benchmark model, shaped for its input layer."""
    from pruner import datasets

    if name == "digits_mlp":
        return datasets.digits28(SPLIT_SEED, flatten=True)
    if name == "digits_cnn" or name.startswith("cnn_"):
        return datasets.digits28(SPLIT_SEED, flatten=False)
    if name == "mlp_256":
        return datasets.digits28(SPLIT_SEED, flatten=True)
    if name == "cancer_mlp":
        return datasets.breast_cancer(SPLIT_SEED)
    raise ValueError(f"unknown benchmark model {name!r}")


def machine() -> dict[str, object]:
    """A description of the machine the benchmark ran on, read from platform/os."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
    }


def git_commit() -> str | None:
    """The repository's HEAD commit (short), or None outside a git checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(BENCH), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_line(m: dict[str, object] | None = None) -> str:
    """One line describing the machine."""
    m = m or machine()
    return (
        f"{m['cores']}-core {m['machine']} {m['system']} ({m['cpu']}), CPU only, "
        f"Python {m['python']}"
    )


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (temporary sibling, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def save_figure(fig: object, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG atomically (a temporary file, then a rename) and
    close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)


def measure_latency(
    blobs: dict[str, bytes],
    inputs: dict[str, np.ndarray],
    runs: int = 200,
    warmup: int = 20,
    block: int = 10,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Median single-inference latency (microseconds) of TFLite models, interleaved.

    Every model runs in LiteRT with one thread (in the calling thread). The runs
    are taken in blocks of ``block`` invocations, the models visited in a
    shuffled order each round, so that load from other processes falls on all
    of them alike; the ratios between models are measured within one run.
    Both wall time and the thread's CPU time are recorded: on a shared machine
    the CPU time leaves out the time the thread waited while preempted.
    """
    import time

    from ai_edge_litert.interpreter import Interpreter

    interps = {}
    for key, blob in blobs.items():
        it = Interpreter(model_content=blob, num_threads=1)
        inp = it.get_input_details()[0]
        x = np.asarray(inputs[key], np.float32)
        it.resize_tensor_input(inp["index"], list(x.shape), strict=False)
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        for _ in range(warmup):
            it.invoke()
        interps[key] = it
    times: dict[str, list[float]] = {k: [] for k in blobs}
    cpu: dict[str, list[float]] = {k: [] for k in blobs}
    rng = np.random.default_rng(seed)
    keys = list(blobs)
    rounds = max(1, -(-runs // block))
    for _ in range(rounds):
        for i in rng.permutation(len(keys)):
            key = keys[i]
            it = interps[key]
            for _ in range(block):
                c0 = time.thread_time_ns()
                t0 = time.perf_counter_ns()
                it.invoke()
                t1 = time.perf_counter_ns()
                c1 = time.thread_time_ns()
                times[key].append((t1 - t0) / 1e3)
                cpu[key].append((c1 - c0) / 1e3)
    return {
        k: {
            "median_us": float(np.median(v)),
            "p10_us": float(np.percentile(v, 10)),
            "p90_us": float(np.percentile(v, 90)),
            "cpu_median_us": float(np.median(cpu[k])),
            "runs": len(v),
        }
        for k, v in times.items()
    }


def quiet_tensorflow() -> None:
    """Import TensorFlow once with its import-time notices (absl, oneDNN) kept off the
    output: a bench prints progress and tables only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tuner.quiet import native_quiet

    with native_quiet():
        import tensorflow  # noqa: F401
