"""Transport: the TCP listener, the WebSocket handshake and one task tree per charge point."""

from appliance.transport.endpoint import CallFailed
from appliance.transport.server import Connection, Server, identity_from_path

__all__ = ["CallFailed", "Connection", "Server", "identity_from_path"]
