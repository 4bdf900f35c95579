"""OCPP 2.1: the 2.0.1 mapping plus the answers that must echo the request."""

from __future__ import annotations

from appliance.domain.clock import iso_now
from appliance.versions import v201
from appliance.versions.common import Context, Handler, Payload, as_int, need, objects


def vat_number_validation(ctx: Context, payload: Payload) -> Payload:
    # No VAT registry behind the appliance: the number is echoed and not confirmed.
    answer: Payload = {"vatNumber": need(payload, "vatNumber"), "status": "Rejected"}
    # the echo is built from the values taken (lenient: "355" is EVSE 355), so that the
    # answer is valid whatever the request's spelling
    evse = as_int(payload.get("evseId"))
    if evse is not None:
        answer["evseId"] = evse
    return answer


def get_certificate_chain_status(ctx: Context, payload: Payload) -> Payload:
    # No OCSP access: every certificate asked about is answered Failed.
    return {
        "certificateStatus": [
            {
                "certificateHashData": request.get("certificateHashData"),
                "source": request.get("source"),
                "status": "Failed",
                "nextUpdate": iso_now(),
            }
            for request in objects(need(payload, "certificateStatusRequests"))
        ]
    }


HANDLERS: dict[str, Handler] = {
    **v201.HANDLERS,
    "VatNumberValidation": vat_number_validation,
    "GetCertificateChainStatus": get_certificate_chain_status,
}
