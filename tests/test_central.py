"""Every site into one PostgreSQL (issue 22, README "Many sites into one PostgreSQL"):
real `serve` processes with `[central]`, Debian's PostgreSQL started by the test
(`tests/pg.py`), `ocpp-appliance simulate` as the charge points. Every replicated table
in PostgreSQL is compared with the SQLite file row by row (counts and contents, per
site) after a normal run of two sites, PostgreSQL stopped under load and started again,
and the appliance killed with kill -9 while replicating."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from pg import Postgres, needs_postgres

import conftest
from conftest import appliance_command, run_cli

pytestmark = needs_postgres

#: the replicated tables and their local keys (README)
TABLES = {
    "charge_points": ("identity", "prefix", "first_seen"),
    "messages": ("seq", "ts", "identity", "protocol", "direction", "message_type",
                 "message_id", "action", "payload", "violation", "redacted", "peer"),
    "connection_log": ("seq", "ts", "identity", "remote_addr", "protocol", "event", "reason"),
    "transactions": ("seq", "identity", "transaction_id", "evse_id", "connector_id",
                     "id_token", "started_at", "stopped_at", "meter_start_wh",
                     "meter_stop_wh", "energy_wh", "stop_reason", "received_at",
                     "time_suspect", "seq_no", "offline", "updated_at"),
    "meter_values": ("seq", "identity", "evse_id", "connector_id", "transaction_id",
                     "sampled_at", "measurand", "phase", "location", "context", "unit",
                     "value", "received_at", "time_suspect"),
    "control_outcomes": ("id", "ts", "value", "ok", "response", "error", "in_force", "note"),
    "states": ("id", "val", "ack", "ts", "lc"),
}  # fmt: skip
README = Path(__file__).resolve().parents[1] / "README.md"
#: README "Many sites into one PostgreSQL": the fleet view, as written
FLEET_QUERIES = [
    q
    for q in re.findall(r"```postgresql\n(.*?)```", README.read_text(), re.DOTALL)
    if q.startswith("-- ")  # the commands example starts with its INSERT
]
UNTYPED = {("states", "val"), ("control_outcomes", "value"), ("control_outcomes", "in_force")}


def central(server: Postgres, database: str, site: str) -> str:
    return f'\n[central]\npostgresql_url = "{server.url(database)}"\nsite = "{site}"\n'


def sqlite_rows(db: Path, table: str) -> list[tuple]:
    columns = TABLES[table]
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
    finally:
        connection.close()
    return sorted(_shown(table, columns, row) for row in rows)


def pg_rows(server: Postgres, database: str, table: str, site: str) -> list[tuple]:
    columns = TABLES[table]
    rows = server.sql(f"SELECT {', '.join(columns)} FROM {table} WHERE site = '{site}'", database)
    return sorted(_shown(table, columns, row) for row in rows)


def _shown(table: str, columns: tuple[str, ...], row: tuple) -> tuple:
    """A row as both sides can say it: untyped values as text, numbers as floats."""
    shown: list[Any] = []
    for column, value in zip(columns, row, strict=True):
        if value is not None and (table, column) in UNTYPED:
            value = str(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        shown.append(value)
    return tuple(("" if v is None else type(v).__name__, v) for v in shown)


def differences(server: Postgres, database: str, site: str, db: Path) -> dict[str, str]:
    """Per table, what differs between the SQLite file and PostgreSQL (empty: nothing)."""
    found = {}
    for table in TABLES:
        local, central_rows = sqlite_rows(db, table), pg_rows(server, database, table, site)
        if local != central_rows:
            only_local = [r for r in local if r not in central_rows][:2]
            only_central = [r for r in central_rows if r not in local][:2]
            found[table] = (
                f"{len(local)} rows in SQLite, {len(central_rows)} in PostgreSQL;"
                f" only in SQLite {only_local}; only in PostgreSQL {only_central}"
            )
    return found


def wait_replicated(server: Postgres, database: str, site: str, db: Path, timeout: float = 30):
    """Until PostgreSQL holds exactly what the SQLite file holds (the charge points
    stopped); else the differences."""
    server.made("states", database, timeout)
    deadline = time.monotonic() + timeout
    while True:
        found = differences(server, database, site, db)
        if not found or time.monotonic() > deadline:
            assert found == {}, json.dumps(found, indent=1)[:4000]
            return
        time.sleep(0.5)


def simulate(appliance: conftest.Appliance, prefix: str, seconds: float, count: int = 4):
    """Charge points of every version charging fast (a session in ~20 s) for `seconds`."""
    return subprocess.Popen(
        [*appliance_command(), "simulate", "--url", appliance.url, "--count", str(count),
         "--protocol", "mix", "--identity-prefix", prefix, "--duration", str(seconds),
         "--speed", "60", "--meter-interval", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def write_limit(appliance: conftest.Appliance, identity: str, limit: int) -> None:
    result = run_cli(
        "set", "--config", str(appliance.folder / "appliance.toml"),
        f"{identity}.control.chargeLimit", str(limit),
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr


# ============================================================================ tests


def test_two_sites_replicate_every_table_exactly(start_appliance, postgres):
    """Two sites into one PostgreSQL: every table there equals each site's SQLite file,
    row by row, and the README's fleet queries read it (issue 22, points 1, 2, 5)."""
    database = postgres.database()
    north = start_appliance(central(postgres, database, "north"), name="north")
    south = start_appliance(central(postgres, database, "south"), name="south")
    loads = [simulate(north, "N", 12), simulate(south, "S", 12)]
    time.sleep(4)
    write_limit(north, "N001", 16)
    for load in loads:
        assert load.wait(60) == 0
    for site, appliance in (("north", north), ("south", south)):
        wait_replicated(postgres, database, site, appliance.db)
    [(sites,)] = postgres.sql("SELECT count(DISTINCT site) FROM messages", database)
    assert sites == 2
    [(meter_rows,)] = postgres.sql("SELECT count(*) FROM meter_values", database)
    assert meter_rows > 50
    assert "central: replicating into postgresql://" in north.log()
    [(version,)] = postgres.sql("SELECT version FROM central_schema", database)
    assert version >= 1

    sessions, offline, energy, power = (postgres.sql(q, database) for q in FLEET_QUERIES)
    assert {site for site, *_ in sessions} == {"north", "south"}
    assert all(count >= 1 for _, _, count, _ in sessions), sessions
    # the simulators have stopped: all eight charge points are offline now
    assert offline == [("north", f"N00{n}") for n in range(1, 5)] + [
        ("south", f"S00{n}") for n in range(1, 5)
    ]
    assert {(site, identity) for site, identity, *_ in energy} <= set(offline)
    assert len(power) > 3 and all(w is not None for _, w in power)


