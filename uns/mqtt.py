"""MQTT plumbing: the services' own MQTT 5 client on asyncio, and a bare paho-mqtt subscriber (the
baseline the benchmarks compare with). This is the only module that speaks MQTT.

`MqttClient` is one MQTT 5 connection on its owner's asyncio loop: an `asyncio.Protocol` parses
what the broker sends and hands each message to the handler where it was read, with no thread and
no copy in between. It was written for this project in place of paho-mqtt's client, which ran its
network loop in a thread of its own: bench/host.py measured paho's receive path at about a third of
what the broker delivered, and the host's whole path at 0.42x a bare paho subscriber; with this
client the host path runs faster than that bare subscriber (docs/operations.md has the figures).
It speaks the subset the services use: CONNECT with a clean start, a Will, user name and password;
SUBSCRIBE; PUBLISH at QoS 0 and 1 both ways, within the broker's Receive Maximum; keep-alive pings;
DISCONNECT; TLS through asyncio. It reconnects on its own, 1 s and then 2 s apart.

The Will is asked for before every CONNECT, so Sparkplug's bdSeq and the host's STATE timestamp can
change per connection. A handler that fails on one message is counted and logged (once per topic)
and the next message goes on: one bad message never costs the rest. A message above the broker's
packet limit is refused before it is sent (the broker would drop the connection). A QoS 1 message
the broker had not acknowledged when a connection ended is sent again, first, on the next one.

TLS: an address with `tls` (`mqtts://host:8883`) connects with a context of our own making: the
broker's certificate must chain to the given CA file (or to the system's CAs without one) and name
the host connected to; a client certificate and key are presented when given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

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


MAX_PACKET = 1_048_576  # the shipped mosquitto.conf's max_packet_size
_HEADROOM = 1_024  # fixed header, topic and properties of a packet, at most (topics are short)


# -- the MQTT 5 wire format (OASIS MQTT 5.0, the subset a client of ours uses) ------------------------
_CONNECT, _CONNACK, _PUBLISH, _PUBACK = 1, 2, 3, 4
_SUBACK, _PINGRESP, _DISCONNECT = 9, 13, 14
_PINGREQ_PACKET = b"\xc0\x00"
_DISCONNECT_PACKET = b"\xe0\x00"  # normal disconnection: the broker drops the Will
BATCH = 50  # messages handed over between two looks at the connection (see `_received`)
INBOX_HIGH, INBOX_LOW = 100_000, 20_000  # messages read and waiting: reading pauses above, resumes below
CONNECT_TIMEOUT_S = 10.0  # for the TCP (and TLS) connection, and again for the broker's CONNACK
_RECONNECT_S = (1.0, 2.0)  # the first wait after a lost connection or a failed attempt, and the longest

# What each property's value is (MQTT 5.0 section 2.2.2.2): its identifier and encoding.
_BYTE_PROPS = frozenset((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A))
_U16_PROPS = frozenset((0x13, 0x21, 0x22, 0x23))
_U32_PROPS = frozenset((0x02, 0x11, 0x18, 0x27))
_VARINT_PROPS = frozenset((0x0B,))
_BINARY_PROPS = frozenset((0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F))  # and UTF-8 strings
_STRING_PAIR = 0x26
_RECEIVE_MAXIMUM, _MAXIMUM_PACKET_SIZE, _REASON_STRING = 0x21, 0x27, 0x1F

REASONS = {  # the reason codes a broker answers with (MQTT 5.0 section 2.4), by their spec names
    0x00: "Success",
    0x04: "Disconnect with Will Message",
    0x10: "No matching subscribers",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}


def reason_text(code: int) -> str:
    return REASONS.get(code, f"reason code 0x{code:02X}")


class MalformedPacketError(MqttError):
    """What the broker sent does not parse as MQTT 5: the connection is dropped and made again."""


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining lengths, property lengths): 7 bits a byte, low first."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it); MalformedPacketError past `end` or after four bytes."""
    value, shift = 0, 0
    for i in range(pos, min(pos + 4, end)):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + 1
        shift += 7
    raise MalformedPacketError("a variable byte integer runs past its packet or past four bytes")


