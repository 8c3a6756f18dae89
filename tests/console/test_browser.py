"""The console in a real headless Chromium, over a real rollout to simulated devices.

The rollout runs against a real Mosquitto (fixture) and the fleet simulator;
the console is served by uvicorn; Selenium waits for DOM conditions.
``PAODING_CONSOLE_SHOTS=DIR`` also saves each page's screenshot to DIR.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from browser import chromium, chromium_paths, serve
from consolehelp import CALIBRATING, calibrate, observed, small_models
from fleetsim import Simulator, device_ids, simulated_key
from mosquitto import free_port

from console.app import BAD_TOKEN, create_app
from core.mqtt import Broker
from core.signing import SigningKey, TrustStore
from fleet.orchestrator import run_rollout
from fleet.registry import Registry
from fleet.rollout import WavePolicy
from hostcli.console import rollout_starter
from hostcli.lineage import record

pytestmark = [pytest.mark.broker, pytest.mark.slow]
if chromium_paths() is None:
    pytest.skip("chromium and chromium-driver (Debian packages) are not installed: "
                "scripts/test.sh installs them", allow_module_level=True)
pytest.importorskip("selenium")

PROFILE = "raspberry-pi-4"
TOKEN = "k" * 43


def shoot(driver, name: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("PAODING_CONSOLE_SHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out / f"console-{name}.png"))
    assert (out / f"console-{name}.png").stat().st_size > 1000


def test_console_follows_a_real_rollout(broker, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    host_key = SigningKey.generate()
    ids = device_ids(24, prefix="pi")
    db = tmp_path / "fleet.sqlite"
    model = os.urandom(120_000)
    planned, waved, release = threading.Event(), threading.Event(), threading.Event()
    found: dict = {}

    def progress(event: str, info: dict) -> None:
        if event == "plan":
            found["rollout_id"] = info["rollout_id"]
            planned.set()
        elif event == "wave" and info["wave"] == 0:
            waved.set()
            assert release.wait(120), "the browser never saw the rollout running"

    sim = Simulator(Broker(port=broker.port), ids, profile=PROFILE, step_s=0.02,
                    fail=ids[5:6], trust=TrustStore([host_key.public_key()]))
    sim.start()
    sim.wait_born()
    with sim, Registry(db) as reg:
        for d in ids:
            reg.set_identity(d, PROFILE, simulated_key(d).public_key().public_pem().decode(), d)
        rollout = threading.Thread(target=lambda: found.setdefault("result", run_rollout(
            {PROFILE: model}, Broker(port=broker.port), reg, key=host_key, progress=progress,
            policy=WavePolicy(canary=3, growth=2, max_failure_rate=0.5, timeout_s=60),
            discover_s=0.5)), daemon=True)
        rollout.start()
        assert waved.wait(60), "the rollout never started its first wave"
        rid = found["rollout_id"]
        starter = rollout_starter(str(db), Broker(port=broker.port), host_key,
                                  policy=WavePolicy(canary=6, growth=3, max_failure_rate=0.5,
                                                    timeout_s=60), discover_s=0.5)
        app = create_app(db, token=TOKEN, starter=starter)
        with serve(app, free_port()) as base, chromium() as driver:
            wait = WebDriverWait(driver, 90)
            # the rollout page while wave 0 is held: running, devices pending
            driver.get(f"{base}/rollout/{rid}")
            wait.until(lambda d: d.find_element(By.ID, "state").text == "running")
            assert "pending" in driver.find_element(By.ID, "devices").text
            driver.execute_script("window.__sameDocument = 'yes';")
            shoot(driver, "rollout-running", tmp_path)
            release.set()
            # ... then it moves to done in the same document (no reload), row by row
            wait.until(lambda d: d.find_element(By.ID, "state").text == "done")
            wait.until(lambda d: "rolled_back" in d.find_element(By.ID, "devices").text)
            assert driver.execute_script("return window.__sameDocument") == "yes"
            assert int(driver.find_element(By.ID, "rollout").get_attribute(
                "data-updates")) >= 2
            rows = driver.find_elements(By.CSS_SELECTOR, "#devices tbody tr")
            assert len(rows) == 24
            rollout.join(60)
            assert found["result"].decision.value == "done"
            assert driver.find_element(By.ID, "reason").text == found["result"].reason
            shoot(driver, "rollout", tmp_path)
            # an action without the token is refused, with the reason shown in the page
            driver.find_element(By.CSS_SELECTOR, "form[data-action] button").click()
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".action-result").text
                       not in ("", "…"))
            assert driver.find_element(By.CSS_SELECTOR, ".action-result").text == BAD_TOKEN
            # a second model, started from its page with the token: each device then has
            # two deployments
            model2 = tmp_path / "model.tflite"
            model2.write_bytes(os.urandom(90_000))
            sha = hashlib.sha256(model2.read_bytes()).hexdigest()
            record(str(db), [
                ("prune", "5" * 64, "6" * 64, {"source": "digits_cnn.keras", "mode": "paoding",
                                               "target": 0.5, "seed": 0, "fidelity": 0.93,
                                               "accuracy": 0.981, "export": "keras"}),
                ("tune", "6" * 64, sha, {"source": "pruned.keras", "profile": PROFILE,
                                         "key": "paoding/s0/r0.30/int8", "mode": "paoding",
                                         "seed": 0, "ratio": 0.3, "export": "int8",
                                         "accuracy": 0.975, "robust": 0.81,
                                         "predicted_p90_ms": 1.4, "predicted_memory_mb": 0.9,
                                         "outcome": "predicted", "path": str(model2)})])
            driver.get(f"{base}/model/{sha}")
            form = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "form[data-action]"))
            form.find_element(By.NAME, "token").send_keys(TOKEN)
            form.find_element(By.TAG_NAME, "button").click()
            follow = wait.until(lambda d: d.find_element(By.LINK_TEXT, "follow it"))
            assert form.find_element(By.CSS_SELECTOR, ".action-result").text.startswith(
                "rollout r")
            follow.click()
            wait.until(lambda d: d.find_element(By.ID, "state").text == "done")
            assert driver.find_element(By.ID, "failed").text == "1 of 24 settled (4%)"
            # the fleet page lists the devices
            driver.get(f"{base}/fleet")
            wait.until(lambda d: d.find_element(By.ID, "count-total").text == "24")
            listed = {r.get_attribute("data-device") for r in
                      driver.find_elements(By.CSS_SELECTOR, "#devices tr[data-device]")}
            assert listed == set(ids)
            shoot(driver, "fleet", tmp_path)
            # a device page shows the latency chart with the device's measurement
            driver.get(f"{base}/device/{ids[0]}")
            chart = wait.until(lambda d: d.find_element(By.ID, "latency-chart"))
            assert len(chart.find_elements(By.CSS_SELECTOR, "circle.p90")) == 2
            assert chart.find_elements(By.CSS_SELECTOR, "line.budget")
            assert chart.find_elements(By.CSS_SELECTOR, "rect.predicted")
            shoot(driver, "device", tmp_path)
            # the model page: lineage down to the devices running it
            driver.get(f"{base}/model/{sha}")
            lineage = wait.until(lambda d: d.find_element(By.ID, "lineage"))
            assert "tuner choice" in lineage.text and "prune run" in lineage.text
            assert driver.find_element(By.ID, "running-count").text == "23"
            shoot(driver, "model", tmp_path)


def test_profile_page_shows_predicted_against_measured(tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pytest.importorskip("keras")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("PAODING_PROFILES", raising=False)
    db = tmp_path / "fleet.sqlite"
    observed(db, small_models())
    new = calibrate(db)
    with serve(create_app(db), free_port()) as base, chromium() as driver:
        wait = WebDriverWait(driver, 60)
        driver.get(f"{base}/fleet")
        wait.until(lambda d: d.find_element(By.ID, "profiles-link")).click()
        wait.until(lambda d: d.find_element(By.LINK_TEXT, CALIBRATING)).click()
        chart = wait.until(lambda d: d.find_element(By.ID, "calibration-chart"))
        assert len(chart.find_elements(By.CSS_SELECTOR, "circle.before")) == 3
        assert len(chart.find_elements(By.CSS_SELECTOR, "circle.after")) == 3
        assert chart.find_elements(By.CSS_SELECTOR, "line.diagonal")
        assert driver.find_element(By.ID, "in-use").text == (
            f"calibrated {new.latency.calibrated_at[:10]} from 3 reports")
        assert driver.find_element(By.ID, "error-before").text.startswith("33.3%")
        shoot(driver, "profile", tmp_path)
