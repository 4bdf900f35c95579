"""A soak (issue 27, point 6; README "A year unattended"): prints a table, asserts nothing.

`serve` with everything a box runs for months — the web dashboard (a browser-like event
stream open the whole time and the pages fetched every minute), MQTT to a real Mosquitto
with Home Assistant discovery and a subscriber taking everything, and retention that
really deletes (messages kept --keep-minutes, meter values twice that) — and
`ocpp-appliance simulate` charge points (a reading every --meter-interval seconds while
charging, sessions of 10–25 simulated minutes with a few idle minutes between, × --speed).
Every --sample seconds: RSS, open descriptors, threads of `serve`, the database and WAL
size, the rows of `messages` and `meter_values`, sessions so far. Then "growth": each
figure's change from the end of the warm-up (--warmup minutes) to the end.

    .venv/bin/python tests/bench_soak.py                 # 30 minutes, 100 charge points
    .venv/bin/python tests/bench_soak.py --minutes 3 --sample 20   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).parent))
from pg import free_port
from test_mqtt import PASSWORD, USER, Mosquitto

import conftest


def status_of(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            found[key] = int(value.split()[0])
    return found


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.exists() else 0.0


class Consumers:
    """What a dashboard and Home Assistant do all day: an event stream read to the end,
    the pages fetched now and then, every MQTT message taken."""

    def __init__(self, web: str, broker: Mosquitto) -> None:
        self.events = 0
        self.mqtt = 0
        self.pages = 0
        self.stop = threading.Event()
        self.web = web
        threading.Thread(target=self._stream, daemon=True).start()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="soak-ha")
        client.username_pw_set("homeassistant", "ha")
        client.on_connect = lambda c, *_: c.subscribe([("#", 0)])
        client.on_message = self._on_message
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        self.client = client

    def _on_message(self, *_: object) -> None:
        self.mqtt += 1

    def _stream(self) -> None:
        while not self.stop.is_set():
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream("GET", f"{self.web}/api/events", timeout=None) as response,
            ):
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        self.events += 1
                    if self.stop.is_set():
                        return
            time.sleep(1)

    def browse(self) -> None:
        with httpx.Client(base_url=self.web, timeout=30) as http:
            for path in ("/", "/cp/SOAK001", "/api/charge-points"):
                if http.get(path).status_code == 200:
                    self.pages += 1

    def close(self) -> None:
        self.stop.set()
        self.client.disconnect()
        self.client.loop_stop()


def count_rows(db: Path) -> tuple[int, int, int]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
        messages = c.execute("SELECT count(*) FROM messages").fetchone()[0]
        meter = c.execute("SELECT count(*) FROM meter_values").fetchone()[0]
        sessions = c.execute("SELECT count(*) FROM transactions").fetchone()[0]
    return messages, meter, sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--meter-interval", type=float, default=10)
    parser.add_argument("--speed", type=float, default=1)
    parser.add_argument("--sample", type=float, default=60, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=5, help="minutes before growth counts")
    parser.add_argument("--keep-minutes", type=float, default=10)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="ocpp-soak-"))
    broker = Mosquitto(folder / "broker")
    broker.start()
    port, web_port = free_port(), free_port()
    keep = args.keep_minutes / 1440
    config = folder / "appliance.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\ndatabase = "soak.db"\n'
        f"[storage]\nmessages_keep_days = {keep}\nmeter_values_keep_days = {2 * keep}\n"
        f'[web]\nhost = "127.0.0.1"\nport = {web_port}\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\nusername = "{USER}"\n'
        f'password = "{PASSWORD}"\n'
    )
    appliance = conftest.launch(
        ["--config", str(config)], folder / "server.log", database="soak.db"
    )
    pid = appliance.proc.pid
    web = f"http://127.0.0.1:{web_port}"
    consumers = Consumers(web, broker)
    seconds = args.minutes * 60
    simulator = subprocess.Popen(
        [*conftest.appliance_command(), "simulate", "--url", appliance.url,
         "--count", str(args.count), "--identity-prefix", "SOAK",
         "--meter-interval", str(args.meter_interval * args.speed), "--speed", str(args.speed),
         "--duration", str(seconds), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    header = ("min", "RSS MB", "peak MB", "fds", "threads", "db MB", "WAL MB",
              "messages", "meter_values", "sessions", "SSE events", "MQTT msgs")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    rows: list[tuple[float, ...]] = []
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        consumers.browse()
        proc = status_of(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        db = folder / "soak.db"
        row = (
            round(elapsed / 60, 1), round(proc["VmRSS"] / 1024, 1), round(proc["VmHWM"] / 1024, 1),
            fds, proc["Threads"], round(size_mb(db), 1), round(size_mb(Path(f"{db}-wal")), 1),
            *count_rows(db), consumers.events, consumers.mqtt,
        )  # fmt: skip
        rows.append(row)
        print("| " + " | ".join(str(v) for v in row) + " |", flush=True)
        if elapsed >= seconds or simulator.poll() is not None:
            break
        time.sleep(max(0.0, args.sample - (time.monotonic() - started - elapsed)))
    summary, _ = simulator.communicate(timeout=60)
    consumers.close()
    appliance.stop()
    broker.stop()
    warm = next((r for r in rows if r[0] >= args.warmup), rows[0])
    last = rows[-1]
    print(f"\ngrowth from minute {warm[0]} to {last[0]}:")
    for index, name in ((1, "RSS MB"), (3, "fds"), (4, "threads"), (5, "db MB"), (6, "WAL MB")):
        print(f"  {name}: {warm[index]} → {last[index]} ({last[index] - warm[index]:+.1f})")
    print(f"simulator: {summary.strip()}")
    print(f"serve exit: {appliance.proc.returncode}; log: {folder / 'server.log'}")


if __name__ == "__main__":
    main()
