"""One status vocabulary for every version (README "The database", `state`): what a
dashboard shows, derived from each version's connector status and, in 2.x, the
TransactionEvent's `chargingState`. The raw status is kept beside it."""

from __future__ import annotations

#: the version-neutral states, in README order
STATES = (
    "available",
    "preparing",
    "charging",
    "suspended_ev",
    "suspended_evse",
    "finishing",
    "reserved",
    "unavailable",
    "faulted",
    "offline",
)

#: a connector status (1.6 ChargePointStatus, 2.x ConnectorStatusEnumType) → state; None:
#: it depends on the session (2.x `Occupied`)
FROM_STATUS: dict[str, str | None] = {
    "Available": "available",
    "Preparing": "preparing",
    "Charging": "charging",
    "SuspendedEV": "suspended_ev",
    "SuspendedEVSE": "suspended_evse",
    "Finishing": "finishing",
    "Reserved": "reserved",
    "Unavailable": "unavailable",
    "Faulted": "faulted",
    "Occupied": None,
}

#: 2.x TransactionEvent `transactionInfo.chargingState` → state while `Occupied` and a
#: transaction runs (Part 2 E: ChargingStateEnumType)
FROM_CHARGING_STATE: dict[str, str] = {
    "Charging": "charging",
    "SuspendedEV": "suspended_ev",
    "SuspendedEVSE": "suspended_evse",
    "EVConnected": "preparing",
    "Idle": "preparing",
}


def state_of(
    status: str | None, charging_state: str | None, running: bool, ended: bool
) -> str | None:
    """The state of a connector: its status, where that says it; else (2.x `Occupied`)
    the charging state while a transaction runs, `finishing` after one ended with the
    cable still in, `preparing` before one starts. None: nothing known yet."""
    if status is None:
        return None
    state = FROM_STATUS.get(status, "unknown")
    if state is not None:
        return state
    if running:
        return FROM_CHARGING_STATE.get(charging_state or "", "preparing")
    return "finishing" if ended else "preparing"
