"""Fixtures: the real appliance (CLI subprocess or in-process server), a second SQLite
connection to read what it wrote, and the official schemas as an independent oracle."""

from __future__ import annotations

import contextlib
import decimal
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
FOLDERS = {"ocpp1.6": "v16", "ocpp2.0.1": "v201", "ocpp2.1": "v21"}
VERSIONS = list(FOLDERS)


def appliance_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m appliance`."""
    script = Path(sys.executable).with_name("ocpp-appliance")
    return [str(script)] if script.exists() else [sys.executable, "-m", "appliance"]


def run_cli(*args: str, cwd: Path | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*appliance_command(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


# --------------------------------------------------------------------------- oracle


def _load(text: str) -> Any:
    # Decimal keeps 1.6's `multipleOf: 0.1` honest (see ../shared/NOTES.md)
    return json.loads(text, parse_float=decimal.Decimal)


def schema_errors(version: str, name: str, payload: Any) -> list[str]:
    """Violations of `payload` against schemas/<version>/<name>.json, per `jsonschema`."""
    schema = _load((SCHEMAS / FOLDERS[version] / f"{name}.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(
        schema, format_checker=jsonschema.FormatChecker()
    )
    return [e.message for e in validator.iter_errors(_load(json.dumps(payload)))]


def response_schema_name(version: str, action: str) -> str:
    return f"{action}Response"


def request_schema_name(version: str, action: str) -> str:
    if version == "ocpp1.6" or not (SCHEMAS / FOLDERS[version] / f"{action}Request.json").exists():
        return action
    return f"{action}Request"


# ------------------------------------------------------------------ database reader


def query(db: Path, sql: str, *params: Any) -> list[tuple]:
    """Read through a connection of our own, as Grafana or a script would."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        return c.execute(sql, params).fetchall()


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except sqlite3.OperationalError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------- the appliance


TEST_CONFIG = """\
host = "127.0.0.1"
port = 0
database = "appliance.db"
ping_interval_sec = 30
[storage]
commit_interval_ms = 50
"""

_LISTENING = re.compile(r"listening on (wss?)://[^:]+:(\d+)/")


@dataclass
class Appliance:
    """`ocpp-appliance serve` running as a subprocess with its own config and database."""

    proc: subprocess.Popen
    folder: Path
    port: int
    log_file: Path
    #: ws, or wss with [tls]
    scheme: str = "ws"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.folder / "appliance.db"

    def log(self) -> str:
        return self.log_file.read_text()

    def query(self, sql: str, *params: Any) -> list[tuple]:
        return query(self.db, sql, *params)

    def wait_rows(self, sql: str, *params: Any, count: int = 1, timeout: float = 10) -> list:
        return wait_for(
            lambda: (rows := self.query(sql, *params)) and len(rows) >= count and rows,
            timeout,
            f"{count} rows of {sql}",
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def test_config(extra_config: str) -> str:
    """TEST_CONFIG + extra_config. Unless the extra config says otherwise, the appliance
    asks nothing after a boot (fetch_on_boot = false) and writes no readings settings
    ([readings] configure = false): a test's charge point then gets only the answers it
    waits for."""
    if "[device_model]" not in extra_config:
        extra_config += "\n[device_model]\nfetch_on_boot = false\n"
    if "[readings]" not in extra_config:
        # nor does it set up what a charge point measures (tests/test_readings.py does)
        extra_config += "\n[readings]\nconfigure = false\n"
    if "[web]" not in extra_config:
        # the web dashboard on a free port: tests may run several appliances at once
        extra_config += '\n[web]\nhost = "127.0.0.1"\nport = 0\n'
    return TEST_CONFIG + extra_config


def start_appliance_process(
    folder: Path, extra_config: str = "", preexec_fn: Callable[[], object] | None = None
) -> Appliance:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "appliance.toml"
    config.write_text(test_config(extra_config))
    log_file = folder / "server.log"
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [*appliance_command(), "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            preexec_fn=preexec_fn,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_file.read_text())
        if match:
            return Appliance(proc, folder, int(match.group(2)), log_file, match.group(1))
        if proc.poll() is not None:
            raise AssertionError(f"appliance exited {proc.returncode}:\n{log_file.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"appliance did not start:\n{log_file.read_text()}")


@pytest.fixture
def start_appliance(tmp_path: Path) -> Iterator[Callable[..., Appliance]]:
    """Start `ocpp-appliance serve` with TEST_CONFIG plus `extra_config` (TOML text)."""
    started: list[Appliance] = []

    def start(extra_config: str = "", name: str = "appliance") -> Appliance:
        appliance = start_appliance_process(tmp_path / name, extra_config)
        started.append(appliance)
        return appliance

    yield start
    for appliance in started:
        if appliance.proc.poll() is None:
            appliance.proc.kill()
            appliance.proc.wait()


@pytest.fixture
def appliance(start_appliance: Callable[..., Appliance]) -> Appliance:
    """The appliance on its test config, all three versions enabled, lenient."""
    return start_appliance()


# ------------------------------------------------------------ in-process server


@dataclass
class InProcess:
    server: Any
    #: identity → the connected charge point's Station (`.call(action, payload)`)
    stations: dict[str, Any]
    port: int
    db: Path
    #: the station hub: `.subscribe()` to connection life
    hub: Any = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def in_process_server(folder: Path, extra_config: str = "") -> AsyncIterator[InProcess]:
    """The real appliance, in this trio run, so a test can call `stations[id].call`."""
    from appliance import config as configuration
    from appliance.app import running

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "appliance.toml"
    path.write_text(test_config(extra_config))
    config = configuration.load(str(path))
    async with running(config) as appliance:
        yield InProcess(
            appliance.server,
            appliance.stations.stations,
            appliance.port,
            config.database_path,
            appliance.stations,
        )


os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.fixture
def postgres() -> Iterator[Any]:
    """A PostgreSQL server of the test's own, which it may stop and start (tests/pg.py)."""
    from pg import BIN, Postgres

    if BIN is None:
        pytest.skip("needs Debian's postgresql (apt-get install postgresql)")
    server = Postgres()
    server.start()
    yield server
    server.remove()
