"""The database schema, as forward migrations. `PRAGMA user_version` is the number of
migrations applied; each runs in its own transaction at start. Also how a connection is
opened: WAL, synchronous=FULL, a busy timeout."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

log = logging.getLogger("appliance.store")

#: SQLite waits this long for another process's lock before the batch is retried later
BUSY_TIMEOUT_MS = 5000

MIGRATIONS: list[str] = [
    # 1: frames, connections, 1.6 transaction ids
    """
    CREATE TABLE messages (
        seq          INTEGER PRIMARY KEY,
        ts           INTEGER NOT NULL,           -- appliance clock, ms since the epoch
        identity     TEXT NOT NULL,
        protocol     TEXT,                       -- ocpp1.6 | ocpp2.0.1 | ocpp2.1
        direction    TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        message_type INTEGER,                    -- OCPP-J 2..6; NULL if unreadable
        message_id   TEXT,
        action       TEXT,                       -- also on results: the action answered
        payload      TEXT NOT NULL,              -- the frame verbatim
        violation    TEXT                        -- schema violation of an incoming frame
    );
    CREATE INDEX messages_by_identity ON messages (identity, ts);
    CREATE INDEX messages_by_ts ON messages (ts);

    CREATE TABLE connection_log (
        seq         INTEGER PRIMARY KEY,
        ts          INTEGER NOT NULL,
        identity    TEXT,
        remote_addr TEXT,
        protocol    TEXT,
        event       TEXT NOT NULL CHECK (event IN ('connect', 'disconnect', 'refused')),
        reason      TEXT
    );
    CREATE INDEX connection_log_by_identity ON connection_log (identity, ts);

    CREATE TABLE transactions (
        seq            INTEGER PRIMARY KEY,
        identity       TEXT NOT NULL,
        transaction_id TEXT NOT NULL,
        evse_id        INTEGER,
        connector_id   INTEGER,
        id_token       TEXT,
        started_at     TEXT,                     -- charge point's time, as sent
        stopped_at     TEXT,
        meter_start_wh REAL,
        meter_stop_wh  REAL,
        energy_wh      REAL,
        stop_reason    TEXT,
        received_at    INTEGER NOT NULL,         -- appliance clock when the start arrived
        time_suspect   INTEGER NOT NULL DEFAULT 0
    );
    -- "-1" is what some 1.6 firmware sends for a transaction started offline: never unique
    CREATE UNIQUE INDEX transactions_by_id ON transactions (identity, transaction_id)
        WHERE transaction_id <> '-1';

    CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
    """,
    # 2: the object tree, meter values, 2.x sessions, the scripting view
    """
    CREATE TABLE states (
        id  TEXT PRIMARY KEY,
        val,                                     -- INTEGER, REAL, TEXT; booleans 0/1; JSON as TEXT
        ack INTEGER NOT NULL DEFAULT 0,          -- 1: confirmed by the appliance; 0: a command
        -- ms since the epoch; the defaults serve a control INSERTed without them
        ts  INTEGER NOT NULL
            DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
        lc  INTEGER NOT NULL
            DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
    ) WITHOUT ROWID;

    CREATE TABLE objects (
        id       TEXT PRIMARY KEY,
        type     TEXT,                           -- number, string, boolean, json
        role     TEXT,
        unit     TEXT,
        writable INTEGER NOT NULL DEFAULT 0,
        name     TEXT
    ) WITHOUT ROWID;

    CREATE TABLE charge_points (
        identity   TEXT PRIMARY KEY,             -- as the charge point sent it
        prefix     TEXT NOT NULL UNIQUE,         -- its escaped first id segment
        first_seen INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE meter_values (
        seq            INTEGER PRIMARY KEY,
        identity       TEXT NOT NULL,
        evse_id        INTEGER,
        connector_id   INTEGER,
        transaction_id TEXT,
        sampled_at     TEXT,                     -- charge point's time, as sent
        measurand      TEXT NOT NULL,
        phase          TEXT,
        location       TEXT,
        context        TEXT,
        unit           TEXT,                     -- normalised: Wh, W, A, V, Percent, …
        value          REAL NOT NULL,
        received_at    INTEGER NOT NULL,
        time_suspect   INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX meter_values_by_identity ON meter_values (identity, received_at);

    ALTER TABLE transactions ADD COLUMN seq_no INTEGER;
    ALTER TABLE transactions ADD COLUMN offline INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE transactions ADD COLUMN updated_at INTEGER;
    UPDATE transactions SET updated_at = received_at;

    -- retention walks rows in seq order, which is time order: no index on ts needed
    DROP INDEX messages_by_ts;

    CREATE VIEW charge_point_status AS
    SELECT
        cp.identity,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.connected') AS connected,
        coalesce(
            (SELECT val FROM states WHERE id = cp.prefix || '.evse.1.connector.1.status'),
            (SELECT val FROM states WHERE id = cp.prefix || '.info.status')
        ) AS status,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.protocol') AS protocol,
        (SELECT val FROM states WHERE id = cp.prefix || '.transactions.last.idToken') AS rfid,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.soc') AS soc,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerW') AS power_w,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.energyWh') AS energy_wh,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.energyKWh') AS energy_kwh,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.voltageL1') AS voltage_l1,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.voltageL2') AS voltage_l2,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.voltageL3') AS voltage_l3,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.currentL1') AS current_l1,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.currentL2') AS current_l2,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.currentL3') AS current_l3,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerL1') AS power_l1,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerL2') AS power_l2,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerL3') AS power_l3,
        (SELECT val FROM states WHERE id = cp.prefix || '.transactions.active') AS tx_active,
        (SELECT val FROM states WHERE id = cp.prefix || '.transactions.last.energyKWh')
            AS tx_energy_kwh,
        (SELECT val FROM states WHERE id = cp.prefix || '.control.chargeLimit') AS charge_limit,
        (SELECT val FROM states WHERE id = cp.prefix || '.control.numberOfPhases')
            AS number_phases,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.lastSeen') AS last_seen
    FROM charge_points AS cp;
    """,
    # 3: controls written by any process are queued by a trigger, so that none is lost
    # or run twice, whatever else writes to the same row
    """
    CREATE TABLE control_queue (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the appliance
                                                       -- remembers the last it took
        id         TEXT NOT NULL,
        val,
        written_at INTEGER NOT NULL
    );
    CREATE TRIGGER states_command_inserted AFTER INSERT ON states WHEN NEW.ack = 0
    BEGIN
        INSERT INTO control_queue (id, val, written_at)
        VALUES (NEW.id, NEW.val, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    END;
    CREATE TRIGGER states_command_updated AFTER UPDATE ON states WHEN NEW.ack = 0
    BEGIN
        INSERT INTO control_queue (id, val, written_at)
        VALUES (NEW.id, NEW.val, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    END;
    """,
    # 4: the database tells the truth (README "The database"): frames say when a secret
    # was redacted; each control keeps its own outcome and the value in force; a write
    # that can never work is refused by SQLite itself; one version-neutral `state` and
    # the age of the last reading in charge_point_status
    """
    ALTER TABLE messages ADD COLUMN redacted INTEGER NOT NULL DEFAULT 0;

    CREATE TABLE control_outcomes (
        id       TEXT PRIMARY KEY,               -- the state written
        ts       INTEGER NOT NULL,               -- when the outcome was known
        value,                                   -- what was written
        ok       INTEGER NOT NULL,               -- 1: in force now
        response TEXT,                           -- the charge point's answer (JSON)
        error    TEXT,                           -- why not; NULL when ok
        in_force                                 -- the value in force after it
    ) WITHOUT ROWID;

    CREATE TRIGGER states_command_refused_insert BEFORE INSERT ON states
    WHEN NEW.ack = 0 AND NOT EXISTS (SELECT 1 FROM objects WHERE id = NEW.id AND writable = 1)
    BEGIN
        SELECT RAISE(ABORT, 'not a writable state: no such charge point or control, or read-only');
    END;
    CREATE TRIGGER states_command_refused_update BEFORE UPDATE ON states
    WHEN NEW.ack = 0 AND NOT EXISTS (SELECT 1 FROM objects WHERE id = NEW.id AND writable = 1)
    BEGIN
        SELECT RAISE(ABORT, 'not a writable state: no such charge point or control, or read-only');
    END;

    -- the value in force before a write: what a failed command goes back to
    ALTER TABLE control_queue ADD COLUMN previous;
    ALTER TABLE control_queue ADD COLUMN had_previous INTEGER NOT NULL DEFAULT 0;
    DROP TRIGGER states_command_updated;
    CREATE TRIGGER states_command_updated AFTER UPDATE ON states WHEN NEW.ack = 0
    BEGIN
        INSERT INTO control_queue (id, val, written_at, previous, had_previous)
        VALUES (NEW.id, NEW.val, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
                CASE WHEN OLD.ack = 1 THEN OLD.val END, OLD.ack = 1);
    END;

    DROP VIEW charge_point_status;
    CREATE VIEW charge_point_status AS
    SELECT
        cp.identity,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.connected') AS connected,
        coalesce(
            (SELECT val FROM states WHERE id = cp.prefix || '.evse.1.connector.1.status'),
            (SELECT val FROM states WHERE id = cp.prefix || '.info.status')
        ) AS status,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.protocol') AS protocol,
        (SELECT val FROM states WHERE id = cp.prefix || '.transactions.last.idToken') AS rfid,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.soc') AS soc,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerW') AS power_w,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.energyWh') AS energy_wh,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.energyKWh') AS energy_kwh,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.voltageL1') AS voltage_l1,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.voltageL2') AS voltage_l2,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.voltageL3') AS voltage_l3,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.currentL1') AS current_l1,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.currentL2') AS current_l2,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.currentL3') AS current_l3,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerL1') AS power_l1,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerL2') AS power_l2,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerL3') AS power_l3,
        (SELECT val FROM states WHERE id = cp.prefix || '.transactions.active') AS tx_active,
        (SELECT val FROM states WHERE id = cp.prefix || '.transactions.last.energyKWh')
            AS tx_energy_kwh,
        (SELECT val FROM states WHERE id = cp.prefix || '.control.chargeLimit') AS charge_limit,
        (SELECT val FROM states WHERE id = cp.prefix || '.control.numberOfPhases')
            AS number_phases,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.lastSeen') AS last_seen,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.state') AS state,
        (SELECT max(ts) FROM states
            WHERE id > cp.prefix || '.meterValues.' AND id < cp.prefix || '.meterValues/')
            AS last_reading,
        CAST((julianday('now') - 2440587.5) * 86400 - (SELECT max(ts) FROM states
            WHERE id > cp.prefix || '.meterValues.' AND id < cp.prefix || '.meterValues/')
            / 1000.0 AS INTEGER) AS reading_age_s
    FROM charge_points AS cp;
    """,
    # 5: after a reconnect the database still tells the truth (issue 25): the newest
    # reading is when the charge point last reported one (`info.lastReading`; before it
    # exists, the newest reading's write), not when a disconnect set power to NULL; the
    # charge limit's unit; what the appliance changed to make a control work
    """
    ALTER TABLE control_outcomes ADD COLUMN note TEXT;

    DROP VIEW charge_point_status;
    CREATE VIEW charge_point_status AS
    SELECT
        cp.identity,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.connected') AS connected,
        coalesce(
            (SELECT val FROM states WHERE id = cp.prefix || '.evse.1.connector.1.status'),
            (SELECT val FROM states WHERE id = cp.prefix || '.info.status')
        ) AS status,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.protocol') AS protocol,
        (SELECT val FROM states WHERE id = cp.prefix || '.transactions.last.idToken') AS rfid,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.soc') AS soc,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerW') AS power_w,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.energyWh') AS energy_wh,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.energyKWh') AS energy_kwh,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.voltageL1') AS voltage_l1,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.voltageL2') AS voltage_l2,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.voltageL3') AS voltage_l3,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.currentL1') AS current_l1,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.currentL2') AS current_l2,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.currentL3') AS current_l3,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerL1') AS power_l1,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerL2') AS power_l2,
        (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerL3') AS power_l3,
        (SELECT val FROM states WHERE id = cp.prefix || '.transactions.active') AS tx_active,
        (SELECT val FROM states WHERE id = cp.prefix || '.transactions.last.energyKWh')
            AS tx_energy_kwh,
        (SELECT val FROM states WHERE id = cp.prefix || '.control.chargeLimit') AS charge_limit,
        (SELECT val FROM states WHERE id = cp.prefix || '.control.numberOfPhases')
            AS number_phases,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.lastSeen') AS last_seen,
        (SELECT val FROM states WHERE id = cp.prefix || '.info.state') AS state,
        cp.reading_at AS last_reading,
        CAST((julianday('now') - 2440587.5) * 86400 - cp.reading_at / 1000.0 AS INTEGER)
            AS reading_age_s,
        (SELECT val FROM states WHERE id = cp.prefix || '.control.chargeLimitType')
            AS charge_limit_unit
    FROM (SELECT identity, prefix, coalesce(
            (SELECT val FROM states WHERE id = c.prefix || '.info.lastReading'),
            (SELECT max(ts) FROM states
                WHERE id > c.prefix || '.meterValues.' AND id < c.prefix || '.meterValues/')
        ) AS reading_at FROM charge_points AS c) AS cp;
    """,
]
_POWER_5 = "(SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerW') AS power_w,"
_POWER_6 = """coalesce(
            (SELECT val FROM states WHERE id = cp.prefix || '.meterValues.powerW'),
            (SELECT sum(val) FROM states WHERE id IN (cp.prefix || '.meterValues.powerL1',
                cp.prefix || '.meterValues.powerL2', cp.prefix || '.meterValues.powerL3'))
        ) AS power_w,"""
assert MIGRATIONS[4].count(_POWER_5) == 1
MIGRATIONS.append(
    # 6: live power from the first minute (issue 26): a charge point that reports power
    # per phase only has a total too, the sum of its phases (the view of 5 otherwise)
    "DROP VIEW charge_point_status;"
    + MIGRATIONS[4].split("DROP VIEW charge_point_status;")[1].replace(_POWER_5, _POWER_6)
)
MIGRATIONS.append(
    # 7: every site into one PostgreSQL (issue 22, README "Many sites into one
    # PostgreSQL"): a row that changes after its insert (a session's stop, an outcome's
    # value in force) gets a revision, in commit order, so replication finds what changed
    # since its watermark; the watermarks themselves
    """
    CREATE TABLE revision (n INTEGER NOT NULL);
    INSERT INTO revision (n) VALUES (0);
    ALTER TABLE transactions ADD COLUMN rev INTEGER;
    ALTER TABLE control_outcomes ADD COLUMN rev INTEGER;
    UPDATE transactions SET rev = seq;
    UPDATE control_outcomes SET rev = (SELECT count(*) FROM control_outcomes AS o
        WHERE o.ts < control_outcomes.ts
            OR (o.ts = control_outcomes.ts AND o.id <= control_outcomes.id))
        + coalesce((SELECT max(seq) FROM transactions), 0);
    UPDATE revision SET n = coalesce((SELECT max(rev) FROM control_outcomes),
        (SELECT max(rev) FROM transactions), 0);
    CREATE INDEX transactions_by_rev ON transactions (rev);
    CREATE INDEX control_outcomes_by_rev ON control_outcomes (rev);
    CREATE TRIGGER transactions_inserted AFTER INSERT ON transactions BEGIN
        UPDATE revision SET n = n + 1;
        UPDATE transactions SET rev = (SELECT n FROM revision) WHERE seq = NEW.seq;
    END;
    CREATE TRIGGER transactions_updated AFTER UPDATE ON transactions
        WHEN NEW.rev IS OLD.rev BEGIN
        UPDATE revision SET n = n + 1;
        UPDATE transactions SET rev = (SELECT n FROM revision) WHERE seq = NEW.seq;
    END;
    CREATE TRIGGER control_outcomes_inserted AFTER INSERT ON control_outcomes BEGIN
        UPDATE revision SET n = n + 1;
        UPDATE control_outcomes SET rev = (SELECT n FROM revision) WHERE id = NEW.id;
    END;
    CREATE TRIGGER control_outcomes_updated AFTER UPDATE ON control_outcomes
        WHEN NEW.rev IS OLD.rev BEGIN
        UPDATE revision SET n = n + 1;
        UPDATE control_outcomes SET rev = (SELECT n FROM revision) WHERE id = NEW.id;
    END;
    CREATE TABLE replication (
        name      TEXT PRIMARY KEY,              -- the table replicated
        watermark INTEGER NOT NULL,              -- its seq / rev / ts replicated up to
        ts        INTEGER NOT NULL               -- when (appliance clock, ms)
    ) WITHOUT ROWID;
    """
)
MIGRATIONS.append(
    # 8: several files of one site in one PostgreSQL (issue 23): each file's own random
    # id, the `origin` of what it replicates (README "A big site on several processes")
    """
    INSERT OR IGNORE INTO meta (key, value) VALUES ('origin', lower(hex(randomblob(8))));
    """
)
MIGRATIONS.append(
    # 9: a second backend (issue 24, README "A second backend"): the frames to and from
    # an upstream are in `messages` with its name as `peer`; what waits for it, durably;
    # the 1.6 transaction ids it gave
    """
    ALTER TABLE messages ADD COLUMN peer TEXT;
    CREATE TABLE upstream_queue (
        seq       INTEGER PRIMARY KEY,
        upstream  TEXT NOT NULL,
        identity  TEXT NOT NULL,
        key       TEXT NOT NULL,
        action    TEXT NOT NULL,
        payload   TEXT NOT NULL,
        queued_at INTEGER NOT NULL,
        local_id  TEXT,
        UNIQUE (upstream, identity, key)
    );
    CREATE TABLE upstream_transactions (
        upstream  TEXT NOT NULL,
        identity  TEXT NOT NULL,
        local_id  TEXT NOT NULL,
        remote_id INTEGER NOT NULL,
        PRIMARY KEY (upstream, identity, local_id)
    ) WITHOUT ROWID;
    """
)

_UPSTREAMS_AFTER = """(SELECT val FROM states WHERE id = cp.prefix || '.control.chargeLimitType')
            AS charge_limit_unit"""
assert MIGRATIONS[5].count(_UPSTREAMS_AFTER) == 1
MIGRATIONS.append(
    # 10: each upstream's state in charge_point_status (issue 24, README "A second
    # backend"): {name: {connected, since, waiting, reason}} as JSON, NULL without one;
    # `since` is when `connected` last changed
    MIGRATIONS[5].replace(
        _UPSTREAMS_AFTER,
        _UPSTREAMS_AFTER
        + """,
        (SELECT CASE WHEN count(*) > 0 THEN json_group_object(
            substr(u.id, length(cp.prefix) + 11, length(u.id) - length(cp.prefix) - 20),
            json_object(
                'connected', json(CASE WHEN u.val THEN 'true' ELSE 'false' END),
                'since', u.lc,
                'waiting', (SELECT val FROM states
                    WHERE id = substr(u.id, 1, length(u.id) - 10) || '.waiting'),
                'reason', (SELECT val FROM states
                    WHERE id = substr(u.id, 1, length(u.id) - 10) || '.reason'))) END
            FROM states AS u
            WHERE u.id > cp.prefix || '.upstream.' AND u.id < cp.prefix || '.upstream/'
                AND u.id GLOB '*.connected') AS upstreams""",
    )
)

SCHEMA_VERSION = len(MIGRATIONS)


def status_row(row: sqlite3.Row) -> dict[str, object]:
    """A charge_point_status row as readers hand it out: `upstreams` decoded from JSON."""
    found = dict(row)
    if isinstance(found.get("upstreams"), str):
        found["upstreams"] = json.loads(found["upstreams"])
    return found


class NewerSchema(sqlite3.DatabaseError):
    """The file was written by a newer appliance."""


#: the writer's page cache: the pages it appends to stay in it; the states it updates
#: here and there come back from the OS's page cache when they are not (bench_pipeline,
#: 100 charge points: 2 more read calls and ~3 µs of system time a call, 1.5 MB less
#: than SQLite's default 2 MB; issue 21)
WRITER_CACHE_KB = 512

#: the WAL is copied into the database once it holds this many pages (SQLite's default is
#: 1 000). A checkpoint writes each page changed since the last one once, and most
#: commits change the same pages (the latest states, each charge point's index leaves):
#: fewer checkpoints write them fewer times. At 10 charge points × one reading a second,
#: with history: checkpoints 4.0–4.5 → 2.3 KB a call, 6–7 % of all the bytes written
#: (10 000 pages: 1.6 KB, for a WAL of 40 MB and bursts 2.5 times as long); the WAL file
#: stays near 16–19 MB instead of 4–5 (README "The cost of a stored call", issue 21).
WAL_CHECKPOINT_PAGES = 4000


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Before anything writes (journal_mode does): a newer file is left exactly as it was.
    _refuse_newer(connection, path)
    if connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0:
        # A new file: freed pages go back to the file system as retention prunes.
        # auto_vacuum can only be chosen before the first page is written.
        connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
    connection.execute("PRAGMA journal_mode = WAL")
    # FULL: each commit is fsynced, so at most one commit interval is lost on power loss.
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KB}")
    connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    connection.isolation_level = "DEFERRED"
    return connection


#: the page cache of a reader: a look reads most pages once, and the writer's next
#: commit makes them stale. With SQLite's default each reader held 2.1 MB; with this,
#: 0.34 MB, for the same CPU (all `states` of 100 charge points and 2 000 meter values,
#: once a second; issue 21)
READER_CACHE_KB = 256


def reading(path: Path, read_only: bool = False) -> sqlite3.Connection:
    """A connection of a reader of its own (the controls, replication, the dashboard,
    MQTT), used from one worker thread at a time; it waits for the writer rather than
    fail."""
    where = f"file:{path}?mode=ro" if read_only else str(path)
    connection = sqlite3.connect(where, uri=read_only, check_same_thread=False, timeout=5)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute(f"PRAGMA cache_size = -{READER_CACHE_KB}")
    return connection


def _refuse_newer(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        connection.close()
        raise NewerSchema(
            f"{path} has schema version {version}, newer than this appliance knows"
            f" ({SCHEMA_VERSION}): refusing to touch it; run a newer ocpp-appliance"
        )


def migrate(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    _refuse_newer(connection, path)
    for number in range(version, SCHEMA_VERSION):
        with connection:
            connection.executescript(
                "BEGIN IMMEDIATE;" + MIGRATIONS[number] + f";PRAGMA user_version = {number + 1};"
            )
        log.info("database: migrated %s to schema version %d", path, number + 1)


def create_private(path: Path) -> None:
    """Create the file group-readable/writable, never world-readable (README
    "Security"); SQLite gives the -wal and -shm files the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o660))
        os.chmod(path, 0o660)  # the umask may have taken the group's write bit
