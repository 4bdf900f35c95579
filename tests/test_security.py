"""Who gets in (README "Security", issue 7): HTTP Basic auth (security profiles 1 and 2), wss://
(profile 2), mutual TLS (profile 3), the idToken list, SIGHUP, the throttle against bad
peers, and secrets kept out of the database, the log and check-config.

Charge points are the `ocpp` package over `websockets` where the protocol matters, plain
`websockets` clients where only the handshake does. Certificates are made here, per test
session, with `cryptography`: none is committed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

import conftest
from appliance import passwords
from appliance.security import guard
from appliance.security.guard import Credential, Reporter, Throttle, Verifier
from conftest import Appliance, run_cli, schema_errors

PASSWORD = "Garage-Secret_0123456789"  # 24 characters of OCPP's passwordString set
BOOT16 = {"chargePointVendor": "Vendor", "chargePointModel": "Model"}

# ------------------------------------------------------------------ certificates


@dataclass
class Pki:
    folder: Path
    #: the CA that signs the server certificate: what a charge point trusts
    server_ca: Path
    #: the CA that signs charge point certificates: the config's client_ca
    client_ca: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.crt", self.folder / f"{name}.key"

    def client_context(self, name: str | None = None) -> ssl.SSLContext:
        """What a charge point uses: trusts server_ca; with `name`, presents that cert."""
        context = ssl.create_default_context(cafile=str(self.server_ca))
        if name is not None:
            cert, key = self.client(name)
            context.load_cert_chain(cert, key)
        return context


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject_cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    issuer_name, signing_key = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(folder: Path, clients: list[str]) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    server_ca_key, client_ca_key, rogue_ca_key = _key(), _key(), _key()
    server_ca = _certificate("Test server CA", server_ca_key, None, ca=True)
    client_ca = _certificate("Test charge point CA", client_ca_key, None, ca=True)
    rogue_ca = _certificate("Some other CA", rogue_ca_key, None, ca=True)
    (folder / "server-ca.crt").write_bytes(_pem(server_ca))
    (folder / "client-ca.crt").write_bytes(_pem(client_ca))

    server_key = _key()
    server = _certificate("appliance", server_key, (server_ca, server_ca_key), server=True)
    (folder / "server.crt").write_bytes(_pem(server))
    _write_key(server_key, folder / "server.key")
    # a key of no certificate here, for the mismatch test
    _write_key(_key(), folder / "other.key")

    for name in clients:
        key = _key()
        issuer = (
            (rogue_ca, rogue_ca_key) if name.startswith("rogue") else (client_ca, client_ca_key)
        )
        cn = name.removeprefix("rogue-")
        (folder / f"{name}.crt").write_bytes(_pem(_certificate(cn, key, issuer)))
        _write_key(key, folder / f"{name}.key")
    return Pki(folder, folder / "server-ca.crt", folder / "client-ca.crt")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), ["CP-TLS", "CP-OTHER", "rogue-CP-TLS"])


def tls_config(pki: Pki, client_ca: bool = False) -> str:
    text = f'[tls]\ncert = "{pki.folder / "server.crt"}"\nkey = "{pki.folder / "server.key"}"\n'
    if client_ca:
        text += f'client_ca = "{pki.client_ca}"\n'
    return text


# --------------------------------------------------------------------------- helpers


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def refusal(url: str, **kwargs: Any) -> Any:
    """The HTTP response with which the server refuses the upgrade (fails if it accepts)."""
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=5, **kwargs).close()
    return refused.value.response


def refused_rows(appliance: Appliance, count: int = 1) -> list[tuple]:
    return appliance.wait_rows(
        "SELECT identity, reason, protocol FROM connection_log WHERE event = 'refused'"
        " ORDER BY seq",
        count=count,
    )


def heartbeat_ok(ws: ClientConnection, message_id: str = "hb") -> None:
    ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
    answer = json.loads(ws.recv(timeout=5))
    assert answer[:2] == [3, message_id], answer


def closed_by_server(ws: ClientConnection, timeout: float = 5) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    return None if closed.value.rcvd is None else closed.value.rcvd.code


def call(ws: ClientConnection, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    message_id = f"{action}-{time.monotonic_ns()}"
    ws.send(json.dumps([2, message_id, action, payload]))
    answer = json.loads(ws.recv(timeout=5))
    assert answer[:2] == [3, message_id], answer
    return answer[2]


def wait_log(appliance: Appliance, text: str, timeout: float = 10) -> str:
    return conftest.wait_for(lambda: text in appliance.log() and appliance.log(), timeout, text)


async def ocpp16_boot(url: str, **connect_kwargs: Any) -> str:
    """Connect as the `ocpp` package's 1.6 ChargePoint, boot, return the boot status."""
    from ocpp.v16 import ChargePoint
    from ocpp.v16 import call as call16

    identity = url.rsplit("/", 1)[-1]
    async with websockets.connect(
        url, subprotocols=["ocpp1.6"], open_timeout=5, **connect_kwargs
    ) as ws:
        cp = ChargePoint(identity, ws, response_timeout=10)
        reader = asyncio.create_task(cp.start())
        try:
            answer = await cp.call(
                call16.BootNotification(charge_point_vendor="Sec", charge_point_model="Test"),
                suppress=False,
            )
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader
    return answer.status


