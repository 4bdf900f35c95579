"""Property-based tests of the wire (issue 12 point 6, issue 16 "Tests"), against one
appliance subprocess for the module, through real WebSockets:

- every action a charge point may send, in 1.6, 2.0.1 and 2.1: requests generated from
  the official schema get a CALLRESULT valid against the response schema (the pure-Python
  `jsonschema` oracle), never a CALLERROR — also with integers beyond 64 bits, numbers
  beyond a double, lone surrogates and control characters where the schema allows them;
- in `strict` mode a request mutated in one place gets exactly the README table's code;
- random bytes (text and binary frames), random JSON (NaN included) and random frame
  sequences never end the process; every valid-UTF-8 text message sent lands in
  `messages`, and the database stays intact.

After every example a separate charge point ("PROBE") sends a Heartbeat that must reach
`messages` (the writer still writes for everyone). The counts are small so the file runs
in about a minute; `FUZZ_EXAMPLES=500` sets every test's example count for a longer run
by hand, `FUZZ_SHRINK=1` lets Hypothesis shrink a failure (slow with a broken appliance).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import decimal
import functools
import itertools
import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis_jsonschema._from_schema as _hypothesis_jsonschema
import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from hypothesis.errors import UnsatisfiedAssumption
from hypothesis.internal.conjecture import utils as _conjecture_utils
from hypothesis_jsonschema import from_schema
from test_bad_peers import BINARY, CLOSE, CONTINUATION, PING, TEXT, RawPeer, close_payload
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from appliance.versions.tables import FROM_CHARGE_POINT, SEND_ONLY
from conftest import (
    FOLDERS,
    SCHEMAS,
    VERSIONS,
    Appliance,
    query,
    request_schema_name,
    response_schema_name,
    schema_errors,
    start_appliance_process,
    wait_for,
)

SHORT = {"ocpp1.6": "16", "ocpp2.0.1": "201", "ocpp2.1": "21"}
ACTIONS = {v: sorted(FROM_CHARGE_POINT[v] - SEND_ONLY[v]) for v in VERSIONS}
CASES = [(version, action) for version in VERSIONS for action in ACTIONS[version]]
STRICT = {version: f"STRICT{SHORT[version]}" for version in VERSIONS}
CONFIG = "".join(f'[charge_points."{i}"]\nvalidation = "strict"\n' for i in STRICT.values())

# The README's table, written out again here (the appliance keeps its own copy).
CODES = {
    "ocpp1.6": {
        "format": "FormationViolation",
        "occurrence": "OccurenceConstraintViolation",
        "type": "TypeConstraintViolation",
        "property": "PropertyConstraintViolation",
    },
    "ocpp2.0.1": {
        "format": "FormatViolation",
        "occurrence": "OccurrenceConstraintViolation",
        "type": "TypeConstraintViolation",
        "property": "PropertyConstraintViolation",
    },
}
CODES["ocpp2.1"] = CODES["ocpp2.0.1"]

#: seconds to wait for an answer or a row: generous, the machine is shared
PATIENCE = 5


# ----------------------------------------------------------------------- budget


def fuzz_settings(examples: int) -> settings:
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("FUZZ_SHRINK"):
        phases.append(Phase.shrink)
    return settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", examples)),
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )


# ------------------------------------------- hypothesis-jsonschema on this Hypothesis


class _OldStyleMany:
    """hypothesis-jsonschema 0.23.1 drives Hypothesis' internal `many` as `while
    elements.more()`; newer Hypothesis made it a context manager and an iterator."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._many = _conjecture_utils.many(*args, **kwargs)
        self._many.__enter__()
        self._elements = iter(self._many)

    def more(self) -> bool:
        try:
            next(self._elements)
        except StopIteration:
            self._many.__exit__(None, None, None)
            return False
        return True

    def reject(self, why: str | None = None) -> None:
        self._many.reject(why)


class _ConjectureUtils:
    many = _OldStyleMany

    def __getattr__(self, name: str) -> Any:
        return getattr(_conjecture_utils, name)


if not hasattr(_conjecture_utils.many, "more"):
    _hypothesis_jsonschema.cu = _ConjectureUtils()


# ---------------------------------------------------------------------- schemas


@functools.cache
def schema(version: str, name: str) -> dict[str, Any]:
    """The official schema with its `$ref`s written out in place (the 2.1 files have an
    `$id` that hypothesis-jsonschema cannot resolve `#/definitions/...` against)."""
    raw = json.loads((SCHEMAS / FOLDERS[version] / f"{name}.json").read_text())
    definitions = raw.get("definitions", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            skip = {"$id", "$schema", "definitions", "javaType", "description", "comment"}
            return {k: inline(v) for k, v in node.items() if k not in skip}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(raw)


def smaller(node: Any) -> Any:
    """The same schema with arrays of at most 2 items and customData without free extra
    fields: a subset of the valid requests that Hypothesis generates quickly (the free
    fields come back, on purpose, in the extreme-values test)."""
    if isinstance(node, dict):
        out = {k: smaller(v) for k, v in node.items()}
        if out.get("type") == "array":
            out["maxItems"] = max(min(out.get("maxItems", 2), 2), out.get("minItems", 0))
        if "vendorId" in out.get("properties", {}):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [smaller(v) for v in node]
    return node


@functools.cache
def requests(version: str, action: str) -> st.SearchStrategy[dict[str, Any]]:
    return from_schema(smaller(schema(version, request_schema_name(version, action))))


@functools.cache
def validator(version: str, name: str) -> jsonschema.protocols.Validator:
    # Decimal keeps 1.6's `multipleOf: 0.1` honest (see conftest._load)
    text = (SCHEMAS / FOLDERS[version] / f"{name}.json").read_text()
    loaded = json.loads(text, parse_float=decimal.Decimal)
    return jsonschema.validators.validator_for(loaded)(
        loaded, format_checker=jsonschema.FormatChecker()
    )


def request_violations(version: str, action: str, payload: Any) -> list[Any]:
    document = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
    name = request_schema_name(version, action)
    return list(validator(version, name).iter_errors(document))


PathKey = tuple[str | int, ...]


def walk(value: Any, node: dict[str, Any], path: PathKey = ()) -> Iterator[tuple]:
    """(path, value, its schema) for the payload and every value inside it the schema
    describes."""
    yield path, value, node
    if isinstance(value, dict):
        properties = node.get("properties", {})
        for key, item in value.items():
            if key in properties:
                yield from walk(item, properties[key], (*path, key))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            yield from walk(item, node["items"], (*path, index))


_DROP = object()


def replaced(payload: Any, path: PathKey, new: Any) -> Any:
    """A copy of `payload` with the value at `path` replaced (or dropped: `_DROP`)."""
    if not path:
        return new
    out = copy.deepcopy(payload)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if new is _DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return out


# ------------------------------------------------------ JSON text, extremes included


@dataclass(frozen=True)
class Token:
    """A number (or a non-JSON literal such as NaN) written into the frame as is."""

    text: str


def render(value: Any, ascii_only: bool = True) -> str:
    """JSON text of `value`; lone surrogates always become `\\udXXX` escapes (a text
    frame must be UTF-8), other characters too when `ascii_only`."""
    if isinstance(value, Token):
        return value.text
    if isinstance(value, dict):
        items = (f"{render(str(k), ascii_only)}:{render(v, ascii_only)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(render(v, ascii_only) for v in value) + "]"
    if isinstance(value, str):
        surrogate = any("\ud800" <= c <= "\udfff" for c in value)
        return json.dumps(value, ensure_ascii=ascii_only or surrogate)
    return json.dumps(value)


_SPECIAL_CHARACTERS = ["\ud800", "\udbff", "\udc00", "\udfff", "\x00", "\x1f", "\x7f", "\u2028"]
extreme_characters = st.one_of(
    st.sampled_from([*_SPECIAL_CHARACTERS, "\ufeff", "\U0001f50c"]),
    st.characters(exclude_categories=()),  # surrogates and control characters included
)


def extreme_text(min_size: int = 0, max_size: int | None = 24) -> st.SearchStrategy[str]:
    # not st.text(): it all but drops the surrogates of a mixed alphabet
    return st.lists(extreme_characters, min_size=min_size, max_size=max_size).map("".join)


extreme_strings = extreme_text()
beyond_64_bits = st.one_of(
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=-(2**63) + 1),
    st.integers(min_value=10**19, max_value=10**400),
)
extreme_integers = st.one_of(st.integers(), beyond_64_bits)
#: valid JSON numbers that a double cannot hold (1e400), or not exactly (2**53 + 1)
number_tokens = st.sampled_from(
    [
        "1e400",
        "-1e400",
        "1e-400",
        "-0.0",
        "0e0",
        "1E+2",
        "1.7976931348623157e308",
        "9007199254740993",
        "123456789012345678901234567890.123456789",
        "5e-324",
    ]
).map(Token)
not_json_tokens = st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "inf"]).map(Token)
extreme_leaves = st.one_of(
    st.none(),
    st.booleans(),
    extreme_integers,
    st.floats(allow_nan=False, allow_infinity=False),
    number_tokens,
    extreme_strings,
)


