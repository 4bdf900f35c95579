"""OCPP 1.6J: the charge point's calls and what the appliance answers and records."""

from __future__ import annotations

from appliance.store import START_TRANSACTION, STOP_TRANSACTION, now_ms
from appliance.versions.common import (
    Context,
    Handler,
    Payload,
    iso_now,
    need,
    need_int,
    need_number,
    time_suspect,
)

_ACCEPTED = {"status": "Accepted"}


def boot_notification(ctx: Context, payload: Payload) -> Payload:
    return {"status": "Accepted", "currentTime": iso_now(), "interval": ctx.heartbeat_interval}


def heartbeat(ctx: Context, payload: Payload) -> Payload:
    return {"currentTime": iso_now()}


def authorize(ctx: Context, payload: Payload) -> Payload:
    need(payload, "idTag")
    return {"idTagInfo": _ACCEPTED}


def start_transaction(ctx: Context, payload: Payload) -> Payload:
    connector = need_int(payload, "connectorId")
    id_tag = need(payload, "idTag")
    meter_start = need_number(payload, "meterStart")
    started_at = need(payload, "timestamp")
    # 1.6 connector n is EVSE n with one connector (SPEC §5.1)
    key = (ctx.identity, connector, id_tag, meter_start, started_at)
    transaction_id, new = ctx.transaction_ids.start(key)
    if new:
        ctx.store.put(
            START_TRANSACTION,
            (
                ctx.identity,
                str(transaction_id),
                connector,
                1,
                id_tag,
                started_at,
                meter_start,
                now_ms(),
                int(time_suspect(started_at)),
            ),
        )
    return {"transactionId": transaction_id, "idTagInfo": _ACCEPTED}


def stop_transaction(ctx: Context, payload: Payload) -> Payload:
    # Always acknowledged, also for an unknown id or -1 (offline start): a charger that
    # gets an error retries its StopTransaction forever.
    transaction_id = need_int(payload, "transactionId")
    stopped_at = need(payload, "timestamp")
    ctx.store.put(
        STOP_TRANSACTION,
        (
            ctx.identity,
            str(transaction_id),
            stopped_at,
            need_number(payload, "meterStop"),
            payload.get("reason", "Local"),
            now_ms(),
            int(time_suspect(stopped_at)),
        ),
    )
    return {"idTagInfo": _ACCEPTED} if "idTag" in payload else {}


HANDLERS: dict[str, Handler] = {
    "Authorize": authorize,
    "BootNotification": boot_notification,
    "Heartbeat": heartbeat,
    "StartTransaction": start_transaction,
    "StopTransaction": stop_transaction,
}
