"""The only code that touches SQLite: typed rows in (`rows`), one writer thread
(`writer`), the schema as migrations (`migrations`), retention, the control queue
(`commands`) and what is read at start (`start`)."""

from appliance.store.commands import CommandReader, write_controls
from appliance.store.migrations import SCHEMA_VERSION, connect, migrate
from appliance.store.retention import Retention
from appliance.store.rows import (
    ChargePointRow,
    CommandDone,
    ConnectionRow,
    ControlOutcome,
    FrameRow,
    InForce,
    Meta,
    MetaValue,
    MeterValueRow,
    MeterValueRows,
    SessionsShifted,
    StateWrite,
    TransactionRow,
)
from appliance.store.start import Opened, TransactionIds, start_key
from appliance.store.writer import HEALTHY, Store, StoreError, now_ms

__all__ = [
    "HEALTHY",
    "SCHEMA_VERSION",
    "ChargePointRow",
    "CommandDone",
    "CommandReader",
    "ConnectionRow",
    "ControlOutcome",
    "FrameRow",
    "InForce",
    "Meta",
    "MetaValue",
    "MeterValueRow",
    "MeterValueRows",
    "Opened",
    "Retention",
    "SessionsShifted",
    "StateWrite",
    "Store",
    "StoreError",
    "TransactionIds",
    "TransactionRow",
    "connect",
    "migrate",
    "now_ms",
    "start_key",
    "write_controls",
]
