"""The README's Home Assistant example (README "Web dashboard and API", the
`configuration.yaml` with a `rest` sensor and a `rest_command`) run the way Home
Assistant runs it, against a real appliance with a charge point of the `ocpp` package.

Home Assistant itself is not installed (it is a whole application); this file does what
its two integrations do with that configuration, step by step, each step citing HA's
documentation and, where the documentation is silent, HA core's source:

- RESTful sensor: https://www.home-assistant.io/integrations/sensor.rest/
  (homeassistant/components/rest/sensor.py and rest/data.py)
- RESTful Command: https://www.home-assistant.io/integrations/rest_command/
  (homeassistant/components/rest_command/__init__.py)
- `!secret`: https://www.home-assistant.io/docs/configuration/secrets/
- templates: https://www.home-assistant.io/docs/configuration/templating/ (Jinja2;
  HA renders them in a sandboxed Jinja2 environment)
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import jinja2.sandbox
import pytest
from test_controls import V16, Station, _profile, assert_valid_call, booted, stamp
from test_web_api import charging, web_config, web_url

import conftest

yaml = pytest.importorskip("yaml", reason="PyYAML (HA's YAML loader) is not installed")

#: the test's charge point: not the README's GARAGE, so that the substitution is real
IDENTITY = "HA-WALLBOX"
#: what the charge point reports last (11 040 W: 16 A on three phases at 230 V)
POWER_W = 11040
ENERGY_WH = 1500
#: the README's placeholders, as a user replaces them in their own configuration.yaml
README_URL = "http://box:9080"
README_IDENTITY = "GARAGE"
SECRET = "ocpp_appliance_token"


# ------------------------------------------------------------------ the configuration


def readme_home_assistant_yaml() -> str:
    """The README's `configuration.yaml` example: the yaml block of the "Web dashboard
    and API" section that sets up a `platform: rest` sensor."""
    readme = (conftest.ROOT / "README.md").read_text()
    section = readme.split("## Web dashboard and API", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "platform: rest" in b]
    assert len(blocks) == 1, f"expected one Home Assistant yaml block, got {blocks}"
    return blocks[0]


def load_configuration(text: str, secrets: dict[str, str]) -> dict[str, Any]:
    """configuration.yaml as HA reads it: YAML (HA's loader is PyYAML's SafeLoader plus
    its own tags) where `!secret NAME` is the value of NAME in secrets.yaml, and a name
    that is not there is a configuration error (HA docs, "Storing secrets")."""

    class Loader(yaml.SafeLoader):
        pass

    def secret(loader: yaml.SafeLoader, node: yaml.Node) -> str:
        name = loader.construct_scalar(node)
        if name not in secrets:
            raise yaml.constructor.ConstructorError(None, None, f"Secret {name} not defined")
        return secrets[name]

    Loader.add_constructor("!secret", secret)
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass


#: HA renders templates with Jinja2 in a sandbox (homeassistant/helpers/template.py:
#: TemplateEnvironment is an ImmutableSandboxedEnvironment)
TEMPLATES = jinja2.sandbox.ImmutableSandboxedEnvironment()


def render(template: str, variables: dict[str, Any]) -> str:
    return TEMPLATES.from_string(template).render(**variables)


# ------------------------------------------------------------------- the rest sensor


#: the RESTful sensor's configuration variables (HA docs), with what every sensor
#: platform takes (`platform`, `scan_interval`, `unique_id`, …)
SENSOR_KEYS = frozenset(
    {"resource", "resource_template", "method", "name", "device_class", "state_class",
     "value_template", "payload", "verify_ssl", "timeout", "unit_of_measurement",
     "authentication", "username", "password", "headers", "params", "json_attributes",
     "json_attributes_path", "force_update", "encoding", "icon", "availability",
     "picture", "platform", "scan_interval", "unique_id"}
)  # fmt: skip


