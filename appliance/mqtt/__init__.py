"""MQTT with Home Assistant discovery (README "Home Assistant and MQTT"): the bridge
task (`bridge`), the broker connection on paho-mqtt's thread (`client`) and the topic
layout and payloads, pure (`topics`)."""

from appliance.mqtt.bridge import Bridge

__all__ = ["Bridge"]