def json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(extreme_strings, children, max_size=4),
        ),
        max_leaves=12,
    )


def extreme_number(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Integers beyond 64 bits and numbers beyond a double, within the field's bounds."""
    low, high = node.get("minimum"), node.get("maximum")
    if node.get("type") == "integer":
        if high is not None:
            return st.nothing()
        big = st.integers(min_value=max(math.ceil(low or 0), 2**63 - 2), max_value=2**80)
        if low is None:
            return big | st.integers(min_value=-(2**80), max_value=-(2**63) + 1)
        return big
    tokens = ["1e400", "1.7976931348623157e308", "1e-400", "123456789012345678901234567890.5"]
    if high is None and (low is None or low <= 0):
        return st.sampled_from(tokens).map(Token)
    return st.nothing()


# --------------------------------------------------------------- the appliance


@dataclass
class Stopped:
    folder: Path
    returncode: int | None
    integrity: list[tuple]


@dataclass
class Fuzz:
    """One appliance for the module: restarted only after an example broke it (so one
    defect does not fail every later test); its connections are reused across examples."""

    new_folder: Callable[[], Path]
    appliance: Appliance | None = None
    clients: dict[str, ClientConnection] = field(default_factory=dict)
    raw_peers: dict[str, RawPeer] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=itertools.count)
    failure: BaseException | None = None
    payloads_sent: set[tuple[str, str, str]] = field(default_factory=set)
    stopped: list[Stopped] = field(default_factory=list)

    # ---------------------------------------------------------------- life

    def ensure(self) -> Appliance:
        broken = self.failure is not None
        if self.appliance is None or broken or self.appliance.proc.poll() is not None:
            self.stop()
            self.appliance = start_appliance_process(self.new_folder(), CONFIG)
            self.failure = None
        return self.appliance

    def stop(self) -> int | None:
        """SIGTERM, wait, and look at the database it leaves."""
        self._disconnect()
        appliance, self.appliance = self.appliance, None
        if appliance is None:
            return None
        if appliance.proc.poll() is None:
            appliance.proc.send_signal(signal.SIGTERM)
        try:
            returncode = appliance.proc.wait(10)
        except subprocess.TimeoutExpired:
            appliance.proc.kill()
            returncode = appliance.proc.wait()
        integrity = query(appliance.db, "PRAGMA integrity_check")
        self.stopped.append(Stopped(appliance.folder, returncode, integrity))
        return returncode

    def _disconnect(self) -> None:
        for ws in self.clients.values():
            with contextlib.suppress(Exception):
                ws.close()
        for peer in self.raw_peers.values():
            peer.close()
        self.clients.clear()
        self.raw_peers.clear()

    @contextlib.contextmanager
    def example(self) -> Iterator[None]:
        """Around one example. The first failure is kept: the examples after it (and
        Hypothesis' replay of the failing one) raise it again at once instead of timing
        out against a broken appliance, and the next test gets a new appliance."""
        if self.failure is not None:
            raise self.failure
        try:
            self.assert_alive()
            yield
        except UnsatisfiedAssumption:
            raise
        except (Exception, pytest.fail.Exception) as exc:
            self.failure = exc
            raise

    def message_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids)}"

    # ------------------------------------------------------------ clients

    def client(self, identity: str, version: str) -> ClientConnection:
        ws = self.clients.get(identity)
        if ws is None or ws.state is not State.OPEN:
            assert self.appliance is not None
            url = f"{self.appliance.url}/{identity}"
            # no keep-alive of our own: websockets' pings draw from the global `random`,
            # which Hypothesis would see as a strategy using it (the appliance pings us)
            ws = connect(url, subprotocols=[version], max_size=None, ping_interval=None)
            ws = ws.__enter__()
            self.clients[identity] = ws
        return ws

    def call(self, identity: str, version: str, text: str, message_id: str) -> list[Any]:
        """Send a frame, return the answer with `message_id` (what comes before it, too,
        is skipped)."""
        ws = self.client(identity, version)
        try:
            ws.send(text)
            while True:
                answer = json.loads(ws.recv(timeout=PATIENCE))
                if isinstance(answer, list) and answer[1:2] == [message_id]:
                    return answer
        except TimeoutError:
            pytest.fail(f"no answer within {PATIENCE} s to {text[:300]}")
        except ConnectionClosed as closed:
            pytest.fail(f"the appliance dropped the connection ({closed}) after {text[:300]}")

    def raw_peer(self, identity: str, version: str) -> RawPeer:
        peer = self.raw_peers.get(identity)
        if peer is None:
            assert self.appliance is not None
            peer = RawPeer.connect(self.appliance.port, identity, version)
            self.raw_peers[identity] = peer
        return peer

    def closed(self, identity: str) -> None:
        peer = self.raw_peers.pop(identity, None)
        if peer is not None:
            peer.close()

    # ------------------------------------------------------------- checks

    def assert_alive(self) -> None:
        assert self.appliance is not None
        code = self.appliance.proc.poll()
        assert code is None, f"the appliance exited ({code}):\n{self.appliance.log()[-3000:]}"

    def assert_writer_writes(self, *frames: tuple[str, str, int]) -> None:
        """A new Heartbeat of the probe charge point reaches `messages` and `states` (the
        writer still writes), and `frames` reach `messages`: (identity, message id, rows)."""
        self.assert_alive()
        assert self.appliance is not None
        probe = self.message_id("probe")
        sent_ms = int(time.time() * 1000) - 1
        answer = self.call("PROBE", "ocpp1.6", json.dumps([2, probe, "Heartbeat", {}]), probe)
        assert answer[0] == 3, answer
        wanted = [("PROBE", probe, 2), *frames]
        appliance = self.appliance
        count = "SELECT count(*) FROM messages WHERE identity = ? AND message_id = ?"
        state = "SELECT count(*) FROM states WHERE id = ? AND ts >= ?"

        def missing() -> list[Any]:
            absent: list[Any] = [
                w for w in wanted if appliance.query(count, w[0], w[1])[0][0] < w[2]
            ]
            # its states too (the `.raw` capture of this Heartbeat)
            if not appliance.query(state, "PROBE.ocpp.ocpp1_6.in.Heartbeat.raw", sent_ms)[0][0]:
                absent.append("states of PROBE")
            return absent

        try:
            wait_for(lambda: not missing(), PATIENCE, "frames in messages")
        except AssertionError:
            pytest.fail(
                f"not written after {PATIENCE} s: {missing()} (is the writer still"
                f" writing?)\n--- server.log:\n{appliance.log()[-3000:]}"
            )

    def assert_verbatim(self, identity: str, message_id: str, text: str) -> None:
        """The CALL is in `messages` exactly as sent: big numbers, escapes and all."""
        assert self.appliance is not None
        [(payload,)] = self.appliance.query(
            "SELECT payload FROM messages WHERE identity = ? AND message_id = ?"
            " AND direction = 'in'",
            identity,
            message_id,
        )
        assert payload == text

    def assert_raw_state(self, identity: str, version: str, action: str, text: str) -> None:
        """`<identity>.ocpp.<v>.in.<Action>.raw` (README, `states`) holds this CALL's
        payload: the states of the frame were written too, not skipped."""
        appliance = self.appliance
        assert appliance is not None
        state = f"{identity}.ocpp.{version.replace('.', '_')}.in.{action}.raw"
        sent = json.loads(text)[3]
        key = (identity, action, json.dumps(sent, sort_keys=True))
        if key in self.payloads_sent:
            return  # an exact repeat is answered again but applied once (README)
        self.payloads_sent.add(key)

        def current() -> Any:
            rows = appliance.query("SELECT val, json_valid(val) FROM states WHERE id = ?", state)
            return json.loads(rows[0][0]) if rows and isinstance(rows[0][0], str) else None

        try:
            wait_for(lambda: current() == sent, PATIENCE, state)
        except AssertionError:
            pytest.fail(
                f"{state} does not hold the payload sent after {PATIENCE} s: {current()!r}"
                f"\n--- server.log:\n{appliance.log()[-3000:]}"
            )
        # a `json` state is JSON text to SQLite (README), whatever numbers it holds
        [(raw, valid)] = appliance.query(
            "SELECT val, json_valid(val) FROM states WHERE id = ?", state
        )
        assert valid == 1, f"{state} is not JSON to SQLite: {raw[:300]}"

    def stored_texts(self, identity: str, after_seq: int) -> list[str]:
        assert self.appliance is not None
        rows = self.appliance.query(
            "SELECT payload FROM messages WHERE identity = ? AND direction = 'in' AND seq > ?",
            identity,
            after_seq,
        )
        return [payload for (payload,) in rows]

    def last_seq(self) -> int:
        assert self.appliance is not None
        return self.appliance.query("SELECT coalesce(max(seq), 0) FROM messages")[0][0]


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    host = Fuzz(lambda: tmp_path_factory.mktemp("fuzz"))
    try:
        yield host
    finally:
        host.stop()