class RestSensor:
    """`sensor: - platform: rest` (HA docs "RESTful Sensor")."""

    def __init__(self, config: dict[str, Any]) -> None:
        assert set(config) <= SENSOR_KEYS, f"not a rest sensor key: {set(config) - SENSOR_KEYS}"
        # configuration variables (docs): `resource` required; `method` "Either POST or
        # GET", default GET; `headers`, `timeout` (default 10 s), `value_template`,
        # `json_attributes` ("A list of keys to extract values from a JSON dictionary
        # result and then set as sensor attributes"), `unit_of_measurement`,
        # `device_class`; `scan_interval` (seconds between polls) is the platform's
        assert config["platform"] == "rest"
        self.name = config.get("name", "REST Sensor")
        self.resource: str = config["resource"]
        self.method: str = config.get("method", "GET").upper()
        assert self.method in ("GET", "POST")
        self.headers: dict[str, str] = config.get("headers") or {}
        self.timeout = float(config.get("timeout", 10))
        self.value_template: str | None = config.get("value_template")
        self.json_attributes: list[str] = config.get("json_attributes") or []
        self.unit: str | None = config.get("unit_of_measurement")
        self.device_class: str | None = config.get("device_class")
        self.scan_interval = config.get("scan_interval", 30)
        assert isinstance(self.scan_interval, int) and self.scan_interval > 0
        self.state: str | None = None
        self.attributes: dict[str, Any] = {}
        self.value_json: Any = None

    def update(self) -> None:
        """One poll, as HA does every `scan_interval` seconds (rest/data.py fetches the
        body as text; rest/sensor.py then derives the attributes and the state)."""
        answer = httpx.request(
            self.method,
            self.resource,
            headers={k: render(v, {}) for k, v in self.headers.items()},
            timeout=self.timeout,
        )
        value = answer.text
        try:
            self.value_json = json.loads(value)
        except ValueError:
            self.value_json = None
        # json_attributes (rest/sensor.py): the JSON, or its 0th element if a list;
        # `{k: json_dict[k] for k in json_attributes if k in json_dict}`: a key the
        # answer does not have is silently missing from the attributes
        found = self.value_json
        if isinstance(found, list) and found:
            found = found[0]
        if self.json_attributes and isinstance(found, dict):
            self.attributes = {k: found[k] for k in self.json_attributes if k in found}
        # value_template (docs "Processing incoming data"): `value` is the body, and
        # `value_json` the body parsed as JSON; the rendered text, stripped, is the state
        if self.value_template is None:
            self.state = value
        else:
            variables = {"value": value}
            if self.value_json is not None:
                variables["value_json"] = self.value_json
            self.state = render(self.value_template, variables).strip()

    def numeric_state(self) -> float:
        """A sensor with a unit of measurement (or a numeric device class like power)
        must have a number as its state: HA refuses any other value with "…thus
        indicating it has a numeric value; however, it has the non-numeric value…"."""
        assert self.state is not None, "never updated"
        try:
            return float(self.state)
        except ValueError:
            pytest.fail(f"{self.name}: non-numeric state {self.state!r} with unit {self.unit}")


# ------------------------------------------------------------------ the rest command


#: rest_command's methods (rest_command/__init__.py: SUPPORT_REST_METHODS)
REST_METHODS = ("get", "patch", "post", "put", "delete")
#: its configuration variables (HA docs); its schema (COMMAND_SCHEMA, a voluptuous
#: Schema without `extra`) makes any other key a configuration error
COMMAND_KEYS = frozenset(
    {"url", "method", "headers", "payload", "username", "password", "timeout",
     "content_type", "verify_ssl"}
)  # fmt: skip