def password_config(identity: str, *, password: str | None = None, hashed: str | None = None):
    text = f'[charge_points."{identity}"]\n'
    if password is not None:
        text += f'password = "{password}"\n'
    if hashed is not None:
        text += f'password_hash = "{hashed}"\n'
    return text


# ------------------------------------------------------------ profile 1: Basic auth


def test_right_password_lets_the_charge_point_in(start_appliance):
    appliance = start_appliance(password_config("CP-PW", password=PASSWORD))
    url = f"{appliance.url}/CP-PW"
    status = asyncio.run(
        ocpp16_boot(url, additional_headers={"Authorization": basic("CP-PW", PASSWORD)})
    )
    assert status == "Accepted"
    rows = appliance.wait_rows("SELECT event FROM connection_log WHERE identity = 'CP-PW'")
    assert rows[0] == ("connect",)
    # a charge point without a password configured still gets in without credentials
    assert asyncio.run(ocpp16_boot(f"{appliance.url}/CP-OPEN")) == "Accepted"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Authorization": basic("CP-PW", "Wrong-Password-0123")}, "wrong password"),
        ({}, "no Basic-auth"),
        ({"Authorization": basic("CP-OTHER", PASSWORD)}, "user is not the charge point identity"),
        ({"Authorization": "Bearer abc"}, "not Basic"),
    ],
    ids=["wrong-password", "missing-header", "user-not-identity", "not-basic"],
)
def test_bad_credentials_are_refused_with_401_before_the_upgrade(start_appliance, headers, reason):
    appliance = start_appliance(password_config("CP-PW", password=PASSWORD))
    response = refusal(
        f"{appliance.url}/CP-PW", subprotocols=["ocpp1.6"], additional_headers=headers
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="ocpp"')
    [(identity, logged_reason, protocol)] = refused_rows(appliance)
    assert identity == "CP-PW"
    assert reason in logged_reason
    assert protocol == "ocpp1.6"
    assert PASSWORD not in logged_reason and "Wrong-Password" not in logged_reason
    assert appliance.query("SELECT count(*) FROM connection_log WHERE event = 'connect'") == [(0,)]
    # the right password still works after a failure
    ok = asyncio.run(
        ocpp16_boot(
            f"{appliance.url}/CP-PW", additional_headers={"Authorization": basic("CP-PW", PASSWORD)}
        )
    )
    assert ok == "Accepted"


def hash_from_cli(password: str) -> str:
    result = run_cli("hash-password", input=password + "\n")
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout
    return result.stdout.strip()


def test_hash_from_the_hash_password_command_works(start_appliance):
    hashed = hash_from_cli(PASSWORD)
    assert hashed.startswith("scrypt$ln=15,r=8,p=1$"), hashed
    assert hashed != hash_from_cli(PASSWORD), "no fresh salt per hash"
    appliance = start_appliance(password_config("CP-HASH", hashed=hashed))
    url = f"{appliance.url}/CP-HASH"
    good = {"Authorization": basic("CP-HASH", PASSWORD)}
    assert asyncio.run(ocpp16_boot(url, additional_headers=good)) == "Accepted"
    # again: the verification is remembered, the answer the same
    assert asyncio.run(ocpp16_boot(url, additional_headers=good)) == "Accepted"
    bad = {"Authorization": basic("CP-HASH", PASSWORD + "x")}
    assert refusal(url, additional_headers=bad).status_code == 401
    [(_, reason, _)] = refused_rows(appliance)
    assert "wrong password" in reason


def test_hash_password_reads_stdin_and_warns_outside_ocpp_rule():
    short = run_cli("hash-password", input="short\n")
    assert short.returncode == 0
    assert "16-40" in short.stderr
    assert passwords.verify(b"short", short.stdout.strip())
    assert not passwords.verify(b"short\n", short.stdout.strip())
    assert run_cli("hash-password", input="\n").returncode == 2
    help_text = run_cli("hash-password", "--help").stdout
    assert "example: ocpp-appliance hash-password" in help_text
    # --config is accepted like by every subcommand
    assert run_cli("hash-password", "--config", "/nonexistent.toml", input=PASSWORD).returncode == 0


def test_check_config_masks_secrets_and_warns_about_plain_passwords(tmp_path):
    hashed = passwords.hash_password(PASSWORD, ln=10)
    path = tmp_path / "appliance.toml"
    path.write_text(
        password_config("CP-PLAIN", password="tooshort")
        + password_config("CP-HASH", hashed=hashed)
        + '[authorization]\nid_tokens = ["TAG1"]\n'
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "tooshort" not in result.stdout + result.stderr
    assert hashed not in result.stdout + result.stderr
    assert hashed.split("$")[2] not in result.stdout  # not even the salt
    assert result.stdout.count('"***"') == 2
    assert 'charge_points."CP-PLAIN".password' in result.stderr
    assert "hash-password" in result.stderr
    assert "16-40" in result.stderr
    # a plain password is accepted by serve too (warning, no error): checked below by the
    # secrets test; here the exit status says it loads
    assert tomllib.loads(result.stdout)["authorization"]["id_tokens"] == ["TAG1"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[charge_points."CP1"]\npassword_hash = "md5$abc"\n', 'charge_points."CP1".password_hash'),
        (
            '[charge_points."CP1"]\npassword_hash = "scrypt$ln=40,r=8,p=1$c2FsdHNhbHQ$'
            + "a" * 43
            + '"\n',
            'charge_points."CP1".password_hash',
        ),
        ('[charge_points."CP1"]\npassword = ""\n', 'charge_points."CP1".password'),
        (
            '[charge_points."CP1"]\npassword = "a-long-enough-password"\n'
            'password_hash = "scrypt$ln=10,r=8,p=1$c2FsdHNhbHQ$' + "a" * 43 + '"\n',
            'charge_points."CP1"',
        ),
        ('[charge_points."CP1"]\npasword = "x"\n', 'charge_points."CP1".pasword'),
        ("[authorization]\nid_tokens = 5\n", "authorization.id_tokens"),
    ],
    ids=["not-a-hash", "ln-out-of-range", "empty", "both", "typo", "tokens-not-a-list"],
)
def test_bad_security_config_exits_2_naming_the_key(tmp_path, text, key):
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2, result.stdout
    assert key in result.stderr
    assert "md5$abc" not in result.stderr and "a" * 43 not in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ profile 2: wss://


def test_wss_with_a_ca_signed_server_certificate(start_appliance, pki):
    appliance = start_appliance(tls_config(pki) + password_config("CP-PW", password=PASSWORD))
    assert appliance.scheme == "wss"
    assert f"wss://127.0.0.1:{appliance.port}" in appliance.log().replace("0.0.0.0", "127.0.0.1")
    client = pki.client_context()
    good = {"Authorization": basic("CP-PW", PASSWORD)}
    url = f"{appliance.url}/CP-PW"
    assert asyncio.run(ocpp16_boot(url, ssl=client, additional_headers=good)) == "Accepted"
    # profile 2 is Basic auth over TLS: still no way in without the password
    response = refusal(url, ssl=client, additional_headers={})
    assert response.status_code == 401
    with connect(url, ssl=client, additional_headers=good, subprotocols=["ocpp2.0.1"]) as ws:
        assert ws.request.headers["Host"]
        heartbeat_ok(ws)
        cipher = ws.socket.cipher()
        assert ws.socket.version() in ("TLSv1.2", "TLSv1.3"), ws.socket.version()
        assert "GCM" in cipher[0] or "CHACHA20" in cipher[0], cipher
    # wss:// only: a ws:// client on the same port gets nowhere, and that is logged
    with pytest.raises((InvalidStatus, OSError, EOFError, websockets.InvalidMessage)):
        connect(f"ws://127.0.0.1:{appliance.port}/CP-PW", open_timeout=5).close()
    rows = refused_rows(appliance, count=2)
    assert any("TLS" in reason for _, reason, _ in rows), rows


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_old_tls_and_a_silent_tls_peer_are_refused(start_appliance, pki):
    appliance = start_appliance(tls_config(pki) + "[limits]\nhandshake_timeout_sec = 1\n")
    old = pki.client_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.TLSv1
    with contextlib.suppress(ssl.SSLError):
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, OSError)):
        connect(f"{appliance.url}/CP-OLD", ssl=old, open_timeout=5).close()
    # slowloris over TLS: a TCP connection that never says hello is dropped
    silent = socket.create_connection(("127.0.0.1", appliance.port), timeout=5)
    started = time.monotonic()
    with silent, contextlib.suppress(ConnectionResetError):
        while silent.recv(1024):
            pass
    assert time.monotonic() - started < 4
    rows = refused_rows(appliance, count=2)
    reasons = " | ".join(reason for _, reason, _ in rows)
    assert "TLS" in reasons and "within 1 s" in reasons, reasons