# ================================================================ valid requests


@pytest.mark.parametrize(("version", "action"), CASES)
def test_a_schema_valid_request_gets_a_schema_valid_callresult(fuzz: Fuzz, version, action):
    """Issue 12.6: every action a charge point may send, generated from its schema."""
    fuzz.ensure()
    identity = f"VALID{SHORT[version]}"
    response = response_schema_name(version, action)

    @fuzz_settings(examples=3)
    @given(payload=requests(version, action), ascii_only=st.booleans())
    def example(payload: dict[str, Any], ascii_only: bool) -> None:
        with fuzz.example():
            assert request_violations(version, action, payload) == []
            message_id = fuzz.message_id("v")
            text = render([2, message_id, action, payload], ascii_only)
            answer = fuzz.call(identity, version, text, message_id)
            assert answer[0] == 3, f"{answer} to {text[:500]}"
            assert schema_errors(version, response, answer[2]) == [], (answer, text[:500])
            fuzz.assert_writer_writes((identity, message_id, 2))
            fuzz.assert_verbatim(identity, message_id, text)
            fuzz.assert_raw_state(identity, version, action, text)

    example()


@pytest.mark.parametrize("version", VERSIONS)
def test_extreme_values_in_a_valid_request_are_answered_and_stored(fuzz: Fuzz, version):
    """Issue 16 Tests: integers beyond 64 bits, numbers beyond a double, lone surrogates
    and control characters, where the schema allows them and in tolerated extra fields."""
    fuzz.ensure()
    identity = f"EXTREME{SHORT[version]}"

    @fuzz_settings(examples=30)
    @given(data=st.data(), action=st.sampled_from(ACTIONS[version]))
    def example(data: st.DataObject, action: str) -> None:
        # every draw comes before `fuzz.example()`, which may re-raise at once
        node = schema(version, request_schema_name(version, action))
        payload = data.draw(requests(version, action), label="valid request")
        for path, value, sub in list(walk(payload, node)):
            if not path or not data.draw(st.booleans(), label=f"extreme at {path}"):
                continue
            free_text = not {"enum", "pattern", "format"} & sub.keys()
            if sub.get("type") == "string" and free_text:
                size = sub.get("minLength", 0), min(sub.get("maxLength", 64), 64)
                new = data.draw(extreme_text(*size), label=str(path))
            elif sub.get("type") in ("integer", "number"):
                new = data.draw(extreme_number(sub) | st.just(value), label=str(path))
            else:
                continue
            payload = replaced(payload, path, new)
        known = set(node.get("properties", {})) | {"vendorId"}
        key = data.draw(extreme_strings.filter(lambda k: k not in known), label="key")
        extra = data.draw(json_values(extreme_leaves), label="extra")
        if version != "ocpp1.6":
            # customData takes any extra field (schema-valid)
            payload["customData"] = {"vendorId": "FUZZ", key: extra}
        else:
            # a field the schema does not know: always tolerated (README, Validation)
            payload[key] = extra
        ascii_only = data.draw(st.booleans(), label="ASCII only")
        with fuzz.example():
            message_id = fuzz.message_id("x")
            text = render([2, message_id, action, payload], ascii_only)
            answer = fuzz.call(identity, version, text, message_id)
            assert answer[0] == 3, f"{answer} to {text[:500]}"
            response = response_schema_name(version, action)
            assert schema_errors(version, response, answer[2]) == [], (answer, text[:500])
            fuzz.assert_writer_writes((identity, message_id, 2))
            fuzz.assert_verbatim(identity, message_id, text)
            fuzz.assert_raw_state(identity, version, action, text)

    example()