class RestCommand:
    """`rest_command: NAME:` (HA docs "RESTful Command"): the action
    `rest_command.NAME`, called with data (the service call's variables)."""

    def __init__(self, config: dict[str, Any]) -> None:
        assert set(config) <= COMMAND_KEYS, f"not a rest_command key: {set(config) - COMMAND_KEYS}"
        # configuration variables (docs): `url` (template) required; `method` (get,
        # patch, post, put or delete) default get; `headers` (templates); `payload` ("A
        # string/template to send with request"); `content_type`; `timeout` default 10
        self.url: str = config["url"]
        self.method: str = config.get("method", "get").lower()
        assert self.method in REST_METHODS
        self.headers: dict[str, str] = config.get("headers") or {}
        self.payload: str | None = config.get("payload")
        self.content_type: str | None = config.get("content_type")
        self.timeout = float(config.get("timeout", 10))
        self.log: list[str] = []
        self.payload_sent: bytes | None = None

    def __call__(self, **data: Any) -> dict[str, Any]:
        """The service handler: the url, headers and payload rendered with the call's
        data as variables; `content_type` sets the Content-Type header; the answer is
        the service response `{"status": …, "content": …}` (content parsed when it is
        application/json); a status >= 400 is logged as "Error. Url: … Status code …"
        (rest_command/__init__.py: at warning level) and the action itself does not
        fail (only a timeout or a connection error raises HomeAssistantError)."""
        payload = None if self.payload is None else render(self.payload, data).encode()
        self.payload_sent = payload
        url = render(self.url, data)
        headers = {name: render(value, data) for name, value in self.headers.items()}
        if self.content_type:
            headers["Content-Type"] = self.content_type
        answer = httpx.request(
            self.method.upper(), url, content=payload, headers=headers, timeout=self.timeout
        )
        if answer.status_code >= 400:
            self.log.append(
                f"Error. Url: {answer.url}. Status code {answer.status_code}. Payload: {payload}"
            )
        is_json = answer.headers.get("content-type", "").startswith("application/json")
        content = answer.json() if is_json else answer.text
        return {"status": answer.status_code, "content": content}


# ---------------------------------------------------------------------------- set up


def api_token() -> tuple[str, str]:
    """(token, hash) made as the README says: `ocpp-appliance web-token`."""
    done = conftest.run_cli("web-token")
    assert done.returncode == 0, done.stderr
    token = re.search(r"shown once\): (oat_\S+)", done.stdout)
    digest = re.search(r'api_token_hashes\): "(\S+)"', done.stdout)
    assert token and digest, done.stdout
    return token.group(1), digest.group(1)


def home_assistant(url: str, secrets: dict[str, str]) -> tuple[RestSensor, RestCommand]:
    """The README's configuration with its placeholders replaced by a user's values."""
    text = readme_home_assistant_yaml()
    assert README_URL in text and README_IDENTITY in text, text
    text = text.replace(README_URL, url).replace(README_IDENTITY, IDENTITY)
    config = load_configuration(text, secrets)
    [sensor] = [s for s in config["sensor"] if s["platform"] == "rest"]
    return RestSensor(sensor), RestCommand(config["rest_command"]["wallbox_limit"])


def meter_values(station: Station, transaction_id: int, watts: int, wh: int) -> None:
    """A reading of the running session, as a charger sends it (with its transaction)."""
    station.send(
        station.call.MeterValues(
            connector_id=1,
            transaction_id=transaction_id,
            meter_value=[
                {
                    "timestamp": stamp(),
                    "sampled_value": [
                        {"value": str(watts), "measurand": "Power.Active.Import", "unit": "W"},
                        {"value": str(wh), "measurand": "Energy.Active.Import.Register"},
                    ],
                }
            ],
        )
    )


