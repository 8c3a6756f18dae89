"""The protocol as a published contract: JSON Schemas and an AsyncAPI 3.0 document.

Both are generated from ``core.protocol`` (the pydantic models, topics and
limits), so the document cannot drift from the code: ``python -m
core.contract`` writes ``docs/schemas/*.json`` and ``docs/asyncapi.yaml``,
``--check`` fails naming every file that differs (a test runs it). The
schemas are JSON Schema draft-07, the dialect AsyncAPI tools understand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from core import protocol as p

SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
SCHEMA_FORMAT = "application/schema+json;version=draft-07"
ASYNCAPI_FILE = "asyncapi.yaml"
SCHEMA_DIR = "schemas"

# message name -> (model, what it is)
MESSAGES: dict[str, tuple[type[p.WireModel], str]] = {
    "manifest": (p.Manifest, "A deployment, signed by the host key."),
    "cancel": (p.Cancel, "The host ends a deployment still in its transfer (signed)."),
    "status": (p.Status, "The device's retained status: its birth message, and its Last Will "
                         "with online=false (signed by the device key)."),
    "need": (p.ChunkRequest, "The chunks a device lacks, as half-open [start, end) ranges "
                             "(signed by the device key)."),
    "report": (p.Report, "One step of a deployment, or an error about a refused message "
                         "(signed by the device key)."),
}


def _draft07(node: Any) -> Any:
    """pydantic's 2020-12 output in draft-07 terms (tuples: ``prefixItems`` -> ``items``)."""
    if isinstance(node, dict):
        out = {k: _draft07(v) for k, v in node.items()}
        if "prefixItems" in out:
            out["items"] = out.pop("prefixItems")
            out["additionalItems"] = False
        if "$defs" in out:
            out["definitions"] = out.pop("$defs")
        if isinstance(out.get("$ref"), str):
            out["$ref"] = out["$ref"].replace("#/$defs/", "#/definitions/")
        return out
    if isinstance(node, list):
        return [_draft07(v) for v in node]
    return node


