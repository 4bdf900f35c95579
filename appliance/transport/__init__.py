"""Transport: the TCP listener, TLS, the WebSocket handshake and authentication; each
accepted connection becomes a `Link` that moves text messages."""

from appliance.transport.link import Link
from appliance.transport.server import ServeLink, Server, identity_from_path

__all__ = ["Link", "ServeLink", "Server", "identity_from_path"]