@pytest.mark.parametrize(
    ("tls", "key", "words"),
    [
        ('[tls]\ncert = "missing.crt"\nkey = "{d}/server.key"\n', "tls.cert", "cannot read"),
        ('[tls]\ncert = "{d}/server.crt"\nkey = "{d}/other.key"\n', "tls.key", "does not belong"),
        ('[tls]\ncert = "{d}/server.key"\nkey = "{d}/server.key"\n', "tls.cert", "PEM"),
        (
            '[tls]\ncert = "{d}/server.crt"\nkey = "{d}/server.key"\nclient_ca = "nope.crt"\n',
            "tls.client_ca",
            "cannot read",
        ),
        ('[tls]\ncert = "{d}/server.crt"\n', "tls.key", "required"),
    ],
    ids=["missing-cert", "key-mismatch", "not-a-cert", "missing-ca", "no-key"],
)
def test_bad_tls_config_exits_2_naming_the_key(tmp_path, pki, tls, key, words):
    path = tmp_path / "appliance.toml"
    path.write_text('host = "127.0.0.1"\nport = 0\n' + tls.format(d=pki.folder))
    for command in ("check-config", "serve"):
        result = run_cli(command, "--config", str(path))
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert key in result.stderr, result.stderr
        assert words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert "listening" not in result.stderr
        assert "BEGIN" not in result.stderr  # never key material


