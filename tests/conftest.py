"""Fixtures: the real appliance (CLI subprocess or in-process server), a second SQLite
connection to read what it wrote, and the official schemas as an independent oracle."""

from __future__ import annotations

import contextlib
import decimal
import json
import os
import random
import re
import signal
import socket
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


def _not_yet() -> tuple[type[Exception], ...]:
    """What a check may raise before the thing it waits for exists: a table the
    appliance has not created yet, in SQLite or in the fleet's PostgreSQL."""
    try:
        from psycopg.errors import UndefinedTable
    except ImportError:
        return (sqlite3.OperationalError,)
    return (sqlite3.OperationalError, UndefinedTable)


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    not_yet = _not_yet()
    while True:
        try:
            result = check()
        except not_yet:
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
_WEB_LISTENING = re.compile(r"web dashboard and API on https?://[^:]+:(\d+)/")


@dataclass
class Appliance:
    """`ocpp-appliance serve` running as a subprocess with its own config and database."""

    proc: subprocess.Popen
    folder: Path
    port: int
    log_file: Path
    #: ws, or wss with [tls]
    scheme: str = "ws"
    #: the database's file name in `folder` (`serve --instance N`: appliance-N.db)
    database: str = "appliance.db"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.folder / self.database

    @property
    def web_port(self) -> int:
        """The web listener's port, from the log (it starts before the OCPP one)."""
        found = _WEB_LISTENING.search(self.log())
        assert found, f"no web listener in the log:\n{self.log()}"
        return int(found.group(1))

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
    return launch(["--config", str(config)], folder / "server.log", preexec_fn)


def launch(
    options: list[str],
    log_file: Path,
    preexec_fn: Callable[[], object] | None = None,
    database: str = "appliance.db",
) -> Appliance:
    """`ocpp-appliance serve OPTIONS` in the log file's folder, once it listens."""
    folder = log_file.parent
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [*appliance_command(), "serve", *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            preexec_fn=preexec_fn,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_file.read_text())
        if match:
            port, scheme = int(match.group(2)), match.group(1)
            return Appliance(proc, folder, port, log_file, scheme, database)
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


def end(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop a child process with `sig`; killed if it has not ended within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_run(count: int) -> int:
    """A port whose next `count` ports are free now: instance N of a site listens on
    the config's port + N."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000)
        if all(_free(base + n) for n in range(1, count + 1)):
            return base
    raise AssertionError(f"no {count} free ports in a row")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Site:
    """The processes of one big site: one config (`ocpp-appliance.toml` in `folder`)
    whose `serve --instance N` listen on `port` + N and `web_port` + N with the database
    appliance-N.db (README "A big site on several processes")."""

    folder: Path
    port: int
    web_port: int
    processes: dict[int, Appliance]

    @property
    def config(self) -> Path:
        return self.folder / "appliance.toml"

    def start(self, number: int) -> Appliance:
        process = launch(
            ["--config", str(self.config), "--instance", str(number)],
            self.folder / f"instance-{number}.log",
            database=f"appliance-{number}.db",
        )
        self.processes[number] = process
        return process


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A site's shared config with room for three instances; `site.start(N)` starts
    process N. Every process still running at the end is killed."""
    port, web_port = free_run(3), free_run(3)
    folder = tmp_path / "site"
    folder.mkdir()
    web = f'\n[web]\nhost = "127.0.0.1"\nport = {web_port}\n'
    (folder / "appliance.toml").write_text(
        test_config(web).replace("port = 0\n", f"port = {port}\n", 1)
    )
    found = Site(folder, port, web_port, {})
    yield found
    for process in found.processes.values():
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


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
def haproxy() -> Iterator[Callable[..., Any]]:
    """Start Debian's HAProxy on the sample packaging/haproxy.cfg in front of the given
    processes (tests/haproxy.py): `haproxy([(port, web_port), …])`; stopped at the end."""
    from haproxy import BIN, HAProxy

    if BIN is None:
        pytest.skip("needs Debian's haproxy (apt-get install haproxy)")
    started: list[HAProxy] = []

    def start(processes: list[tuple[int, int]]) -> HAProxy:
        proxy = HAProxy(processes)
        started.append(proxy)
        proxy.start()
        return proxy

    yield start
    for proxy in started:
        proxy.remove()


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
