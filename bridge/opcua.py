"""OPC UA: the machine reader the bridge uses and the server the CNC simulator runs.

This is the only module that imports asyncua.

`OpcUaReader` subscribes to a machine's signal nodes and reports each value with the server's
*source* timestamp; a value with a bad status or of the wrong type is reported as bad quality,
never as the last good value. When the connection is lost it says so and reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Unpack

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from bridge.reader import MachineReader, ReaderOptions
from bridge.signals import SIGNAL_TYPES, coerce
from uns.site import Machine, OpcUaSource, Signal
from uns.sparkplug.edge import Sample
from uns.sparkplug.payload import DataType, Quality

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _ms(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


STALE_KEEPALIVES = 3.0  # keep-alive periods without a publish before a subscription counts as dead


class _Handler:
    """asyncua's subscription callback: collects the values of one publish response."""

    def __init__(self, reader: OpcUaReader) -> None:
        self._reader = reader

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        self._reader._received(node, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        logger.warning("machine %s: subscription status %s", self._reader.machine.id, status)
        self._reader._lost.set()


class OpcUaReader(MachineReader):
    """Reads one machine over OPC UA (a subscription; values keep the server's source timestamps)."""

    def __init__(
        self,
        machine: Machine,
        source: OpcUaSource,
        **options: Unpack[ReaderOptions],
    ) -> None:
        super().__init__(machine, **options)
        self.source = source
        self._node_signal: dict[str, Signal] = {}
        self._pending: list[Sample] = []
        self._flush_scheduled = False
        self._initial: dict[Signal, Sample] = {}
        self._lost = asyncio.Event()

    def _sample(self, signal: Signal, dv: ua.DataValue) -> Sample:
        ts = _ms(dv.SourceTimestamp) or _ms(dv.ServerTimestamp) or self._now_ms()
        status = dv.StatusCode
        if status is not None and not status.is_good():
            self.counters["bad_values"] += 1
            logger.warning("machine %s: %s reads bad status %s", self.machine.id, signal, status.name)
            return Sample(signal.value, None, ts, Quality.BAD)
        raw = dv.Value.Value if dv.Value is not None else None
        try:
            return Sample(signal.value, coerce(signal, raw), ts)
        except ValueError as exc:
            self.counters["bad_values"] += 1
            logger.warning("machine %s (%s): %s", self.machine.id, self.source.endpoint, exc)
            return Sample(signal.value, None, ts, Quality.BAD)

    def _received(self, node: Node, dv: ua.DataValue) -> None:
        signal = self._node_signal.get(node.nodeid.to_string())
        if signal is None:
            return
        sample = self._sample(signal, dv)
        self.counters["samples"] += 1
        if not self._online:
            self._initial[signal] = sample
            if len(self._initial) == len(self._node_signal):
                self._online = True
                initial = list(self._initial.values())
                self._initial = {}
                self._on_online(initial)
            return
        self._pending.append(sample)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        # asyncua hands over a publish response item by item; put it back in time order
        batch.sort(key=lambda sample: sample.timestamp)
        if batch and self._online:
            self._on_samples(batch)

    def _reset(self) -> None:
        self._initial = {}

    async def _credentials(self, client: Client) -> None:
        source = self.source
        if source.username is not None and source.password_env is not None:
            password = os.environ.get(source.password_env)
            if password is None:
                raise ConnectionError(
                    f"the password of OPC UA user {source.username!r} is not set: "
                    f"set the environment variable {source.password_env}"
                )
            client.set_user(source.username)
            client.set_password(password)
        sec = source.security
        if sec is not None:
            try:
                await client.set_security(
                    SecurityPolicyBasic256Sha256,
                    certificate=str(sec.certificate),
                    private_key=str(sec.private_key),
                    server_certificate=None
                    if sec.server_certificate is None
                    else str(sec.server_certificate),
                    mode=getattr(ua.MessageSecurityMode, sec.mode),
                )
            except FileNotFoundError as exc:
                raise ConnectionError(f"OPC UA security: cannot read {exc.filename}") from exc

    async def _session(self) -> None:
        source = self.source
        client = Client(source.endpoint, timeout=4, watchdog_intervall=1.0)
        client.application_uri = CLIENT_APPLICATION_URI
        # asyncua 2.1 "recreates" a stale subscription on its own, and the new one's data is then
        # dropped as an unknown subscription: data that silently stops. We treat a stale
        # subscription as a lost connection instead (below), so switch its watchdog off.
        client._stale_check_margin = float("inf")
        await self._credentials(client)
        self._lost = asyncio.Event()

        async def lost(exc: Exception) -> None:
            self._lost.set()

        client.connection_lost_callback = lost
        await client.connect()
        self.counters["connects"] += 1
        try:
            nodes: list[Node] = []
            self._node_signal = {}
            for signal, node_id in source.signals.items():
                node = client.get_node(node_id)
                self._node_signal[node.nodeid.to_string()] = signal
                nodes.append(node)
            # a keep-alive about every second, so a silent subscription is told from a quiet machine
            params = ua.CreateSubscriptionParameters()
            params.RequestedPublishingInterval = source.publishing_interval_ms
            params.RequestedMaxKeepAliveCount = max(3, -(-1000 // source.publishing_interval_ms))
            params.RequestedLifetimeCount = 30 * params.RequestedMaxKeepAliveCount
            params.MaxNotificationsPerPublish = 10000
            params.PublishingEnabled = True
            params.Priority = 0
            sub = await client.create_subscription(params, _Handler(self))
            results = await sub.subscribe_data_change(nodes, queuesize=1000)
            for signal, result in zip(source.signals, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    raise ConnectionError(
                        f"cannot subscribe to {signal} ({source.signals[signal]}): {result.name}"
                    )
            logger.info(
                "machine %s: subscribed to %d signals at %s", self.machine.id, len(nodes), source.endpoint
            )
            while not self._lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), 0.5)
                # A subscription can die while the connection lives (the server dropped it, or its
                # publish loop is stuck): no keep-alive within its own interval means no data.
                if sub.is_stale(STALE_KEEPALIVES):
                    raise ConnectionError("the subscription stopped publishing (no keep-alive)")
            raise ConnectionError("connection lost")
        finally:
            self._flush()
            try:
                await asyncio.wait_for(client.disconnect(), 2)
            except Exception:  # the connection is already gone; nothing more to do
                logger.debug("machine %s: disconnect after loss failed", self.machine.id, exc_info=True)


# -- the simulator's side ------------------------------------------------------------------------
_VARIANT = {
    DataType.STRING: ua.VariantType.String,
    DataType.UINT32: ua.VariantType.UInt32,
    DataType.INT32: ua.VariantType.Int32,
    DataType.BOOLEAN: ua.VariantType.Boolean,
    DataType.DOUBLE: ua.VariantType.Double,
}

NAMESPACE_URI = "urn:shopfloor-uns:cnc-simulator"
NODE_NAMES: dict[Signal, str] = {
    Signal.EXECUTION: "Execution",
    Signal.MODE: "ControllerMode",
    Signal.PROGRAM: "Program",
    Signal.PART_COUNT: "PartCount",
    Signal.ALARM_CODE: "AlarmCode",
    Signal.ALARM_TEXT: "AlarmText",
    Signal.ESTOP: "EmergencyStop",
    Signal.SPINDLE_SPEED: "SpindleSpeed",
    Signal.SPINDLE_LOAD: "SpindleLoad",
    Signal.FEED_OVERRIDE: "FeedOverride",
}
_DEFAULTS: dict[DataType, bool | int | float | str] = {
    DataType.STRING: "",
    DataType.UINT32: 0,
    DataType.INT32: 0,
    DataType.BOOLEAN: False,
    DataType.DOUBLE: 0.0,
}


class _Users(UserManager):
    """Username/password check for the simulator's server; no anonymous access when users are set."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is not None and username in self._users and self._users[username] == password:
            return User(role=UserRole.User, name=username)
        return None


CLIENT_APPLICATION_URI = "urn:shopfloor-uns:bridge"


def make_certificate(key_file: Path, cert_file: Path, application_uri: str, *, server: bool) -> None:
    """A self-signed OPC UA application instance certificate (DER) and key (PEM), for tests and the demo."""
    key = cert_gen.generate_private_key()
    use = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        application_uri,
        {},
        [x509.UniformResourceIdentifier(application_uri), x509.DNSName("localhost")],
        use,
    )
    key_file.write_bytes(cert_gen.dump_private_key_as_pem(key))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.DER))


class CncOpcUaServer:
    """A real OPC UA server exposing one CNC controller's signals as `ns=2;s=<NodeName>`.

    With `users`, it asks for a username and password; with `certificate` and `private_key`, it
    offers only Basic256Sha256 (Sign, SignAndEncrypt), as a plant's controller should.
    """

    def __init__(
        self,
        machine_id: str,
        endpoint: str,
        *,
        users: Mapping[str, str] | None = None,
        certificate: Path | None = None,
        private_key: Path | None = None,
    ) -> None:
        self.machine_id = machine_id
        self.endpoint = endpoint
        self._server = Server(user_manager=_Users(users)) if users else Server()
        self._users = users
        self._certificate, self._private_key = certificate, private_key
        self._vars: dict[Signal, Node] = {}

    async def start(self, initial: Mapping[str, bool | int | float | str], t_ms: int) -> None:
        """Start serving, with the controller's signals as they were at `t_ms` from the first read."""
        server = self._server
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"CNC simulator {self.machine_id}")
        if self._certificate is not None and self._private_key is not None:
            await server.load_certificate(str(self._certificate))
            await server.load_private_key(str(self._private_key))
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ]
            )
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self._users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        idx = await server.register_namespace(NAMESPACE_URI)
        obj = await server.nodes.objects.add_object(idx, self.machine_id)
        for signal, name in NODE_NAMES.items():
            datatype = SIGNAL_TYPES[signal]
            variant = ua.Variant(_DEFAULTS[datatype], _VARIANT[datatype])
            self._vars[signal] = await obj.add_variable(
                ua.NodeId.from_string(f"ns={idx};s={name}"), name, variant
            )
        await self.write(initial, t_ms)
        await server.start()

    async def write(self, values: Mapping[str, bool | int | float | str], t_ms: int) -> None:
        """Set signals as the controller saw them at `t_ms` (the source timestamp)."""
        when = ua.DateTime.fromtimestamp(t_ms / 1000, UTC)
        for name, value in values.items():
            signal = Signal(name)
            dv = ua.DataValue(ua.Variant(value, _VARIANT[SIGNAL_TYPES[signal]]), SourceTimestamp=when)
            await self._vars[signal].write_value(dv)

    async def drop_subscriptions(self) -> None:
        """Delete every subscription on the server, leaving the connections up (for tests)."""
        service = self._server.iserver.subscription_service
        await service.delete_subscriptions(list(service.subscriptions))

    async def stop(self) -> None:
        await self._server.stop()