def test_postgresql_stopped_under_load_loses_nothing(start_appliance, postgres):
    """PostgreSQL stops for a while under load and starts again: the charge points are
    served on (the load's exit status), the log says so once when it stops and once when
    it is back, and then every row is there exactly once (issue 22, point 3)."""
    database = postgres.database()
    appliance = start_appliance(central(postgres, database, "depot"))
    load = simulate(appliance, "D", 45)
    time.sleep(5)
    postgres.stop()
    time.sleep(30)  # the backoff reaches 16 s within this
    down = run_cli("status", "--config", str(appliance.folder / "appliance.toml")).stdout
    assert re.search(r"central: PostgreSQL at \S+: .* rows not in PostgreSQL yet; oldest", down)
    assert not re.search(r" 0 rows not in PostgreSQL", down), down
    postgres.start()
    assert load.wait(60) == 0
    wait_replicated(postgres, database, "depot", appliance.db, timeout=60)
    log = appliance.log()
    assert log.count("central: PostgreSQL at") == 1, log[-3000:]
    assert log.count("central: replicating into") == 2
    status = run_cli("status", "--config", str(appliance.folder / "appliance.toml"))
    assert status.returncode == 0, status.stderr
    assert re.search(
        r"central: replicating into postgresql://\S+ as site 'depot' \(\d+ s ago\);"
        r" 0 rows not in PostgreSQL yet",
        status.stdout,
    ), status.stdout


def test_killed_while_replicating_resumes_without_gap_or_duplicate(start_appliance, postgres):
    """kill -9 in the middle of replication, start again on the same file: PostgreSQL
    ends with every row once (issue 22, point 2: the watermarks of both sides)."""
    database = postgres.database()
    extra = central(postgres, database, "garage")
    appliance = start_appliance(extra)
    load = simulate(appliance, "G", 8)
    time.sleep(4)
    appliance.proc.kill()
    appliance.proc.wait()
    load.wait(60)
    appliance = start_appliance(extra)
    again = simulate(appliance, "G", 6)
    assert again.wait(60) == 0
    wait_replicated(postgres, database, "garage", appliance.db)


