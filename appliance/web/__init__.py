"""The web dashboard and HTTP API (README "Web dashboard and API")."""

from appliance.web.server import Dashboard, bind

__all__ = ["Dashboard", "bind"]
