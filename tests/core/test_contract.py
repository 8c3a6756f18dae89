"""The published contract: generated schemas match core/protocol.py; the AsyncAPI parser accepts it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from core import contract
from core.protocol import (
    Artifact,
    BenchmarkResult,
    Cancel,
    CheckResults,
    ChunkRequest,
    LatencyStats,
    Manifest,
    Report,
    RuntimeInfo,
    Status,
    Thresholds,
    TransferStats,
)
from core.signing import SigningKey

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
VALIDATOR = ROOT / "scripts" / "asyncapi" / "validate.mjs"


def test_generated_files_match_the_protocol_module():
    diff = contract.differences(DOCS)
    assert diff == [], f"regenerate with `python -m core.contract`: {diff} differ"


def test_check_names_a_file_that_drifted(tmp_path, capsys):
    contract.write(tmp_path)
    assert contract.main(["--docs", str(tmp_path), "--check"]) == 0
    schema = tmp_path / "schemas" / "manifest.json"
    schema.write_text(schema.read_text().replace('"release"', '"version"', 1))
    assert contract.main(["--docs", str(tmp_path), "--check"]) == 1
    assert "schemas/manifest.json differs" in capsys.readouterr().err


def test_schema_follows_the_model():
    schema = contract.message_schema("manifest")
    assert schema["$schema"] == contract.SCHEMA_DIALECT
    assert set(schema["properties"]) == set(Manifest.model_fields)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"deployment_id", "device_id", "model"}
    ranges = contract.message_schema("need")["properties"]["ranges"]["items"]
    assert isinstance(ranges["items"], list) and ranges["additionalItems"] is False


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/test.sh installs it)")
    if not (VALIDATOR.parent / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail("the AsyncAPI parser is not installed: run `npm ci --prefix scripts/asyncapi` "
                    "(scripts/test.sh does)")
    return node


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_node(), str(VALIDATOR), str(path)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_asyncapi_parser_accepts_the_document():
    run = _validate(DOCS / contract.ASYNCAPI_FILE)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "valid AsyncAPI 3.0.0" in run.stdout
    assert "6 channels, 12 operations, 6 messages" in run.stdout


def test_asyncapi_parser_refuses_a_broken_document(tmp_path):
    contract.write(tmp_path)
    doc = tmp_path / contract.ASYNCAPI_FILE
    doc.write_text(doc.read_text().replace("qos: 1", "qos: 3", 1))
    schema = tmp_path / "schemas" / "report.json"
    schema.write_text(schema.read_text().replace('"type": "boolean"', '"type": "bool"', 1))
    run = _validate(doc)
    assert run.returncode == 1, run.stdout
    assert "lastWill.qos" in run.stdout  # the binding
    assert '"bool"' in run.stdout or "Did you mean" in run.stdout  # the external schema
    assert "not a valid AsyncAPI document" in run.stdout


def _samples() -> dict[str, bytes]:
    """One signed message of each kind, every optional part filled."""
    host, device = SigningKey.generate(), SigningKey.generate()
    blob = bytes(range(256)) * 20
    runtime = RuntimeInfo(name="ai-edge-litert", version="2.0")
    bench = BenchmarkResult(
        runtime=runtime, threads=2, init_ms=3.0, first_inference_ms=1.0, warmup_runs=3,
        warmup_mean_ms=0.5, latency_ms=LatencyStats(count=50, mean=0.4, std=0.1, min=0.3,
                                                    max=0.9, p50=0.4, p90=0.6, p99=0.8),
        peak_memory_mb=40.0, rss_before_mb=30.0, measured_seconds=0.2)
    checks = CheckResults(count=24, clean_accuracy=1.0, robust_accuracy={"fgsm@0.05": 0.9},
                          min_robust_accuracy=0.9, agreement=1.0, max_abs_deviation=0.0)
    manifest = host.sign(Manifest(deployment_id="d-1", device_id="pi-1",
                                  model=Artifact.of(blob, 1024), probes=Artifact.of(blob[:999]),
                                  thresholds=Thresholds(max_p90_ms=10, min_agreement=0.9)))
    return {
        "manifest": manifest.to_json(),
        "cancel": host.sign(Cancel(deployment_id="d-1", device_id="pi-1")).to_json(),
        "status": device.sign_device(Status(device_id="pi-1", online=True, runtime=runtime,
                                            agent_version="0.1.0")).to_json(),
        "need": device.sign_device(ChunkRequest(device_id="pi-1", deployment_id="d-1",
                                                artifact=manifest.model.sha256,
                                                ranges=[(0, 2), (4, 5)], have=3)).to_json(),
        "report": device.sign_device(Report(
            device_id="pi-1", deployment_id="d-1", manifest_sha256=manifest.digest,
            state="active", final=True, runtime=runtime, benchmark=bench, checks=checks,
            transfer=TransferStats(bytes=5120, chunks=5, seconds=0.1))).to_json(),
    }


@pytest.mark.parametrize("name", sorted(contract.MESSAGES))
def test_published_schemas_accept_real_messages_and_refuse_bad_ones(name):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((DOCS / "schemas" / f"{name}.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    message = json.loads(_samples()[name])
    assert list(validator.iter_errors(message)) == []
    assert not validator.is_valid({**message, "surprise": 1})  # unknown fields are refused
    assert not validator.is_valid({**message, "protocol": 1})
    if name == "need":
        assert not validator.is_valid({**message, "ranges": [[0, 1, 2]]})