# ---------------------------------------------------------------- profile 3: mutual TLS

#: how a client sees a refused TLS handshake: with TLS 1.3 the server's alert may only
#: arrive after the client sent its HTTP request
TLS_REFUSED = (ssl.SSLError, OSError, EOFError, websockets.InvalidHandshake, ConnectionClosed)


def test_mutual_tls(start_appliance, pki):
    appliance = start_appliance(tls_config(pki, client_ca=True))
    assert "client certificates required" in appliance.log()
    url = f"{appliance.url}/CP-TLS"
    # a certificate from client_ca with CN = the identity
    assert asyncio.run(ocpp16_boot(url, ssl=pki.client_context("CP-TLS"))) == "Accepted"

    # no certificate: the TLS handshake fails, the attempt is logged
    with pytest.raises(TLS_REFUSED):
        connect(url, ssl=pki.client_context(), open_timeout=5).close()
    # another identity's certificate: 403
    response = refusal(url, ssl=pki.client_context("CP-OTHER"))
    assert response.status_code == 403
    # a certificate with the right CN from another CA
    with pytest.raises(TLS_REFUSED):
        connect(url, ssl=pki.client_context("rogue-CP-TLS"), open_timeout=5).close()

    rows = refused_rows(appliance, count=3)
    reasons = [reason for _, reason, _ in rows]
    assert any("no client certificate" in r for r in reasons), reasons
    assert any("CN ('CP-OTHER') is not the identity" in r for r in reasons), reasons
    assert any("rejected" in r and "tls.client_ca" in r for r in reasons), reasons
    assert [identity for identity, reason, _ in rows if "CN" in reason] == ["CP-TLS"]
    assert appliance.query(
        "SELECT count(*) FROM connection_log WHERE event = 'connect' AND identity = 'CP-TLS'"
    ) == [(1,)]


# ------------------------------------------------------------------------ id tokens

TOKEN_CONFIG = '[authorization]\nid_tokens = ["TAG-OK", "04A2B3C4"]\n'


def token16(ws: ClientConnection, id_tag: str) -> list[str]:
    """The idTagInfo statuses of Authorize, StartTransaction and StopTransaction."""
    answers = [call(ws, "Authorize", {"idTag": id_tag})]
    start = {"connectorId": 1, "idTag": id_tag, "meterStart": 0, "timestamp": stamp()}
    answers.append(call(ws, "StartTransaction", start))
    stop = {
        "transactionId": answers[1]["transactionId"],
        "meterStop": 10,
        "timestamp": stamp(),
        "idTag": id_tag,
    }
    answers.append(call(ws, "StopTransaction", stop))
    for action, answer in zip(
        ("Authorize", "StartTransaction", "StopTransaction"), answers, strict=True
    ):
        assert schema_errors("ocpp1.6", f"{action}Response", answer) == [], answer
    return [answer["idTagInfo"]["status"] for answer in answers]


