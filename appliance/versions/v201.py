"""OCPP 2.0.1: the charging station's calls and what the appliance answers."""

from __future__ import annotations

from appliance.versions.common import Context, Handler, Payload, iso_now, need

_ACCEPTED = {"status": "Accepted"}


def boot_notification(ctx: Context, payload: Payload) -> Payload:
    return {"status": "Accepted", "currentTime": iso_now(), "interval": ctx.heartbeat_interval}


def heartbeat(ctx: Context, payload: Payload) -> Payload:
    return {"currentTime": iso_now()}


def authorize(ctx: Context, payload: Payload) -> Payload:
    need(payload, "idToken")
    return {"idTokenInfo": _ACCEPTED}


def transaction_event(ctx: Context, payload: Payload) -> Payload:
    # idTokenInfo answers a token; without one the response is empty (Part 2, E01–E15).
    # An event for a transaction the appliance does not know is acknowledged all the same.
    return {"idTokenInfo": _ACCEPTED} if "idToken" in payload else {}


HANDLERS: dict[str, Handler] = {
    "Authorize": authorize,
    "BootNotification": boot_notification,
    "Heartbeat": heartbeat,
    "TransactionEvent": transaction_event,
}
