"""What the web dashboard costs (issue 14, "Measure"); prints numbers, asserts nothing.

An appliance with the dashboard; 100 charge points sending MeterValues back to back
(tests/benchmark.py's load) without dashboards, then with 20 dashboards streaming
(`/api/events`, what an open overview page holds); and RSS idle with [web] on and off.

    .venv/bin/python tests/bench_web.py
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import benchmark

from conftest import start_appliance_process

WEB_PORT = re.compile(r"web dashboard and API on https?://[^:]+:(\d+)/")
#: page loads per first-paint measurement (the median is reported)
PAINTS = 7


def first_paint_ms(url: str) -> dict[str, float] | None:
    """Time to first contentful paint of `url` in headless Chromium (Debian's, as the
    browser tests use): the first load (a fresh profile: nothing cached) and the median
    of PAINTS reloads. None without chromium/chromedriver or selenium."""
    import shutil
    import statistics

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    if chromium is None or chromedriver is None:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    script = (
        "const p = performance.getEntriesByName('first-contentful-paint')[0];"
        "return p ? p.startTime : null"
    )
    try:
        paints = []
        for _ in range(PAINTS + 1):
            driver.get(url)
            paint = None
            for _ in range(50):  # the entry appears once painted
                paint = driver.execute_script(script)
                if paint is not None:
                    break
                time.sleep(0.05)
            paints.append(paint)
    finally:
        driver.quit()
    return {"first_load": round(paints[0], 1), "median": round(statistics.median(paints[1:]), 1)}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def dashboards(url: str, count: int, stop: threading.Event, events: list[int]) -> list:
    def follow() -> None:
        with httpx.Client(timeout=None) as client, client.stream("GET", url) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(1)
                if stop.is_set():
                    return

    threads = [threading.Thread(target=follow, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-web-"))
    results: dict[str, object] = {}
    for name, extra in (("web_off", "[web]\nenabled = false\n"), ("web_on", "")):
        appliance = start_appliance_process(folder / name, extra)
        time.sleep(3)
        results[f"rss_idle_kb_{name}"] = rss_kb(appliance.proc.pid)
        if name == "web_off":
            appliance.stop()
            continue
        port = int(WEB_PORT.search(appliance.log()).group(1))
        started = time.perf_counter()
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        results["overview_html_ms"] = round((time.perf_counter() - started) * 1000, 1)
        results["overview_bytes"] = len(page.content)
        results["overview_first_paint_ms_no_charge_points"] = first_paint_ms(
            f"http://127.0.0.1:{port}/"
        )
        url = appliance.url
        load = asyncio.run(benchmark._load(url, 100, 8))
        # the load's 100 charge points are listed now
        overview = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        results["overview_bytes_100_charge_points"] = len(overview.content)
        results["overview_first_paint_ms_100_charge_points"] = first_paint_ms(
            f"http://127.0.0.1:{port}/"
        )
        results["p99_ms_100_cps_no_dashboard"] = load["p99_ms"]
        results["calls_per_s_no_dashboard"] = load["calls_per_s"]
        results["rss_kb_after_load_no_dashboard"] = rss_kb(appliance.proc.pid)
        stop, events = threading.Event(), []
        dashboards(f"http://127.0.0.1:{port}/api/events", 20, stop, events)
        time.sleep(2)
        results["rss_kb_20_dashboards_idle"] = rss_kb(appliance.proc.pid)
        load = asyncio.run(benchmark._load(url, 100, 8))
        results["p99_ms_100_cps_20_dashboards"] = load["p99_ms"]
        results["calls_per_s_20_dashboards"] = load["calls_per_s"]
        results["rss_kb_20_dashboards_under_load"] = rss_kb(appliance.proc.pid)
        results["events_received_by_dashboards"] = len(events)
        stop.set()
        appliance.stop()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
