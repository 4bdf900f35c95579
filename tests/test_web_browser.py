"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium
(chromium + chromium-driver; `.ci/run` installs them), against a real appliance and a
charge point of `ocpp-appliance simulate` (README "Web dashboard and API")."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_controls import V16, Station, booted, stamp
from test_web_api import PASSWORD, web_config, web_url

import conftest

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
#: where the screenshots go: the test's own folder, or with UPDATE_SCREENSHOTS=1 the ones
#: the README shows (a test run never changes the repository unasked)
README_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def chromium(folder: Path, timezone: str | None = None) -> webdriver.Chrome:
    """Headless Chromium; with `timezone` (TZ) the whole browser lives in that zone, as
    a viewer's does."""
    assert CHROMIUM is not None  # the tests that call this skip without it
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={folder / 'chromium'}",
        "--window-size=1100,1400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = {**os.environ, "TZ": timezone} if timezone else None
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, env=env))
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path)
    yield driver
    driver.quit()


def log_in(driver, base: str) -> None:
    """The login page, as a person uses it; back on the overview with "Log out"."""
    driver.get(f"{base}/login")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-button").click()
    WebDriverWait(driver, 30, poll_frequency=0.2).until(lambda d: d.find_elements(By.ID, "logout"))


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def test_dashboard_in_a_browser(start_appliance, browser, tmp_path):
    shots = README_SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    appliance = start_appliance(web_config())
    base = web_url(appliance)
    simulator = subprocess.Popen(
        [
            *conftest.appliance_command(),
            "simulate",
            "--url",
            appliance.url,
            "--count",
            "1",
            "--speed",
            "30",
            "--meter-interval",
            "10",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)
        log_in(browser, base)

        # the overview: the simulated charge point's power changes without a reload
        browser.get(f"{base}/")
        card = '[data-identity="SIM001"] [data-field="power_w"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, card))
        browser.execute_script("window.notReloaded = true")
        first = wait.until(lambda d: (p := number(text(d, card))) and p > 0 and p)
        wait.until(lambda d: number(text(d, card)) not in (None, first))
        assert browser.execute_script("return window.notReloaded") is True
        lasting = text(browser, '[data-identity="SIM001"] [data-field="tx_duration"]')
        assert re.fullmatch(r"\d+ (s|min)", lasting), lasting  # how long the session runs
        shots.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shots / "overview.png"))

        # the charge point's page: a chart; set the charge limit, see the power fall
        browser.get(f"{base}/cp/SIM001")
        wait.until(lambda d: int(d.find_element(By.ID, "chart").get_attribute("data-points") or 0))
        power = wait.until(lambda d: (p := number(text(d, '#cp [data-field="power_w"]'))) and p)
        assert power > 3000, power
        browser.find_element(By.ID, "limit").send_keys("6")
        browser.find_element(By.ID, "limit-phases").send_keys("1")
        browser.find_element(By.ID, "set-limit").click()
        wait.until(
            lambda d: (
                "done" in text(d, "#outcome")
                or "bad" in d.find_element(By.ID, "outcome").get_attribute("class")
            )
        )
        assert "done" in text(browser, "#outcome"), text(browser, "#outcome")
        wait.until(lambda d: text(d, '#cp [data-field="charge_limit"]') == "6 A")
        # 6 A on one phase at 230 V: 1380 W at most, in the chart too
        wait.until(
            lambda d: (
                (last := number(d.find_element(By.ID, "chart").get_attribute("data-last") or "x"))
                is not None
                and last <= 1400
            )
        )
        browser.save_screenshot(str(shots / "charge_point.png"))

        # the sessions CSV
        href = browser.find_element(By.ID, "csv").get_attribute("href")
        csv_text = browser.execute_script("return await (await fetch(arguments[0])).text()", href)
        assert csv_text.startswith("identity,transaction_id")

        # availability: inoperative (Scheduled while charging), then the state follows
        browser.find_element(By.ID, "inoperative").click()
        wait.until(
            lambda d: (
                text(d, "#outcome").startswith("control.availability: ")
                and "waiting" not in text(d, "#outcome")
            )
        )
        WebDriverWait(browser, 120, poll_frequency=0.5).until(
            lambda d: text(d, '#cp [data-field="state"]') == "unavailable"
        )

        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
    except TimeoutException as exc:
        # a wait that ran out says what the page and the appliance showed (CI races)
        page = browser.find_element(By.TAG_NAME, "body").text[:1500]
        raise AssertionError(
            f"timed out on {browser.current_url}; the page: {page!r};"
            f" log: {appliance.log()[-3000:]}"
        ) from exc
    finally:
        simulator.terminate()
        simulator.wait(10)
    time.sleep(0)


def phase_power(station: Station, watts: tuple[int, int, int]) -> None:
    """A 1.6 MeterValues with the total and the power of each phase (L1-N as some
    chargers say it; the chart keeps their series name)."""
    sampled = [{"value": str(sum(watts)), "measurand": "Power.Active.Import", "unit": "W"}]
    for phase, value in zip(("L1-N", "L2-N", "L3-N"), watts, strict=True):
        sampled.append(
            {"value": str(value), "measurand": "Power.Active.Import", "unit": "W", "phase": phase}
        )
    station.send(
        station.call.MeterValues(
            connector_id=1, meter_value=[{"timestamp": stamp(), "sampled_value": sampled}]
        )
    )