# ========================================================== strict: the table's code


#: (kind of mutation, the jsonschema keyword that must then be the one violated, row)
MUTATIONS = {
    "not-an-object": ("type", "format"),
    "missing": ("required", "occurrence"),
    "type": ("type", "type"),
    "enum": ("enum", "property"),
    "too-long": ("maxLength", "property"),
    "date-time": (None, "property"),  # jsonschema checks no date-time without extras
}
ALIENS = [12345, 1.5, True, None, "fuzz", {"fuzz": 1}, ["fuzz"]]


def is_of_type(value: Any, kind: str) -> bool:
    return jsonschema.Draft4Validator.TYPE_CHECKER.is_type(value, kind)


def mutations(payload: dict[str, Any], node: dict[str, Any]) -> list[tuple[str, PathKey, Any]]:
    """Every single-place mutation of `payload`: (kind, path, the new value)."""
    found: list[tuple[str, PathKey, Any]] = [("not-an-object", (), alien) for alien in ALIENS]
    found = [m for m in found if not isinstance(m[2], dict)]
    for path, value, sub in walk(payload, node):
        if isinstance(value, dict):
            for key in sub.get("required", []):
                if key in value:
                    found.append(("missing", (*path, key), _DROP))
        if not path:
            continue
        kind = sub.get("type")
        if isinstance(kind, str):
            found += [("type", path, a) for a in ALIENS if not is_of_type(a, kind)]
        if "enum" in sub:
            found.append(("enum", path, "NotInTheEnumAtAll"))
        if "maxLength" in sub and "enum" not in sub:
            found.append(("too-long", path, "x" * (sub["maxLength"] + 1)))
        if sub.get("format") == "date-time":
            found.append(("date-time", path, "yesterday at noon"))
    return found


