"""The fleet's PostgreSQL (README "Many sites into one PostgreSQL"): its schema, created
and migrated by the appliance itself, and the writes of replication. Like the SQLite
file's, its SQL is the store's alone. Blocking (psycopg 3); run in a worker thread;
imported only when [central] is configured.

Every table has the SQLite table's name and columns plus `site`, keyed by `(site, the
row's local key)`: a row sent twice is the same row (exactly once). A batch and its
watermark (`replication`) are committed in one transaction, so a restart of either side
resumes where PostgreSQL says it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from appliance.store.replication import SOURCES, Batch, Source

log = logging.getLogger("appliance.central")

#: the schema, as migrations (like the SQLite file's); `central_schema` says how far
MIGRATIONS: list[str] = [
    # 1: the tables of the SQLite file, with `site`; watermarks; the fleet's indexes
    """
    CREATE TABLE charge_points (
        site text NOT NULL, identity text NOT NULL, prefix text, first_seen bigint,
        PRIMARY KEY (site, identity));
    CREATE TABLE messages (
        site text NOT NULL, seq bigint NOT NULL, ts bigint, identity text, protocol text,
        direction text, message_type integer, message_id text, action text, payload text,
        violation text, redacted integer,
        PRIMARY KEY (site, seq));
    CREATE INDEX messages_by_identity ON messages (site, identity, ts);
    CREATE TABLE connection_log (
        site text NOT NULL, seq bigint NOT NULL, ts bigint, identity text, remote_addr text,
        protocol text, event text, reason text,
        PRIMARY KEY (site, seq));
    CREATE INDEX connection_log_by_identity ON connection_log (site, identity, ts);
    CREATE TABLE transactions (
        site text NOT NULL, seq bigint NOT NULL, identity text, transaction_id text,
        evse_id integer, connector_id integer, id_token text, started_at text,
        stopped_at text, meter_start_wh double precision, meter_stop_wh double precision,
        energy_wh double precision, stop_reason text, received_at bigint,
        time_suspect integer, seq_no integer, offline integer, updated_at bigint,
        PRIMARY KEY (site, seq));
    CREATE INDEX transactions_by_id ON transactions (site, identity, transaction_id);
    CREATE INDEX transactions_by_received ON transactions (received_at);
    CREATE TABLE meter_values (
        site text NOT NULL, seq bigint NOT NULL, identity text, evse_id integer,
        connector_id integer, transaction_id text, sampled_at text, measurand text,
        phase text, location text, context text, unit text, value double precision,
        received_at bigint, time_suspect integer,
        PRIMARY KEY (site, seq));
    CREATE INDEX meter_values_by_identity ON meter_values (site, identity, received_at);
    CREATE TABLE control_outcomes (
        site text NOT NULL, id text NOT NULL, ts bigint, value text, ok integer,
        response text, error text, in_force text, note text,
        PRIMARY KEY (site, id));
    CREATE TABLE states (
        site text NOT NULL, id text NOT NULL, val text, ack integer, ts bigint, lc bigint,
        PRIMARY KEY (site, id));
    CREATE TABLE replication (
        site text NOT NULL, name text NOT NULL, watermark bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (site, name));
    """,
    # 2: commands from the centre, and who holds which charge point now
    """
    CREATE TABLE commands (
        id bigserial PRIMARY KEY,
        site text NOT NULL, identity text NOT NULL, control text NOT NULL, value text,
        requested_at timestamptz NOT NULL DEFAULT now(),
        taken_by text, taken_at timestamptz,
        ok boolean, response text, error text, done_at timestamptz);
    CREATE INDEX commands_waiting ON commands (site, identity, id) WHERE taken_by IS NULL;
    CREATE FUNCTION commands_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('ocpp_appliance_commands', NEW.site); RETURN NEW; END $$;
    CREATE TRIGGER commands_notify AFTER INSERT ON commands
        FOR EACH ROW EXECUTE FUNCTION commands_notify();
    CREATE TABLE presence (
        site text NOT NULL, identity text NOT NULL, process text NOT NULL,
        since timestamptz NOT NULL DEFAULT now(), seen_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (site, identity));
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
#: README "Commands from the centre": the channel an inserted command is announced on
CHANNEL = "ocpp_appliance_commands"
#: any constant: the advisory lock two appliances migrating at once take turns on
_MIGRATION_LOCK = 7_406_221


