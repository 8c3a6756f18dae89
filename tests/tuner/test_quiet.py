"""native_quiet: the native libraries' known notices are dropped, everything else is kept."""

from __future__ import annotations

import os

import pytest

from tuner.quiet import native_quiet


def test_notices_dropped_real_errors_kept(capfd):
    with native_quiet():
        os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"I0000 00:00:1795838706.853881   29730 port.cc:153] oneDNN custom ops\n")
        os.write(2, b"error: the converter failed on op FOO\n")
    err = capfd.readouterr().err
    assert err == "error: the converter failed on op FOO\n"


def test_restores_stderr_after_an_exception(capfd):
    with pytest.raises(RuntimeError), native_quiet():
        os.write(2, b"real trouble\n")
        raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "real trouble\nafter\n"