@pytest.mark.parametrize(("version", "action"), CASES)
def test_strict_mode_answers_a_mutated_request_with_the_tables_code(fuzz: Fuzz, version, action):
    """Issue 12.6: drop a required field, change a type, leave the enum, … → the code."""
    fuzz.ensure()
    identity = STRICT[version]
    node = schema(version, request_schema_name(version, action))

    @fuzz_settings(examples=3)
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        # every draw comes before `fuzz.example()`, which may re-raise at once
        payload = data.draw(requests(version, action), label="valid request")
        candidates = mutations(payload, node)
        kind = data.draw(st.sampled_from(sorted({c[0] for c in candidates})), label="kind")
        _, path, new = data.draw(
            st.sampled_from([c for c in candidates if c[0] == kind]), label="mutation"
        )
        mutated = replaced(payload, path, new)
        keyword, row = MUTATIONS[kind]
        errors = request_violations(version, action, mutated)
        # exactly one violation, the intended one (else the code is ambiguous)
        assume([e.validator for e in errors] == ([keyword] if keyword else []))
        with fuzz.example():
            message_id = fuzz.message_id("m")
            text = render([2, message_id, action, mutated])
            answer = fuzz.call(identity, version, text, message_id)
            expected = CODES[version][row]
            assert answer[:3] == [4, message_id, expected], f"{answer} to {text[:500]}"
            fuzz.assert_writer_writes((identity, message_id, 2))

    example()


