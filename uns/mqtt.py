"""MQTT plumbing on paho-mqtt 2.x. This is the only module that imports paho.

`MqttClient` runs paho's network loop in its own thread and hands connects, disconnects and
messages to an asyncio loop in the order they happened, in batches (one loop wake-up for many
messages). The Will is asked for before every CONNECT, so Sparkplug's bdSeq and the host's STATE
timestamp can change per connection. A handler that fails on one message is counted and logged (once
per topic) and the next message goes on: one bad message never costs the rest of its batch. A
message above the broker's packet limit is refused before paho sees it (paho would send it again at
every reconnect, and the broker would drop the connection each time).

TLS: an address with `tls` (`mqtts://host:8883`) connects with a context of our own making: the
broker's certificate must chain to the given CA file (or to the system's CAs without one) and name
the host connected to; a client certificate and key are presented when given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

logger = logging.getLogger(__name__)


class MqttError(RuntimeError):
    pass


class _ClosedOnFailedHandshake(ssl.SSLSocket):
    """paho leaves the TLS socket of a failed handshake (a refused certificate) open, one per retry."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What a client needs for TLS: the CA that signed the broker's certificate (None: the system's
    CAs), and its own certificate and key where the broker asks for one (`require_certificate`)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS: a client certificate needs its key, and a key its certificate")

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2 or later, the broker's certificate verified, its host name checked."""
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.sslsocket_class = _ClosedOnFailedHandshake
        if self.cert_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


PLAIN_PORT, TLS_PORT = 1883, 8883


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None  # None: a plain connection

    @classmethod
    def parse(cls, url: str, tls: TlsFiles | None = None) -> BrokerAddress:
        """`mqtt://user:password@host:port`, or `mqtts://...` for TLS (port 8883 by default) with the
        files in `tls` (default: the system's CAs, no client certificate). Credentials may also come
        separately."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp", "mqtts"):
            raise ValueError(f"broker URL {_redact(url)!r}: scheme must be mqtt:// or mqtts:// (TLS)")
        if not parts.hostname:
            raise ValueError(f"broker URL {_redact(url)!r} has no host")
        secure = parts.scheme == "mqtts"
        try:
            port = parts.port or (TLS_PORT if secure else PLAIN_PORT)
        except ValueError as exc:
            raise ValueError(f"broker URL {_redact(url)!r}: {exc}") from exc
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port, user, password, (tls or TlsFiles()) if secure else None)

    def with_credentials(self, username: str | None, password: str | None) -> BrokerAddress:
        return BrokerAddress(self.host, self.port, username, password, self.tls)

    def __str__(self) -> str:  # never shows the password
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls is not None else 'mqtt'}://{user}{self.host}:{self.port}"


def _tls(client: paho.Client, address: BrokerAddress) -> None:
    if address.tls is None:
        return
    try:
        client.tls_set_context(address.tls.context())
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise MqttError(f"TLS for broker {address}: {exc}") from exc


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class MqttHandler(Protocol):
    """What a client's owner is told, always on its asyncio loop and in order."""

    def on_connected(self) -> None: ...

    def on_disconnected(self, reason: str) -> None: ...

    def on_message(self, topic: str, payload: bytes) -> None: ...


class RetainedHandler(MqttHandler, Protocol):
    """A handler that wants to tell retained messages apart (a retained command is not a new one)."""

    def on_retained(self, topic: str, payload: bytes) -> None: ...


_CONNECTED, _DISCONNECTED, _MESSAGE, _RETAINED = 0, 1, 2, 3
MAX_PACKET = 1_048_576  # the shipped mosquitto.conf's max_packet_size
_HEADROOM = 1_024  # fixed header, topic and properties of a packet, at most (topics are short)


