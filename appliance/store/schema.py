"""The database schema, as forward migrations. `PRAGMA user_version` is the number of
migrations applied; each runs in its own transaction at start."""

from __future__ import annotations

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
]

SCHEMA_VERSION = len(MIGRATIONS)