# ====================================================================== random input


def sentinel_answered(peer: RawPeer, message_id: str) -> list[Any]:
    """Send a Heartbeat after the frames and read until its answer: then every frame
    before it has been processed."""
    peer.send_text(json.dumps([2, message_id, "Heartbeat", {}]))
    try:
        while True:
            answer = peer.recv_json(timeout=PATIENCE)
            if isinstance(answer, list) and answer[1:2] == [message_id]:
                return answer
    except (EOFError, ConnectionResetError):
        pytest.fail("the appliance dropped the connection (no close frame)")
    except TimeoutError:
        pytest.fail(f"no answer to a Heartbeat within {PATIENCE} s")


def assert_all_stored(fuzz: Fuzz, identity: str, sent: list[str], after_seq: int) -> None:
    stored = collections.Counter(fuzz.stored_texts(identity, after_seq))
    lost = collections.Counter(sent) - stored
    assert not lost, f"text messages sent but not in messages: {list(lost)[:5]}"


def expect_close(fuzz: Fuzz, identity: str, code: int | None, what: str) -> None:
    """Read until the appliance's close frame (`code`, or any code if None)."""
    peer = fuzz.raw_peers[identity]
    closed, _ = peer.closing(timeout=PATIENCE)
    fuzz.closed(identity)
    fuzz.assert_alive()
    if code is None:
        assert isinstance(closed, int), f"{what}: {closed}"
    else:
        assert closed == code, f"{what}: close code {closed}, expected {code}"


