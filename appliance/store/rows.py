"""Typed records that callers hand to the store. Each is a NamedTuple whose fields are
the columns of its table, in order: the writer binds it as it is (no copy per row).
Only `store/` knows the tables these become (see `sql.py`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple


class Meta(NamedTuple):
    """How `objects` describes a state."""

    type: str  # number | string | boolean | json
    role: str
    unit: str | None
    writable: bool
    name: str


class StateWrite(NamedTuple):
    """One state: its id, its value, and its description (None: inferred from the value).
    `ts`: when it was written, where that is not the time of the write that carries it
    (a reading rewritten unchanged keeps the time it was reported, README "Readings")."""

    id: str
    value: Any
    meta: Meta | None = None
    ts: int | None = None
    #: written only when the value differs from the one last written (the flattened
    #: leaves of a payload: README "`states` and `objects`", `.data.<path>`)
    changes_only: bool = False


class FrameRow(NamedTuple):
    """A frame as it crossed the wire (`messages`)."""

    ts: int
    identity: str
    protocol: str | None
    direction: str  # in | out
    message_type: int | None
    message_id: str | None
    action: str | None
    payload: str
    violation: str | None
    #: 1: a secret in it was replaced by "***" (README "Security")
    redacted: int = 0
    #: None: the charge point; else the upstream it went to or came from
    #: (README "A second backend")
    peer: str | None = None


class ConnectionRow(NamedTuple):
    """A connect, disconnect or refusal (`connection_log`)."""

    ts: int
    identity: str | None
    remote_addr: str | None
    protocol: str | None
    event: str  # connect | disconnect | refused
    reason: str | None


class ChargePointRow(NamedTuple):
    """A charge point seen for the first time (`charge_points`; later ones change nothing)."""

    identity: str
    prefix: str
    first_seen: int


class MeterValueRow(NamedTuple):
    """One sampled value (`meter_values`)."""

    identity: str
    evse_id: int | None
    connector_id: int | None
    transaction_id: str | None
    sampled_at: str | None
    measurand: str
    phase: str | None
    location: str | None
    context: str | None
    unit: str | None
    value: float
    received_at: int
    time_suspect: int


class MeterValueRows(NamedTuple):
    """The meter values of one message, each a plain tuple in MeterValueRow's column
    order: a message carries up to dozens, and a named tuple apiece costs the event loop
    more than the tuple itself."""

    rows: list[tuple[Any, ...]]


class TransactionRow(NamedTuple):
    """One session event (`transactions`): fields already known are kept, so late,
    repeated or out-of-order events converge on the same row."""

    identity: str
    transaction_id: str
    evse_id: int | None
    connector_id: int | None
    id_token: str | None
    started_at: str | None
    stopped_at: str | None
    meter_start_wh: float | None
    meter_stop_wh: float | None
    stop_reason: str | None
    received_at: int
    time_suspect: int
    seq_no: int | None
    offline: int


class ControlOutcome(NamedTuple):
    """How a control command ended (`control_outcomes`, one row per state written): kept
    until that state is written again."""

    id: str
    ts: int
    value: Any
    ok: int
    response: str | None
    error: str | None
    in_force: Any
    #: what the appliance changed to make it work (a limit sent in the unit the charger
    #: takes), in plain words
    note: str | None = None


class InForce(NamedTuple):
    """The charge point changed a value itself (a reboot reset it): an outcome of a write
    of that state now shows what is in force (`control_outcomes.in_force`)."""

    in_force: Any
    id: str


class SessionsShifted(NamedTuple):
    """The appliance's clock stepped by `by_ms`: the sessions running then (updated
    since `since_ms`, on the old clock) move onto the new one (`received_at`,
    `updated_at`), so that `updated_at − received_at` stays how long they ran."""

    by_ms: int
    since_ms: int


class MetaValue(NamedTuple):
    """A key of the appliance's own bookkeeping (`meta`)."""

    key: str
    value: Any


class Replicated(NamedTuple):
    """How far a table is replicated into PostgreSQL (`replication`; README "Many sites
    into one PostgreSQL"): retention keeps what is beyond it."""

    name: str
    watermark: int
    ts: int


class UpstreamQueued(NamedTuple):
    """A transaction message waiting for an upstream (`upstream_queue`; README "A second
    backend"): until it is delivered, across restarts."""

    upstream: str
    identity: str
    key: str
    action: str
    payload: str
    queued_at: int
    #: StartTransaction: the appliance's transactionId (the upstream gives its own)
    local_id: str | None = None


class UpstreamDelivered(NamedTuple):
    """The upstream answered it: off `upstream_queue`."""

    upstream: str
    identity: str
    key: str


class UpstreamTransaction(NamedTuple):
    """A 1.6 transaction id as the upstream numbered it (`upstream_transactions`)."""

    upstream: str
    identity: str
    local_id: str
    remote_id: int


class CommandDone(NamedTuple):
    """A control command carried out: acknowledged with `value` unless a newer command
    for the same id waits, and taken off `control_queue`."""

    state_id: str
    value: Any
    ts: int
    seq: int


# ------------------------------------------------------- state writes, per commit


class States(NamedTuple):
    """State writes; per commit only the latest value of each id is written."""

    writes: list[StateWrite]
    ts: int


class DefaultStates(NamedTuple):
    """States created if missing and never overwritten (a control's default must not
    undo what a user wrote)."""

    writes: list[StateWrite]
    ts: int


class LazyStates(NamedTuple):
    """State writes computed in the writer thread at commit time; of several with the
    same key in one commit only the latest is computed. `produce` must not touch shared
    mutable state."""

    key: Hashable
    produce: Callable[[], list[StateWrite]]
    ts: int


#: the history and bookkeeping rows: each becomes one row of one statement
Row = (
    FrameRow
    | ConnectionRow
    | ChargePointRow
    | MeterValueRow
    | TransactionRow
    | MetaValue
    | SessionsShifted
    | ControlOutcome
    | InForce
    | Replicated
    | UpstreamQueued
    | UpstreamDelivered
    | UpstreamTransaction
)
#: everything the store's queue carries
Item = Row | list[Row] | MeterValueRows | CommandDone | States | DefaultStates | LazyStates
