"""The bridge: one Sparkplug edge node per `edge_node` of the site model, one device per machine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from bridge import health
from bridge.buffer import DiskBuffer
from bridge.edge_node import EdgeNode
from bridge.modbus import ModbusReader
from bridge.mtconnect import MtConnectReader
from bridge.opcua import OpcUaReader
from uns.clock import Clock
from uns.mqtt import BrokerAddress
from uns.signals import metric_defs
from uns.site import Machine, ModbusSource, MtConnectSource, OpcUaSource, Site
from uns.sparkplug.edge import EdgeSession, Sample

logger = logging.getLogger(__name__)


def make_edge_node(
    site: Site, edge_node_id: str, address: BrokerAddress, clock: Clock, buffer_dir: Path | None = None
) -> EdgeNode:
    """An edge node for the site's machines on `edge_node_id`, buffering in `buffer_dir` (memory if None)."""
    machines = site.edge_nodes()[edge_node_id]
    counters = site.config.sparkplug.part_count_type
    devices = {m.id: metric_defs(tuple(m.source.signals), counters) + health.DEVICE_METRICS for m in machines}
    name = f"{site.group_id}.{edge_node_id}.db"
    buffer = DiskBuffer(buffer_dir / name if buffer_dir is not None else ":memory:")
    session = EdgeSession(
        site.group_id, edge_node_id, devices, health.NODE_METRICS, last_bdseq=buffer.last_bdseq
    )
    # its primary host: the context worker that keeps it (the one context service, without workers)
    primary = site.primary_host(edge_node_id)
    return EdgeNode(session, address, clock, primary_host_id=primary, buffer=buffer)


def _reader(node: EdgeNode, machine: Machine, clock: Clock) -> OpcUaReader | ModbusReader | MtConnectReader:
    def online(samples: list[Sample]) -> None:
        logger.info("machine %s online", machine.id)
        node.device_online(machine.id, samples)

    def offline() -> None:
        logger.warning("machine %s offline", machine.id)
        node.device_offline(machine.id)

    def data(samples: list[Sample]) -> None:
        node.data(machine.id, samples)

    if isinstance(machine.source, ModbusSource):
        return ModbusReader(
            machine,
            machine.source,
            on_online=online,
            on_samples=data,
            on_offline=offline,
            now_ms=clock.now_ms,
        )
    if isinstance(machine.source, MtConnectSource):
        return MtConnectReader(
            machine,
            machine.source,
            on_online=online,
            on_samples=data,
            on_offline=offline,
            now_ms=clock.now_ms,
        )
    if not isinstance(machine.source, OpcUaSource):
        raise ValueError(
            f"machine {machine.id}: {machine.where} is published by an edge node, read by none of ours"
        )
    return OpcUaReader(
        machine, machine.source, on_online=online, on_samples=data, on_offline=offline, now_ms=clock.now_ms
    )


async def run_bridge(
    site: Site,
    address: BrokerAddress | Mapping[str, BrokerAddress],
    clock: Clock,
    stop: asyncio.Event,
    edge_node_ids: list[str] | None = None,
    buffer_dir: Path | None = None,
    health_interval_s: float = 10.0,
) -> None:
    """Run the bridge's edge nodes until `stop` is set, then leave cleanly (NDEATH). `address` is
    each edge node's own login (by edge node id: every edge node is its own broker user), or one
    login for all of them."""
    loop = asyncio.get_running_loop()
    wanted = edge_node_ids or list(site.edge_nodes())
    unknown = sorted(set(wanted) - set(site.edge_nodes()))
    if unknown:
        raise ValueError(f"edge nodes {unknown} are not in the site model ({', '.join(site.edge_nodes())})")
    logins = {e: address if isinstance(address, BrokerAddress) else address.get(e) for e in wanted}
    without = sorted(e for e, login in logins.items() if login is None)
    if without:
        raise ValueError(f"edge nodes {without} have no broker login")
    nodes = [make_edge_node(site, e, login, clock, buffer_dir) for e, login in logins.items() if login]
    for node in nodes:
        node.start(loop)
    try:
        async with asyncio.TaskGroup() as tg:
            for node in nodes:
                edge = node.session.edge_node_id
                readers = {m.id: _reader(node, m, clock) for m in site.edge_nodes()[edge]}
                for machine_id, reader in readers.items():
                    kind = site.machine(machine_id).source.protocol
                    tg.create_task(reader.run(), name=f"bridge[{machine_id}].{kind}")
                tg.create_task(health.report(node, readers, health_interval_s), name=f"bridge[{edge}].health")
            tg.create_task(_cancel_on(stop), name="bridge.stop")
    except* _StopRequestedError:
        pass
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


class _StopRequestedError(Exception):
    pass


async def _cancel_on(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _StopRequestedError