def test_check_config_hides_the_password(tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_text(
        '[central]\npostgresql_url = "postgresql://fleet:s3cret@db.example/fleet"\nsite = "x"\n'
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert "postgresql://fleet:***@db.example/fleet" in result.stdout


def test_retention_keeps_what_is_not_replicated(tmp_path):
    """Rows past their retention but not in PostgreSQL yet stay; once replicated they go
    (issue 22, point 3, at a small scale: the real retention on a real file)."""
    from appliance.store import Retention, connect, migrate
    from appliance.store.retention import prune

    db = tmp_path / "a.db"
    connection = connect(db)
    migrate(connection, db)
    old = int(time.time() * 1000) - 10 * 86_400_000
    with connection:
        connection.executemany(
            "INSERT INTO messages (ts, identity, direction, payload) VALUES (?, 'CP', 'in', '[]')",
            [(old,)] * 10,
        )
        connection.execute("INSERT INTO replication VALUES ('messages', 4, 0)")
    kept = Retention(messages_days=1, replicated=True)
    prune(connection, kept)
    assert [s for (s,) in connection.execute("SELECT seq FROM messages")] == list(range(5, 11))
    with connection:
        connection.execute("UPDATE replication SET watermark = 10")
    prune(connection, kept)
    # the newest row stays, so that a seq is never handed out twice
    assert [s for (s,) in connection.execute("SELECT seq FROM messages")] == [10]


def test_a_value_postgresql_cannot_hold_does_not_stop_replication(start_appliance, postgres):
    """A frame with a NUL character (PostgreSQL's text holds none) arrives with the NUL
    as U+FFFD, the rows around it as they are (issue 22, point 3: a statement that fails
    on one row)."""
    from websockets.sync.client import connect

    database = postgres.database()
    appliance = start_appliance(central(postgres, database, "nul"))
    with connect(f"{appliance.url}/NUL-1", subprotocols=["ocpp1.6"]) as ws:
        ws.send('[2,"1","Heartbeat",{}]')
        ws.recv()
        ws.send('[2,"2","DataTransfer",{"vendorId":"a\x00b"}]')
        ws.recv()
        ws.send('[2,"3","Heartbeat",{}]')
        ws.recv()
    postgres.made("messages", database)
    conftest.wait_for(
        lambda: (
            postgres.sql("SELECT count(*) FROM messages WHERE identity = 'NUL-1'", database)[0][0]
            == 6
        ),
        20,
        "six frames in PostgreSQL",
    )
    [(payload,)] = postgres.sql(
        "SELECT payload FROM messages WHERE identity = 'NUL-1' AND seq = 3",
        database,
    )
    assert payload == '[2,"2","DataTransfer",{"vendorId":"a\ufffdb"}]'


def test_a_changed_password_is_taken_from_the_password_file(start_appliance, postgres, tmp_path):
    """The fleet's password is changed in PostgreSQL: replication stops with one log line
    (authentication failed), the charge points are served on; the new password written
    into `password_file` is used at the next retry, without a restart, and nothing is lost
    (issue 22, point 3)."""
    database = postgres.database()
    postgres.sql("CREATE ROLE fleet LOGIN PASSWORD 'one'")
    postgres.sql(f"ALTER DATABASE {database} OWNER TO fleet")
    postgres.require_password("fleet")
    folder = tmp_path / "appliance"
    folder.mkdir()
    (folder / "fleet.password").write_text("one\n")
    extra = (
        f'\n[central]\npostgresql_url = "{postgres.url(database, user="fleet")}"\n'
        'password_file = "fleet.password"\nsite = "pw"\n'
    )
    appliance = start_appliance(extra)
    load = simulate(appliance, "P", 20)
    time.sleep(4)
    postgres.sql("ALTER ROLE fleet PASSWORD 'two'")
    postgres.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'fleet'")
    time.sleep(6)
    assert "password authentication failed" in appliance.log()
    (folder / "fleet.password").write_text("two\n")
    assert load.wait(60) == 0
    wait_replicated(postgres, database, "pw", appliance.db, timeout=60)
    log = appliance.log()
    # once when the connection was cut, once for the password, once when back
    assert log.count("password authentication failed") == 1, log[-2000:]
    assert log.count("central: PostgreSQL at") == 2, log[-2000:]
    assert log.count("central: replicating into") == 2
    assert "two" not in log and "'one'" not in log


def test_a_postgresql_behind_a_firewall_times_out_and_a_sighup_moves_on(start_appliance, postgres):
    """PostgreSQL's address answers nothing (a firewall that drops packets: a listener
    whose queue is full): the connection attempt times out after 10 s, the charge points
    are served on meanwhile, the log says so once; the url changed to a reachable server
    and a SIGHUP: everything arrives (issue 22, points 1 and 3)."""
    import signal
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    address = silent.getsockname()
    fillers = []  # the queue is full: the kernel drops the next SYNs, as a firewall does
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    database = postgres.database()
    unreachable = f"postgresql://fleet@127.0.0.1:{address[1]}/{database}"
    appliance = start_appliance(f'\n[central]\npostgresql_url = "{unreachable}"\nsite = "walled"\n')
    try:
        load = simulate(appliance, "W", 16)
        assert load.wait(60) == 0
        conftest.wait_for(lambda: "timeout expired" in appliance.log(), 30, "the timeout")
        assert appliance.log().count("central: PostgreSQL at") == 1
        config = appliance.folder / "appliance.toml"
        config.write_text(config.read_text().replace(unreachable, postgres.url(database)))
        appliance.proc.send_signal(signal.SIGHUP)
        postgres.made("charge_points", database, timeout=30)  # at once, not after a back-off
        wait_replicated(postgres, database, "walled", appliance.db, timeout=60)
    finally:
        for s in [*fillers, silent]:
            s.close()