def token2x(ws: ClientConnection, version: str, token: str) -> list[str]:
    """The idTokenInfo statuses of Authorize and a Started TransactionEvent."""
    id_token = {"idToken": token, "type": "ISO14443"}
    answers = [call(ws, "Authorize", {"idToken": id_token})]
    event = {
        "eventType": "Started",
        "timestamp": stamp(),
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": f"tx-{token}-{time.monotonic_ns()}"},
        "idToken": id_token,
        "evse": {"id": 1, "connectorId": 1},
    }
    answers.append(call(ws, "TransactionEvent", event))
    for action, answer in zip(("Authorize", "TransactionEvent"), answers, strict=True):
        assert schema_errors(version, f"{action}Response", answer) == [], answer
    return [answer["idTokenInfo"]["status"] for answer in answers]


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@pytest.mark.parametrize("version", conftest.VERSIONS)
def test_id_tokens_accepted_and_rejected_per_version(start_appliance, version):
    appliance = start_appliance(TOKEN_CONFIG + "[device_model]\nfetch_on_boot = false\n")
    with connect(f"{appliance.url}/CP-TOK", subprotocols=[version]) as ws:
        if version == "ocpp1.6":
            assert token16(ws, "TAG-OK") == ["Accepted"] * 3
            assert token16(ws, "04a2b3c4") == ["Accepted"] * 3  # case-insensitive (OCPP)
            assert token16(ws, "STRANGER") == ["Invalid"] * 3
        else:
            assert token2x(ws, version, "TAG-OK") == ["Accepted"] * 2
            assert token2x(ws, version, "04a2b3c4") == ["Accepted"] * 2
            assert token2x(ws, version, "STRANGER") == ["Unknown"] * 2
    # the refused session is still recorded, with its token
    rows = appliance.wait_rows(
        "SELECT id_token FROM transactions WHERE identity = 'CP-TOK' AND id_token = 'STRANGER'"
    )
    assert rows


def test_without_id_tokens_every_token_is_accepted(appliance):
    with connect(f"{appliance.url}/CP-ANY", subprotocols=["ocpp2.0.1"]) as ws:
        assert token2x(ws, "ocpp2.0.1", "ANYTHING") == ["Accepted"] * 2


# ---------------------------------------------------------------------------- SIGHUP


def write_config(appliance: Appliance, extra: str) -> None:
    (appliance.folder / "appliance.toml").write_text(conftest.TEST_CONFIG + extra)


def sighup(appliance: Appliance, wait_for: str) -> None:
    before = appliance.log().count(wait_for)
    appliance.proc.send_signal(signal.SIGHUP)
    conftest.wait_for(lambda: appliance.log().count(wait_for) > before, 10, wait_for)


def allowlisted(monkeypatch: pytest.MonkeyPatch, identities: list[str]) -> None:
    monkeypatch.setattr(
        conftest, "TEST_CONFIG", f"identity_allowlist = {json.dumps(identities)}\n" + BASE_CONFIG
    )


BASE_CONFIG = conftest.TEST_CONFIG


def test_sighup_applies_allowlist_password_and_tokens_at_once(start_appliance, monkeypatch):
    allowlisted(monkeypatch, ["CP-A", "CP-B", "CP-C"])
    extra = "[device_model]\nfetch_on_boot = false\n" + password_config("CP-C", password=PASSWORD)
    appliance = start_appliance(extra)
    old_c = {"Authorization": basic("CP-C", PASSWORD)}
    a = connect(f"{appliance.url}/CP-A", subprotocols=["ocpp2.0.1"]).__enter__()
    b = connect(f"{appliance.url}/CP-B", subprotocols=["ocpp2.0.1"]).__enter__()
    c = connect(
        f"{appliance.url}/CP-C", subprotocols=["ocpp2.0.1"], additional_headers=old_c
    ).__enter__()
    try:
        for ws in (a, b, c):
            heartbeat_ok(ws)
        assert token2x(a, "ocpp2.0.1", "TAG-1") == ["Accepted"] * 2

        allowlisted(monkeypatch, ["CP-A", "CP-C"])
        new_password = PASSWORD + "-new"
        write_config(
            appliance,
            extra.replace(PASSWORD, new_password) + '[authorization]\nid_tokens = ["TAG-2"]\n',
        )
        sighup(appliance, "config reloaded")

        assert closed_by_server(b) == 1008
        assert closed_by_server(c) == 1008
        # A stays, and the token list applies to it at once
        heartbeat_ok(a, "after")
        assert token2x(a, "ocpp2.0.1", "TAG-1") == ["Unknown"] * 2
        assert token2x(a, "ocpp2.0.1", "TAG-2") == ["Accepted"] * 2

        assert refusal(f"{appliance.url}/CP-B", subprotocols=["ocpp2.0.1"]).status_code == 403
        response = refusal(
            f"{appliance.url}/CP-C", subprotocols=["ocpp2.0.1"], additional_headers=old_c
        )
        assert response.status_code == 401
        new_c = {"Authorization": basic("CP-C", new_password)}
        with connect(
            f"{appliance.url}/CP-C", subprotocols=["ocpp2.0.1"], additional_headers=new_c
        ) as again:
            heartbeat_ok(again, "new")
    finally:
        for ws in (a, b, c):
            ws.close()
    reasons = dict(
        appliance.wait_rows(
            "SELECT identity, reason FROM connection_log WHERE event = 'disconnect'"
            " AND identity IN ('CP-B', 'CP-C') ORDER BY seq",
            count=2,
        )
    )
    assert "identity_allowlist" in reasons["CP-B"]
    assert "password changed" in reasons["CP-C"]
    assert new_password not in appliance.log() and PASSWORD not in appliance.log()


