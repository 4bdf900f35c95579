"""Per-version mapping: one module per OCPP version, one table of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.rpc import DIALECTS, Dialect
from appliance.versions import tables, v16, v21, v201
from appliance.versions.common import Command, Context, Handler, Payload, Unprocessable


@dataclass(frozen=True, slots=True)
class Protocol:
    dialect: Dialect
    #: what charge points may call: the rest of the schemas is answered NotSupported
    from_charge_point: frozenset[str]
    #: what the appliance may call
    from_csms: frozenset[str]
    handlers: dict[str, Handler]
    #: the answer to every call without a handler of its own (shared: never mutated)
    default_responses: dict[str, dict[str, Any]]
    #: the controls of SPEC §6 as this version's calls: name → (action, payload)
    commands: dict[str, Command]
    #: runs on every call before its handler (2.x: customData may carry a VIN)
    inspect: Callable[[Context, Payload], None] | None = None

    def respond(self, ctx: Context, action: str, payload: Payload) -> Payload:
        if self.inspect is not None:
            self.inspect(ctx, payload)
        handler = self.handlers.get(action)
        if handler is None:
            return self.default_responses[action]
        return handler(ctx, payload)


def _protocol(
    name: str,
    handlers: dict[str, Handler],
    commands: dict[str, Command],
    inspect: Callable[[Context, Payload], None] | None = None,
) -> Protocol:
    return Protocol(
        DIALECTS[name],
        tables.FROM_CHARGE_POINT[name],
        tables.FROM_CSMS[name],
        handlers,
        tables.MINIMAL_RESPONSES[name],
        commands,
        inspect,
    )


PROTOCOLS: dict[str, Protocol] = {
    "ocpp1.6": _protocol("ocpp1.6", v16.HANDLERS, v16.COMMANDS),
    "ocpp2.0.1": _protocol("ocpp2.0.1", v201.HANDLERS, v201.COMMANDS, v201.custom_data),
    "ocpp2.1": _protocol("ocpp2.1", v21.HANDLERS, v201.COMMANDS, v201.custom_data),
}

__all__ = ["PROTOCOLS", "Context", "Protocol", "Unprocessable"]
