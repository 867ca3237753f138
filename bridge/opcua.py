"""OPC UA: the machine reader the bridge uses and the server the CNC simulator runs.

This is the only module that imports asyncua.

`OpcUaReader` subscribes to a machine's signal nodes and reports each value with the server's
*source* timestamp; a value with a bad status or of the wrong type is reported as bad quality,
never as the last good value. When the connection is lost it says so and reconnects with backoff.
Node ids by namespace URI (`nsu=<uri>;s=...`) are resolved against the server's NamespaceArray at
every connect; `explain` turns asyncua's failures (an untrusted certificate, a refused login, an
unknown node) into what failed and what to do. `browse_server` lists a server's variables for
`uns probe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Unpack
from urllib.parse import quote, unquote

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua import status_codes
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError, UaStringParsingError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from bridge.reader import MachineReader, ReaderError, ReaderOptions, chain, describe
from bridge.reader import explain as reader_explain
from uns.signals import SIGNAL_TYPES, coerce
from uns.site import Machine, OpcUaSecurity, OpcUaSource, Signal
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


@dataclass(frozen=True, slots=True)
class OpcUaAccess:
    """How to reach and log in to an OPC UA server: what the reader and `uns probe` share."""

    endpoint: str
    username: str | None = None
    password_env: str | None = None  # the environment variable that holds the password
    security: OpcUaSecurity | None = None

    @classmethod
    def of(cls, source: OpcUaSource) -> OpcUaAccess:
        return cls(source.endpoint, source.username, source.password_env, source.security)


TIMEOUT_S = 4.0  # for each request, and for the connection to open


async def _client(access: OpcUaAccess, timeout_s: float = TIMEOUT_S) -> Client:
    """A client for the server, with our application URI, login and security (not yet connected)."""
    client = Client(access.endpoint, timeout=timeout_s, watchdog_intervall=1.0)
    client.application_uri = CLIENT_APPLICATION_URI
    if access.username is not None and access.password_env is not None:
        password = os.environ.get(access.password_env)
        if password is None:
            raise ReaderError(
                f"the password of OPC UA user {access.username!r} is not set: "
                f"set the environment variable {access.password_env}"
            )
        client.set_user(access.username)
        client.set_password(password)
    sec = access.security
    if sec is not None:
        try:
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                certificate=str(sec.certificate),
                private_key=str(sec.private_key),
                server_certificate=None if sec.server_certificate is None else str(sec.server_certificate),
                mode=getattr(ua.MessageSecurityMode, sec.mode),
            )
        except FileNotFoundError as exc:
            raise ReaderError(
                f"OPC UA security: cannot read {exc.filename}: check the path (relative to the site file)"
            ) from exc
    return client


# -- what a failure means, and what to do ----------------------------------------------------------
_TRUST = frozenset(
    {
        "BadCertificateUntrusted",
        "BadSecurityChecksFailed",
        "BadCertificateInvalid",
        "BadCertificateChainIncomplete",
        "BadCertificateIssuerRevocationUnknown",
        "BadCertificateRevocationUnknown",
        "BadCertificateIssuerUseNotAllowed",
    }
)
_LOGIN = frozenset({"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid"})
TRUST_HOWTO = (
    "add it to the server's trusted certificates: in the controller's OPC UA settings (its certificate"
    " manager; most servers keep a refused client certificate in a 'rejected' list or folder, such as"
    " pki/rejected, from where it is moved to 'trusted'), then the bridge connects at its next try"
)


def _status_name(exc: BaseException) -> str | None:
    if isinstance(exc, UaStatusCodeError):
        return str(status_codes.get_name_and_doc(exc.code)[0])
    return None


def _certificate(access: OpcUaAccess) -> str:
    if access.security is None:
        return "(none: the source has no `security`, so the bridge sends no certificate)"
    return str(access.security.certificate.resolve())


def explain(exc: BaseException, access: OpcUaAccess, timeout_s: float = TIMEOUT_S) -> str:
    """What an OPC UA failure means and what to do: asyncua's status codes in plain words, else
    the network failures every reader shares (bridge.reader.explain)."""
    for cause in chain(exc):
        if isinstance(cause, ReaderError):
            return str(cause)
        name = _status_name(cause)
        if name is None:
            if isinstance(cause, UaError) and str(cause).startswith("No matching endpoints"):
                if access.security is None:
                    return (
                        f"the server offers no unsecured endpoint ({describe(cause)}): give the source a"
                        " `security` (Basic256Sha256 with our certificate, docs/operations.md)"
                    )
                return (
                    f"the server offers no endpoint with Basic256Sha256 {access.security.mode}"
                    f" ({describe(cause)}): try the other mode (Sign or SignAndEncrypt)"
                )
            continue
        if name in _TRUST:
            return (
                f"the controller does not trust our certificate {_certificate(access)} ({name}): "
                + TRUST_HOWTO
            )
        if name == "BadCertificateTimeInvalid":
            return (
                f"our certificate {_certificate(access)} has expired or is not valid yet ({name}):"
                " make a new one and have the controller trust it (and check both clocks)"
            )
        if name == "BadCertificateUriInvalid":
            return (
                f"our certificate {_certificate(access)} does not name the bridge's application URI"
                f" {CLIENT_APPLICATION_URI} in its subjectAltName ({name}): make it with that URI"
            )
        if name == "BadCertificateUseNotAllowed":
            return (
                f"our certificate {_certificate(access)} may not be used by a client ({name}): make it"
                " with the key usages of an OPC UA application certificate and extended key usage clientAuth"
            )
        if name in _LOGIN:
            if access.username is None:
                return (
                    f"the server refuses anonymous access ({name}): set `username` and `password_env`"
                    " in the source"
                )
            return (
                f"the server refused user {access.username!r} ({name}): check the user name, and the"
                f" password in the environment variable {access.password_env}"
            )
        if name == "BadSecurityPolicyRejected":
            return f"the server refuses Basic256Sha256 ({name}): check which security policy it offers"
        if name == "BadTooManySessions":
            return (
                f"the server takes no more sessions ({name}): close another client, or raise the"
                " controller's session limit"
            )
        return f"the server answered {name} ({describe(cause)})"
    text = reader_explain(exc, timeout_s)
    sec = access.security
    if (
        sec is not None
        and sec.server_certificate is not None
        and any(isinstance(c, TimeoutError) for c in chain(exc))
    ):
        text += (
            f"; and that {sec.server_certificate} is the server's current certificate"
            " (with another one the server cannot read our requests, and never answers)"
        )
    return text


def _node_problem(signal: Signal, node_id: str, status: str, access: OpcUaAccess) -> str:
    """Why a signal's node cannot be read, and what to do."""
    listing = f"`uns probe {access.endpoint}` lists the server's variables"
    if status in ("BadNodeIdUnknown", "BadNodeIdInvalid"):
        return f"signal {signal}: the server has no node {node_id} ({status}): correct it ({listing})"
    if status == "BadAttributeIdInvalid":
        return f"signal {signal}: node {node_id} is not a variable ({status}): map a variable ({listing})"
    if status in ("BadUserAccessDenied", "BadNotReadable"):
        who = f"user {access.username!r}" if access.username else "an anonymous client"
        return (
            f"signal {signal}: {who} may not read node {node_id} ({status}): grant read access on the server"
        )
    return f"signal {signal}: cannot subscribe to node {node_id} ({status})"