def test_the_chart_follows_each_phase_live(start_appliance, browser):
    """README "Web dashboard and API": the power chart per phase where reported — the
    series from `meter_values` first, then each phase's new value live, no reload."""
    appliance = start_appliance(web_config())
    with booted(Station(appliance, "CP-3P", V16).open()) as station:
        phase_power(station, (3600, 3500, 3400))
        appliance.wait_rows("SELECT 1 FROM charge_point_status WHERE power_l3 = 3400")
        browser.get(f"{web_url(appliance)}/cp/CP-3P")
        wait = WebDriverWait(browser, 30, poll_frequency=0.2)

        def newest(driver) -> dict:
            found = driver.find_element(By.ID, "chart").get_attribute("data-newest")
            return json.loads(found) if found else {}

        first = {"L1-N": 3600, "L2-N": 3500, "L3-N": 3400, "total": 10500}
        wait.until(lambda d: newest(d) == first)
        browser.execute_script("window.notReloaded = true")
        time.sleep(1.1)  # the chart's live points are per second: a new one, not the same
        phase_power(station, (2300, 2200, 2100))
        wait.until(lambda d: newest(d) == {"L1-N": 2300, "L2-N": 2200, "L3-N": 2100, "total": 6600})
        assert browser.execute_script("return window.notReloaded") is True
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []


SECRET = "0A1B2C3D4E5F60718293A4B5C6D7E8F9"


def test_every_control_from_the_page(start_appliance, browser):
    """README "Web dashboard and API": the page's controls reach a third-party charge
    point (the `ocpp` package) through the same queue as `ocpp-appliance set`: a writable
    configuration value (read-only ones are not offered, a secret is never shown), start
    and stop, soft and hard reset after a confirmation (dismissed: nothing is sent)."""
    appliance = start_appliance("[device_model]\nfetch_on_boot = true\n" + web_config())
    station = Station(appliance, "CP-UI", V16)
    station.answers["GetConfiguration"] = {
        "configuration_key": [
            {"key": "AuthorizationKey", "readonly": False, "value": SECRET},
            {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
            {"key": "NumberOfConnectors", "readonly": True, "value": "1"},
        ]
    }
    with booted(station.open()):
        assert station.take_one()[0] == "GetConfiguration"
        appliance.wait_rows("SELECT 1 FROM states WHERE id = 'CP-UI.config.HeartbeatInterval'")
        started = station.send(station.call.StartTransaction(1, "CAR", 1000, stamp()))
        base = web_url(appliance)
        wait = WebDriverWait(browser, 30, poll_frequency=0.2)
        log_in(browser, base)
        browser.get(f"{base}/cp/CP-UI")
        assert SECRET not in browser.page_source

        def outcome() -> str:
            wait.until(lambda d: text(d, "#outcome") and "waiting" not in text(d, "#outcome"))
            return text(browser, "#outcome")

        # configuration: only what the charge point says is writable
        rows = {
            row.find_element(By.CSS_SELECTOR, "td").text: row
            for row in browser.find_elements(By.CSS_SELECTOR, "#config tr")
        }
        assert "config.HeartbeatInterval" in rows and "config.NumberOfConnectors" not in rows
        # a secret's field is empty and needs a value: "Set" alone sends nothing
        secret = rows["config.AuthorizationKey"]
        assert secret.find_element(By.NAME, "value").get_attribute("value") == ""
        secret.find_element(By.TAG_NAME, "button").click()
        station.assert_quiet()
        field = rows["config.HeartbeatInterval"].find_element(By.NAME, "value")
        assert field.get_attribute("value") == "300"
        field.clear()
        field.send_keys("120")
        rows["config.HeartbeatInterval"].find_element(By.TAG_NAME, "button").click()
        assert outcome() == "config.HeartbeatInterval: done"
        assert station.take_one() == (
            "ChangeConfiguration",
            {"key": "HeartbeatInterval", "value": "120"},
        )

        browser.find_element(By.ID, "stop").click()
        assert outcome().endswith(": done")
        assert station.take_one() == (
            "RemoteStopTransaction",
            {"transactionId": started.transaction_id},
        )
        browser.find_element(By.ID, "id-token").send_keys("UI-TAG")
        browser.find_element(By.ID, "start").click()
        assert outcome().endswith(": done")
        action, payload = station.take_one()
        assert action == "RemoteStartTransaction" and payload["idTag"] == "UI-TAG"

        # a reset asks first; dismissed, nothing is sent
        browser.find_element(By.ID, "soft-reset").click()
        alert = wait.until(expected_conditions.alert_is_present())
        assert "Soft reset CP-UI?" in alert.text
        alert.dismiss()
        station.assert_quiet()
        for button, kind in (("soft-reset", "Soft"), ("hard-reset", "Hard")):
            browser.find_element(By.ID, button).click()
            wait.until(expected_conditions.alert_is_present()).accept()
            assert outcome().endswith(": done")
            assert station.take_one() == ("Reset", {"type": kind})
        assert SECRET not in browser.page_source
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