def test_bad_config_on_sighup_keeps_the_old_one_running(start_appliance, monkeypatch):
    allowlisted(monkeypatch, ["CP-A"])
    appliance = start_appliance()
    with connect(f"{appliance.url}/CP-A", subprotocols=["ocpp2.0.1"]) as a:
        heartbeat_ok(a)
        (appliance.folder / "appliance.toml").write_text(
            'identity_allowlist = ["CP-A", "CP-B"]\nhost = "127.0.0.1"\nport = 0\n'
            "[limits]\nmax_frame_bytez = 10\n"
        )
        sighup(appliance, "config not reloaded")
        assert "limits.max_frame_bytez" in appliance.log()
        assert appliance.proc.poll() is None
        heartbeat_ok(a, "still")
        # the old allowlist is still in force
        assert refusal(f"{appliance.url}/CP-B", subprotocols=["ocpp2.0.1"]).status_code == 403
        # a port change needs a restart: said once, the listener stays where it is
        (appliance.folder / "appliance.toml").write_text(
            'identity_allowlist = ["CP-A", "CP-B"]\nhost = "127.0.0.1"\nport = 1\n'
            + BASE_CONFIG.split("port = 0\n", 1)[1]
        )
        sighup(appliance, "config reloaded")
        assert "port changed: takes a restart" in appliance.log()
        with connect(f"{appliance.url}/CP-B", subprotocols=["ocpp2.0.1"]) as b:
            heartbeat_ok(b)
        heartbeat_ok(a, "end")


# ----------------------------------------------------------------- abuse and secrets


def test_failed_attempts_are_slowed_per_address_without_slowing_others(start_appliance):
    appliance = start_appliance(password_config("CP-PW", password=PASSWORD))
    with connect(f"{appliance.url}/CP-BYSTANDER", subprotocols=["ocpp2.0.1"]) as bystander:
        heartbeat_ok(bystander)
        bad = {"Authorization": basic("CP-PW", "not-the-password-123")}
        took = []
        latencies = []
        for _ in range(Throttle.FREE_FAILURES + 2):
            started = time.monotonic()
            with pytest.raises(InvalidStatus):
                connect(f"{appliance.url}/CP-PW", additional_headers=bad, open_timeout=10).close()
            took.append(time.monotonic() - started)
            beat = time.monotonic()
            heartbeat_ok(bystander, f"hb{len(took)}")
            latencies.append(time.monotonic() - beat)
        free = took[: Throttle.FREE_FAILURES]
        assert max(free) < Throttle.BASE_DELAY, took
        assert took[-2] >= Throttle.BASE_DELAY * 0.9, took
        assert took[-1] >= Throttle.BASE_DELAY * 2 * 0.9, took

        # while a slowed attempt waits, the other charge point is answered at once
        slow_done: list[float] = []

        def slow_attempt() -> None:
            with pytest.raises(InvalidStatus):
                connect(f"{appliance.url}/CP-PW", additional_headers=bad, open_timeout=10).close()
            slow_done.append(time.monotonic())

        import threading

        thread = threading.Thread(target=slow_attempt)
        thread.start()
        time.sleep(0.2)
        beat = time.monotonic()
        heartbeat_ok(bystander, "during")
        during = time.monotonic() - beat
        thread.join(15)
        assert slow_done, "the throttled attempt never got its answer"
        assert slow_done[0] - beat > 1.0, "the attempt was not held"
        assert during < 0.5, during
        assert max(latencies) < 0.5, latencies
    # one log line per address and reason, one row per attempt (below the row cap)
    count = len(took) + 1
    rows = appliance.wait_rows(
        "SELECT reason FROM connection_log WHERE event = 'refused'", count=count
    )
    assert all("wrong password" in reason for (reason,) in rows)
    assert appliance.log().count("wrong password") == 1, appliance.log()