# -- node ids --------------------------------------------------------------------------------------
def parse_node_id(signal: Signal | str, text: str) -> ua.NodeId:
    """A node id as the site model gives it (`ns=2;s=...`, `nsu=<uri>;s=...`, `i=`, `g=`, `b=`)."""
    try:
        node_id = ua.NodeId.from_string(text)
    except (UaStringParsingError, ValueError) as exc:
        raise ReaderError(
            f"signal {signal}: {text!r} is not an OPC UA node id (like ns=2;s=Name,"
            " nsu=<namespace URI>;s=Name or i=1234): correct it in the site model"
        ) from exc
    if isinstance(node_id, ua.ExpandedNodeId) and node_id.ServerIndex:
        raise ReaderError(
            f"signal {signal}: node id {text!r} is on another server (srv=): use one of this server's"
        )
    return node_id


def resolve_node_id(signal: Signal | str, text: str, namespaces: Sequence[str], endpoint: str) -> ua.NodeId:
    """The node id with `nsu=<uri>` replaced by the index the server gives that namespace today."""
    node_id = parse_node_id(signal, text)
    if not isinstance(node_id, ua.ExpandedNodeId) or not node_id.NamespaceUri:
        return ua.NodeId(node_id.Identifier, node_id.NamespaceIndex, node_id.NodeIdType)
    uri = node_id.NamespaceUri
    for candidate in (uri, unquote(uri)):  # ';' in a URI is written %3B
        if candidate in namespaces:
            return ua.NodeId(node_id.Identifier, ua.Int16(namespaces.index(candidate)), node_id.NodeIdType)
    raise ReaderError(
        f"signal {signal}: node id {text!r}: the server has no namespace {uri!r} (it has"
        f" {', '.join(repr(n) for n in namespaces[1:]) or 'only the standard one'}): correct the URI"
        f" (`uns probe {endpoint}` lists the server's node ids)"
    )


