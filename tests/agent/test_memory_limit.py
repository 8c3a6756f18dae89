"""The benchmark child runs under a memory limit: a model or probe bundle over it fails, never active."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from test_states import CHUNK, KEY, fill, prepare

from agent.cli import default_memory_limit_mb
from agent.states import Context, Transfer, record, resume, run_machine
from agent.storage import Storage
from core.errors import ProbeError
from core.probes import load_probes
from core.protocol import Artifact, Manifest
from core.signing import TrustStore

LIMIT_MB = 256.0


@pytest.fixture(scope="module")
def huge_input_model() -> bytes:
    """A few KB of TFLite whose input tensor declares 2 GiB (float32 of 2^29 values)."""
    import keras
    import tensorflow as tf

    x = keras.Input((2**29,), batch_size=1)
    y = keras.layers.Lambda(lambda t: tf.reduce_sum(t, axis=1, keepdims=True))(x)
    return tf.lite.TFLiteConverter.from_keras_model(keras.Model(x, y)).convert()


def zip_bomb(expanded_mb: int) -> bytes:
    """An npz whose one float32 array expands to ``expanded_mb`` MB from a few hundred KB."""
    n = expanded_mb * 2**20 // 4
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (n,)})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf, \
            zf.open("inputs.npy", "w", force_zip64=True) as f:
        f.write(header.getvalue())
        zeros = bytes(2**20)
        for _ in range(expanded_mb):
            f.write(zeros)
    return out.getvalue()


def test_a_small_model_declaring_a_huge_input_is_rolled_back(tmp_path, huge_input_model):
    assert len(huge_input_model) < 20_000
    ctx, reports = prepare(tmp_path, huge_input_model)
    ctx = ctx.__class__(**{**ctx.__dict__, "memory_limit_mb": LIMIT_MB})
    assert run_machine(ctx, resume(ctx)) == "rolled_back"
    reason = reports[-1].reason
    assert "2,048 MB of tensors, over the memory limit of 256 MB" in reason, reason
    assert ctx.storage.active() is None


def test_a_zip_bomb_probe_bundle_is_refused_before_it_expands(tmp_path, small_model):
    bomb = zip_bomb(512)
    assert len(bomb) < 2 * 2**20
    with pytest.raises(ProbeError, match="expands to 512 MB, over the memory limit of 256 MB"):
        load_probes(bomb, max_mb=LIMIT_MB)
    path = tmp_path / "bomb.npz"
    path.write_bytes(bomb)
    with pytest.raises(ProbeError, match="expands to 512 MB"):
        load_probes(path, max_mb=LIMIT_MB)


def test_a_zip_bomb_in_a_deployment_is_rolled_back(tmp_path, small_model):
    """The bundle arrives with a signed deployment: the child refuses it, never active."""
    st = Storage(tmp_path / "state")
    bomb = zip_bomb(512)
    m = KEY.sign(Manifest(deployment_id="d1", device_id="pi-1",
                          model=Artifact.of(small_model, CHUNK), probes=Artifact.of(bomb, CHUNK),
                          benchmark={"runs": 5, "warmup_runs": 1}))
    reports: list = []
    ctx = Context(storage=st, device_id="pi-1", emit=reports.append,
                  trust=TrustStore([KEY.public_key()]), memory_limit_mb=LIMIT_MB)
    fill(ctx, m, {"model": small_model, "probes": bomb})
    record(ctx, Transfer(m, st.active()))
    assert run_machine(ctx, resume(ctx)) == "rolled_back"
    reason = reports[-1].reason
    assert "expands to 512 MB, over the memory limit of 256 MB" in reason and "\n" not in reason
    assert st.active() is None


def test_the_child_address_space_is_capped():
    code = ("from agent.isolate import cap_address_space\n"
            "cap_address_space(256)\n"
            "import numpy as np\n"
            "try:\n"
            "    np.ones(2**29, dtype=np.float32)\n"
            "    print('allocated')\n"
            "except MemoryError:\n"
            "    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "refused", out.stderr[-500:]


def test_the_limit_defaults_to_the_profiles_ram():
    assert default_memory_limit_mb("raspberry-pi-zero-2w") <= 512
    assert default_memory_limit_mb(None) >= default_memory_limit_mb("raspberry-pi-zero-2w")
    assert json.dumps(default_memory_limit_mb("no-such-profile"))  # the machine's RAM
