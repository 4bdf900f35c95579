"""The sans-I/O OCPP-J RPC layer (README "On the wire") seen from
the peer: the frames a charge point would get back, and the events and records the
appliance would act on.

No sockets, no trio: text goes into `Session.receive`, frames come out of
`Session.take_outgoing`, and the clock is whatever float the test passes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.rpc import (
    DIALECTS,
    CallReceived,
    CallTimedOut,
    ErrorReceived,
    Fault,
    LocalProtocolError,
    ProtocolViolation,
    Received,
    ResultReceived,
    SchemaSet,
    SendReceived,
    Session,
    SessionClosed,
    Validation,
)
from appliance.versions import tables

VERSIONS = ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]
V2X = ["ocpp2.0.1", "ocpp2.1"]
BOTH_MODES = [Validation.STRICT, Validation.LENIENT]

# Compiled once for the module (~0.05 s each).
SCHEMAS = {version: SchemaSet(DIALECTS[version]) for version in VERSIONS}

# ---------------------------------------------------------------- the error-code oracle
# Written out from the OCPP-J texts (1.6 §4.2.3; 2.0.1 / 2.1 Part 4 §4.3) and the README's
# error table, independently of appliance/rpc/dialects.py.

_CODES_16 = {
    "FormationViolation",
    "GenericError",
    "InternalError",
    "NotImplemented",
    "NotSupported",
    "OccurenceConstraintViolation",
    "PropertyConstraintViolation",
    "ProtocolError",
    "SecurityError",
    "TypeConstraintViolation",
}
_CODES_2X = {
    "FormatViolation",
    "GenericError",
    "InternalError",
    "MessageTypeNotSupported",
    "NotImplemented",
    "NotSupported",
    "OccurrenceConstraintViolation",
    "PropertyConstraintViolation",
    "ProtocolError",
    "RpcFrameworkError",
    "SecurityError",
    "TypeConstraintViolation",
}
VALID_CODES = {"ocpp1.6": _CODES_16, "ocpp2.0.1": _CODES_2X, "ocpp2.1": _CODES_2X}

# the README's error table, by row
_SPEC_16 = {
    "frame": "FormationViolation",
    "format": "FormationViolation",
    "occurrence": "OccurenceConstraintViolation",  # sic: the 1.6 spelling
    "type": "TypeConstraintViolation",
    "property": "PropertyConstraintViolation",
    "not_implemented": "NotImplemented",
    "not_supported": "NotSupported",
    "message_type": "ProtocolError",
    "internal": "InternalError",
}
_SPEC_2X = {
    "frame": "RpcFrameworkError",
    "format": "FormatViolation",
    "occurrence": "OccurrenceConstraintViolation",
    "type": "TypeConstraintViolation",
    "property": "PropertyConstraintViolation",
    "not_implemented": "NotImplemented",
    "not_supported": "NotSupported",
    "message_type": "MessageTypeNotSupported",
    "internal": "InternalError",
}
CODE = {"ocpp1.6": _SPEC_16, "ocpp2.0.1": _SPEC_2X, "ocpp2.1": _SPEC_2X}
FAULT = {
    "frame": Fault.FRAME,
    "format": Fault.FORMAT,
    "occurrence": Fault.OCCURRENCE,
    "type": Fault.TYPE,
    "property": Fault.PROPERTY,
}


def frame_codes(version: str) -> set[str]:
    """README error table: a broken frame is FormationViolation (or ProtocolError) in 1.6."""
    if version == "ocpp1.6":
        return {"FormationViolation", "ProtocolError"}
    return {"RpcFrameworkError"}


# ------------------------------------------------------------------------- payloads

T0 = "2026-01-01T00:00:00Z"
BOOT = {
    "ocpp1.6": {"chargePointVendor": "ACME", "chargePointModel": "Wallbox"},
    "ocpp2.0.1": {
        "reason": "PowerUp",
        "chargingStation": {"model": "Wallbox", "vendorName": "ACME"},
    },
    "ocpp2.1": {"reason": "PowerUp", "chargingStation": {"model": "Wallbox", "vendorName": "ACME"}},
}
BOOT_RESPONSE = {"status": "Accepted", "currentTime": T0, "interval": 300}
HEARTBEAT_RESPONSE = {"currentTime": T0}
STATUS_16 = {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": T0}
STATUS_2X = {"timestamp": T0, "connectorStatus": "Available", "evseId": 1, "connectorId": 1}
STATUS = {"ocpp1.6": STATUS_16, "ocpp2.0.1": STATUS_2X, "ocpp2.1": STATUS_2X}
EV_NEEDS = {
    "evseId": 1,
    "chargingNeeds": {
        "requestedEnergyTransfer": "DC",
        "dcChargingParameters": {"evMaxCurrent": 100, "evMaxVoltage": 400, "stateOfCharge": 50},
    },
}
# what a CSMS must never receive (FROM_CSMS only), with a schema-valid payload
CSMS_ONLY = {
    "ocpp1.6": ("Reset", {"type": "Hard"}),
    "ocpp2.0.1": (
        "RequestStartTransaction",
        {"remoteStartId": 1, "idToken": {"idToken": "04A1B2C3", "type": "ISO14443"}},
    ),
    "ocpp2.1": (
        "RequestStartTransaction",
        {"remoteStartId": 1, "idToken": {"idToken": "04A1B2C3", "type": "ISO14443"}},
    ),
}
STREAM = {"id": 1, "pending": 0, "basetime": T0, "data": [{"t": 0, "v": "230.1"}]}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def _without(base: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != key}


def _deep_set(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(base))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy


# (case, version) -> (side, action, payload, README table row). side "csms": the appliance's
# session; "cp": a session serving FROM_CSMS (1.6 has no range rule in CP→CSMS messages).
_VIOLATIONS_16 = {
    "missing_required": ("csms", "BootNotification", {"chargePointVendor": "ACME"}, "occurrence"),
    "too_few_items": ("csms", "MeterValues", {"connectorId": 1, "meterValue": []}, "occurrence"),
    "wrong_type": ("csms", "StatusNotification", _with(STATUS_16, connectorId="1"), "type"),
    "bad_enum": ("csms", "StatusNotification", _with(STATUS_16, status="Occupied"), "property"),
    "too_long": (
        "csms",
        "BootNotification",
        _with(BOOT["ocpp1.6"], chargePointVendor="A" * 21),
        "property",
    ),
    "bad_date_time": (
        "csms",
        "StatusNotification",
        _with(STATUS_16, timestamp="yesterday"),
        "property",
    ),
    "out_of_range": (
        "cp",
        "RemoteStartTransaction",
        {
            "idTag": "04A1B2C3",
            "chargingProfile": {
                "chargingProfileId": 1,
                "stackLevel": 0,
                "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {
                    "chargingRateUnit": "A",
                    # multipleOf 0.1
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.35}],
                },
            },
        },
        "property",
    ),
    # the most basic thing wrong is answered: a missing field before a bad value
    "missing_and_too_long": (
        "csms",
        "BootNotification",
        {"chargePointVendor": "A" * 21},
        "occurrence",
    ),
}


def _violations_2x(version: str) -> dict[str, tuple[str, str, dict[str, Any], str]]:
    boot = BOOT[version]
    return {
        "missing_required": ("csms", "BootNotification", {"reason": "PowerUp"}, "occurrence"),
        "too_few_items": ("csms", "MeterValues", {"evseId": 1, "meterValue": []}, "occurrence"),
        "wrong_type": ("csms", "StatusNotification", _with(STATUS_2X, evseId="1"), "type"),
        "bad_enum": (
            "csms",
            "StatusNotification",
            _with(STATUS_2X, connectorStatus="Charging"),
            "property",
        ),
        "too_long": (
            "csms",
            "BootNotification",
            _deep_set(boot, ("chargingStation", "vendorName"), "A" * 51),
            "property",
        ),
        "bad_date_time": (
            "csms",
            "StatusNotification",
            _with(STATUS_2X, timestamp="yesterday"),
            "property",
        ),
        "out_of_range": (
            "csms",
            "NotifyEVChargingNeeds",
            _deep_set(EV_NEEDS, ("chargingNeeds", "dcChargingParameters", "stateOfCharge"), 101),
            "property",
        ),
        "missing_and_too_long": (
            "csms",
            "BootNotification",
            {"chargingStation": {"model": "Wallbox", "vendorName": "A" * 51}},
            "occurrence",
        ),
    }


VIOLATIONS = {
    "ocpp1.6": _VIOLATIONS_16,
    "ocpp2.0.1": _violations_2x("ocpp2.0.1"),
    "ocpp2.1": _violations_2x("ocpp2.1"),
}
VIOLATION_CASES = [(v, case) for v in VERSIONS for case in VIOLATIONS[v]]


# -------------------------------------------------------------------------- helpers


def make(
    version: str,
    validation: Validation = Validation.STRICT,
    *,
    side: str = "csms",
    **options: Any,
) -> Session:
    accepts = (tables.FROM_CHARGE_POINT if side == "csms" else tables.FROM_CSMS)[version]
    options.setdefault("call_timeout", 30)
    options.setdefault("max_depth", 64)
    return Session(DIALECTS[version], SCHEMAS[version], accepts, validation=validation, **options)


def feed(session: Session, message: Any, now: float = 0.0) -> Received:
    """What the peer sends: a str goes on the wire as is, anything else as JSON."""
    text = message if isinstance(message, str) else json.dumps(message)
    received = session.receive(text, now)
    assert isinstance(received, Received)
    assert received.frame.direction == "in"
    assert received.frame.text == text
    return received


def sent(session: Session) -> list[list[Any]]:
    """The frames the peer would receive, parsed; every error frame is checked against
    the version's code list (a 5-element CALLERROR / CALLRESULTERROR)."""
    version = session.dialect.subprotocol
    messages = []
    for frame in session.take_outgoing():
        assert frame.direction == "out"
        message = json.loads(frame.text)
        assert isinstance(message, list), frame.text
        assert frame.message_type == message[0]
        assert frame.message_id == message[1]
        if message[0] == 2:
            assert frame.action == message[2]
        if message[0] == 5:
            assert version == "ocpp2.1", f"CALLRESULTERROR sent on {version}"
        if message[0] in (4, 5):
            assert len(message) == 5, message
            _, message_id, code, description, details = message
            assert isinstance(message_id, str) and message_id
            assert code in VALID_CODES[version], f"{code} is no error code of {version}"
            assert isinstance(description, str)
            assert isinstance(details, dict)
        messages.append(message)
    return messages


