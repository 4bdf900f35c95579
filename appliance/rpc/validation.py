"""Official-schema validation with jsonschema-rs, each schema compiled once, the first time
it is needed.

A violation is classified into the `Fault` whose OCPP-J error code the spec prescribes
(README "On the wire", the error table). Unknown fields are
always tolerated: vendors extend payloads and newer editions add fields, so
`additionalProperties: false` is never held against a peer.
"""

from __future__ import annotations

import json
import math
import sys
import zipfile
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.rpc.dialects import Dialect, Fault

if TYPE_CHECKING:
    import jsonschema_rs

# jsonschema-rs error kinds → the OCPP-J fault (OCPP-J 1.6 §4.2.3, 2.x Part 4 §4.3)
_FAULT_OF_KIND: dict[str, Fault] = {
    "Required": Fault.OCCURRENCE,
    "MinItems": Fault.OCCURRENCE,
    "MaxItems": Fault.OCCURRENCE,
    "MinProperties": Fault.OCCURRENCE,
    "MaxProperties": Fault.OCCURRENCE,
    "Type": Fault.TYPE,
}
_IGNORED_KINDS = frozenset({"AdditionalProperties", "UnevaluatedProperties"})
#: how many violations one frame's record names; the rest are counted
_MAX_NAMED_VIOLATIONS = 3


@dataclass(frozen=True, slots=True)
class Violation:
    """The schema violations of one payload, worst first."""

    fault: Fault
    #: validator kind of the worst violation (``MaxLength``, ``Enum``…): de-duplicates logs
    kind: str
    #: what is wrong, without the error code
    detail: str
    #: the version's error code, then the detail: what `messages.violation` shows
    text: str

    def __str__(self) -> str:
        return self.text


def schema_root() -> Traversable:
    """The verbatim OCA schemas: package data when installed (a folder in the wheel, one
    zip in the single executable), the top-level folder in a checkout."""
    package = resources.files("appliance")
    if (package / "schemas").is_dir():
        return package / "schemas"
    archive = package / "schemas.zip"
    if archive.is_file():
        return zipfile.Path(str(archive), "schemas/")
    return Path(__file__).resolve().parents[2] / "schemas"


def _fault_rank(fault: Fault) -> int:
    # The code answered is the most basic thing wrong: a missing field before a bad type
    # before a bad value.
    return (Fault.FORMAT, Fault.OCCURRENCE, Fault.TYPE, Fault.PROPERTY).index(fault)


class SchemaSet:
    """Request and response validators of one OCPP version.

    Start only lists the version's schema files; each is compiled the first time a
    message of its action and direction is checked, and kept (issue 21: all 387 of the
    three versions compiled take 10 MB of RSS and the library 5 MB more; a charge point
    uses a dozen). The result of a check is the same either way. The listing holds the
    folder, so that a one-file executable's schemas.zip stays open: a file compiled days
    after start is still there.
    """

    def __init__(self, dialect: Dialect, root: Traversable | None = None) -> None:
        self.dialect = dialect
        #: action → schema file: "<Action>Request" (2.x) or the bare action (1.6, and 2.1's
        #: SEND messages), and "<Action>Response"
        self._request_files: dict[str, Traversable] = {}
        self._response_files: dict[str, Traversable] = {}
        self._requests: dict[str, jsonschema_rs.Validator] = {}
        self._responses: dict[str, jsonschema_rs.Validator] = {}
        self._folder = folder = (root or schema_root()) / dialect.schema_folder
        for entry in folder.iterdir():
            name = entry.name
            if not name.endswith(".json"):
                continue
            stem = name.removesuffix(".json")
            if stem.endswith("Response"):
                self._response_files[stem.removesuffix("Response")] = entry
            else:
                self._request_files[stem.removesuffix("Request")] = entry
        if not self._request_files:
            raise RuntimeError(f"no schemas found for {dialect.subprotocol} in {folder}")

    def knows(self, action: str) -> bool:
        return action in self._request_files

    def knows_response(self, action: str) -> bool:
        return action in self._response_files

    def check_request(
        self, action: str, payload: object, inbound: bool = True, surrogates: bool = False
    ) -> Violation | None:
        validator = self._requests.get(action)
        if validator is None:
            validator = self._requests[action] = _compile(self._request_files[action])
        return _check(self.dialect, validator, payload, inbound, surrogates)

    def check_response(
        self, action: str, payload: object, inbound: bool = True, surrogates: bool = False
    ) -> Violation | None:
        validator = self._responses.get(action)
        if validator is None:
            validator = self._responses[action] = _compile(self._response_files[action])
        return _check(self.dialect, validator, payload, inbound, surrogates)

    def compile_all(self) -> None:
        """Every schema of the version, now (what a check would compile later)."""
        for action, entry in self._request_files.items():
            if action not in self._requests:
                self._requests[action] = _compile(entry)
        for action, entry in self._response_files.items():
            if action not in self._responses:
                self._responses[action] = _compile(entry)

    @property
    def compiled(self) -> int:
        """How many of its schemas have been compiled so far."""
        return len(self._requests) + len(self._responses)