def portable_node_id(node_id: ua.NodeId, namespaces: Sequence[str]) -> str:
    """`nsu=<uri>;s=...`: the form that stays right when the server numbers its namespaces anew."""
    bare = ua.NodeId(node_id.Identifier, ua.Int16(0), node_id.NodeIdType).to_string()
    if node_id.NamespaceIndex == 0 or node_id.NamespaceIndex >= len(namespaces):
        return node_id.to_string()
    return f"nsu={quote(namespaces[node_id.NamespaceIndex], safe=_URI_SAFE)};{bare}"


_URI_SAFE = ":/?#[]@!$&'()*+,=-._~%"  # everything a URI may hold but ';', which ends the nsu= part


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
        self.access = OpcUaAccess.of(source)
        self._node_signal: dict[str, Signal] = {}
        self._pending: list[Sample] = []
        self._flush_scheduled = False
        self._initial: dict[Signal, Sample] = {}
        self._lost = asyncio.Event()

    @property
    def timeout_s(self) -> float:
        return TIMEOUT_S

    def explain(self, exc: BaseException) -> str:
        return explain(exc, self.access, TIMEOUT_S)

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

    async def _nodes(self, client: Client) -> list[Node]:
        """The signals' nodes, `nsu=` node ids resolved against the server's namespaces of today."""
        source = self.source
        namespaces: list[str] = []
        if any("nsu=" in text for text in source.signals.values()):
            namespaces = await client.get_namespace_array()
        nodes: list[Node] = []
        self._node_signal = {}
        for signal, text in source.signals.items():
            node = client.get_node(resolve_node_id(signal, text, namespaces, source.endpoint))
            self._node_signal[node.nodeid.to_string()] = signal
            nodes.append(node)
        return nodes

    async def _session(self) -> None:
        source = self.source
        self._stage = "connecting"
        client = await _client(self.access)
        # asyncua 2.1 "recreates" a stale subscription on its own, and the new one's data is then
        # dropped as an unknown subscription: data that silently stops. We treat a stale
        # subscription as a lost connection instead (below), so switch its watchdog off.
        client._stale_check_margin = float("inf")
        self._lost = asyncio.Event()

        async def lost(exc: Exception) -> None:
            self._lost.set()

        client.connection_lost_callback = lost
        await client.connect()
        self.counters["connects"] += 1
        try:
            self._stage = "resolving node ids"
            nodes = await self._nodes(client)
            self._stage = "subscribing"
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
                    raise ReaderError(_node_problem(signal, source.signals[signal], result.name, self.access))
            logger.info(
                "machine %s: subscribed to %d signals at %s", self.machine.id, len(nodes), source.endpoint
            )
            self._stage = "reading"
            while not self._lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), 0.5)
                # A subscription can die while the connection lives (the server dropped it, or its
                # publish loop is stuck): no keep-alive within its own interval means no data.
                if sub.is_stale(STALE_KEEPALIVES):
                    raise ReaderError(
                        f"the subscription stopped publishing (no keep-alive for {STALE_KEEPALIVES:g}"
                        " periods): subscribing again"
                    )
            raise ReaderError(
                "the connection was lost (the server stopped, or the network failed): reconnecting"
            )
        finally:
            self._flush()
            try:
                await asyncio.wait_for(client.disconnect(), 2)
            except Exception:  # the connection is already gone; nothing more to do
                logger.debug("machine %s: disconnect after loss failed", self.machine.id, exc_info=True)