def is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


utf8_characters = extreme_characters.filter(lambda c: not "\ud800" <= c <= "\udfff")
random_bytes = st.one_of(
    st.binary(max_size=300),
    st.text(utf8_characters).map(str.encode),
    st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b'[2,"1","Heartbeat",{"x":"\xff"}]']),
)


@pytest.mark.parametrize("version", VERSIONS)
def test_random_bytes_never_end_the_appliance(fuzz: Fuzz, version):
    """Issue 12.6 / issue 16 #8: random bytes as a text frame (1007 if not UTF-8) and as
    a binary frame (1003)."""
    fuzz.ensure()
    identity = f"BYTES{SHORT[version]}"

    @fuzz_settings(examples=25)
    @given(data=random_bytes, binary=st.booleans())
    def example(data: bytes, binary: bool) -> None:
        with fuzz.example():
            after = fuzz.last_seq()
            peer = fuzz.raw_peer(identity, version)
            peer.send(BINARY if binary else TEXT, data)
            if binary:
                expect_close(fuzz, identity, 1003, "a binary frame")
            elif not is_utf8(data):
                expect_close(fuzz, identity, 1007, "invalid UTF-8 in a text frame")
            sentinel = fuzz.message_id("s")
            assert sentinel_answered(fuzz.raw_peer(identity, version), sentinel)[0] == 3
            fuzz.assert_writer_writes((identity, sentinel, 2))
            text = [] if binary or not is_utf8(data) else [data.decode()]
            assert_all_stored(fuzz, identity, text, after)

    example()


def ocpp_shaped(version: str) -> st.SearchStrategy[list[Any]]:
    """Arrays that look like OCPP-J frames, with anything in every place."""
    ids = st.one_of(st.text(max_size=40), extreme_strings, extreme_integers, st.none())
    actions = st.one_of(st.sampled_from(ACTIONS[version] + ["Reset", "Foo"]), extreme_strings)
    anything = json_values(st.one_of(extreme_leaves, not_json_tokens))
    kinds = st.one_of(st.sampled_from([2, 3, 4, 5, 6]), extreme_integers, number_tokens)
    return st.one_of(
        st.tuples(kinds, ids, actions, anything).map(list),
        st.tuples(st.just(2), ids, actions, st.dictionaries(extreme_strings, anything)).map(list),
        st.tuples(st.sampled_from([3, 4]), ids, anything).map(list),
        st.lists(anything, max_size=6),
    )


def json_texts(version: str) -> st.SearchStrategy[str]:
    """Random JSON (and near-JSON: NaN, Infinity) rendered as text."""
    values = st.one_of(
        ocpp_shaped(version), json_values(st.one_of(extreme_leaves, not_json_tokens))
    )
    return st.builds(render, values, st.booleans())


