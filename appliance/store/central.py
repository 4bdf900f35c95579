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
    # 3: several SQLite files per site (README "A big site on several processes"): the
    # ordered rows are keyed by the file they come from (`origin`); a session is one row
    # by its transaction id, whichever process saw its start or its stop; the latest
    # values say which file wrote them; 1.6 transaction ids are granted per site
    "".join(
        f"""
    ALTER TABLE {table} ADD COLUMN origin text NOT NULL DEFAULT '';
    ALTER TABLE {table} DROP CONSTRAINT {table}_pkey;
    ALTER TABLE {table} ADD PRIMARY KEY (site, origin, {key});"""
        for table, key in (
            ("messages", "seq"),
            ("connection_log", "seq"),
            ("meter_values", "seq"),
            ("transactions", "seq"),
            ("replication", "name"),
        )
    )
    + """
    DROP INDEX transactions_by_id;
    CREATE UNIQUE INDEX transactions_by_id ON transactions (site, identity, transaction_id)
        WHERE transaction_id <> '-1';
    ALTER TABLE control_outcomes ADD COLUMN origin text NOT NULL DEFAULT '';
    ALTER TABLE states ADD COLUMN origin text NOT NULL DEFAULT '';
    ALTER TABLE charge_points ADD COLUMN origin text NOT NULL DEFAULT '';
    CREATE TABLE transaction_ids (site text PRIMARY KEY, next bigint NOT NULL);
    """,
    # 4: the frames to and from an upstream (README "A second backend"): `peer`
    """
    ALTER TABLE messages ADD COLUMN peer text;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
#: README "Commands from the centre": the channel an inserted command is announced on
CHANNEL = "ocpp_appliance_commands"
#: any constant: the advisory lock two appliances migrating at once take turns on
_MIGRATION_LOCK = 7_406_221


def _insert(source: Source) -> str:
    names = ", ".join(("site", "origin", *source.columns))
    marks = ", ".join(["%s"] * (len(source.columns) + 2))
    return f"INSERT INTO {source.name} ({names}) VALUES ({marks})"


def _merged(column: str) -> str:
    """A session's column when a second process's row for it arrives: what is known is
    kept, as in the SQLite file (store.sql TRANSACTION_EVENT), whoever sent it first."""
    special = {
        "received_at": "least(t.received_at, excluded.received_at)",
        "updated_at": "greatest(t.updated_at, excluded.updated_at)",
        "seq_no": "greatest(t.seq_no, excluded.seq_no)",
        "time_suspect": "greatest(t.time_suspect, excluded.time_suspect)",
        "offline": "greatest(t.offline, excluded.offline)",
        "energy_wh": "coalesce(t.meter_stop_wh, excluded.meter_stop_wh)"
        " - coalesce(t.meter_start_wh, excluded.meter_start_wh)",
    }
    return f"{column} = {special.get(column, f'coalesce(t.{column}, excluded.{column})')}"


def _statements(source: Source) -> tuple[str, ...]:
    """The upserts of a table's rows (a row sent twice is the same row). Two for
    `transactions`: a session is one row by `(site, identity, transaction_id)`, merged
    when its start and its stop come from two processes (failover); a 1.6 "-1" session
    is never unique and goes by its file and `seq`."""
    insert = _insert(source)
    if source.name == "transactions":
        merge = ", ".join(
            _merged(c) for c in source.columns if c not in ("seq", "identity", "transaction_id")
        )
        return (
            insert.replace("INSERT INTO transactions", "INSERT INTO transactions AS t")
            + " ON CONFLICT (site, identity, transaction_id) WHERE transaction_id <> '-1'"
            f" DO UPDATE SET {merge}",
            f"{insert} ON CONFLICT (site, origin, seq) DO NOTHING",
        )
    if source.mark == "seq":  # only grows: keyed by the file and its seq
        return (f"{insert} ON CONFLICT (site, origin, seq) DO NOTHING",)
    updates = ", ".join(f"{c} = excluded.{c}" for c in ("origin", *source.columns))
    if source.name == "charge_points":
        return (
            f"{insert} ON CONFLICT (site, identity) DO UPDATE SET prefix = excluded.prefix,"
            " first_seen = least(charge_points.first_seen, excluded.first_seen)",
        )
    # a latest value: the newest write wins, whichever process made it, except that a
    # process does not say a charge point is disconnected that another one holds now
    # (after a failover the first process, restarted, marks what it held as gone)
    guard = f"coalesce({source.name}.ts, 0) <= coalesce(excluded.ts, 0)"
    if source.name == "states":
        guard += (
            " AND NOT (excluded.id LIKE '%%.info.connected' AND excluded.val = '0'"
            " AND states.val <> '0' AND states.origin <> excluded.origin)"
        )
    return (f"{insert} ON CONFLICT (site, {source.key}) DO UPDATE SET {updates} WHERE {guard}",)


STATEMENTS = {source.name: _statements(source) for source in SOURCES}
#: columns whose SQLite values have no fixed type: sent as text
_UNTYPED = {"states": {"val"}, "control_outcomes": {"value", "in_force"}}
SET_WATERMARK = (
    "INSERT INTO replication (site, origin, name, watermark) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (site, origin, name) DO UPDATE SET watermark = excluded.watermark,"
    " updated_at = now()"
)
#: a block of 1.6 transaction ids for one process of a site; never below `floor` (the
#: ids its file handed out already)
GRANT_IDS = (
    "INSERT INTO transaction_ids (site, next) VALUES (%(site)s, %(floor)s + 1 + %(size)s)"
    " ON CONFLICT (site) DO UPDATE SET"
    " next = greatest(transaction_ids.next, %(floor)s + 1) + %(size)s"
    " RETURNING next - %(size)s"
)


class Postgres:
    """One connection to the fleet's database, for one site."""

    def __init__(
        self, url: str, site: str, password: str | None, ca: str | None, origin: str = ""
    ) -> None:
        options: dict[str, Any] = {
            "connect_timeout": 10,
            "application_name": f"ocpp-appliance {site}",
        }
        if password is not None:
            options["password"] = password
        if ca is not None:
            options["sslrootcert"] = ca
        self.site = site
        #: the SQLite file this process replicates (its meta `origin`)
        self.origin = origin
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
        """This file's watermarks as PostgreSQL has them (what it holds). Those a site
        kept before schema 3 (one file per site, `origin` '') become this file's."""
        with self.connection.transaction():
            adopt = (
                "UPDATE replication SET origin = %s WHERE site = %s AND origin = ''"
                " AND NOT EXISTS (SELECT 1 FROM replication WHERE site = %s AND origin = %s)"
            )
            self.connection.execute(adopt, (self.origin, self.site, self.site, self.origin))
            rows = self.connection.execute(
                "SELECT name, watermark FROM replication WHERE site = %s AND origin = %s",
                (self.site, self.origin),
            ).fetchall()
        return {name: mark for name, mark in rows}

    def grant(self, floor: int, size: int) -> int:
        """The first of `size` 1.6 transaction ids no other process of the site has or
        will get, none at or below `floor`."""
        with self.connection.transaction():
            row = self.connection.execute(
                GRANT_IDS, {"site": self.site, "floor": floor, "size": size}
            ).fetchone()
        assert row is not None
        return int(row[0])

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
                        self.connection.execute(self._statement(batch.source, row), row)
                    written += 1
                except psycopg.DataError as exc:
                    log.error(
                        "central: %s row %r refused by PostgreSQL, skipped: %s",
                        batch.source.name,
                        row[2],
                        exc,
                    )
            self._mark(batch)
        return written

    def _write(self, batch: Batch, rows: list[tuple[Any, ...]]) -> None:
        statements = STATEMENTS[batch.source.name]
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            groups.setdefault(self._statement(batch.source, row, statements), []).append(row)
        with self.connection.cursor() as cursor:
            for statement, group in groups.items():
                cursor.executemany(statement, group)
        self._mark(batch)

    @staticmethod
    def _statement(
        source: Source, row: tuple[Any, ...], statements: tuple[str, ...] | None = None
    ) -> str:
        """A row's upsert: a 1.6 session "-1" has its own (`_statements`)."""
        statements = statements or STATEMENTS[source.name]
        if len(statements) > 1 and row[4] == "-1":  # site, origin, seq, identity, id
            return statements[1]
        return statements[0]

    def _mark(self, batch: Batch) -> None:
        self.connection.execute(
            SET_WATERMARK, (self.site, self.origin, batch.source.name, batch.watermark)
        )

    def _row(self, source: Source, row: tuple[Any, ...]) -> tuple[Any, ...]:
        untyped = _UNTYPED.get(source.name, ())
        values: list[Any] = [self.site, self.origin]
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
        super().__init__(url, site, password, ca)  # it writes no replicated rows
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
