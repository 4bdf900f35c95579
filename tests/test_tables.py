"""Prove appliance/versions/tables.py against the official OCA JSON schemas."""

from __future__ import annotations

import decimal
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
SCHEMA_DIRS = {"ocpp1.6": "v16", "ocpp2.0.1": "v201", "ocpp2.1": "v21"}
VERSIONS = sorted(SCHEMA_DIRS)


def _load_tables() -> ModuleType:
    try:
        from appliance.versions import tables
    except ImportError:
        path = ROOT / "appliance" / "versions" / "tables.py"
        spec = importlib.util.spec_from_file_location("appliance_versions_tables", path)
        assert spec is not None and spec.loader is not None
        tables = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tables)
    return tables


T = _load_tables()


def _load_json(text: str) -> Any:
    return json.loads(text, parse_float=decimal.Decimal)


def _schema_dir(version: str) -> Path:
    return SCHEMAS / SCHEMA_DIRS[version]


def _request_file(version: str, action: str) -> Path:
    # 1.6: X.json; 2.x: XRequest.json, except SEND messages (no response) are X.json.
    if version == "ocpp1.6" or action in T.SEND_ONLY[version]:
        return _schema_dir(version) / f"{action}.json"
    return _schema_dir(version) / f"{action}Request.json"


def _response_file(version: str, action: str) -> Path:
    return _schema_dir(version) / f"{action}Response.json"


def _schema_actions(version: str) -> set[str]:
    """Every action that has at least one schema file in the version's folder."""
    actions = set()
    for path in _schema_dir(version).glob("*.json"):
        name = path.name.removesuffix(".json")
        name = name.removesuffix("Response")
        if version != "ocpp1.6":
            name = name.removesuffix("Request")
        actions.add(name)
    return actions