class MqttClient:
    """One MQTT 5 connection with a clean start, reconnecting on its own with backoff."""

    def __init__(
        self,
        client_id: str,
        address: BrokerAddress,
        handler: MqttHandler,
        loop: asyncio.AbstractEventLoop,
        *,
        will: Callable[[], Will | None] | None = None,
        keepalive: int = 10,
        subscriptions: tuple[tuple[str, int], ...] = (),
        max_packet: int = MAX_PACKET,
    ) -> None:
        self.client_id = client_id
        self.address = address
        self._handler = handler
        self._loop = loop
        self._will = will
        self._keepalive = keepalive
        self._subscriptions = subscriptions
        self._events: deque[tuple[int, Any, Any]] = deque()
        self._wake_pending = False
        self._lock = threading.Lock()
        self._connected = False
        self.dropped_publishes = 0
        self.refused_publishes = 0  # too big for the broker: never sent
        self.handler_errors = 0  # messages the handler failed on (each logged, once per topic)
        self._failed_topics: set[str] = set()
        self._max_packet = max_packet
        self.max_payload = max_packet - _HEADROOM  # and what the broker's CONNACK says, once connected
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=True,
        )
        if address.username is not None:
            c.username_pw_set(address.username, address.password)
        _tls(c, address)
        c.reconnect_delay_set(min_delay=1, max_delay=2)  # a broker back is used within ~2 s
        c.max_queued_messages_set(0)
        c.on_pre_connect = self._pre_connect
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_connect_fail = self._on_connect_fail
        self._client = c

    @property
    def connected(self) -> bool:
        return self._connected

    # -- paho's thread -----------------------------------------------------------------------
    def _pre_connect(self, client: paho.Client, userdata: Any) -> None:
        will = self._will() if self._will is not None else None
        if will is None:
            client.will_clear()
        else:
            client.will_set(will.topic, will.payload, will.qos, will.retain)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            logger.error(
                "MQTT %s: broker %s refused the connection: %s", self.client_id, self.address, reason
            )
            return
        broker_max = getattr(props, "MaximumPacketSize", None) if props is not None else None
        if isinstance(broker_max, int):  # the broker's own limit (MQTT 5 CONNACK), whatever we were told
            self.max_payload = min(self._max_packet, broker_max) - _HEADROOM
        if self._subscriptions:
            client.subscribe(list(self._subscriptions))
        self._post(_CONNECTED, None, None)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:`: say why (a refused TLS certificate
        # would otherwise look like a broker that is down)
        exc = sys.exc_info()[1]
        why = f": {exc}" if exc is not None else ""
        logger.warning("MQTT %s: cannot reach broker %s%s, retrying", self.client_id, self.address, why)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        self._post(_DISCONNECTED, str(reason), None)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._post(_RETAINED if msg.retain else _MESSAGE, msg.topic, msg.payload)

    def _post(self, kind: int, a: Any, b: Any) -> None:
        with self._lock:
            self._events.append((kind, a, b))
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            self._loop.call_soon_threadsafe(self._drain)

    # -- the asyncio loop --------------------------------------------------------------------
    def _drain(self) -> None:
        with self._lock:
            batch = list(self._events)
            self._events.clear()
            self._wake_pending = False
        handler = self._handler
        retained = getattr(handler, "on_retained", None)
        for kind, a, b in batch:
            if kind in (_MESSAGE, _RETAINED):
                try:
                    if kind == _RETAINED and retained is not None:
                        retained(a, b)
                    else:
                        handler.on_message(a, b)
                except Exception as exc:
                    self._failed(a, b, exc)
            elif kind == _CONNECTED:
                self._connected = True
                logger.info("MQTT %s connected to %s", self.client_id, self.address)
                handler.on_connected()
            else:
                was = self._connected
                self._connected = False
                if was:
                    logger.warning("MQTT %s lost %s: %s", self.client_id, self.address, a)
                handler.on_disconnected(a)

    def _too_big(self, topic: str, payload: bytes) -> bool:
        if len(payload) <= self.max_payload:
            return False
        self.refused_publishes += 1
        logger.error(
            "MQTT %s: not publishing %d bytes on %s: above the broker's packet limit (%d bytes)",
            self.client_id,
            len(payload),
            topic,
            self.max_payload,
        )
        return True

    def _failed(self, topic: str, payload: bytes, exc: Exception) -> None:
        self.handler_errors += 1
        if topic in self._failed_topics:
            logger.debug("MQTT %s: a message on %s failed: %r", self.client_id, topic, exc)
            return
        self._failed_topics.add(topic)
        logger.error(
            "MQTT %s: a message on %s (%d bytes) could not be handled and is dropped: %s: %s"
            " (said once per topic; counted in handler_errors)",
            self.client_id,
            topic,
            len(payload),
            type(exc).__name__,
            str(exc)[:200],
        )

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self._client.connect_async(
            self.address.host, self.address.port, self._keepalive, clean_start=True, properties=props
        )
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Queue a message for sending; False (and counted) if there is no connection, or if it is
        bigger than the broker takes (`refused_publishes`; never sent)."""
        if self._too_big(topic, payload):
            return False
        if not self._connected:
            self.dropped_publishes += 1
            return False
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.dropped_publishes += 1
            return False
        return True

    async def publish_and_wait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 5.0
    ) -> bool:
        """Publish and wait until the broker has it (QoS 1) or the timeout passes."""
        if self._too_big(topic, payload) or not self._connected:
            return False
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        try:
            await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, timeout), timeout + 1)
        except (TimeoutError, RuntimeError, ValueError):
            return False
        return info.is_published()

    def stop(self) -> None:
        """Disconnect cleanly (no Will) and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = False

    def drain(self) -> None:
        """Hand over, now, what paho has passed on and the loop has not seen yet (after `stop`: the
        last messages, so that none is handled after its owner has closed)."""
        self._drain()

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT, so the broker sends the Will (for tests)."""
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        self._connected = False


class BareCounter:
    """A bare paho-mqtt subscriber that only counts messages: the baseline for the host benchmark."""

    def __init__(self, address: BrokerAddress, topic: str, client_id: str = "bare-counter") -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self._topic = topic
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        if address.username is not None:
            c.username_pw_set(address.username, address.password)
        _tls(c, address)
        c.on_message = self._on_message
        c.on_connect = self._on_connect
        self._client = c
        self._address = address
        self.subscribed = threading.Event()

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(self._topic, 0)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1

    def start(self) -> None:
        self._client.on_subscribe = lambda *_: self.subscribed.set()
        self._client.connect(self._address.host, self._address.port, 30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