@pytest.mark.parametrize("version", VERSIONS)
def test_random_json_never_ends_the_appliance(fuzz: Fuzz, version):
    """Issue 12.6 / issue 16 #1, #3, #5: random JSON, OCPP-shaped or not, NaN included."""
    fuzz.ensure()
    identity = f"JSON{SHORT[version]}"

    @fuzz_settings(examples=25)
    @given(texts=st.lists(json_texts(version), min_size=1, max_size=4))
    def example(texts: list[str]) -> None:
        with fuzz.example():
            after = fuzz.last_seq()
            peer = fuzz.raw_peer(identity, version)
            for text in texts:
                peer.send_text(text)
            sentinel = fuzz.message_id("s")
            assert sentinel_answered(peer, sentinel)[0] == 3
            fuzz.assert_writer_writes((identity, sentinel, 2))
            assert_all_stored(fuzz, identity, texts, after)
            # what the README's queries select (a readable message type) is JSON to SQLite
            broken = fuzz.appliance.query(
                "SELECT payload FROM messages WHERE seq > ? AND message_type IS NOT NULL"
                " AND NOT json_valid(payload)",
                after,
            )
            assert broken == [], f"stored as a readable frame but not JSON: {broken[:3]}"

    example()


@dataclass(frozen=True)
class Step:
    """One thing a peer does: a message (maybe fragmented), a control frame, or a frame
    after which the appliance closes the connection."""

    kind: str
    data: bytes = b""
    parts: int = 1

    def frames(self) -> list[tuple[int, bytes, bool]]:
        if self.kind == "text":
            size = max(1, -(-len(self.data) // self.parts))
            chunks = [self.data[i : i + size] for i in range(0, len(self.data), size)] or [b""]
            last = len(chunks) - 1
            return [(CONTINUATION if i else TEXT, c, i == last) for i, c in enumerate(chunks)]
        opcode = {"ping": PING, "binary": BINARY, "bad-utf8": TEXT, "close": CLOSE}[self.kind]
        return [(opcode, self.data, True)]

    @property
    def closes(self) -> bool:
        return self.kind in ("binary", "bad-utf8", "close")

    @property
    def close_code(self) -> int | None:
        """The appliance's close code for this step (None: any; a close is echoed)."""
        return {"binary": 1003, "bad-utf8": 1007}.get(self.kind)


def steps(version: str) -> st.SearchStrategy[Step]:
    heartbeats = st.builds(lambda n: json.dumps([2, f"seq-{n}", "Heartbeat", {}]), st.integers(0))
    texts = st.one_of(heartbeats, json_texts(version), st.text(utf8_characters, max_size=50))
    return st.one_of(
        st.builds(lambda t, n: Step("text", t.encode(), n), texts, st.integers(1, 4)),
        st.builds(lambda b: Step("ping", b), st.binary(max_size=125)),
        st.builds(lambda b: Step("binary", b), st.binary(max_size=50)),
        st.builds(lambda b: Step("bad-utf8", b'["' + b + b'\xff"]'), st.binary(max_size=20)),
        st.builds(lambda c: Step("close", close_payload(c)), st.sampled_from([1000, 1001, 4000])),
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_random_frame_sequences_never_end_the_appliance(fuzz: Fuzz, version):
    """Issue 12.6: sequences of messages, fragments, pings, binary frames, broken UTF-8
    and closes, sent without waiting for answers."""
    fuzz.ensure()
    identity = f"SEQ{SHORT[version]}"

    @fuzz_settings(examples=15)
    @given(sequence=st.lists(steps(version), min_size=1, max_size=8))
    def example(sequence: list[Step]) -> None:
        with fuzz.example():
            after = fuzz.last_seq()
            sent: list[str] = []
            for step in sequence:
                peer = fuzz.raw_peer(identity, version)
                for opcode, data, fin in step.frames():
                    peer.send(opcode, data, fin)
                if step.kind == "text":
                    sent.append(step.data.decode())
                if step.closes:
                    expect_close(fuzz, identity, step.close_code, step.kind)
            sentinel = fuzz.message_id("s")
            assert sentinel_answered(fuzz.raw_peer(identity, version), sentinel)[0] == 3
            fuzz.assert_writer_writes((identity, sentinel, 2))
            assert_all_stored(fuzz, identity, sent, after)

    example()


# ============================================================================ the end


def test_after_the_fuzz_the_appliance_stops_cleanly_with_an_intact_database(fuzz: Fuzz):
    """Issue 12.6: SIGTERM → exit 0, `PRAGMA integrity_check` ok, no traceback logged."""
    appliance = fuzz.ensure()
    fuzz.assert_writer_writes()
    assert fuzz.stop() == 0
    log = appliance.log()
    assert "Traceback" not in log, log[-3000:]
    bad = [s for s in fuzz.stopped if s.integrity != [("ok",)]]
    assert bad == [], bad
