"""The console app in-process (Starlette's TestClient): pages, JSON twins, events, the gate."""

from __future__ import annotations

import json

import pytest
from consolehelp import MODEL, PROFILE, SOURCE, populate
from starlette.testclient import TestClient

from console.app import BAD_TOKEN, CROSS_SITE, NO_TOKEN, create_app
from fleet.registry import Registry

TOKEN = "t" * 43
BASE = "http://127.0.0.1"


@pytest.fixture
def db(registry_target):
    with Registry(registry_target) as reg:
        populate(reg)
    return registry_target


@pytest.fixture
def client(db):
    with TestClient(create_app(db), base_url=BASE) as c:
        yield c


@pytest.fixture
def actor(db):
    with TestClient(create_app(db, token=TOKEN), base_url=BASE) as c:
        yield c


def test_fleet_counts_and_pages_come_from_the_server(client):
    d = client.get("/fleet.json").json()
    assert d["total"] == 120 and d["matching"] == 120 and d["pages"] == 3
    assert d["states"] == {"online": 102, "updating": 0, "offline": 18}
    assert d["by_profile"][PROFILE] == {"online": 42, "updating": 0, "offline": 18}
    assert d["by_profile"]["android-midrange"]["online"] == 60
    assert d["models"] == [{"sha256": MODEL, "devices": 5}]
    assert [r["device_id"] for r in d["devices"][:2]] == ["phone-0000", "phone-0001"]
    last = client.get("/fleet.json?page=3").json()
    assert len(last["devices"]) == 20 and last["devices"][-1]["device_id"] == "pi-0059"
    off = client.get(f"/fleet.json?profile={PROFILE}&state=offline").json()
    assert off["matching"] == 18 and {r["state"] for r in off["devices"]} == {"offline"}
    page = client.get("/fleet")
    assert page.status_code == 200 and "phone-0000" in page.text and 'id="next"' in page.text
    assert client.get("/").url.path == "/fleet"


def test_bad_query_is_one_clear_message(client):
    r = client.get("/fleet.json?state=asleep")
    assert r.status_code == 400
    assert r.json() == {"error": "state must be one of online, updating, offline, got 'asleep'"}
    assert client.get("/fleet.json?page=x").json()["error"] == "page must be a number, got 'x'"
    r = client.get("/device/nobody")
    assert r.status_code == 404 and "no device &#39;nobody&#39; here" in r.text


def test_device_page_measured_predicted_and_budget(client):
    d = client.get("/device/pi-0001.json").json()
    assert d["device"]["active_sha"] == MODEL and d["device"]["enrolled"] is True
    assert d["budgets"]["p90_ms"] > 0
    (dep,) = d["deployments"]
    assert dep["measured"] == {"p50_ms": 11, "p90_ms": 13, "memory_mb": 40.0, "emulated": True}
    assert dep["predicted"] == {"p90_ms": 11.0, "memory_mb": 35.0}
    assert dep["checks"]["agreement"] == 0.97 and dep["reports"] == ["active"]
    html = client.get("/device/pi-0001").text
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="latency-chart"' in html
    assert 'class="point p90"' in html and 'class="budget"' in html
    svg = client.get("/device/pi-0001/latency.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml") and "<circle" in svg.text


def test_rollout_page_waves_threshold_and_reason(client):
    d = client.get("/rollout/r-done.json").json()
    assert d["state"] == "done" and d["reason"] == "every wave finished"
    assert d["abort_threshold"] == {"max_failure_rate": 0.2, "max_failures": None}
    assert [w["outcomes"] for w in d["waves"]] == [{"active": 2},
                                                    {"active": 3, "rolled_back": 1}]
    assert d["failed"] == 1 and d["settled"] == 6
    html = client.get("/rollout/r-done").text
    assert 'data-live="no"' in html and "failure rate above 0.2" in html
    assert client.get("/rollout/nope.json").status_code == 404