def assert_refused(
    session: Session, received: Received, codes: set[str] | str, message_id: str | None
) -> list[Any]:
    """The peer got exactly one CALLERROR with one of `codes` (and `message_id`, when
    given); the RPC layer reported a ProtocolViolation and recorded the frame with it."""
    codes = {codes} if isinstance(codes, str) else codes
    frames = sent(session)
    assert len(frames) == 1, frames
    error = frames[0]
    assert error[0] == 4, error
    assert error[2] in codes, error
    if message_id is not None:
        assert error[1] == message_id, error
    assert isinstance(received.event, ProtocolViolation), received.event
    assert received.frame.violation is not None
    assert received.frame.violation.startswith(error[2]), received.frame.violation
    return error


def assert_still_serves(session: Session, now: float = 1.0) -> None:
    """The connection survives: a following Heartbeat is received and answered."""
    received = feed(session, [2, "hb-after", "Heartbeat", {}], now)
    assert isinstance(received.event, CallReceived), received.event
    session.answer(received.event, HEARTBEAT_RESPONSE)
    assert sent(session) == [[3, "hb-after", HEARTBEAT_RESPONSE]]


def opened(version: str, validation: Validation = Validation.STRICT, **options: Any) -> Session:
    """A session whose charge point has booted (so the appliance may call it)."""
    session = make(version, validation, **options)
    received = feed(session, [2, "boot-1", "BootNotification", BOOT[version]], 0.0)
    assert isinstance(received.event, CallReceived)
    session.answer(received.event, BOOT_RESPONSE)
    assert sent(session) == [[3, "boot-1", BOOT_RESPONSE]]
    return session


def nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def depth(value: Any) -> int:
    """JSON nesting depth, the outermost array counting as 1."""
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


# ============================================================== malformed input


UNREADABLE = [
    pytest.param("this is not JSON", id="not-json"),
    pytest.param('[2, "m1", "Heartbeat", {}', id="truncated"),
    pytest.param("", id="empty-text"),
    pytest.param('{"messageTypeId": 2}', id="object"),
    pytest.param('"Heartbeat"', id="string"),
    pytest.param("42", id="number"),
    pytest.param("null", id="null"),
    pytest.param("[]", id="empty-array"),
    pytest.param('[null, null, "Heartbeat", {}]', id="null-elements"),
]


@pytest.mark.parametrize("text", UNREADABLE)
@pytest.mark.parametrize("version", VERSIONS)
def test_unreadable_frame_gets_a_framework_error(version: str, text: str) -> None:
    session = make(version)
    received = feed(session, text)
    error = assert_refused(session, received, frame_codes(version), None)
    if version != "ocpp1.6":
        assert error[1] == "-1"  # 2.x Part 4: the id of an unreadable frame
    assert received.event.fault is Fault.FRAME
    assert received.frame.message_type is None
    assert received.frame.action is None
    assert_still_serves(session)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(["2", "m1", "Heartbeat", {}], id="type-as-string"),
        pytest.param([2.0, "m1", "Heartbeat", {}], id="type-as-float"),
        pytest.param([True, "m1", "Heartbeat", {}], id="type-as-bool"),
        pytest.param([None, "m1", "Heartbeat", {}], id="type-null"),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_first_element_not_an_int(version: str, message: list[Any]) -> None:
    session = make(version)
    received = feed(session, message)
    error = assert_refused(session, received, frame_codes(version), None)
    assert error[1] in ("m1", "-1")  # the id is readable; answering with it is fine
    assert received.event.fault is Fault.FRAME
    assert_still_serves(session)


