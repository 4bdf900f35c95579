"""What MQTT publishing costs the OCPP side (issue 15): the MeterValues round trip at 100
charge points, with a Mosquitto broker and the bridge publishing (Home Assistant
discovery on, every change at most once a second per charge point) vs without [mqtt].
Prints numbers, asserts nothing:

    PYTHONPATH=tests .venv/bin/python tests/bench_mqtt.py [--duration 15]

Two loads: back to back (saturation: calls/s and p99 show what the bridge takes from
the event loop and the CPUs) and paced at one MeterValues per second per charge point
(the real case: p99 of the round trip a wallbox sees).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchmark
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from test_mqtt import MOSQUITTO, Mosquitto, free_port

COUNT = 100


def run(folder: Path, port: int, mqtt: str, duration: float, pace: float) -> dict:
    config = folder / "appliance.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\ndatabase = "bench.db"\n'
        f"[device_model]\nfetch_on_boot = false\n{mqtt}"
    )
    script = Path(sys.executable).with_name("ocpp-appliance")
    appliance = [str(script)] if script.exists() else [sys.executable, "-m", "appliance"]
    server = subprocess.Popen(
        [*appliance, "serve", "--config", str(config)], stderr=subprocess.DEVNULL
    )
    try:
        benchmark._wait_port(port)
        cpu_before = benchmark._cpu_seconds(server.pid)
        load = asyncio.run(benchmark._load(f"ws://127.0.0.1:{port}", COUNT, duration, pace))
        load["server_cpu_s"] = round(benchmark._cpu_seconds(server.pid) - cpu_before, 2)
        return load
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=15)
    args = parser.parse_args()
    if MOSQUITTO is None:
        sys.exit("mosquitto is not installed")
    folder = Path(tempfile.mkdtemp(prefix="ocpp-bench-mqtt-"))
    broker = Mosquitto(folder / "mosquitto")
    broker.start()
    received = [0]
    lock = threading.Lock()

    def count(*_: object) -> None:
        with lock:
            received[0] += 1

    subscriber = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench")
    subscriber.username_pw_set("homeassistant", "ha")
    subscriber.on_connect = lambda c, *_: c.subscribe("#", 0)
    subscriber.on_message = count
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.loop_start()
    mqtt = (
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\nusername = "appliance"\n'
        'password = "broker-s3cret-Pw"\n'
    )
    try:
        for pace, label in ((0.0, "back to back"), (1.0, "paced 1/s")):
            for name, extra in (("without MQTT", ""), ("with MQTT", mqtt)):
                with lock:
                    received[0] = 0
                sub = folder / f"{name}-{pace}".replace(" ", "-")
                sub.mkdir()
                started = time.monotonic()
                result = run(sub, free_port(), extra, args.duration, pace)
                with lock:
                    messages = received[0]
                result["mqtt_messages_per_s"] = round(messages / (time.monotonic() - started), 1)
                print(json.dumps({"load": label, "mode": name, **result}), flush=True)
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()
        broker.stop()


if __name__ == "__main__":
    main()
