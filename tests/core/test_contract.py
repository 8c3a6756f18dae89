"""The published contract: generated schemas match core/protocol.py; the AsyncAPI parser accepts it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from core import contract
from core.protocol import Manifest

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
        pytest.skip("the AsyncAPI parser is not installed: npm ci --prefix scripts/asyncapi")
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