@pytest.mark.parametrize(
    ("message", "readable_id"),
    [
        pytest.param([2, "m1", "Heartbeat"], "m1", id="three-elements"),
        pytest.param([2, "m1", "Heartbeat", {}, {}], "m1", id="five-elements"),
        pytest.param([2, "m1"], "m1", id="two-elements"),
        pytest.param([2], None, id="type-only"),
        pytest.param([2, 17, "Heartbeat", {}], None, id="id-is-int"),
        pytest.param([2, None, "Heartbeat", {}], None, id="id-is-null"),
        pytest.param([2, "m1", 17, {}], "m1", id="action-is-int"),
        pytest.param([2, "m1", None, {}], "m1", id="action-is-null"),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_call_of_the_wrong_shape(version: str, message: list[Any], readable_id: str | None) -> None:
    session = make(version)
    received = feed(session, message)
    expected_id = readable_id if readable_id is not None or version == "ocpp1.6" else "-1"
    assert_refused(session, received, frame_codes(version), expected_id)
    assert received.event.fault is Fault.FRAME
    assert received.frame.message_type == 2
    assert_still_serves(session)


@pytest.mark.parametrize("payload", [[], "x", None, 5, [{"a": 1}]], ids=repr)
@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
@pytest.mark.parametrize("version", VERSIONS)
def test_payload_not_an_object_is_refused_in_both_modes(
    version: str, validation: Validation, payload: Any
) -> None:
    session = make(version, validation)
    received = feed(session, [2, "m1", "Heartbeat", payload])
    assert_refused(session, received, CODE[version]["format"], "m1")
    assert received.event.fault is Fault.FORMAT
    assert received.frame.message_type == 2
    assert received.frame.message_id == "m1"
    assert received.frame.action == "Heartbeat"
    assert_still_serves(session)


OTHER_VERSIONS_ACTION = {
    "ocpp1.6": "TransactionEvent",
    "ocpp2.0.1": "StartTransaction",
    "ocpp2.1": "StartTransaction",
}


@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_action_is_not_implemented(version: str, validation: Validation) -> None:
    session = make(version, validation)
    for index, action in enumerate(["FlyToTheMoon", OTHER_VERSIONS_ACTION[version], ""]):
        message_id = f"u{index}"
        received = feed(session, [2, message_id, action, {}])
        assert_refused(session, received, "NotImplemented", message_id)
        assert received.event.fault is Fault.NOT_IMPLEMENTED
        assert received.frame.message_id == message_id
        assert received.frame.message_type == 2
    assert_still_serves(session)


@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
@pytest.mark.parametrize("version", VERSIONS)
def test_action_a_charge_point_must_not_send_is_not_supported(
    version: str, validation: Validation
) -> None:
    session = make(version, validation)
    action, payload = CSMS_ONLY[version]
    assert action in tables.FROM_CSMS[version]
    assert action not in tables.FROM_CHARGE_POINT[version]
    received = feed(session, [2, "r1", action, payload])
    assert_refused(session, received, "NotSupported", "r1")
    assert received.event.fault is Fault.NOT_SUPPORTED
    assert received.frame.action == action
    assert_still_serves(session)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_csms_only_action_is_not_supported(version: str) -> None:
    session = make(version)
    only_csms = sorted(tables.FROM_CSMS[version] - tables.FROM_CHARGE_POINT[version])
    assert len(only_csms) > 10
    for index, action in enumerate(only_csms):
        received = feed(session, [2, f"c{index}", action, {}])
        assert_refused(session, received, "NotSupported", f"c{index}")


@pytest.mark.parametrize("version", VERSIONS)
def test_an_action_of_both_directions_is_served(version: str) -> None:
    session = make(version)
    received = feed(session, [2, "d1", "DataTransfer", {"vendorId": "ACME"}])
    assert isinstance(received.event, CallReceived)
    assert received.event.violation is None
    assert sent(session) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_message_type(version: str) -> None:
    session = make(version)
    unknown = [0, 1, 7, 99, -2]
    if version != "ocpp2.1":
        unknown += [5, 6]  # CALLRESULTERROR and SEND exist in 2.1 only
    for kind in unknown:
        message_id = f"t{kind}"
        received = feed(session, [kind, message_id, "Heartbeat", {}])
        assert_refused(session, received, CODE[version]["message_type"], message_id)
        assert received.event.fault is Fault.MESSAGE_TYPE
        assert received.frame.message_type == kind
        assert received.frame.message_id == message_id
    assert_still_serves(session)


def test_message_types_5_and_6_exist_in_2_1() -> None:
    session = opened("ocpp2.1")
    received = feed(session, [6, "s1", "NotifyPeriodicEventStream", STREAM])
    assert isinstance(received.event, SendReceived)
    received = feed(session, [5, "boot-1", "FormatViolation", "bad result", {}])
    assert isinstance(received.event, ProtocolViolation)
    assert received.event.fault is not Fault.MESSAGE_TYPE
    assert sent(session) == []


# ------------------------------------------------------------------- nesting limits


def _deep_heartbeat(version: str, total_depth: int) -> list[Any]:
    """A schema-valid Heartbeat CALL whose vendor field makes the frame `total_depth` deep."""
    if version == "ocpp1.6":
        base = [2, "deep", "Heartbeat", {"vendorExtension": 0}]
        levels = total_depth - depth(base)
        message = [2, "deep", "Heartbeat", {"vendorExtension": nested(levels)}]
    else:
        base = [2, "deep", "Heartbeat", {"customData": {"vendorId": "ACME", "x": 0}}]
        levels = total_depth - depth(base)
        message = [
            2,
            "deep",
            "Heartbeat",
            {"customData": {"vendorId": "ACME", "x": nested(levels)}},
        ]
    assert depth(message) == total_depth
    return message


@pytest.mark.parametrize("version", VERSIONS)
def test_nesting_at_the_limit_is_accepted(version: str) -> None:
    session = make(version, max_depth=64)
    received = feed(session, _deep_heartbeat(version, 64))
    assert isinstance(received.event, CallReceived), received.event
    assert received.event.violation is None
    assert received.frame.violation is None
    assert sent(session) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_nesting_beyond_the_limit_is_refused(version: str) -> None:
    session = make(version, Validation.LENIENT, max_depth=64)
    received = feed(session, _deep_heartbeat(version, 65))
    # not a readable frame under the limit; FormatViolation would be defensible in 2.x too
    codes = frame_codes(version) | {CODE[version]["format"]}
    assert_refused(session, received, codes, "deep")
    assert not isinstance(received.event, CallReceived)
    assert_still_serves(session)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_smaller_depth_limit_is_honoured(version: str) -> None:
    session = make(version, max_depth=10)
    assert isinstance(feed(session, _deep_heartbeat(version, 10)).event, CallReceived)
    sent(session)
    received = feed(session, _deep_heartbeat(version, 11))
    assert not isinstance(received.event, CallReceived)
    assert len(sent(session)) == 1


HUGE = 100_000


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        pytest.param("[" * HUGE + "]" * HUGE, {"-1"}, id="bare-arrays"),
        pytest.param('{"a":' * HUGE + "1" + "}" * HUGE, {"-1"}, id="bare-objects"),
        pytest.param(
            '[2,"m1","Heartbeat",{"x":' + "[" * HUGE + "]" * HUGE + "}]",
            {"m1", "-1"},
            id="inside-a-call",
        ),
        pytest.param("[" * HUGE, {"-1"}, id="unterminated"),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_absurd_nesting_does_not_crash(version: str, text: str, ids: set[str]) -> None:
    session = make(version)
    received = feed(session, text)
    error = assert_refused(session, received, frame_codes(version), None)
    if version != "ocpp1.6":
        assert error[1] in ids
    assert_still_serves(session)


# =========================================================== schema violations


@pytest.mark.parametrize(("version", "case"), VIOLATION_CASES)
def test_strict_mode_answers_each_violation_with_its_code(version: str, case: str) -> None:
    side, action, payload, row = VIOLATIONS[version][case]
    session = make(version, Validation.STRICT, side=side)
    received = feed(session, [2, "v1", action, payload])
    error = assert_refused(session, received, CODE[version][row], "v1")
    assert received.event.fault is FAULT[row]
    assert received.frame.message_type == 2
    assert received.frame.message_id == "v1"
    assert received.frame.action == action
    assert error[3], "the description says what is wrong"


@pytest.mark.parametrize(("version", "case"), VIOLATION_CASES)
def test_lenient_mode_passes_a_nearly_compliant_message_on(version: str, case: str) -> None:
    side, action, payload, row = VIOLATIONS[version][case]
    session = make(version, Validation.LENIENT, side=side)
    received = feed(session, [2, "v1", action, payload])
    assert sent(session) == []
    event = received.event
    assert isinstance(event, CallReceived), event
    assert (event.message_id, event.action, event.payload) == ("v1", action, payload)
    assert event.violation is not None
    assert event.violation.fault is FAULT[row]
    assert str(event.violation).startswith(CODE[version][row])
    # the frame's record names the violation
    assert received.frame.violation is not None
    assert received.frame.violation.startswith(CODE[version][row])
    assert (received.frame.message_type, received.frame.message_id) == (2, "v1")
    assert received.frame.action == action


@pytest.mark.parametrize("version", VERSIONS)
def test_frame_record_names_the_code_once(version: str) -> None:
    """The `messages` row reads "<Code>: <what>", not "<Code>: <Code>: <what>"."""
    _, action, payload, row = VIOLATIONS[version]["bad_enum"]
    for validation in BOTH_MODES:
        session = make(version, validation)
        received = feed(session, [2, "v1", action, payload])
        sent(session)
        code = CODE[version][row]
        assert received.frame.violation is not None
        assert received.frame.violation.startswith(f"{code}: ")
        assert not received.frame.violation.startswith(f"{code}: {code}"), received.frame.violation


@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_fields_are_tolerated(version: str, validation: Validation) -> None:
    session = make(version, validation)
    if version == "ocpp1.6":
        payload = {**BOOT[version], "vendorSpecific": {"a": [1, 2]}, "newerField": "x"}
    else:
        payload = _deep_set(BOOT[version], ("chargingStation", "newerField"), "x")
        payload["vendorSpecific"] = {"a": [1, 2]}
        payload["customData"] = {"vendorId": "ACME", "anything": {"goes": True}}
    received = feed(session, [2, "b1", "BootNotification", payload])
    assert isinstance(received.event, CallReceived)
    assert received.event.violation is None
    assert received.event.payload == payload
    assert received.frame.violation is None
    assert sent(session) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_a_valid_call_is_received_and_answered(version: str) -> None:
    session = make(version)
    received = feed(session, [2, "s1", "StatusNotification", STATUS[version]], 3.0)
    event = received.event
    assert event == CallReceived("s1", "StatusNotification", STATUS[version], None)
    frame = received.frame
    assert (frame.message_type, frame.message_id, frame.action, frame.violation) == (
        2,
        "s1",
        "StatusNotification",
        None,
    )
    session.answer(event, {})
    assert sent(session) == [[3, "s1", {}]]


@pytest.mark.parametrize("version", V2X)
def test_long_error_description_fits_the_2x_field(version: str) -> None:
    """2.x Part 4: a CALLERROR's errorDescription is string[0..255]; a 2000-character
    value quoted into it must not make the error frame itself invalid."""
    _, action, payload, _ = VIOLATIONS[version]["too_long"]
    payload = _deep_set(payload, ("chargingStation", "vendorName"), "A" * 2000)
    session = make(version)
    feed(session, [2, "v1", action, payload])
    (error,) = sent(session)
    assert error[2] == "PropertyConstraintViolation"
    assert len(error[3]) <= 255, len(error[3])


# ============================================================== outgoing calls


def _call_frame(call: Any) -> list[Any]:
    return [2, call.message_id, call.action, call.payload]


ACCEPTED = {"status": "Accepted"}


@pytest.mark.parametrize("version", VERSIONS)
def test_nothing_is_sent_before_the_peers_first_call(version: str) -> None:
    session = make(version)
    session.call("ClearCache", {}, 0.0)
    assert sent(session) == []
    assert session.expire(10.0) == []
    assert sent(session) == []
    # a reply-shaped frame is not a CALL: still silent
    feed(session, [3, "whatever", {}], 11.0)
    assert sent(session) == []
    assert session.pending_calls == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_the_queued_call_goes_out_after_the_peers_first_call(version: str) -> None:
    session = make(version)
    call = session.call("ClearCache", {}, 0.0)
    received = feed(session, [2, "boot-1", "BootNotification", BOOT[version]], 5.0)
    assert isinstance(received.event, CallReceived)
    session.answer(received.event, BOOT_RESPONSE)
    frames = sent(session)
    assert [3, "boot-1", BOOT_RESPONSE] in frames
    assert [f for f in frames if f[0] == 2] == [_call_frame(call)], frames


@pytest.mark.parametrize("version", VERSIONS)
def test_without_waiting_for_the_peer_a_call_goes_out_at_once(version: str) -> None:
    session = make(version, wait_for_peer=False)
    call = session.call("ClearCache", {}, 0.0)
    assert sent(session) == [[2, call.message_id, "ClearCache", {}]]


@pytest.mark.parametrize("version", VERSIONS)
def test_one_call_in_flight_result_error_and_timeout_release_the_next(version: str) -> None:
    session = opened(version)
    first = session.call("ClearCache", {}, 100.0)
    second = session.call("TriggerMessage", {"requestedMessage": "Heartbeat"}, 100.0)
    assert sent(session) == [_call_frame(first)]
    assert session.pending_calls == 2

    # CALLRESULT settles the first; the second goes out
    received = feed(session, [3, first.message_id, ACCEPTED], 101.0)
    assert isinstance(received.event, ResultReceived)
    assert received.event.call is first
    assert received.event.payload == ACCEPTED
    assert received.event.violation is None
    assert received.frame.action == "ClearCache"
    assert received.frame.message_type == 3
    assert sent(session) == [_call_frame(second)]

    # CALLERROR settles the second; nothing else waits
    error = [4, second.message_id, "NotSupported", "no trigger here", {"hint": 1}]
    received = feed(session, error, 102.0)
    assert received.event == ErrorReceived(second, "NotSupported", "no trigger here", {"hint": 1})
    assert received.frame.message_type == 4
    assert sent(session) == []
    assert session.pending_calls == 0

    # a timeout settles the third; the fourth, queued behind it, goes out
    third = session.call("ClearCache", {}, 102.0)
    fourth = session.call("ClearCache", {}, 102.0)
    assert sent(session) == [_call_frame(third)]
    assert session.next_deadline() == pytest.approx(132.0)
    assert session.expire(131.9) == []
    assert sent(session) == []
    expired = session.expire(132.0)
    assert len(expired) == 1
    assert isinstance(expired[0], CallTimedOut)
    assert expired[0].call is third
    assert "30" in expired[0].reason
    assert sent(session) == [_call_frame(fourth)]
    assert session.pending_calls == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_a_callerror_without_details_is_still_reported(version: str) -> None:
    session = opened(version)
    call = session.call("ClearCache", {}, 1.0)
    sent(session)
    received = feed(session, [4, call.message_id, "InternalError", "oops"], 2.0)
    assert isinstance(received.event, ErrorReceived)
    assert (received.event.call, received.event.code) == (call, "InternalError")
    assert received.event.description == "oops"
    assert sent(session) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_message_ids_are_unique(version: str) -> None:
    session = opened(version)
    seen: list[str] = []
    for index in range(40):
        call = session.call("ClearCache", {}, float(index))
        frames = sent(session)
        assert frames == [[2, call.message_id, "ClearCache", {}]]
        seen.append(call.message_id)
        received = feed(session, [3, call.message_id, ACCEPTED], index + 0.5)
        assert isinstance(received.event, ResultReceived)
    assert len(set(seen)) == len(seen)
    assert "boot-1" not in seen
    assert all(isinstance(i, str) and 0 < len(i) <= 36 for i in seen)  # 2.x: max 36


@pytest.mark.parametrize("version", VERSIONS)
def test_a_call_that_never_gets_out_times_out_saying_so(version: str) -> None:
    session = make(version)
    call = session.call("ClearCache", {}, 0.0)
    assert session.next_deadline() == pytest.approx(30.0)
    assert session.expire(29.0) == []
    expired = session.expire(30.0)
    assert [e.call for e in expired] == [call]
    reason = expired[0].reason.lower()
    assert "not sent" in reason
    assert "charge point" in reason or "peer" in reason
    assert session.pending_calls == 0
    assert session.next_deadline() is None
    assert sent(session) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_reply_with_unknown_id_is_dropped(version: str) -> None:
    session = opened(version)
    call = session.call("ClearCache", {}, 1.0)
    assert sent(session) == [_call_frame(call)]
    for reply in (
        [3, "no-such-call", ACCEPTED],
        [4, "no-such-call", "GenericError", "", {}],
        [3, 12345, ACCEPTED],  # not even a string id
        [3, call.message_id],  # malformed: no payload
        [4, call.message_id, 500, "x", {}],  # malformed: code not a string
    ):
        received = feed(session, reply, 2.0)
        assert isinstance(received.event, ProtocolViolation), (reply, received.event)
        assert received.frame.message_type == reply[0]
        assert sent(session) == [], "a reply is never answered"
    # the real call is still in flight and is settled by its own result
    received = feed(session, [3, call.message_id, ACCEPTED], 3.0)
    assert isinstance(received.event, ResultReceived)
    assert received.event.call is call
    assert_still_serves(session, 4.0)


@pytest.mark.parametrize("version", VERSIONS)
def test_stale_reply_after_timeout_is_dropped(version: str) -> None:
    session = opened(version)
    late = session.call("ClearCache", {}, 0.0)
    following = session.call("ClearCache", {}, 0.0)
    assert sent(session) == [_call_frame(late)]
    expired = session.expire(30.0)
    assert [e.call for e in expired] == [late]
    assert sent(session) == [_call_frame(following)]

    received = feed(session, [3, late.message_id, ACCEPTED], 31.0)
    assert isinstance(received.event, ProtocolViolation)
    assert sent(session) == []
    received = feed(session, [4, late.message_id, "InternalError", "late", {}], 31.5)
    assert isinstance(received.event, ProtocolViolation)
    assert sent(session) == []

    # the session keeps working: a Heartbeat is answered, the next call is settled
    assert_still_serves(session, 32.0)
    received = feed(session, [3, following.message_id, ACCEPTED], 33.0)
    assert isinstance(received.event, ResultReceived)
    assert received.event.call is following
    third = session.call("ClearCache", {}, 34.0)
    assert sent(session) == [_call_frame(third)]


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        pytest.param("TriggerMessage", {"requestedMessage": "Bogus"}, id="bad-enum"),
        pytest.param("TriggerMessage", {}, id="missing-required"),
        pytest.param("TriggerMessage", {"requestedMessage": 1}, id="wrong-type"),
        pytest.param("NoSuchAction", {}, id="unknown-action"),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_schema_invalid_outgoing_call_is_never_sent(
    version: str, action: str, payload: dict[str, Any]
) -> None:
    session = opened(version)
    with pytest.raises(LocalProtocolError):
        session.call(action, payload, 1.0)
    assert sent(session) == []
    assert session.pending_calls == 0
    good = session.call("ClearCache", {}, 2.0)
    assert sent(session) == [_call_frame(good)]


def test_outgoing_1_6_limit_must_be_a_multiple_of_0_1() -> None:
    session = opened("ocpp1.6")
    profile = {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.35}],
            },
        },
    }
    with pytest.raises(LocalProtocolError):
        session.call("SetChargingProfile", profile, 1.0)
    assert sent(session) == []
    period = profile["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]
    period["limit"] = 16.3
    call = session.call("SetChargingProfile", profile, 1.0)
    assert sent(session) == [_call_frame(call)]


@pytest.mark.parametrize("version", VERSIONS)
def test_outgoing_messages_with_fields_outside_the_schema_are_never_sent(version: str) -> None:
    """README error table: unknown fields are tolerated on *input*; what the appliance sends is
    schema-valid, and these schemas say additionalProperties: false."""
    session = opened(version)
    with pytest.raises(LocalProtocolError):
        session.call("ClearCache", {"bogus": 1}, 1.0)
    assert sent(session) == []
    received = feed(session, [2, "hb1", "Heartbeat", {}], 2.0)
    with pytest.raises(LocalProtocolError):
        session.answer(received.event, {**HEARTBEAT_RESPONSE, "bogus": 1})
    frames = sent(session)
    assert [f[:3] for f in frames] == [[4, "hb1", "InternalError"]]


@pytest.mark.parametrize(
    "response",
    [
        pytest.param({}, id="missing-required"),
        pytest.param({"currentTime": 5}, id="wrong-type"),
        pytest.param({"currentTime": "soon"}, id="bad-date-time"),
    ],
)
@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
@pytest.mark.parametrize("version", VERSIONS)
def test_schema_invalid_answer_sends_internal_error(
    version: str, validation: Validation, response: dict[str, Any]
) -> None:
    session = make(version, validation)
    received = feed(session, [2, "hb1", "Heartbeat", {}])
    with pytest.raises(LocalProtocolError):
        session.answer(received.event, response)
    frames = sent(session)
    assert len(frames) == 1
    assert frames[0][:3] == [4, "hb1", "InternalError"]


@pytest.mark.parametrize("version", VERSIONS)
def test_answer_may_fail_a_call_explicitly(version: str) -> None:
    session = make(version)
    token = (
        {"idTag": "X"} if version == "ocpp1.6" else {"idToken": {"idToken": "X", "type": "Local"}}
    )
    received = feed(session, [2, "a1", "Authorize", token])
    assert isinstance(received.event, CallReceived)
    session.fail(received.event, Fault.GENERIC, "try again", {"why": "busy"})
    frames = sent(session)
    assert frames == [[4, "a1", "GenericError", "try again", {"why": "busy"}]]


@pytest.mark.parametrize("version", VERSIONS)
def test_close_returns_the_calls_that_will_never_be_answered(version: str) -> None:
    session = opened(version)
    in_flight = session.call("ClearCache", {}, 1.0)
    queued = session.call("ClearCache", {}, 1.0)
    assert sent(session) == [_call_frame(in_flight)]
    pending = session.close()
    assert pending == [in_flight, queued]
    assert session.pending_calls == 0
    assert session.next_deadline() is None
    assert session.close() == []
    with pytest.raises(SessionClosed):
        session.call("ClearCache", {}, 2.0)
    assert issubclass(SessionClosed, LocalProtocolError)
    assert session.expire(100.0) == []
    assert sent(session) == []


def test_close_before_the_peer_spoke_returns_the_queued_call() -> None:
    session = make("ocpp2.0.1")
    queued = session.call("ClearCache", {}, 0.0)
    assert session.close() == [queued]
    assert sent(session) == []


# --------------------------------------------------------------- results we receive


@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
def test_invalid_result_is_reported_never_answered_before_2_1(
    version: str, validation: Validation
) -> None:
    session = opened(version, validation)
    call = session.call("ClearCache", {}, 1.0)
    sent(session)
    received = feed(session, [3, call.message_id, {"status": "Maybe"}], 2.0)
    assert isinstance(received.event, ResultReceived)
    assert received.event.violation is not None
    assert received.event.violation.fault is Fault.PROPERTY
    assert received.frame.violation is not None
    assert received.frame.violation.startswith("PropertyConstraintViolation")
    assert sent(session) == []


def test_strict_2_1_answers_an_invalid_result_with_callresulterror() -> None:
    session = opened("ocpp2.1", Validation.STRICT)
    call = session.call("ClearCache", {}, 1.0)
    sent(session)
    received = feed(session, [3, call.message_id, {"status": "Maybe"}], 2.0)
    event = received.event
    assert isinstance(event, (ResultReceived, ErrorReceived)), event
    assert event.call is call
    if isinstance(event, ResultReceived):
        assert event.violation is not None
        assert event.violation.fault is Fault.PROPERTY
    (error,) = sent(session)
    assert error[:3] == [5, call.message_id, "PropertyConstraintViolation"]
    following = session.call("ClearCache", {}, 3.0)
    assert sent(session) == [_call_frame(following)]


def test_lenient_2_1_accepts_a_nearly_valid_result_silently() -> None:
    session = opened("ocpp2.1", Validation.LENIENT)
    call = session.call("ClearCache", {}, 1.0)
    sent(session)
    received = feed(session, [3, call.message_id, {"status": "Maybe"}], 2.0)
    assert isinstance(received.event, ResultReceived)
    assert received.event.violation is not None
    assert sent(session) == []


@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
@pytest.mark.parametrize("version", VERSIONS)
def test_result_with_extra_fields_is_fine(version: str, validation: Validation) -> None:
    session = opened(version, validation)
    call = session.call("ClearCache", {}, 1.0)
    sent(session)
    payload = {"status": "Accepted", "vendorNote": "ok"}
    received = feed(session, [3, call.message_id, payload], 2.0)
    assert received.event == ResultReceived(call, payload, None)
    assert sent(session) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_result_payload_not_an_object_settles_the_call_as_an_error(version: str) -> None:
    session = opened(version, Validation.LENIENT)
    call = session.call("ClearCache", {}, 1.0)
    following = session.call("ClearCache", {}, 1.0)
    sent(session)
    received = feed(session, [3, call.message_id, ["Accepted"]], 2.0)
    assert isinstance(received.event, ErrorReceived)
    assert received.event.call is call
    assert received.event.code == CODE[version]["format"]
    frames = sent(session)
    assert _call_frame(following) in frames
    others = [f for f in frames if f[0] != 2]
    if version == "ocpp2.1":
        assert [f[:3] for f in others] == [[5, call.message_id, "FormatViolation"]]
    else:
        assert others == []


# ------------------------------------------------------------------ OCPP 2.1 SEND


@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
def test_send_is_received_and_never_answered(validation: Validation) -> None:
    session = make("ocpp2.1", validation)
    received = feed(session, [6, "s1", "NotifyPeriodicEventStream", STREAM])
    assert received.event == SendReceived("s1", "NotifyPeriodicEventStream", STREAM, None)
    assert (received.frame.message_type, received.frame.message_id) == (6, "s1")
    assert received.frame.action == "NotifyPeriodicEventStream"
    assert sent(session) == []


@pytest.mark.parametrize(
    "message",
    [
        pytest.param([6, "s2", "NotifyPeriodicEventStream", {"id": 1}], id="missing-required"),
        pytest.param(
            [6, "s2", "NotifyPeriodicEventStream", {**STREAM, "basetime": "now"}],
            id="bad-date-time",
        ),
        pytest.param([6, "s2", "NotifyPeriodicEventStream", []], id="payload-not-object"),
        pytest.param([6, "s2", "NoSuchStream", {}], id="unknown-action"),
        pytest.param([6, "s2", "NotifyPeriodicEventStream"], id="wrong-arity"),
        pytest.param([6, 5, "NotifyPeriodicEventStream", STREAM], id="id-not-string"),
    ],
)
@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
def test_a_broken_send_is_never_answered(validation: Validation, message: list[Any]) -> None:
    session = make("ocpp2.1", validation)
    received = feed(session, message)
    assert sent(session) == []
    assert received.frame.message_type == 6
    if isinstance(received.event, SendReceived):
        assert validation is Validation.LENIENT
        assert received.event.violation is not None
    else:
        assert isinstance(received.event, ProtocolViolation)
        assert received.frame.violation is not None
    assert_still_serves(session)


def test_a_refused_send_is_recorded_with_its_message_id() -> None:
    session = make("ocpp2.1", Validation.STRICT)
    received = feed(session, [6, "s3", "NotifyPeriodicEventStream", {"id": 1}])
    assert sent(session) == []
    assert isinstance(received.event, ProtocolViolation)
    frame = received.frame
    assert (frame.message_type, frame.message_id) == (6, "s3")
    assert frame.action == "NotifyPeriodicEventStream"
    assert frame.violation is not None
    assert frame.violation.startswith("OccurrenceConstraintViolation")


def test_a_call_of_a_send_only_action_gets_an_error_not_a_crash() -> None:
    """NotifyPeriodicEventStream has no response schema (SEND only): as a CALL the peer
    must still get an answer, and only LocalProtocolError may escape the session."""
    session = make("ocpp2.1")
    received = feed(session, [2, "n1", "NotifyPeriodicEventStream", STREAM])
    if isinstance(received.event, CallReceived):
        with pytest.raises(LocalProtocolError):
            session.answer(received.event, {})
    frames = sent(session)
    assert len(frames) == 1, frames
    assert frames[0][:2] == [4, "n1"]
    assert_still_serves(session)


@pytest.mark.parametrize("validation", BOTH_MODES, ids=lambda v: v.value)
def test_callresulterror_from_the_peer_is_reported_not_answered(validation: Validation) -> None:
    session = opened("ocpp2.1", validation)
    call = session.call("ClearCache", {}, 1.0)
    sent(session)
    # the peer could not process our answer to its BootNotification
    received = feed(session, [5, "boot-1", "PropertyConstraintViolation", "bad interval", {}], 2)
    assert isinstance(received.event, ProtocolViolation)
    assert "boot-1" in received.event.reason
    assert "PropertyConstraintViolation" in received.event.reason
    assert (received.frame.message_type, received.frame.message_id) == (5, "boot-1")
    assert sent(session) == []
    # our own call is untouched by it
    received = feed(session, [3, call.message_id, ACCEPTED], 3.0)
    assert isinstance(received.event, ResultReceived)
    assert received.event.call is call


# ============================================================ extreme values (issue 16)


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
def test_a_number_beyond_a_double_is_a_number_even_in_strict_mode(version: str) -> None:
    """`1e400` is a JSON number (RFC 8259), only beyond a double: a schema-valid request
    carrying it is no violation, in strict mode too."""
    session = make(version, Validation.STRICT)
    text = (
        '[2,"big","MeterValues",{"evseId":1,"meterValue":[{"timestamp":'
        '"2025-01-01T00:00:00Z","sampledValue":[{"value":1e400}]}]}]'
    )
    received = session.receive(text, 0.0)
    assert isinstance(received.event, CallReceived), received.event
    assert received.event.violation is None
    assert received.frame.violation is None


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    """What Python's json takes and RFC 8259 does not: the "not JSON" code."""
    session = make("ocpp1.6", Validation.LENIENT)
    received = session.receive(f'[2,"x","Heartbeat",{{"x":{constant}}}]', 0.0)
    assert isinstance(received.event, ProtocolViolation)
    [error] = sent(session)
    assert error[:3] == [4, "-1", "FormationViolation"]