def test_model_page_lineage_from_source_to_devices(client):
    d = client.get(f"/model/{MODEL}.json").json()
    assert [s["kind"] for s in d["lineage"]] == ["prune", "tune"]
    assert d["lineage"][0]["source_sha256"] == SOURCE
    assert d["running_count"] == 5 and d["deployments"] == {"active": 5, "rolled_back": 1}
    html = client.get(f"/model/{MODEL}").text
    assert "prune run" in html and "tuner choice" in html and "fidelity 0.91" in html
    assert client.get(f"/model/{'e' * 64}.json").status_code == 404


def test_rollout_events_follow_the_record(db, client):
    with Registry(db) as reg:
        reg.create_rollout("r-live", {"waves": [["pi-0010"]], "policy": {}})
        reg.add_deployment("r-live-pi-0010", "pi-0010", MODEL, 1000, rollout_id="r-live")
        with client.stream("GET", "/rollout/r-live/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            events = []
            for line in lines:
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if len(events) == 1:  # the first snapshot is out: change the record
                        assert events[0]["state"] == "running"
                        assert events[0]["totals"] == {"pending": 1}
                        from fleet.rollout import Outcome

                        reg.settle([("r-live-pi-0010", Outcome.ACTIVE, "")])
                        reg.set_rollout_state("r-live", "done", "every wave finished")
                    elif events[-1]["state"] == "done":
                        break
    assert events[-1]["totals"] == {"active": 1} and events[-1]["reason"] == "every wave finished"


def test_actions_are_off_without_a_token(client, db):
    r = client.post("/rollout/r-done/abort", headers={"Accept": "application/json"})
    assert r.status_code == 403 and r.json() == {"ok": False, "message": NO_TOKEN}
    r = client.post("/device/pi-0001/revoke", data={"token": TOKEN})
    assert r.status_code == 403 and "actions are off" in r.text
    with Registry(db) as reg:
        assert reg.public_key("pi-0001") == "PEM"


def test_actions_need_the_token_and_the_same_origin(actor, db):
    js = {"Accept": "application/json"}
    assert actor.post("/device/pi-0001/revoke", headers=js).json()["message"] == BAD_TOKEN
    wrong = {**js, "X-Paoding-Token": "x" * 43}
    assert actor.post("/device/pi-0001/revoke", headers=wrong).status_code == 403
    cross = {**js, "X-Paoding-Token": TOKEN, "Origin": "http://evil.example"}
    assert actor.post("/device/pi-0001/revoke", headers=cross).json()["message"] == CROSS_SITE
    site = {**js, "X-Paoding-Token": TOKEN, "Sec-Fetch-Site": "cross-site"}
    assert actor.post("/device/pi-0001/revoke", headers=site).status_code == 403
    with Registry(db) as reg:
        assert reg.public_key("pi-0001") == "PEM"
    ok = actor.post("/device/pi-0001/revoke",
                    headers={**js, "X-Paoding-Token": TOKEN, "Origin": BASE})
    assert ok.status_code == 200 and ok.json()["message"] == "revoked pi-0001: public key removed"
    form = actor.post("/device/pi-0002/revoke", data={"token": TOKEN})
    assert form.status_code == 200 and "revoked pi-0002" in form.text
    with Registry(db) as reg:
        assert reg.public_key("pi-0001") is None and reg.public_key("pi-0002") is None
        reg.create_rollout("r-run", {"waves": [], "policy": {}})
    r = actor.post("/rollout/r-run/abort", headers={**js, "X-Paoding-Token": TOKEN})
    assert r.status_code == 200 and "abort requested" in r.json()["message"]
    with Registry(db) as reg:
        assert reg.rollout("r-run")["state"] == "aborting"
    r = actor.post("/rollout/r-done/abort", headers={**js, "X-Paoding-Token": TOKEN})
    assert r.status_code == 409 and r.json()["message"] == "rollout r-done is done, not in progress"


def test_other_hosts_are_refused(client):
    r = client.get("/fleet.json", headers={"Host": "attacker.example"})
    assert r.status_code == 400