def _binary(data: bytes) -> bytes:
    """A UTF-8 string or binary data: its two-byte length, then the bytes."""
    if len(data) > 0xFFFF:
        raise ValueError(f"MQTT strings and binary data are at most 65,535 bytes, not {len(data):,}")
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _properties(buf: bytes | bytearray, pos: int, end: int) -> tuple[dict[int, Any], int]:
    """The properties at `pos` (their length first) as {identifier: value} (a string pair, and any
    property given twice, keeps its last), and the position after them."""
    length, pos = _read_varint(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise MalformedPacketError("properties run past their packet")
    props: dict[int, Any] = {}
    while pos < stop:
        ident, pos = _read_varint(buf, pos, stop)
        if ident in _BYTE_PROPS:
            props[ident], pos = buf[pos], pos + 1
        elif ident in _U16_PROPS:
            props[ident], pos = int.from_bytes(buf[pos : pos + 2], "big"), pos + 2
        elif ident in _U32_PROPS:
            props[ident], pos = int.from_bytes(buf[pos : pos + 4], "big"), pos + 4
        elif ident in _VARINT_PROPS:
            props[ident], pos = _read_varint(buf, pos, stop)
        elif ident in _BINARY_PROPS or ident == _STRING_PAIR:
            for _ in range(2 if ident == _STRING_PAIR else 1):
                n = int.from_bytes(buf[pos : pos + 2], "big")
                props[ident], pos = bytes(buf[pos + 2 : pos + 2 + n]), pos + 2 + n
        else:
            raise MalformedPacketError(f"unknown property 0x{ident:02X}")
        if pos > stop:
            raise MalformedPacketError(f"property 0x{ident:02X} runs past its properties")
    return props, stop


def _connect_packet(
    client_id: str, keepalive: int, username: str | None, password: str | None, will: Will | None
) -> bytes:
    flags = 0x02  # clean start; no session is kept (Session Expiry Interval 0, the default)
    payload = _binary(client_id.encode())
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += b"\x00" + _binary(will.topic.encode()) + _binary(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _binary(username.encode())
        if password is not None:
            flags |= 0x40
            payload += _binary(password.encode())
    header = _binary(b"MQTT") + bytes((5, flags)) + keepalive.to_bytes(2, "big") + b"\x00"
    return _packet(_CONNECT << 4, header + payload)


def _publish_packet(topic: bytes, payload: bytes, qos: int, retain: bool, packet_id: int = 0) -> bytes:
    ident = packet_id.to_bytes(2, "big") if qos else b""
    head = len(topic).to_bytes(2, "big") + topic + ident + b"\x00"  # no properties
    first = (_PUBLISH << 4) | (qos << 1) | (1 if retain else 0)
    return b"".join((bytes((first,)), _varint(len(head) + len(payload)), head, payload))


def _subscribe_packet(packet_id: int, filters: tuple[tuple[str, int], ...]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"\x00"
    # at most QoS 1: this client does not take QoS 2's handshake
    body += b"".join(_binary(f.encode()) + bytes((min(qos, 1),)) for f, qos in filters)
    return _packet(0x82, body)


@dataclass(slots=True)
class _Outgoing:
    """A QoS 1 message the broker has not acknowledged yet (and who waits for it, if anyone)."""

    topic: bytes
    payload: bytes
    retain: bool
    done: asyncio.Future[bool] | None = None


class _Link(asyncio.Protocol):
    """One connection to the broker: bytes in, packets out to its client, in the order they came."""

    def __init__(self, client: MqttClient) -> None:
        self._client = client
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[str] = client._loop.create_future()
        self.last_heard = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._connected = False
        if not self.lost.done():
            self.lost.set_result(f"connection lost: {exc}" if exc is not None else "connection closed")

    def close(self, why: str) -> None:
        """Drop the connection at once (a malformed packet, no answer to a ping)."""
        self._client._connected = False
        if not self.lost.done():
            self.lost.set_result(why)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_heard = self._client.heard_at = time.monotonic()
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        client = self._client
        inbox = client._inbox
        acks: list[bytes] = []
        try:
            while end - pos >= 2:
                first = buf[pos]
                b = buf[pos + 1]
                if b < 0x80:  # most packets: a one-byte remaining length
                    length, start = b, pos + 2
                else:
                    try:
                        length, start = _read_varint(buf, pos + 1, end)
                    except MalformedPacketError:
                        if end - pos - 1 < 4:
                            break  # the rest of the length has not come yet
                        raise
                stop = start + length
                if stop > end:
                    break  # the rest of the packet has not come yet
                kind = first >> 4
                if kind == _PUBLISH:
                    qos = (first >> 1) & 3
                    n = (buf[start] << 8) | buf[start + 1]
                    p = start + 2 + n
                    if p > stop:
                        raise MalformedPacketError("a PUBLISH's topic runs past its packet")
                    topic = buf[start + 2 : p].decode()
                    if qos:
                        acks.append(b"\x40\x02" + bytes(buf[p : p + 2]))
                        p += 2
                    plen = buf[p]
                    if plen < 0x80:
                        p += 1 + plen
                    else:
                        plen, p = _read_varint(buf, p, stop)
                        p += plen
                    if p > stop:
                        raise MalformedPacketError(f"a PUBLISH on {topic} runs past its length")
                    inbox.append((topic, bytes(buf[p:stop]), bool(first & 1)))
                else:
                    client._control(kind, buf, start, stop)
                pos = stop
        except (MalformedPacketError, UnicodeDecodeError, IndexError) as exc:
            logger.error("MQTT %s: malformed packet from %s: %s", client.client_id, client.address, exc)
            self.close(f"malformed packet from the broker: {exc}")
            return
        finally:
            del buf[:pos]
            if acks and self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(acks))
            client._received()


class MqttClient:
    """One MQTT 5 connection with a clean start, reconnecting on its own with backoff, on the owner's
    asyncio loop (no thread: a message is handled where it is read)."""

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
        self._on_retained = getattr(handler, "on_retained", None)
        self._loop = loop
        self._will = will
        self._keepalive = keepalive
        self._subscriptions = subscriptions
        self._connected = False
        self._stopped = False
        self.dropped_publishes = 0
        self.refused_publishes = 0  # too big for the broker: never sent
        self.handler_errors = 0  # messages the handler failed on (each logged, once per topic)
        self._failed_topics: set[str] = set()
        self._max_packet = max_packet
        self.max_payload = max_packet - _HEADROOM  # and what the broker's CONNACK says, once connected
        try:
            self._tls = address.tls.context() if address.tls is not None else None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise MqttError(f"TLS for broker {address}: {exc}") from exc
        self._task: asyncio.Task[None] | None = None
        self._link: _Link | None = None
        self._connack: asyncio.Future[tuple[int, dict[int, Any]]] | None = None
        self._receive_max = 65_535  # QoS 1 messages the broker takes unacknowledged (its CONNACK)
        self._next_id = 0
        self._inflight: dict[int, _Outgoing] = {}  # by packet identifier, in the order sent
        self._queued: deque[_Outgoing] = deque()  # beyond the broker's receive maximum, or to resend
        self._last_sent = 0.0
        # when the broker was last heard from (monotonic; it answers a ping at least every half
        # keep-alive): what was sent since may not have reached it when the connection turns out dead
        self.heard_at = -math.inf
        self._outbox: list[bytes] = []  # packets for the connection, written at the end of the turn
        self._inbox: deque[tuple[str, bytes, bool]] = deque()  # read, not handed over yet
        self._working = False  # a slice of the inbox is due on the loop
        self._paused = False  # reading paused: the inbox is past INBOX_HIGH

    @property
    def connected(self) -> bool:
        return self._connected

    # -- the connection ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"mqtt.{self.client_id}")

    async def _run(self) -> None:
        wait = 0.0
        try:
            while not self._stopped:
                if wait:
                    await asyncio.sleep(wait)
                try:
                    heard = await self._session()
                except (OSError, TimeoutError, MqttError) as exc:
                    logger.warning(
                        "MQTT %s: cannot reach broker %s: %s, retrying", self.client_id, self.address, exc
                    )
                    wait = min(max(wait * 2, _RECONNECT_S[0]), _RECONNECT_S[1])
                    continue
                except Exception:  # a fault of ours (the Will's maker, say): said, and tried again
                    logger.exception("MQTT %s: the connection to %s failed", self.client_id, self.address)
                    wait = _RECONNECT_S[1]
                    continue
                wait = _RECONNECT_S[0] if heard else min(max(wait * 2, _RECONNECT_S[0]), _RECONNECT_S[1])
        finally:
            link = self._link
            if link is not None and link.transport is not None and not link.transport.is_closing():
                link.transport.abort()  # cancelled (the loop ends): no DISCONNECT, the broker sends the Will

    async def _session(self) -> bool:
        """One connection, until it ends; whether the broker took it."""
        loop = self._loop
        link = _Link(self)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await loop.create_connection(
                lambda: link,
                self.address.host,
                self.address.port,
                ssl=self._tls,
                server_hostname=self.address.host if self._tls is not None else None,
            )
        assert link.transport is not None
        self._link = link
        try:
            self._connack = loop.create_future()
            will = self._will() if self._will is not None else None
            user, password = self.address.username, self.address.password
            self._send(_connect_packet(self.client_id, self._keepalive, user, password, will))
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await asyncio.wait((self._connack, link.lost), return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                raise MqttError(f"no CONNACK within {CONNECT_TIMEOUT_S:g} s") from None
            if not self._connack.done():
                raise MqttError(link.lost.result())
            code, props = self._connack.result()
            if code >= 0x80:
                why = reason_text(code)
                extra = props.get(_REASON_STRING)
                logger.error(
                    "MQTT %s: broker %s refused the connection: %s%s",
                    self.client_id,
                    self.address,
                    why,
                    f" ({extra.decode(errors='replace')})" if extra else "",
                )
                return False
            self._connected_as(props)
            reason = await self._keep_alive(link)
        finally:
            self._link = None
            self._outbox = []  # (its QoS 1 messages are sent again: `_requeue`)
            if link.transport is not None and not link.transport.is_closing():
                link.transport.abort()
        self._connected = False
        self._paused = False
        self._requeue()
        self._hand_over()  # what came before the loss, before the loss
        logger.warning("MQTT %s lost %s: %s", self.client_id, self.address, reason)
        try:
            self._handler.on_disconnected(reason)
        except Exception:
            logger.exception("MQTT %s: the handler failed on a disconnect", self.client_id)
        return True

    def _connected_as(self, props: dict[int, Any]) -> None:
        broker_max = props.get(_MAXIMUM_PACKET_SIZE)
        self.max_payload = (min(self._max_packet, broker_max) if broker_max else self._max_packet) - _HEADROOM
        self._receive_max = props.get(_RECEIVE_MAXIMUM, 65_535)
        if self._subscriptions:
            self._send(_subscribe_packet(self._packet_id(), self._subscriptions))
        self._connected = True
        logger.info("MQTT %s connected to %s", self.client_id, self.address)
        self._send_queued()  # what the broker had not acknowledged when the last connection ended
        try:
            self._handler.on_connected()
        except Exception:
            logger.exception("MQTT %s: the handler failed on a connect", self.client_id)

    async def _keep_alive(self, link: _Link) -> str:
        """PINGREQ when nothing was sent, or nothing heard, for half a keep-alive; the connection is
        dropped when the broker says nothing for one and a half keep-alives. Returns why it ended."""
        keepalive = self._keepalive
        while True:
            try:
                async with asyncio.timeout(keepalive / 2 if keepalive else None):
                    return await asyncio.shield(link.lost)
            except TimeoutError:
                now = time.monotonic()
                if now - link.last_heard > keepalive * 1.5:
                    link.close(f"the broker did not answer for {keepalive * 1.5:g} s")
                elif now - self._last_sent >= keepalive / 2 or now - link.last_heard >= keepalive / 2:
                    self._send(_PINGREQ_PACKET)  # (its PINGRESP is what a sender that hears nothing hears)

    def _send(self, data: bytes) -> bool:
        """Queue a packet for the connection: the packets of one turn of the loop go out together,
        in one write (a write is a system call; under load the owner publishes thousands a second)."""
        link = self._link
        if link is None or link.transport is None or link.transport.is_closing():
            return False
        if not self._outbox:
            self._loop.call_soon(self._write_out)
        self._outbox.append(data)
        self._last_sent = time.monotonic()
        return True

    def _write_out(self) -> None:
        """What was queued, to the connection (what a connection that ended had queued was dropped
        with it: `_session`)."""
        out, self._outbox = self._outbox, []
        link = self._link
        if out and link is not None and link.transport is not None and not link.transport.is_closing():
            link.transport.write(b"".join(out))

    # -- packets from the broker (on the loop, in order) ---------------------------------------
    # Reading and handling are apart: what is read goes to the inbox at once (the broker's PUBACKs,
    # which come on the same connection behind the messages, are taken as they are read), and the
    # handler is given the inbox in slices of BATCH, the loop free between them, so that a flood of
    # messages neither holds back the acknowledgements of what the owner publishes nor the owner's
    # timers. Past INBOX_HIGH messages waiting, reading pauses (the broker keeps the rest) until
    # the inbox is down to INBOX_LOW.
    def _received(self) -> None:
        inbox = self._inbox
        if not inbox:
            return
        if not self._working:
            self._working = True
            self._loop.call_soon(self._work)
        link = self._link
        if len(inbox) > INBOX_HIGH and not self._paused and link is not None and link.transport is not None:
            self._paused = True
            link.transport.pause_reading()

    def _work(self) -> None:
        self._working = False
        if self._stopped:
            return
        self._hand_over(BATCH)
        if self._inbox:
            self._working = True
            self._loop.call_soon(self._work)
        if self._paused and len(self._inbox) < INBOX_LOW:
            self._paused = False
            link = self._link
            if link is not None and link.transport is not None and not link.transport.is_closing():
                link.transport.resume_reading()

    def _hand_over(self, n: int | None = None) -> None:
        """The first `n` messages of the inbox (all of them: None) to the handler, in order."""
        inbox, handler, retained = self._inbox, self._handler, self._on_retained
        for _ in range(len(inbox) if n is None else min(n, len(inbox))):
            topic, payload, retain = inbox.popleft()
            try:
                if retain and retained is not None:
                    retained(topic, payload)
                else:
                    handler.on_message(topic, payload)
            except Exception as exc:
                self._failed(topic, payload, exc)

    def _control(self, kind: int, buf: bytearray, start: int, stop: int) -> None:
        if kind == _PUBACK:
            packet_id = (buf[start] << 8) | buf[start + 1]
            code = buf[start + 2] if stop > start + 2 else 0
            out = self._inflight.pop(packet_id, None)
            if out is not None and out.done is not None and not out.done.done():
                out.done.set_result(code < 0x80)
            if code >= 0x80 and out is not None:
                logger.warning(
                    "MQTT %s: broker refused a message on %s: %s",
                    self.client_id,
                    out.topic.decode(errors="replace"),
                    reason_text(code),
                )
            self._send_queued()
        elif kind == _CONNACK:
            code = buf[start + 1]
            props, _ = _properties(buf, start + 2, stop) if stop > start + 2 else ({}, stop)
            if self._connack is not None and not self._connack.done():
                self._connack.set_result((code, props))
        elif kind == _SUBACK:
            props, pos = _properties(buf, start + 2, stop)
            for (topic_filter, _), code in zip(self._subscriptions, buf[pos:stop], strict=False):
                if code >= 0x80:
                    logger.error(
                        "MQTT %s: broker %s refused the subscription to %s: %s",
                        self.client_id,
                        self.address,
                        topic_filter,
                        reason_text(code),
                    )
        elif kind == _DISCONNECT and self._link is not None:
            code = buf[start] if stop > start else 0
            props, _ = _properties(buf, start + 1, stop) if stop > start + 1 else ({}, stop)
            extra = props.get(_REASON_STRING)
            why = reason_text(code) + (f" ({extra.decode(errors='replace')})" if extra else "")
            self._link.close(f"the broker disconnected: {why}")
        # PINGRESP: `last_heard` is all it says; AUTH and QoS 2's packets: not asked for, not used

    # -- QoS 1, in order, within the broker's receive maximum ----------------------------------
    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._inflight:
                return self._next_id

    def _send_queued(self) -> None:
        while self._queued and self._connected and len(self._inflight) < self._receive_max:
            out = self._queued.popleft()
            packet_id = self._packet_id()
            self._inflight[packet_id] = out
            self._send(_publish_packet(out.topic, out.payload, 1, out.retain, packet_id))

    def _requeue(self) -> None:
        """A connection ended: what it had not acknowledged goes first on the next one (a clean start
        forgets it on the broker's side), as it was sent."""
        self._queued.extendleft(reversed(self._inflight.values()))
        self._inflight.clear()

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

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Send a message (QoS 0 or 1); False (and counted) if there is no connection, or if it is
        bigger than the broker takes (`refused_publishes`; never sent). A QoS 1 message the broker has
        not acknowledged when the connection ends is sent again on the next one."""
        return self._publish(topic, payload, qos, retain, None)

    def _publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, done: asyncio.Future[bool] | None
    ) -> bool:
        if self._too_big(topic, payload):
            return False
        if not self._connected:
            self.dropped_publishes += 1
            return False
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"cannot publish on {topic!r}: a topic name is not empty and has no wildcard")
        if qos == 0:
            if self._send(_publish_packet(topic.encode(), payload, 0, retain)):
                return True
            self.dropped_publishes += 1
            return False
        if qos != 1:
            raise ValueError(f"QoS {qos}: this client publishes QoS 0 and 1 only")
        self._queued.append(_Outgoing(topic.encode(), payload, retain, done))
        self._send_queued()
        return True

    async def publish_and_wait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 5.0
    ) -> bool:
        """Publish and wait until the broker has it (QoS 1: its PUBACK, and no refusal in it), or
        (QoS 0) until it is written to the connection; False when the timeout passes first."""
        if qos == 0:
            if not self._publish(topic, payload, 0, retain, None):
                return False
            link = self._link
            try:
                async with asyncio.timeout(timeout):
                    while link is self._link and link is not None and link.transport is not None:
                        if not self._outbox and link.transport.get_write_buffer_size() == 0:
                            return True
                        await asyncio.sleep(0.001)
            except TimeoutError:
                pass
            return False
        done: asyncio.Future[bool] = self._loop.create_future()
        if not self._publish(topic, payload, qos, retain, done):
            return False
        try:
            async with asyncio.timeout(timeout):
                return await done
        except TimeoutError:
            return False

    def stop(self) -> None:
        """Disconnect cleanly (no Will) and stop reconnecting. The handler is told (`on_disconnected`,
        if it was connected) before this returns; nothing more reaches it after."""
        was = self._connected
        self._stop(_DISCONNECT_PACKET)
        self._hand_over()  # what was read is the owner's still
        if was:
            try:
                self._handler.on_disconnected("stopped (normal disconnection)")
            except Exception:
                logger.exception("MQTT %s: the handler failed on a disconnect", self.client_id)

    def _stop(self, last: bytes | None) -> None:
        self._stopped = True
        self._connected = False
        link = self._link
        with contextlib.suppress(RuntimeError):  # the loop is closed: the connection went with it
            if link is not None and link.transport is not None and not link.transport.is_closing():
                if last is not None:
                    self._write_out()  # what was queued goes first
                    link.transport.write(last)
                    link.transport.close()
                else:
                    link.transport.abort()
            if self._task is not None and not self._task.done():
                self._task.cancel()
        for out in [*self._inflight.values(), *self._queued]:
            if out.done is not None and not out.done.done():
                out.done.set_result(False)
        self._inflight.clear()
        self._queued.clear()

    def drain(self) -> None:
        """Hand over, now, every message read and not handed over yet (`stop` does too: after it,
        nothing more is read)."""
        self._hand_over()

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT, so the broker sends the Will (for tests); the
        handler is not told (as in a crash)."""
        self._stop(None)


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
