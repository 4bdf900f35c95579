"""What `serve` costs in memory (issue 21, "Memory"); prints JSON numbers, asserts nothing.

One line of JSON per measurement, then a summary:

- start to listening: from the process's start to the "listening" log line (the median
  of a few starts; the code's bytecode is compiled first, as an installed package's is);
- idle RSS with the dashboard on ([web] enabled, the default config) and off, a few
  seconds after listening, nothing connected;
- RSS with 100 charge points each sending one MeterValues a second (tests/benchmark.py's
  load, pace=1): the highest and the last sample;
- the peak RSS of 100 charge points sending back to back (pace=0) for --peak seconds;
- RSS after that load stopped: sampled every 5 s for --after seconds (the last one is
  "RSS 60 s after the load").

The load phases run one after the other on one appliance with the dashboard on, pinned
to CPU 0 and the load to CPU 1 like tests/benchmark.py.

    .venv/bin/python tests/bench_memory.py
    .venv/bin/python tests/bench_memory.py --code /tmp/memory-before   # another checkout
        (git archive HEAD | tar -x -C /tmp/memory-before: its `appliance` is imported)
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchmark

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"listening on wss?://[^:]+:(\d+)/")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []


class Appliance:
    """`serve` in a folder of its own with `code`'s `appliance` package."""

    def __init__(self, code: Path, web: bool, pin: bool = True) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ocpp-memory-"))
        config = self.folder / "appliance.toml"
        config.write_text(
            'host = "127.0.0.1"\nport = 0\ndatabase = "bench.db"\n'
            "[device_model]\nfetch_on_boot = false\n"
            f'[web]\nenabled = {"true" if web else "false"}\nhost = "127.0.0.1"\nport = 0\n'
        )
        env = dict(os.environ, PYTHONPATH=str(code))
        command = [sys.executable, "-m", "appliance", "serve", "--config", str(config)]
        started = time.perf_counter()
        self.process = subprocess.Popen(
            (_pin(0) if pin else []) + command,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=self.folder,
        )
        assert self.process.stderr is not None
        self.port = 0
        for line in self.process.stderr:
            found = LISTENING.search(line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            raise SystemExit(f"serve did not start (exit {self.process.wait()})")
        self.start_s = round(time.perf_counter() - started, 3)
        # the log goes on: keep reading it, or the pipe fills and serve blocks
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def rss(self) -> float:
        return rss_mb(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _under_load(appliance: Appliance, count: int, duration: float, pace: float) -> dict:
    """tests/benchmark.py's load, with the appliance's RSS sampled every 0.5 s."""
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append(appliance.rss())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        load = asyncio.run(benchmark._load(appliance.url, count, duration, pace=pace))
    finally:
        done.set()
        sampler.join()
    samples.append(appliance.rss())
    return {
        "calls_per_s": load["calls_per_s"],
        "p99_ms": load["p99_ms"],
        "errors": load["errors"],
        "rss_peak_mb": max(samples),
        "rss_end_mb": samples[-1],
    }


def measure(code: Path, starts: int, paced: float, peak: float, after: float) -> dict:
    compileall.compile_dir(code / "appliance", quiet=1)
    result: dict = {"code": str(code)}

    times, idle_on, idle_off = [], [], []
    for _ in range(starts):
        for web, idle in ((True, idle_on), (False, idle_off)):
            appliance = Appliance(code, web, pin=False)
            try:
                time.sleep(3)
                idle.append(appliance.rss())
                times.append(appliance.start_s)
            finally:
                appliance.stop()
    result["start_to_listening_s"] = statistics.median(times)
    result["idle_rss_web_on_mb"] = statistics.median(idle_on)
    result["idle_rss_web_off_mb"] = statistics.median(idle_off)
    print(json.dumps({"phase": "idle", **result}), flush=True)

    appliance = Appliance(code, web=True)
    try:
        if hasattr(os, "sched_setaffinity") and shutil.which("taskset"):
            os.sched_setaffinity(0, {1})
        time.sleep(3)
        paced_row = _under_load(appliance, 100, paced, pace=1)
        print(json.dumps({"phase": "100 x 1/s", **paced_row}), flush=True)
        result["paced_100_rss_peak_mb"] = paced_row["rss_peak_mb"]
        result["paced_100_rss_end_mb"] = paced_row["rss_end_mb"]
        time.sleep(5)
        peak_row = _under_load(appliance, 100, peak, pace=0)
        print(json.dumps({"phase": "100 back to back", **peak_row}), flush=True)
        result["back_to_back_100_rss_peak_mb"] = peak_row["rss_peak_mb"]
        result["back_to_back_100_calls_per_s"] = peak_row["calls_per_s"]
        stopped = time.monotonic()
        timeline = {}
        while (elapsed := time.monotonic() - stopped) < after:
            time.sleep(min(5.0, after - elapsed))
            timeline[round(time.monotonic() - stopped)] = appliance.rss()
        print(json.dumps({"phase": "after the load", "rss_mb_by_s": timeline}), flush=True)
        result["rss_after_load_mb"] = appliance.rss()
        result["rss_after_load_s"] = after
    finally:
        appliance.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--code", type=Path, default=ROOT, help="the checkout whose `appliance` runs (this one)"
    )
    parser.add_argument("--starts", type=int, default=3, help="starts for the idle medians (3)")
    parser.add_argument("--paced", type=float, default=30, help="seconds of 100 × 1/s (30)")
    parser.add_argument("--peak", type=float, default=15, help="seconds back to back (15)")
    parser.add_argument("--after", type=float, default=60, help="seconds after the load (60)")
    args = parser.parse_args()
    result = measure(args.code.resolve(), args.starts, args.paced, args.peak, args.after)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