def test_abusive_closes_are_logged_once_per_address(start_appliance):
    appliance = start_appliance("[limits]\nmax_frame_bytes = 1000\n")
    for n in range(3):
        with connect(f"{appliance.url}/CP-BIG{n}", subprotocols=["ocpp2.0.1"]) as ws:
            ws.send(json.dumps([2, "big", "Heartbeat", {"pad": "x" * 5000}]))
            assert closed_by_server(ws) == 1009
    appliance.wait_rows(
        "SELECT 1 FROM connection_log WHERE event = 'disconnect' AND reason LIKE '%1009%'",
        count=3,
    )
    conftest.wait_for(lambda: "1009" in appliance.log(), 5, "the 1009 line")
    time.sleep(0.2)
    assert appliance.log().count("1009") == 1, appliance.log()


def test_no_secret_in_the_database_or_the_log(start_appliance, tmp_path):
    hashed = passwords.hash_password(PASSWORD + "-hashed", ln=10)
    appliance = start_appliance(
        password_config("CP-PLAIN", password=PASSWORD)
        + password_config("CP-HASHED", hashed=hashed)
        + "[device_model]\nfetch_on_boot = false\n"
    )
    secrets = {
        "plain": PASSWORD,
        "hashed": PASSWORD + "-hashed",
        "wrong": "Wrong-Guess-9876543210",
        "hash": hashed,
    }
    headers = {
        name: basic(identity, secret)
        for name, identity, secret in (
            ("plain", "CP-PLAIN", PASSWORD),
            ("hashed", "CP-HASHED", PASSWORD + "-hashed"),
        )
    }
    for name, identity in (("plain", "CP-PLAIN"), ("hashed", "CP-HASHED")):
        with connect(
            f"{appliance.url}/{identity}",
            subprotocols=["ocpp1.6"],
            additional_headers={"Authorization": headers[name]},
        ) as ws:
            call(ws, "BootNotification", BOOT16)
        for user in (identity, "CP-NOBODY"):
            refusal(
                f"{appliance.url}/{identity}",
                additional_headers={"Authorization": basic(user, secrets["wrong"])},
            )
    appliance.wait_rows("SELECT 1 FROM connection_log WHERE event = 'refused'", count=4)
    appliance.wait_rows("SELECT 1 FROM messages", count=4)

    def leaks() -> list[str]:
        found = []
        files = [p for p in appliance.folder.iterdir() if p.name.startswith("appliance.db")]
        files.append(appliance.log_file)
        for path in files:
            data = path.read_bytes()
            for name, secret in [*secrets.items(), *headers.items()]:
                for form in (secret, secret.removeprefix("Basic ")):
                    if form.encode() in data:
                        found.append(f"{name} in {path.name}")
        return found

    assert any(p.name == "appliance.db-wal" for p in appliance.folder.iterdir())
    assert leaks() == []
    assert appliance.stop() == 0
    assert leaks() == []


# ------------------------------------------------------------------ sans-I/O units


def test_password_hash_round_trip_and_format():
    hashed = passwords.hash_password("correct horse", ln=10, r=8, p=1)
    assert hashed.startswith("scrypt$ln=10,r=8,p=1$")
    assert passwords.verify(b"correct horse", hashed)
    assert not passwords.verify(b"correct horse ", hashed)
    parts = passwords.parse_hash(hashed)
    assert (parts.ln, parts.r, parts.p, len(parts.salt), len(parts.key)) == (10, 8, 1, 16, 32)
    for bad in ("", "scrypt$ln=10$x$y", "argon2id$v=19$m=1,t=1,p=1$a$b", hashed + "$"):
        with pytest.raises(ValueError):
            passwords.parse_hash(bad)
    assert passwords.rule_problem("A" * 16) is None
    assert passwords.rule_problem("A*-_=:+|@." + "b" * 30) is None
    assert "16-40" in (passwords.rule_problem("A" * 41) or "")
    assert "letters" in (passwords.rule_problem("A" * 15 + " ") or "")


