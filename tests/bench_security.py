"""What security costs, measured against the real `ocpp-appliance serve` (prints numbers,
asserts nothing):

1. handshake time for ws://, wss:// and mutual TLS: median (and p90) of N connects,
   TCP connect to 101 Switching Protocols, client and server on this machine;
2. failed Basic-auth storms: the server's CPU for 1 000 failed attempts (plain password;
   password_hash from one address; password_hash from many addresses), and the
   Heartbeat latency another charge point sees meanwhile, against its latency at rest.

    PYTHONPATH=. .venv/bin/python tests/bench_security.py [--connects 100] [--attempts 1000]

Many addresses are simulated with loopback sources 127.0.0.2-127.0.0.254 (Linux routes
all of 127/8 to lo).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_security import make_pki, tls_config

from appliance.passwords import hash_password
from conftest import Appliance, start_appliance_process

PASSWORD = "Bench-Password-0123456789"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads: loop, writer, KDF)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# ---------------------------------------------------------------------- handshakes


def handshake_times(url: str, count: int, **kwargs: Any) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with connect(url, subprotocols=["ocpp2.0.1"], open_timeout=10, **kwargs):
            times.append(time.perf_counter() - started)
    return times


def bench_handshakes(folder: Path, count: int) -> None:
    pki = make_pki(folder / "pki", ["CP-BENCH"])
    print(f"handshake, TCP connect to 101, {count} sequential connects:")
    modes: list[tuple[str, str, dict[str, Any]]] = [
        ("ws://", "", {}),
        ("wss:// (profile 2)", tls_config(pki), {"ssl": pki.client_context()}),
        ("mutual TLS (profile 3)", tls_config(pki, True), {"ssl": pki.client_context("CP-BENCH")}),
    ]
    for label, extra, kwargs in modes:
        appliance = start_appliance_process(folder / label.split()[0].strip(":/"), extra)
        try:
            url = f"{appliance.url}/CP-BENCH"
            handshake_times(url, 5, **kwargs)  # warm-up
            cpu = cpu_seconds(appliance.proc.pid)
            times = handshake_times(url, count, **kwargs)
            cpu = cpu_seconds(appliance.proc.pid) - cpu
            print(
                f"  {label:24} median {ms(statistics.median(times))}, "
                f"p90 {ms(percentile(times, 0.9))}, server CPU {ms(cpu / count)} per connect"
            )
        finally:
            appliance.stop()


# ------------------------------------------------------------------- auth storms


class Bystander:
    """A charge point sending Heartbeats (one every 10 ms) from a process of its own — in
    this process it would share the GIL with the attack's client threads and measure
    them, not the appliance — and keeping each round trip."""

    def __init__(self, url: str) -> None:
        self.url = url

    @staticmethod
    def _run(url: str, stop: Any, results: Any) -> None:
        samples = []
        with connect(url, subprotocols=["ocpp2.0.1"]) as ws:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.perf_counter()
                ws.send(json.dumps([2, f"hb{n}", "Heartbeat", {}]))
                ws.recv(timeout=30)
                samples.append(time.perf_counter() - started)
                time.sleep(0.01)
        results.put(samples)

    def measure(self, seconds: float | None = None, during: Callable[[], Any] | None = None):
        stop, results = multiprocessing.Event(), multiprocessing.Queue()
        child = multiprocessing.Process(target=self._run, args=(self.url, stop, results))
        child.start()
        time.sleep(0.3)  # connected and beating
        result = during() if during else time.sleep(seconds or 1)
        stop.set()
        samples = results.get(timeout=60)
        child.join()
        return result, samples


def attempt(url: str, source: str, password: str) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(60)
    sock.connect(("127.0.0.1", int(url.split(":")[2].split("/")[0])))
    try:
        with connect(
            url, sock=sock, additional_headers=basic("CP-LOCKED", password), open_timeout=60
        ):
            pass
    except InvalidStatus as refused:
        return refused.response.status_code
    return 101


def storm(url: str, attempts: int, sources: list[str], parallel: int) -> tuple[dict, float]:
    def one(n: int) -> int:
        return attempt(url, sources[n % len(sources)], f"guess-{n}-{os.urandom(4).hex()}")

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        statuses = list(pool.map(one, range(attempts)))
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts, time.perf_counter() - started


def bench_storms(folder: Path, attempts: int) -> None:
    hashed = hash_password(PASSWORD)
    many = [f"127.0.0.{n}" for n in range(2, 255)]
    cases = [
        ("plain password, 250 addresses", f'password = "{PASSWORD}"', many[:250], attempts),
        ("password_hash, one address", f'password_hash = "{hashed}"', ["127.0.0.1"], attempts),
        # every wrong guess from a fresh address reaches the KDF: the expensive case
        (
            "password_hash, 250 addresses",
            f'password_hash = "{hashed}"',
            many[:250],
            min(attempts, 250),
        ),
    ]
    print("\nfailed Basic-auth attempts (random wrong passwords, 16 in parallel):")
    for label, line, sources, count in cases:
        extra = f'[charge_points."CP-LOCKED"]\n{line}\n'
        appliance: Appliance = start_appliance_process(folder / label.replace(" ", "_"), extra)
        try:
            bystander = Bystander(f"{appliance.url}/CP-BYSTANDER")
            _, rest = bystander.measure(1.5)
            cpu = cpu_seconds(appliance.proc.pid)
            (counts, took), busy = bystander.measure(
                during=lambda url=appliance.url, s=sources, c=count: storm(
                    f"{url}/CP-LOCKED", c, s, 16
                )
            )
            cpu = cpu_seconds(appliance.proc.pid) - cpu
            time.sleep(0.5)  # the last group commit
            refused = appliance.query(
                "SELECT count(*) FROM connection_log WHERE event = 'refused'"
            )[0][0]
            lines = appliance.log().count("refused from")
            reasons = appliance.query(
                "SELECT reason, count(*) FROM connection_log WHERE event = 'refused'"
                " GROUP BY reason ORDER BY 2 DESC"
            )
            print(
                f"  {label}: {count} attempts in {took:.1f} s, answers {counts}; "
                f"server CPU {cpu:.2f} s ({ms(cpu / count)} per attempt); "
                f"{refused} connection_log rows, {lines} log lines"
            )
            print(
                f"    rows by reason: {dict(reasons)}\n"
                f"    other charge point's Heartbeat: at rest p50 {ms(statistics.median(rest))}"
                f" p99 {ms(percentile(rest, 0.99))}; during p50 {ms(statistics.median(busy))}"
                f" p99 {ms(percentile(busy, 0.99))} max {ms(max(busy))}"
            )
        finally:
            appliance.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=100)
    parser.add_argument("--attempts", type=int, default=1000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as folder:
        bench_handshakes(Path(folder), args.connects)
        bench_storms(Path(folder), args.attempts)


if __name__ == "__main__":
    main()