def _compile(entry: Traversable) -> jsonschema_rs.Validator:
    # imported here: an appliance that no charge point has talked to yet does not load
    # the library (3.5 MB of RSS), and commands other than `serve` never do
    import jsonschema_rs

    return jsonschema_rs.validator_for(json.loads(entry.read_text("utf-8")))


#: what a lone surrogate is to the error table: an invalid value
_SURROGATE = (Fault.PROPERTY, "Surrogate", "a string holds a lone surrogate (not Unicode text)")


def _check(
    dialect: Dialect,
    validator: jsonschema_rs.Validator,
    payload: object,
    inbound: bool,
    surrogates: bool,
) -> Violation | None:
    """`inbound`: a peer's message, whose unknown fields are tolerated. What the appliance
    sends is held to the letter of the schema. `surrogates`: the payload holds a lone
    surrogate ("\ud800" is JSON, but no Unicode text), which the validator cannot take:
    it is reported, and the rest validated with the surrogates replaced."""
    if not isinstance(payload, dict):
        detail = f"payload is {type(payload).__name__}, not an object"
        code = dialect.error_code(Fault.FORMAT)
        return Violation(Fault.FORMAT, "Type", detail, f"{code}: {detail}")
    if surrogates:
        return _violations(dialect, validator, _without_surrogates(payload), inbound, [_SURROGATE])
    try:
        return _violations(dialect, validator, payload, inbound, [])
    except UnicodeEncodeError:
        return _check(dialect, validator, payload, inbound, True)


def _violations(
    dialect: Dialect,
    validator: jsonschema_rs.Validator,
    payload: object,
    inbound: bool,
    found: list[tuple[Fault, str, str]],
) -> Violation | None:
    if validator.is_valid(payload):
        return _violation(dialect, found)
    if _non_finite(payload):
        # `1e400` is a JSON number (beyond a double, so Python holds infinity, which
        # the validator takes for null): validate it as the largest double it exceeds
        payload = _finite(payload)
        if validator.is_valid(payload):
            return _violation(dialect, found)
    for error in validator.iter_errors(payload):
        kind = type(error.kind).__name__
        if inbound and kind in _IGNORED_KINDS:
            continue
        fault = _FAULT_OF_KIND.get(kind, Fault.PROPERTY)
        where = ".".join(str(p) for p in error.instance_path) or "payload"
        found.append((fault, kind, f"{where}: {error.message}"))
    return _violation(dialect, found)


def _violation(dialect: Dialect, found: list[tuple[Fault, str, str]]) -> Violation | None:
    if not found:
        return None
    found.sort(key=lambda f: _fault_rank(f[0]))
    fault, kind, _ = found[0]
    texts = [text for _, _, text in found[:_MAX_NAMED_VIOLATIONS]]
    if len(found) > _MAX_NAMED_VIOLATIONS:
        texts.append(f"and {len(found) - _MAX_NAMED_VIOLATIONS} more")
    detail = "; ".join(texts)
    return Violation(fault, kind, detail, f"{dialect.error_code(fault)}: {detail}")


def _without_surrogates(value: object) -> object:
    """`value` with every lone surrogate in its strings (keys too) replaced by "?"."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode() if not value.isascii() else value
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    return value


def _non_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(item) for item in value.values())
    if isinstance(value, list):
        return any(_non_finite(item) for item in value)
    return False


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return math.copysign(sys.float_info.max, value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def has_lone_surrogate(value: object) -> bool:
    """Whether a string in `value` (keys too) holds a lone surrogate."""
    if isinstance(value, str):
        if value.isascii():
            return False
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(item) for item in value)
    return False
