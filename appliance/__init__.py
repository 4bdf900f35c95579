"""ocpp-appliance: an OCPP central system that keeps everything in one SQLite file."""

__version__ = "0.1.0"