def _validator(path: Path) -> Any:
    schema = _load_json(path.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_tables_cover_exactly_the_three_versions() -> None:
    for table in (T.FROM_CHARGE_POINT, T.FROM_CSMS, T.SEND_ONLY, T.MINIMAL_RESPONSES):
        assert set(table) == set(SCHEMA_DIRS)


@pytest.mark.parametrize("version", VERSIONS)
def test_schema_folder_is_populated(version: str) -> None:
    # Guards the coverage test below against passing vacuously on a wrong path.
    assert len(_schema_actions(version)) >= 39


@pytest.mark.parametrize("version", VERSIONS)
def test_every_schema_action_has_a_direction(version: str) -> None:
    classified = T.FROM_CHARGE_POINT[version] | T.FROM_CSMS[version]
    missing = _schema_actions(version) - classified
    assert not missing, f"{version}: schema actions without a direction: {sorted(missing)}"


@pytest.mark.parametrize("version", VERSIONS)
def test_only_data_transfer_goes_both_ways(version: str) -> None:
    both = T.FROM_CHARGE_POINT[version] & T.FROM_CSMS[version]
    assert both == {"DataTransfer"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_listed_action_has_schema_files(version: str) -> None:
    problems = []
    for action in sorted(T.FROM_CHARGE_POINT[version] | T.FROM_CSMS[version]):
        if not _request_file(version, action).is_file():
            problems.append(f"{action}: no request schema")
        has_response = _response_file(version, action).is_file()
        if action in T.SEND_ONLY[version]:
            if has_response:
                problems.append(f"{action}: SEND message but a response schema exists")
        elif not has_response:
            problems.append(f"{action}: no response schema")
    assert not problems, f"{version}: {problems}"


@pytest.mark.parametrize("version", VERSIONS)
def test_send_only_actions_come_from_the_charge_point(version: str) -> None:
    assert T.SEND_ONLY[version] <= T.FROM_CHARGE_POINT[version]
    assert not T.SEND_ONLY[version] & T.FROM_CSMS[version]


@pytest.mark.parametrize("version", VERSIONS)
def test_minimal_responses_cover_charge_point_calls(version: str) -> None:
    expected = T.FROM_CHARGE_POINT[version] - T.SEND_ONLY[version]
    assert set(T.MINIMAL_RESPONSES[version]) == expected


@pytest.mark.parametrize("version", VERSIONS)
def test_minimal_responses_are_schema_valid(version: str) -> None:
    problems = []
    for action, payload in sorted(T.MINIMAL_RESPONSES[version].items()):
        # Round-trip through JSON text so the payload is what the wire would carry.
        wire = _load_json(json.dumps(payload))
        validator = _validator(_response_file(version, action))
        problems += [f"{action}: {e.message}" for e in validator.iter_errors(wire)]
    assert not problems, f"{version}: {problems}"


def test_validator_rejects_bad_payloads() -> None:
    # The schema-validity test is only meaningful if the same machinery can fail.
    boot = _validator(_response_file("ocpp2.0.1", "BootNotification"))
    assert not boot.is_valid(_load_json('{"status": "Accepted"}'))
    assert not boot.is_valid(
        _load_json('{"status": "Maybe", "interval": 300, "currentTime": "2026-01-01T00:00:00Z"}')
    )
    heartbeat16 = _validator(_response_file("ocpp1.6", "Heartbeat"))
    assert not heartbeat16.is_valid(_load_json('{"currentTime": "x", "extra": 1}'))


def test_policy_answers() -> None:
    # The home-CSMS policy: accept tokens, refuse services that are not offered.
    r = T.MINIMAL_RESPONSES
    assert r["ocpp1.6"]["Authorize"]["idTagInfo"]["status"] == "Accepted"
    assert r["ocpp1.6"]["StartTransaction"]["idTagInfo"]["status"] == "Accepted"
    for version in ("ocpp2.0.1", "ocpp2.1"):
        assert r[version]["Authorize"]["idTokenInfo"]["status"] == "Accepted"
        assert r[version]["TransactionEvent"]["idTokenInfo"]["status"] == "Accepted"
        assert r[version]["Get15118EVCertificate"]["status"] == "Failed"
        assert r[version]["GetCertificateStatus"]["status"] == "Failed"
    for version in VERSIONS:
        assert r[version]["BootNotification"]["status"] == "Accepted"
        assert r[version]["BootNotification"]["interval"] == 300
        assert r[version]["DataTransfer"]["status"] == "Accepted"
        assert r[version]["SignCertificate"]["status"] == "Rejected"
    assert r["ocpp2.1"]["NotifyEVChargingNeeds"]["status"] == "NoChargingProfile"
    for action in ("OpenPeriodicEventStream", "PullDynamicScheduleUpdate", "VatNumberValidation"):
        assert r["ocpp2.1"][action]["status"] == "Rejected"
    chain = r["ocpp2.1"]["GetCertificateChainStatus"]["certificateStatus"]
    assert [item["status"] for item in chain] == ["Failed"]


def test_versions_do_not_share_response_objects() -> None:
    # A caller mutating one version's (copied-by-mistake) payload must not leak.
    r = T.MINIMAL_RESPONSES
    for action in set(r["ocpp2.0.1"]) & set(r["ocpp2.1"]):
        assert r["ocpp2.0.1"][action] is not r["ocpp2.1"][action]


def _measurand_enum(node: Any) -> list[str] | None:
    """The measurand enum of a MeterValues schema (1.6 `measurand`, 2.x MeasurandEnumType)."""
    if isinstance(node, dict):
        for name in ("measurand", "MeasurandEnumType"):
            if isinstance(node.get(name), dict) and "enum" in node[name]:
                return list(node[name]["enum"])
        for value in node.values():
            found = _measurand_enum(value)
            if found:
                return found
    return None


@pytest.mark.parametrize("version", VERSIONS)
def test_measurand_names_are_the_schemas(version: str) -> None:
    """README "Readings the appliance asks for": `[readings] measurands` is checked
    against exactly the names each version's schema has."""
    name = "MeterValues" if version == "ocpp1.6" else "MeterValuesRequest"
    schema = _load_json((_schema_dir(version) / f"{name}.json").read_text(encoding="utf-8"))
    assert T.MEASURAND_NAMES[version] == frozenset(_measurand_enum(schema) or ())