# -- browsing a server's address space (uns probe) ------------------------------------------------
@dataclass(frozen=True, slots=True)
class BrowsedVariable:
    """One variable under the Objects folder, as `uns probe` shows it."""

    node_id: str  # the portable form, nsu=<namespace URI>;s=...
    path: tuple[str, ...]  # browse names from the Objects folder down to the variable
    data_type: str  # the OPC UA built-in type's name (String, UInt32, Double, ...), or the type's node id
    value: object  # None when it could not be read
    status: str | None  # a bad status's name, None when the value is good


@dataclass(frozen=True, slots=True)
class BrowsedServer:
    namespaces: tuple[str, ...]
    variables: tuple[BrowsedVariable, ...]
    visited: int  # nodes browsed
    truncated: bool  # the depth or node limit stopped the browse before the end


_HAS_PROPERTY = ua.NodeId(ua.Int32(ObjectIds.HasProperty))
_BATCH = 200  # nodes per browse or read request


async def browse_server(
    access: OpcUaAccess, *, depth: int = 5, max_nodes: int = 2000, timeout_s: float = TIMEOUT_S
) -> BrowsedServer:
    """The variables under the Objects folder to `depth` levels and at most `max_nodes` nodes,
    leaving out the standard namespace (the Server object and its like) and properties."""
    client = await _client(access, timeout_s)
    await client.connect()
    try:
        namespaces = tuple(await client.get_namespace_array())
        found: list[tuple[ua.NodeId, tuple[str, ...]]] = []
        level: list[tuple[ua.NodeId, tuple[str, ...]]] = [(ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder)), ())]
        seen: set[str] = set()
        truncated = False
        for _ in range(depth):
            children: list[tuple[ua.NodeId, tuple[str, ...]]] = []
            for i in range(0, len(level), _BATCH):
                batch = level[i : i + _BATCH]
                params = ua.BrowseParameters()
                params.View = ua.ViewDescription()
                params.RequestedMaxReferencesPerNode = 0
                for node_id, _path in batch:
                    desc = ua.BrowseDescription()
                    desc.NodeId = node_id
                    desc.BrowseDirection = ua.BrowseDirection.Forward
                    desc.ReferenceTypeId = ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences))
                    desc.IncludeSubtypes = True
                    desc.NodeClassMask = ua.NodeClass.Object | ua.NodeClass.Variable
                    desc.ResultMask = ua.BrowseResultMask.All
                    params.NodesToBrowse.append(desc)
                results = await client.uaclient.browse(params)
                for (_parent, path), result in zip(batch, results, strict=True):
                    truncated |= bool(result.ContinuationPoint)
                    for ref in result.References:
                        target = ua.NodeId(
                            ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType
                        )
                        key = target.to_string()
                        if target.NamespaceIndex == 0 or ref.ReferenceTypeId == _HAS_PROPERTY or key in seen:
                            continue
                        if len(seen) >= max_nodes:
                            truncated = True
                            break
                        seen.add(key)
                        child = (target, (*path, str(ref.BrowseName.Name)))
                        if ref.NodeClass == ua.NodeClass.Variable:
                            found.append(child)
                        children.append(child)  # a variable may have components of its own
            level = children
            if not level:
                break
        else:
            truncated |= bool(level)
        variables: list[BrowsedVariable] = []
        for i in range(0, len(found), _BATCH):
            batch = found[i : i + _BATCH]
            ids = [node_id for node_id, _ in batch]
            types = await client.uaclient.read_attributes(ids, AttributeIds.DataType)
            values = await client.uaclient.read_attributes(ids, AttributeIds.Value)
            for (node_id, path), dtype, dv in zip(batch, types, values, strict=True):
                variables.append(_browsed(node_id, path, dtype, dv, namespaces))
        return BrowsedServer(namespaces, tuple(variables), len(seen), truncated)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 2)


