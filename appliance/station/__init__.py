"""The station layer: one `Station` per connection between the wire (`transport.Link`)
and the tree, and the `Stations` hub that knows them all and publishes their life."""

from appliance.station.calls import CallFailed, Calls
from appliance.station.hub import Stations
from appliance.station.station import (
    Booted,
    Connected,
    Disconnected,
    Event,
    Job,
    Reported,
    Station,
    masked,
)

__all__ = [
    "Booted",
    "CallFailed",
    "Calls",
    "Connected",
    "Disconnected",
    "Event",
    "Job",
    "Reported",
    "Station",
    "Stations",
    "masked",
]
