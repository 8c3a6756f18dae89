"""Starting a rollout from the console: a real rollout to simulated devices on a real broker."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from consolehelp import populate
from fleetsim import Simulator, device_ids, simulated_key
from starlette.testclient import TestClient

from console.app import create_app
from core.mqtt import Broker
from core.signing import SigningKey, TrustStore
from fleet.registry import Registry
from fleet.rollout import WavePolicy
from hostcli.console import rollout_starter

pytestmark = pytest.mark.broker
TOKEN = "s" * 43
JS = {"Accept": "application/json", "X-Paoding-Token": TOKEN}
PROFILE = "raspberry-pi-4"


def test_a_token_holder_starts_a_rollout_of_a_model(broker, tmp_path):
    host_key = SigningKey.generate()
    ids = device_ids(8, prefix="pi")
    db = tmp_path / "fleet.sqlite"
    model = tmp_path / "model.tflite"
    model.write_bytes(os.urandom(50_000))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    with Registry(db) as reg:
        for d in ids:
            reg.set_identity(d, PROFILE, simulated_key(d).public_key().public_pem().decode(), d)
        reg.add_lineage("tune", "a" * 64, sha, {"profile": PROFILE, "path": str(model)})
    starter = rollout_starter(str(db), Broker(port=broker.port), host_key,
                              policy=WavePolicy(canary=2, growth=2, timeout_s=30),
                              discover_s=0.5)
    sim = Simulator(Broker(port=broker.port), ids, profile=PROFILE,
                    trust=TrustStore([host_key.public_key()]))
    sim.start()
    sim.wait_born()
    with sim, TestClient(create_app(db, token=TOKEN, starter=starter),
                         base_url="http://127.0.0.1") as client:
        bad = client.post(f"/model/{sha}/rollout", headers=JS, data={"profile": "toaster"})
        assert bad.status_code == 409
        assert bad.json()["message"] == "no device of profile 'toaster' in the fleet"
        r = client.post(f"/model/{sha}/rollout", headers=JS, data={"profile": PROFILE})
        assert r.status_code == 200, r.text
        message = r.json()["message"]
        rollout_id = message.split()[1]
        assert message == f"rollout {rollout_id} started: /rollout/{rollout_id}"
        last = None
        with client.stream("GET", f"/rollout/{rollout_id}/events") as events:
            for line in events.iter_lines():
                if line.startswith("data: ") and line != "data: {}":
                    last = json.loads(line[6:])
                if line == "event: end":
                    break
        assert last["state"] == "done" and last["totals"] == {"active": 8}
    with Registry(db) as reg:
        assert {d["active_sha"] for d in reg.device_rows()} == {sha}


def test_starting_needs_a_key_and_the_bytes(tmp_path):
    db = tmp_path / "fleet.sqlite"
    with Registry(db) as reg:
        populate(reg)
    with TestClient(create_app(db, token=TOKEN), base_url="http://127.0.0.1") as client:
        r = client.post(f"/model/{'c' * 64}/rollout", headers=JS,
                        data={"profile": "raspberry-pi-4"})
        assert r.status_code == 409 and r.json()["message"] == (
            "starting a rollout needs the console started with a signing key (--key) and its "
            "broker (--broker)")
    with TestClient(create_app(db, token=TOKEN, starter=lambda v: "never"),
                    base_url="http://127.0.0.1") as client:
        r = client.post(f"/model/{'c' * 64}/rollout", headers=JS,
                        data={"profile": "raspberry-pi-4"})
        assert r.status_code == 409 and r.json()["message"].startswith(
            "the bytes of model cccccccccccc are not at hand")
    with TestClient(create_app(db), base_url="http://127.0.0.1") as client:
        r = client.post(f"/model/{'c' * 64}/rollout", headers=JS, data={"profile": "x"})
        assert r.status_code == 403 and "actions are off" in r.json()["message"]
