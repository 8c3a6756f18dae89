"""The agent never imports TensorFlow (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

from agenthelp import ROOT, SUBPROCESS_ENV

CODE = """
import sys
import agent
assert not any(m.split('.')[0] in ('tensorflow', 'ai_edge_litert', 'tflite_runtime', 'keras')
               for m in sys.modules), 'import agent pulled in an interpreter'
import agent.benchmark, agent.checks, agent.cli, agent.config, core.mqtt, core.protocol
import agent.runtime, agent.service, core.signing, agent.states, agent.storage, agent.transfer
import fleet.publisher, hostcli.deploy, hostcli.keys
rt = agent.runtime.select_runtime()
model = rt.load(open(sys.argv[1], 'rb').read())
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))
assert not bad, bad[:5]
print('ok', rt.name)
"""


def test_import_agent_does_not_import_tensorflow(tmp_path, tiny_model):
    path = tmp_path / "m.tflite"
    path.write_bytes(tiny_model)
    out = subprocess.run([sys.executable, "-c", CODE, str(path)], cwd=ROOT, env=SUBPROCESS_ENV,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok ai-edge-litert"


def test_agent_help_is_fast_and_light():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "agent.cli", "--help"],
                         cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "run" in out.stdout
    assert "tensorflow" not in out.stderr and "paho" not in out.stderr
