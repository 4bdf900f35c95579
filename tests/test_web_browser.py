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
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
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


@pytest.fixture
def browser(tmp_path):
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
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1100,1400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


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
        # log in
        browser.get(f"{base}/login")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login-button").click()
        wait.until(lambda d: d.find_elements(By.ID, "logout"))

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
