"""Per-version mapping: one module per OCPP version, one table of them (`VERSIONS`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.domain import Setting
from appliance.rpc import DIALECTS, Dialect
from appliance.versions import tables, v16, v21, v201
from appliance.versions.common import (
    Answer,
    CallBuilder,
    Context,
    Handler,
    Payload,
    TransactionIdSource,
    Unprocessable,
)


@dataclass(frozen=True, slots=True)
class Version:
    """What one OCPP version means to the appliance: its RPC dialect, who may call what,
    the handlers of the charge point's calls, and the controls as its calls."""

    dialect: Dialect
    #: what charge points may call: the rest of the schemas is answered NotSupported
    from_charge_point: frozenset[str]
    #: what the appliance may call
    from_csms: frozenset[str]
    handlers: dict[str, Handler]
    #: the answer to every call without a handler of its own (shared: never mutated)
    default_responses: dict[str, dict[str, Any]]
    #: the controls of README "Controls" as this version's calls: name → (action, payload)
    controls: dict[str, CallBuilder]
    #: where the charge point says which charging rate units it takes (a state below its
    #: identity holding a comma-separated list), and its words for A and W
    rate_units: tuple[str, dict[str, str]]
    #: README "Readings the appliance asks for": role → the setting's name, the keys
    #: that bound a list's length, the measurands this version names
    reading_settings: dict[str, str]
    list_lengths: dict[str, str]
    measurands: frozenset[str]
    #: what was fetched after boot (1.6 configuration keys, 2.x Device Model values) as
    #: settings; the status word of the answer to a "setting" control
    settings: Callable[[list[Any]], list[Setting]]
    setting_status: Callable[[Payload], str | None]
    #: README "A second backend": what waits durably for an upstream; what carries the
    #: transaction id the central system gave
    offline_queued: frozenset[str]
    given_transaction_id: frozenset[str]
    #: action → the answer's field with the verdict on a token
    token_verdict: dict[str, str]
    #: runs on every call before its handler (2.x: customData may carry a VIN)
    inspect: Callable[[Context, Payload], None] | None = None

    def respond(self, ctx: Context, action: str, payload: Payload) -> Answer:
        """The answer to a charge point's call and the updates it implies. Pure: nothing
        is applied here (raises Unprocessable for a request it cannot answer)."""
        ctx.updates = []
        ctx.unusable = []
        if self.inspect is not None:
            self.inspect(ctx, payload)
        handler = self.handlers.get(action)
        answer = self.default_responses[action] if handler is None else handler(ctx, payload)
        return Answer(answer, ctx.updates, ctx.unusable)


def _version(
    name: str,
    module: Any,
    handlers: dict[str, Handler],
    inspect: Callable[[Context, Payload], None] | None = None,
) -> Version:
    return Version(
        DIALECTS[name],
        tables.FROM_CHARGE_POINT[name],
        tables.FROM_CSMS[name],
        handlers,
        tables.MINIMAL_RESPONSES[name],
        module.CONTROLS,
        tables.RATE_UNITS[name],
        tables.READING_SETTINGS[name],
        tables.LIST_LENGTH_SETTINGS[name],
        tables.MEASURAND_NAMES[name],
        module.settings,
        module.setting_status,
        tables.OFFLINE_QUEUED[name],
        tables.GIVEN_TRANSACTION_ID[name],
        tables.TOKEN_VERDICT[name],
        inspect,
    )


#: every version the appliance speaks, by subprotocol (the names come from rpc.DIALECTS)
VERSIONS: dict[str, Version] = {
    tables.OCPP16: _version(tables.OCPP16, v16, v16.HANDLERS),
    tables.OCPP201: _version(tables.OCPP201, v201, v201.HANDLERS, v201.custom_data),
    tables.OCPP21: _version(tables.OCPP21, v201, v21.HANDLERS, v201.custom_data),
}

__all__ = ["VERSIONS", "Answer", "Context", "TransactionIdSource", "Unprocessable", "Version"]
