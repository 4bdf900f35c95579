"""The broker connection: paho-mqtt's network loop on a thread of its own (`loop_start`),
reconnecting by itself with a capped backoff; what it hears reaches trio as events.

Why a thread: paho's `connect` resolves the name, opens TCP and does the TLS handshake
blocking; its own loop thread does that and the reconnects, and `publish()` only queues
a packet and wakes that thread (paho documents it as safe to call from another thread).
Trio never waits on the broker: `publish` returns at once, dropping the message while
there is no connection (the bridge republishes the latest values when it is back).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from appliance.config import Mqtt

log = logging.getLogger("appliance.mqtt")

#: seconds between reconnects: from 1, doubling, at most 60 (a broker that is down for
#: a day costs one attempt a minute)
RECONNECT_MIN_SEC, RECONNECT_MAX_SEC = 1, 60
KEEPALIVE_SEC = 30
#: messages paho may hold unacknowledged (QoS 1) before `publish` refuses more: a bound,
#: not a queue of history — after a reconnect the bridge republishes the latest values
MAX_QUEUED = 5000
#: events (a connect, a command) waiting for the trio side; beyond, commands are dropped
#: and the log says so
EVENT_BUFFER = 1000


@dataclass(frozen=True, slots=True)
class Up:
    """Connected (CONNACK success), subscriptions and the `online` sent."""


@dataclass(frozen=True, slots=True)
class Down:
    """No connection: the broker could not be reached, refused us, or went away."""

    reason: str


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes


Event = Up | Down | Message


def password_of(settings: Mqtt, folder: Path) -> str | None:
    if settings.password is not None:
        return settings.password
    if settings.password_file is not None:
        lines = (folder / settings.password_file).read_text("utf-8").splitlines()
        return lines[0] if lines else ""
    return None


class Broker:
    """One paho client for one set of settings; `start`, `publish`, `stop`."""

    def __init__(
        self,
        settings: Mqtt,
        folder: Path,
        subscriptions: list[str],
        status_topic: str,
        retain_status: bool,
    ) -> None:
        url = urlsplit(settings.url)
        self.tls = url.scheme == "mqtts"
        self.host = url.hostname or ""
        self.port = url.port or (8883 if self.tls else 1883)
        #: what the log may say about the broker: never the credentials
        self.where = f"{url.scheme}://{self.host}:{self.port}"
        self.settings = settings
        self.subscriptions = subscriptions
        self.status_topic = status_topic
        self.retain_status = retain_status
        send, self.events = trio.open_memory_channel[Event](EVENT_BUFFER)
        self._send = send
        self._token = trio.lowlevel.current_trio_token()
        self.up = False
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=paho.MQTTv311,
            reconnect_on_failure=True,
        )
        client.suppress_exceptions = True
        password = password_of(settings, folder)
        if settings.username is not None or password is not None:
            client.username_pw_set(settings.username or "", password)
        if self.tls:
            context = ssl.create_default_context(
                cafile=str(folder / settings.ca) if settings.ca else None
            )
            client.tls_set_context(context)
        client.will_set(status_topic, "offline", qos=1, retain=retain_status)
        client.reconnect_delay_set(RECONNECT_MIN_SEC, RECONNECT_MAX_SEC)
        client.max_queued_messages_set(MAX_QUEUED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        self.client = client

    # ------------------------------------------------------------ the trio side

    def start(self) -> None:
        """Connect in the background (paho's thread); never blocks."""
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE_SEC)
        self.client.loop_start()

    def publish(self, topic: str, payload: str, retain: bool) -> bool:
        """Queue one message; False (and nothing kept) while there is no connection."""
        if not self.up:
            return False
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == paho.MQTT_ERR_SUCCESS

    async def stop(self) -> None:
        """Say `offline` (a clean disconnect sends no last will) and stop the thread;
        gives up waiting after 2 s (the thread is a daemon: it cannot hold up the exit)."""
        if self.up:
            self.client.publish(self.status_topic, "offline", qos=1, retain=self.retain_status)
        self.up = False
        self.client.disconnect()
        with trio.move_on_after(2):
            await trio.to_thread.run_sync(self.client.loop_stop, abandon_on_cancel=True)

    # ---------------------------------------------------------- paho's thread

    def _deliver(self, event: Event) -> None:
        def put() -> None:
            if isinstance(event, Up):
                self.up = True
            elif isinstance(event, Down):
                self.up = False
            try:
                self._send.send_nowait(event)
            except trio.WouldBlock:
                log.warning("MQTT: the bridge fell behind; %s dropped", type(event).__name__)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(put)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._deliver(Down(f"the broker refused the connection: {reason}"))
            return
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        client.publish(self.status_topic, "online", qos=1, retain=self.retain_status)
        self._deliver(Up())

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        # paho says "Unspecified error" when the broker just went away
        said = "" if reason.value in (0, 128) else f": {reason}"
        self._deliver(Down(f"connection lost{said}"))

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from its `except OSError:` (loop_forever) without the error:
        # the exception being handled is the reason (refused, no such host, TLS)
        error = sys.exc_info()[1]
        why = f": {error.strerror or error}" if isinstance(error, OSError) else ""
        self._deliver(Down(f"cannot connect{why}"))

    def _on_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        self._deliver(Message(message.topic, bytes(message.payload)))