def test_basic_credentials_parsing():
    assert guard.basic_credentials(basic("CP1", "pw:with:colons"), "CP1") == b"pw:with:colons"
    assert guard.basic_credentials("basic " + basic("CP1", "x")[6:], "CP1") == b"x"
    for header, reason in (
        (None, guard.NO_CREDENTIALS),
        ("Digest abc", guard.NOT_BASIC),
        ("Basic !!!", guard.MALFORMED),
        ("Basic " + base64.b64encode(b"nocolon").decode(), guard.MALFORMED),
        (basic("CP2", "x"), guard.WRONG_USER),
    ):
        with pytest.raises(guard.AuthFailed) as failed:
            guard.basic_credentials(header, "CP1")
        assert str(failed.value) == reason


def test_verifier_runs_the_kdf_once_per_outcome():
    hashed = passwords.hash_password("right-password-16", ln=10)
    credential = Credential(password_hash=hashed)
    verifier = Verifier()
    assert verifier.quick(credential, b"right-password-16") is None  # KDF needed
    verifier.remember(credential, b"right-password-16", True)
    assert verifier.quick(credential, b"right-password-16") is True
    assert verifier.quick(credential, b"anything-else") is False  # one hash, one password
    other = Credential(password_hash=passwords.hash_password("x" * 16, ln=10))
    verifier.remember(other, b"stale", False)
    assert verifier.quick(other, b"stale") is False
    assert verifier.quick(other, b"fresh") is None
    plain = Credential(password="plain-password-16")
    assert verifier.quick(plain, b"plain-password-16") is True
    assert verifier.quick(plain, b"plain-password-1") is False
    assert "plain-password" not in repr(plain) and hashed not in repr(credential)


def test_throttle_doubles_the_wait_caps_it_and_bounds_parallel_attempts():
    throttle = Throttle()
    now = 1000.0
    waits = []
    for _ in range(12):
        wait = throttle.begin("10.0.0.1", now)
        assert wait is not None
        waits.append(wait)
        throttle.end("10.0.0.1", False, now)
    assert waits[:3] == [0, 0, 0]
    assert waits[3:6] == [0.5, 1.0, 2.0]
    assert max(waits) == Throttle.MAX_DELAY
    # another address is not affected
    assert throttle.begin("10.0.0.2", now) == 0
    # parallel attempts of one address: bounded, the rest refused without the KDF
    started = [throttle.begin("10.0.0.3", now) for _ in range(Throttle.MAX_PENDING + 2)]
    assert started[-2:] == [None, None]
    assert None not in started[: Throttle.MAX_PENDING]
    # a success clears the address, and so does a quiet spell
    throttle.end("10.0.0.1", True, now)
    assert throttle.failures("10.0.0.1") == 0
    for _ in range(5):
        throttle.begin("10.0.0.4", now)
        throttle.end("10.0.0.4", False, now)
    assert throttle.begin("10.0.0.4", now + Throttle.FORGET_AFTER + 1) == 0


def test_reporter_logs_once_per_address_and_reason_and_caps_rows():
    reporter = Reporter()
    reports = [reporter.refusal("10.0.0.1", "wrong password", 100.0 + n) for n in range(50)]
    assert [r.log for r in reports].count(True) == 1
    assert [r.record for r in reports].count(True) == Reporter.ROWS_PER_WINDOW
    assert reporter.refusal("10.0.0.2", "wrong password", 150.0).log
    assert reporter.refusal("10.0.0.1", "no common subprotocol", 150.0).log
    later = reporter.refusal("10.0.0.1", "wrong password", 100.0 + Reporter.WINDOW + 60)
    assert later.log and later.record
    assert "49 more" in later.log_note
    assert f"{50 - Reporter.ROWS_PER_WINDOW} more" in later.row_note


# ------------------------------------------------------------- the README's commands

README = conftest.ROOT / "README.md"


def readme_blocks(language: str, containing: str) -> list[str]:
    security = README.read_text().split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", security, re.DOTALL)
    return [block for block in blocks if containing in block]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_readme_openssl_commands_make_a_working_mutual_tls_setup(start_appliance, tmp_path):
    folder = tmp_path / "appliance"
    folder.mkdir()
    script = "set -euo pipefail\n" + "\n".join(readme_blocks("sh", "openssl"))
    made = subprocess.run(
        ["bash", "-c", script], cwd=folder, capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    [config] = readme_blocks("toml", "client_ca")
    appliance = start_appliance(config)
    assert appliance.scheme == "wss"
    context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    context.load_cert_chain(folder / "CP-GARAGE.crt", folder / "CP-GARAGE.key")
    assert asyncio.run(ocpp16_boot(f"{appliance.url}/CP-GARAGE", ssl=context)) == "Accepted"
    assert refusal(f"{appliance.url}/CP-OTHER", ssl=context).status_code == 403
