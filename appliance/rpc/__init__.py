"""OCPP-J RPC: framing, correlation, timeouts, errors and validation, without I/O."""

from appliance.rpc.dialects import DIALECTS, Dialect, Fault, MessageType
from appliance.rpc.session import (
    CallReceived,
    CallTimedOut,
    ErrorReceived,
    Event,
    Frame,
    LocalProtocolError,
    OutgoingCall,
    ProtocolViolation,
    Received,
    ResultReceived,
    SendReceived,
    Session,
    SessionClosed,
    Validation,
    encode,
)
from appliance.rpc.validation import SchemaSet, Violation

__all__ = [
    "DIALECTS",
    "CallReceived",
    "CallTimedOut",
    "Dialect",
    "ErrorReceived",
    "Event",
    "Fault",
    "Frame",
    "LocalProtocolError",
    "MessageType",
    "OutgoingCall",
    "ProtocolViolation",
    "Received",
    "ResultReceived",
    "SchemaSet",
    "SendReceived",
    "Session",
    "SessionClosed",
    "Validation",
    "Violation",
    "encode",
]