def message_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft-07) of one JSON message, as a device or host must send it."""
    model, _what = MESSAGES[name]
    schema = _draft07(model.model_json_schema(mode="validation"))
    schema = {"$schema": SCHEMA_DIALECT, "$id": f"{name}.json", **schema}
    schema["description"] = " ".join((model.__doc__ or "").split())
    return schema


_ID = "the device id (1-64 of A-Z a-z 0-9 _ . -, not starting with _ . -)"
_SHA = "the artifact's sha256 (64 lower-case hex digits)"
_INDEX = "the chunk index (ASCII digits, from 0)"


def _op(action: str, channel: str, message: str, role: str, summary: str, *,
        retain: bool) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
        "summary": summary,
        "tags": [{"name": role}],
        "bindings": {"mqtt": {"qos": 1, "retain": retain, "bindingVersion": "0.2.0"}},
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of protocol version ``PROTOCOL_VERSION``."""
    devices = f"{p.TOPIC_ROOT}/{{deviceId}}"
    json_messages = {
        name: {
            "name": name,
            "title": model.__name__,
            "summary": what,
            "contentType": "application/json",
            "payload": {"schemaFormat": SCHEMA_FORMAT,
                        "schema": {"$ref": f"{SCHEMA_DIR}/{name}.json"}},
            "bindings": {"mqtt": {"payloadFormatIndicator": 1, "bindingVersion": "0.2.0"}},
        }
        for name, (model, what) in MESSAGES.items()
    }
    chunk = {
        "name": "chunk",
        "title": "Chunk",
        "summary": (f"Raw bytes of one chunk of an artifact ({p.MIN_CHUNK_BYTES}.."
                    f"{p.MAX_CHUNK_BYTES} bytes, the last may be shorter); the receiver "
                    "checks it against chunk_sha256[index] of the signed manifest before "
                    "writing it. An empty retained message clears the chunk."),
        "contentType": "application/octet-stream",
        "payload": {"type": "string", "format": "binary", "maxLength": p.MAX_CHUNK_BYTES},
        "bindings": {"mqtt": {"payloadFormatIndicator": 0, "bindingVersion": "0.2.0"}},
    }
    device_channels = {
        "status": "Retained status of a device; its Last Will (a signed Status with "
                  "online=false, made at start) replaces it when the connection drops.",
        "manifest": "Deployments for this device.",
        "cancel": "Cancels of this device's deployment in progress.",
        "need": "Chunk requests from this device (after a stall, a reconnect or a restart).",
        "report": "Reports of this device; final reports are retained.",
    }
    channels: dict[str, Any] = {
        kind: {
            "address": f"{devices}/{kind}",
            "description": what,
            "parameters": {"deviceId": {"description": _ID}},
            "messages": {kind: {"$ref": f"#/components/messages/{kind}"}},
        }
        for kind, what in device_channels.items()
    }
    channels["chunk"] = {
        "address": f"{p.ARTIFACT_ROOT}/{{sha256}}/{{index}}",
        "description": "Artifact chunks, published once per artifact (retained while a "
                       "deployment needs them) and shared by every device that installs it.",
        "parameters": {"sha256": {"description": _SHA},
                       "index": {"description": _INDEX}},
        "messages": {"chunk": {"$ref": "#/components/messages/chunk"}},
    }
    operations = {
        "device.publishStatus": _op("send", "status", "status", "device",
                                    "Publish the birth status on connect and after each "
                                    "deployment; the Last Will says offline.", retain=True),
        "device.receiveManifest": _op("receive", "manifest", "manifest", "device",
                                      "Accept (signature, expiry, replay, release) or refuse "
                                      "with a report.", retain=False),
        "device.receiveCancel": _op("receive", "cancel", "cancel", "device",
                                    "End a deployment still in its transfer.", retain=False),
        "device.receiveChunk": _op("receive", "chunk", "chunk", "device",
                                   "Receive and verify chunks of the artifacts it needs.",
                                   retain=True),
        "device.requestChunks": _op("send", "need", "need", "device",
                                    "Ask for the missing chunks.", retain=False),
        "device.publishReport": _op("send", "report", "report", "device",
                                    "Report each state; retain the final one.", retain=True),
        "host.receiveStatus": _op("receive", "status", "status", "host",
                                  "Track devices (the intake filter is "
                                  f"{p.DEVICE_FILTER}).", retain=True),
        "host.sendManifest": _op("send", "manifest", "manifest", "host",
                                 "Deploy a model (sent again until the device answers).",
                                 retain=False),
        "host.sendCancel": _op("send", "cancel", "cancel", "host",
                               "Cancel a deployment in its transfer.", retain=False),
        "host.publishChunk": _op("send", "chunk", "chunk", "host",
                                 "Publish every chunk retained; clear them when no "
                                 "deployment needs them.", retain=True),
        "host.receiveNeed": _op("receive", "need", "need", "host",
                                "Serve the requested chunks again (rate-limited).",
                                retain=False),
        "host.receiveReport": _op("receive", "report", "report", "host",
                                  "Accept signed reports that answer its own manifest.",
                                  retain=True),
    }
    return {
        "asyncapi": "3.0.0",
        "id": "urn:paoding-edge:agent-protocol:v2",
        "info": {
            "title": "Paoding Edge device protocol",
            "version": f"{p.PROTOCOL_VERSION}.0.0",
            "description": (
                "The host deploys pruned TFLite models to device agents over any standard "
                "MQTT broker (3.1.1 or 5). Every JSON message carries "
                f"\"protocol\": {p.PROTOCOL_VERSION}, forbids unknown fields, non-finite "
                f"numbers and control characters, and is at most {p.MAX_MESSAGE_BYTES} bytes. "
                "Host messages are signed with the host key (Ed25519 or HMAC-SHA256), device "
                "messages with the device's enrolled Ed25519 key; a signature covers the "
                "message without its signature field as JSON with sorted keys and no spaces. "
                "Operations are tagged with the role that performs them (host, device). "
                "Generated from core/protocol.py; prose in docs/protocol.md; "
                "`paoding-edge conformance` checks an agent against it."),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "broker.example:8883",
                "protocol": "mqtts",
                "description": "Any standard MQTT broker; TLS with username/password (or a "
                               "client certificate); per-device ACL; a packet limit of at "
                               f"least {p.MAX_PACKET_BYTES} bytes.",
                "security": [{"$ref": "#/components/securitySchemes/userPassword"},
                             {"$ref": "#/components/securitySchemes/clientCertificate"}],
                "bindings": {"mqtt": {
                    "cleanSession": False, "keepAlive": 30,
                    "maximumPacketSize": p.MAX_PACKET_BYTES,
                    "lastWill": {"topic": f"{devices}/status", "qos": 1, "retain": True,
                                 "message": "a signed Status with online=false"},
                    "bindingVersion": "0.2.0"}},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {**json_messages, "chunk": chunk},
            "securitySchemes": {
                "userPassword": {"type": "userPassword",
                                 "description": "Broker credentials per device (enrolment)."},
                "clientCertificate": {"type": "X509",
                                      "description": "Mutual TLS instead of a password."},
            },
        },
    }


def render() -> dict[str, str]:
    """Every generated file (path relative to docs/) and its text."""
    files = {f"{SCHEMA_DIR}/{name}.json": json.dumps(message_schema(name), indent=2) + "\n"
             for name in MESSAGES}
    header = ("# Generated from core/protocol.py by `python -m core.contract`: do not edit.\n")
    files[ASYNCAPI_FILE] = header + yaml.safe_dump(asyncapi_document(), sort_keys=False,
                                                   width=100, allow_unicode=False)
    return files


def differences(docs: Path) -> list[str]:
    """The generated files that are missing or differ under ``docs``."""
    return [rel for rel, text in render().items()
            if not (docs / rel).is_file() or (docs / rel).read_text() != text]


def write(docs: Path) -> list[str]:
    """Write every generated file under ``docs``; return those that changed."""
    changed = differences(docs)
    for rel, text in render().items():
        if rel in changed:
            (docs / rel).parent.mkdir(parents=True, exist_ok=True)
            (docs / rel).write_text(text)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.contract", description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs"),
                    help="the docs directory (default: this checkout's)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 naming the files that differ")
    args = ap.parse_args(argv)
    docs = Path(args.docs)
    if args.check:
        diff = differences(docs)
        for rel in diff:
            print(f"{docs / rel} differs from core/protocol.py: run python -m core.contract",
                  file=sys.stderr)
        return 1 if diff else 0
    for rel in write(docs):
        print(f"wrote {docs / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
