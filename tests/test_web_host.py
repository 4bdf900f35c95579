"""The web listener follows `host` (issue 27, point 5; README "Configuration"): unless
`[web] host` is set, the dashboard listens where the OCPP port does."""

from __future__ import annotations

import socket

import conftest


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def test_the_dashboard_listens_where_the_ocpp_port_does(start_appliance):
    """host = "127.0.0.1" and no [web] host: the dashboard is on 127.0.0.1 only (another
    loopback address, as another machine would, gets nothing)."""
    appliance = start_appliance("\n[web]\nport = 0\n")
    port = appliance.web_port
    assert f"web dashboard and API on http://127.0.0.1:{port}/" in appliance.log()
    assert reachable("127.0.0.1", port)
    assert not reachable("127.0.0.2", port)


def test_web_host_set_overrides_it(start_appliance):
    appliance = start_appliance('\n[web]\nhost = "0.0.0.0"\nport = 0\n')
    port = appliance.web_port
    assert reachable("127.0.0.2", port)
    assert not reachable("127.0.0.2", appliance.port)  # the OCPP port stays on 127.0.0.1
    conftest.wait_for(lambda: reachable("127.0.0.1", port), 5, "the dashboard")
