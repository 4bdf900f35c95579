"""`ocpp-appliance simulate`: charge points of every version, for trying the appliance
without a wallbox and for load tests. Built on the appliance's own sans-I/O RPC core and
schemas: everything a simulated charge point sends is validated first."""

from appliance.simulator.fleet import PROTOCOL_CHOICES, Fleet, simulate
from appliance.simulator.options import Options, Stats

__all__ = ["PROTOCOL_CHOICES", "Fleet", "Options", "Stats", "simulate"]