def wait_until(check: Callable[[], bool], timeout: float = 10) -> bool:
    """True as soon as `check()` is, False after `timeout` seconds: the caller's
    assertion then says what was seen."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ------------------------------------------------------------------------------ test


def test_the_readme_home_assistant_example_works(start_appliance):
    token, digest = api_token()
    # only the token: the README's example needs no dashboard password
    appliance = start_appliance(web_config(password=False) + f'api_token_hashes = ["{digest}"]\n')
    url = web_url(appliance)
    # secrets.yaml, as the README's comment says: `"Bearer oat_…"`
    secrets = yaml.safe_load(f'{SECRET}: "Bearer {token}"\n')
    sensor, wallbox_limit = home_assistant(url, secrets)
    assert sensor.unit == "W" and sensor.device_class == "power"
    assert wallbox_limit.headers["Authorization"] == f"Bearer {token}"

    with booted(Station(appliance, IDENTITY, V16).open()) as station:
        charging(station)  # a session (StartTransaction at 1000 Wh), two readings
        [(transaction_id,)] = appliance.wait_rows(
            "SELECT val FROM states WHERE id LIKE '%.transactions.last.id'"
        )
        meter_values(station, int(transaction_id), POWER_W, ENERGY_WH)

        # the sensor: polled until the reading is there (HA polls every scan_interval)
        polled = wait_until(lambda: (sensor.update(), sensor.value_json["power_w"] == POWER_W)[1])
        assert polled, f"the sensor's state: {sensor.state!r}, not {POWER_W}"
        assert sensor.numeric_state() == POWER_W
        # every attribute the README lists is in the answer (HA drops missing ones
        # silently: a README/API mismatch would only show as a missing attribute)
        missing = set(sensor.json_attributes) - set(sensor.value_json)
        assert not missing, f"json_attributes not in the API's answer: {missing}"
        assert sensor.attributes.keys() == set(sensor.json_attributes)
        attributes = sensor.attributes
        assert attributes["state"] == "charging"
        assert attributes["energy_kwh"] == pytest.approx(ENERGY_WH / 1000)
        assert attributes["tx_active"] == 1
        assert attributes["tx_energy_kwh"] == pytest.approx((ENERGY_WH - 1000) / 1000)
        assert attributes["charge_limit"] is None  # none in force yet

        # the rest_command, as an automation calls it: `rest_command.wallbox_limit`
        # with data `amps: 16`
        station.answers["SetChargingProfile"] = {"status": "Accepted"}
        response = wallbox_limit(amps=16)
        assert wallbox_limit.payload_sent == b'{"id": "control.chargeLimit", "value": 16}'
        assert response["status"] == 200, response
        assert response["content"]["ok"] is True, response
        assert wallbox_limit.log == []
        action, payload = station.take_one()
        assert action == "SetChargingProfile"
        assert_valid_call(V16, action, payload)
        _, schedule = _profile(V16, payload)
        [period] = schedule["chargingSchedulePeriod"]
        assert (schedule["chargingRateUnit"], period["limit"]) == ("A", 16)

        # the next poll shows the limit in force
        sensor.update()
        assert sensor.attributes["charge_limit"] == 16
        assert sensor.numeric_state() == POWER_W

        # without the token the request is refused, and HA logs "Error. Url: …
        # Status code …" (the action itself does not fail); nothing reaches the charger.
        # No Authorization header: a request like a browser's, which needs the CSRF header
        no_header = home_assistant(url, secrets)[1]
        no_header.headers = {}
        refused = no_header(amps=10)
        assert refused["status"] == 403, refused
        assert no_header.log == [
            f"Error. Url: {no_header.url}. Status code 403. Payload: {no_header.payload_sent}"
        ]
        # a wrong secret
        wrong = home_assistant(url, {SECRET: "Bearer oat_not-the-token"})[1]
        refused = wrong(amps=10)
        assert refused["status"] == 401, refused
        assert refused["content"] == {"error": "wrong or unknown API token"}, refused
        assert len(wrong.log) == 1 and "Status code 401" in wrong.log[0]
        station.assert_quiet(0.5)
        sensor.update()
        assert sensor.attributes["charge_limit"] == 16

    # a secrets.yaml without the name: HA does not load the configuration at all
    with pytest.raises(yaml.YAMLError, match=f"Secret {SECRET} not defined"):
        home_assistant(url, {})
