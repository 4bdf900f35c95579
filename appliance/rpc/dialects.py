"""Per-version facts of OCPP-J: the one table the RPC engine consults.

Three editions share one engine; what differs between them is data: the spelling of the
error codes, which message types exist, and where the schemas live.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MessageType(enum.IntEnum):
    """OCPP-J message type numbers (OCPP-J 1.6 §4.1.3, 2.0.1 Part 4 §4.1.3, 2.1 adds 5 and 6)."""

    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4
    CALLRESULTERROR = 5
    SEND = 6


class Fault(enum.Enum):
    """What went wrong, independent of how a version spells it."""

    FRAME = "frame not JSON, not an array, or wrong element types"
    FORMAT = "payload is not an object"
    OCCURRENCE = "required field missing, or too many / too few items"
    TYPE = "wrong JSON type of a field"
    PROPERTY = "invalid value of a field"
    NOT_IMPLEMENTED = "unknown action"
    NOT_SUPPORTED = "action recognised but not accepted in this direction"
    MESSAGE_TYPE = "unknown message type"
    INTERNAL = "internal error"
    GENERIC = "generic error"


@dataclass(frozen=True, slots=True)
class Dialect:
    subprotocol: str
    schema_folder: str
    #: the config key that enables it (README "Configuration")
    config_key: str
    message_types: frozenset[MessageType]
    error_codes: dict[Fault, str]
    #: the message id to answer when a frame is too broken to read one (2.x Part 4 §4.2.3)
    unreadable_id: str = "-1"

    def error_code(self, fault: Fault) -> str:
        return self.error_codes[fault]


# OCPP-J 1.6 §4.2.3: the 1.6 spelling has typos that conforming peers rely on.
# 1.6 has no code for an unknown message type: ProtocolError is the closest.
_ERRORS_16 = {
    Fault.FRAME: "FormationViolation",
    Fault.FORMAT: "FormationViolation",
    Fault.OCCURRENCE: "OccurenceConstraintViolation",
    Fault.TYPE: "TypeConstraintViolation",
    Fault.PROPERTY: "PropertyConstraintViolation",
    Fault.NOT_IMPLEMENTED: "NotImplemented",
    Fault.NOT_SUPPORTED: "NotSupported",
    Fault.MESSAGE_TYPE: "ProtocolError",
    Fault.INTERNAL: "InternalError",
    Fault.GENERIC: "GenericError",
}

# OCPP 2.0.1 / 2.1 Part 4 §4.3: corrected spellings plus RpcFrameworkError and
# MessageTypeNotSupported.
_ERRORS_2X = {
    Fault.FRAME: "RpcFrameworkError",
    Fault.FORMAT: "FormatViolation",
    Fault.OCCURRENCE: "OccurrenceConstraintViolation",
    Fault.TYPE: "TypeConstraintViolation",
    Fault.PROPERTY: "PropertyConstraintViolation",
    Fault.NOT_IMPLEMENTED: "NotImplemented",
    Fault.NOT_SUPPORTED: "NotSupported",
    Fault.MESSAGE_TYPE: "MessageTypeNotSupported",
    Fault.INTERNAL: "InternalError",
    Fault.GENERIC: "GenericError",
}

_CLASSIC = frozenset({MessageType.CALL, MessageType.CALLRESULT, MessageType.CALLERROR})

# The versions the appliance speaks: listed here, once. Everything else that differs by
# version is keyed by these subprotocol names.
OCPP16 = Dialect("ocpp1.6", "v16", "enable16", _CLASSIC, _ERRORS_16)
OCPP201 = Dialect("ocpp2.0.1", "v201", "enable201", _CLASSIC, _ERRORS_2X)
OCPP21 = Dialect("ocpp2.1", "v21", "enable21", frozenset(MessageType), _ERRORS_2X)

#: newest first: the order in which a subprotocol offered by a charge point is preferred
DIALECTS: dict[str, Dialect] = {d.subprotocol: d for d in (OCPP21, OCPP201, OCPP16)}