def _browsed(
    node_id: ua.NodeId,
    path: tuple[str, ...],
    dtype: ua.DataValue,
    dv: ua.DataValue,
    namespaces: Sequence[str],
) -> BrowsedVariable:
    type_id = dtype.Value.Value if dtype.Value is not None else None
    if isinstance(type_id, ua.NodeId) and type_id.NamespaceIndex == 0 and isinstance(type_id.Identifier, int):
        type_name = ObjectIdNames.get(type_id.Identifier, type_id.to_string())
    elif isinstance(type_id, ua.NodeId):
        type_name = portable_node_id(type_id, namespaces)
    else:
        type_name = "?"
    status = dv.StatusCode
    bad = status is not None and not status.is_good()
    value = None if bad or dv.Value is None else dv.Value.Value
    return BrowsedVariable(
        portable_node_id(node_id, namespaces), path, type_name, value, status.name if bad and status else None
    )


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


def _der(certificate: Path) -> bytes:
    """A certificate file (DER or PEM) as DER."""
    data = Path(certificate).read_bytes()
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return data


class CncOpcUaServer:
    """A real OPC UA server exposing one CNC controller's signals as `ns=2;s=<NodeName>` (in the
    namespace `NAMESPACE_URI`), in an object named after the machine under Objects.

    With `users`, it asks for a username and password; with `certificate` and `private_key`, it
    offers only Basic256Sha256 (Sign, SignAndEncrypt), as a plant's controller should; with
    `trusted_clients` too, it refuses a client certificate not among them (BadCertificateUntrusted),
    as a controller does before someone trusts the bridge. `namespaces_before` registers other
    namespaces first, so the signals' namespace gets another index (as on another controller).
    """

    def __init__(
        self,
        machine_id: str,
        endpoint: str,
        *,
        users: Mapping[str, str] | None = None,
        certificate: Path | None = None,
        private_key: Path | None = None,
        trusted_clients: Sequence[Path] | None = None,
        namespaces_before: Sequence[str] = (),
    ) -> None:
        self.machine_id = machine_id
        self.endpoint = endpoint
        self._server = Server(user_manager=_Users(users)) if users else Server()
        self._users = users
        self._certificate, self._private_key = certificate, private_key
        self._trusted = None if trusted_clients is None else [_der(p) for p in trusted_clients]
        self._namespaces_before = tuple(namespaces_before)
        self._vars: dict[Signal, Node] = {}

    def trust(self, certificate: Path) -> None:
        """Add a client certificate to the trusted ones (what the plant's engineer does on the controller)."""
        if self._trusted is None:
            raise RuntimeError("this server was started without a trust list (trusted_clients)")
        self._trusted.append(_der(certificate))

    async def _validate(self, certificate: x509.Certificate, app: ua.ApplicationDescription) -> None:
        if (
            self._trusted is not None
            and certificate.public_bytes(serialization.Encoding.DER) not in self._trusted
        ):
            raise ServiceError(StatusCodes.BadCertificateUntrusted)

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
        if self._trusted is not None:
            server.set_certificate_validator(self._validate)
        for uri in self._namespaces_before:
            await server.register_namespace(uri)
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