def _statement(source: Source) -> str:
    columns = ("site", *source.columns)
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    key = f"site, {source.key}"
    if source.mark == "seq":  # only grows: a row sent twice is the same row
        return (
            f"INSERT INTO {source.name} ({names}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"
        )
    updates = ", ".join(f"{c} = excluded.{c}" for c in source.columns if c != source.key)
    return (
        f"INSERT INTO {source.name} ({names}) VALUES ({marks})"
        f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


STATEMENTS = {source.name: _statement(source) for source in SOURCES}
#: columns whose SQLite values have no fixed type: sent as text
_UNTYPED = {"states": {"val"}, "control_outcomes": {"value", "in_force"}}
SET_WATERMARK = (
    "INSERT INTO replication (site, name, watermark) VALUES (%s, %s, %s)"
    " ON CONFLICT (site, name) DO UPDATE SET watermark = excluded.watermark,"
    " updated_at = now()"
)


class Postgres:
    """One connection to the fleet's database, for one site."""

    def __init__(self, url: str, site: str, password: str | None, ca: str | None) -> None:
        options: dict[str, Any] = {
            "connect_timeout": 10,
            "application_name": f"ocpp-appliance {site}",
        }
        if password is not None:
            options["password"] = password
        if ca is not None:
            options["sslrootcert"] = ca
        self.site = site
        self.connection = psycopg.connect(url, **options)

    def close(self) -> None:
        self.connection.close()

    def migrate(self) -> None:
        """Create or bring the schema up to SCHEMA_VERSION (one appliance at a time)."""
        with self.connection.transaction():
            self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS central_schema (version integer NOT NULL)"
            )
            row = self.connection.execute("SELECT version FROM central_schema").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the PostgreSQL schema is version {version}, newer than this appliance"
                    f" knows ({SCHEMA_VERSION}): run a newer ocpp-appliance"
                )
            for number in range(version, SCHEMA_VERSION):
                self.connection.execute(MIGRATIONS[number])
                log.info("central: PostgreSQL schema migrated to version %d", number + 1)
            if row is None:
                self.connection.execute("INSERT INTO central_schema VALUES (%s)", (SCHEMA_VERSION,))
            else:
                self.connection.execute("UPDATE central_schema SET version = %s", (SCHEMA_VERSION,))

    def watermarks(self) -> dict[str, int]:
        """This site's watermarks as PostgreSQL has them (what it holds)."""
        with self.connection.transaction():
            rows = self.connection.execute(
                "SELECT name, watermark FROM replication WHERE site = %s", (self.site,)
            ).fetchall()
        return {name: mark for name, mark in rows}

    def write(self, batch: Batch) -> int:
        """The batch and its watermark, in one transaction; returns the rows written.
        A batch PostgreSQL refuses for one row's data is written row by row: a row it
        cannot take even cleaned is logged and skipped (README: never a stalled stream)."""
        rows = [self._row(batch.source, row) for row in batch.rows]
        try:
            with self.connection.transaction():
                self._write(batch, rows)
            return len(rows)
        except psycopg.DataError:
            pass
        written = 0
        with self.connection.transaction():
            for row in rows:
                try:
                    with self.connection.transaction():  # a savepoint per row
                        self.connection.cursor().execute(STATEMENTS[batch.source.name], row)
                    written += 1
                except psycopg.DataError as exc:
                    log.error(
                        "central: %s row %r refused by PostgreSQL, skipped: %s",
                        batch.source.name,
                        row[1],
                        exc,
                    )
            self._mark(batch)
        return written

    def _write(self, batch: Batch, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            with self.connection.cursor() as cursor:
                cursor.executemany(STATEMENTS[batch.source.name], rows)
        self._mark(batch)

    def _mark(self, batch: Batch) -> None:
        self.connection.execute(SET_WATERMARK, (self.site, batch.source.name, batch.watermark))

    def _row(self, source: Source, row: tuple[Any, ...]) -> tuple[Any, ...]:
        untyped = _UNTYPED.get(source.name, ())
        values: list[Any] = [self.site]
        for column, value in zip(source.columns, row, strict=True):
            if value is not None and column in untyped:
                value = value.hex() if isinstance(value, bytes) else str(value)
            if isinstance(value, str) and "\x00" in value:
                value = value.replace("\x00", "\ufffd")  # PostgreSQL text holds no NUL
            values.append(value)
        return tuple(values)


class Fleet(Postgres):
    """The commands and presence of one process of one site (a connection of its own)."""

    def __init__(
        self, url: str, site: str, password: str | None, ca: str | None, process: str
    ) -> None:
        super().__init__(url, site, password, ca)
        self.process = process
        self.connection.autocommit = True

    def take(
        self, identities: list[str], limit: int = 20
    ) -> list[tuple[int, str, str, str | None]]:
        """Commands waiting for charge points this process holds, taken by it: (id,
        identity, control, value). A row is taken once: the UPDATE sets taken_by, and a
        row another process is taking at the same moment is skipped (SKIP LOCKED)."""
        if not identities:
            return []
        return self.connection.execute(
            "UPDATE commands SET taken_by = %s, taken_at = now() WHERE id IN ("
            " SELECT id FROM commands WHERE site = %s AND identity = ANY(%s)"
            " AND taken_by IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING id, identity, control, value",
            (self.process, self.site, identities, limit),
        ).fetchall()

    def finish(self, command: int, ok: bool, response: str | None, error: str | None) -> None:
        self.connection.execute(
            "UPDATE commands SET ok = %s, response = %s, error = %s, done_at = now()"
            " WHERE id = %s AND done_at IS NULL",
            (ok, response, error, command),
        )

    def expire(self, waiting_sec: float, running_sec: float) -> int:
        """Commands of this site nobody took within `waiting_sec` end "not connected";
        those taken by a process that has not said how they ended within `running_sec`
        end as unknown (it stopped while running them: never run again)."""
        cursor = self.connection.execute(
            "UPDATE commands SET taken_by = '', taken_at = now(), ok = false,"
            " error = 'not connected', done_at = now()"
            " WHERE site = %s AND taken_by IS NULL"
            " AND requested_at < now() - make_interval(secs => %s)",
            (self.site, waiting_sec),
        )
        expired = cursor.rowcount
        cursor = self.connection.execute(
            "UPDATE commands SET ok = false, done_at = now(), error = 'taken by ' || taken_by"
            " || ', which said nothing more: it may or may not have run'"
            " WHERE site = %s AND taken_by <> '' AND done_at IS NULL"
            " AND taken_at < now() - make_interval(secs => %s)",
            (self.site, running_sec),
        )
        return expired + cursor.rowcount

    def present(self, identity: str) -> None:
        """This process holds `identity` now."""
        self.connection.execute(
            "INSERT INTO presence (site, identity, process) VALUES (%s, %s, %s)"
            " ON CONFLICT (site, identity) DO UPDATE SET process = excluded.process,"
            " since = now(), seen_at = now()",
            (self.site, identity, self.process),
        )

    def absent(self, identity: str) -> None:
        """It left this process (unless another holds it already)."""
        self.connection.execute(
            "DELETE FROM presence WHERE site = %s AND identity = %s AND process = %s",
            (self.site, identity, self.process),
        )

    def alive(self, identities: list[str], expire_sec: float) -> None:
        """This process still holds these; presence older than `expire_sec` (a process
        that died) is gone."""
        with self.connection.transaction():
            self.connection.execute(
                "DELETE FROM presence WHERE site = %s AND process = %s AND NOT identity = ANY(%s)",
                (self.site, self.process, identities),
            )
            for identity in identities:
                self.connection.execute(
                    "INSERT INTO presence (site, identity, process) VALUES (%s, %s, %s)"
                    " ON CONFLICT (site, identity) DO UPDATE SET seen_at = now(),"
                    " process = excluded.process,"
                    " since = CASE WHEN presence.process = excluded.process"
                    " THEN presence.since ELSE now() END",
                    (self.site, identity, self.process),
                )
            self.connection.execute(
                "DELETE FROM presence WHERE seen_at < now() - make_interval(secs => %s)",
                (expire_sec,),
            )

    def listen(self) -> None:
        self.connection.execute(f"LISTEN {CHANNEL}")

    def announced(self, timeout: float) -> bool:
        """Whether a command was announced within `timeout` seconds (LISTEN/NOTIFY)."""
        for _ in self.connection.notifies(timeout=timeout, stop_after=1):
            return True
        return False
