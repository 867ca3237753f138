"""Bridge health as Sparkplug metrics: per edge node (buffer depth and age, dropped, replayed) and per
machine (connected, samples and their rate, bad values and reads, losses; an MTConnect agent's restarts,
sequence gaps and the observations lost in them). The host republishes them
under the UNS tree and the API on /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

from bridge.edge_node import EdgeNode
from uns.sparkplug.edge import MetricDef, Sample
from uns.sparkplug.payload import DataType

PREFIX = "health/"
NODE_METRICS = [
    MetricDef("health/buffer_depth", DataType.UINT64),
    MetricDef("health/buffer_age_s", DataType.DOUBLE),
    MetricDef("health/buffer_dropped", DataType.UINT64),
    MetricDef("health/buffered", DataType.UINT64),
    MetricDef("health/replayed", DataType.UINT64),
    MetricDef("health/unsent", DataType.UINT64),
    MetricDef("health/devices_online", DataType.UINT32),
]
DEVICE_METRICS = [
    MetricDef("health/connected", DataType.BOOLEAN),
    MetricDef("health/samples", DataType.UINT64),
    MetricDef("health/samples_per_s", DataType.DOUBLE),
    MetricDef("health/bad_values", DataType.UINT64),
    MetricDef("health/bad_reads", DataType.UINT64),
    MetricDef("health/losses", DataType.UINT64),
    # MTConnect agents (0 for the other readers): restarts (instanceId changed), sequence gaps (the
    # agent's buffer wrapped before we read it) and the observations lost in them (docs/mtconnect.md)
    MetricDef("health/agent_restarts", DataType.UINT64),
    MetricDef("health/sequence_gaps", DataType.UINT64),
    MetricDef("health/observations_lost", DataType.UINT64),
]


class Reader(Protocol):
    counters: dict[str, int]

    @property
    def online(self) -> bool: ...


async def report(node: EdgeNode, readers: Mapping[str, Reader], interval_s: float = 10.0) -> None:
    """Publish the node's and its machines' health every `interval_s` seconds while it can publish."""
    last: dict[str, tuple[float, int]] = {}
    while True:
        await asyncio.sleep(interval_s)
        now_ms = node.clock.now_ms()
        wall = time.monotonic()
        buffer = node.buffer
        oldest = buffer.oldest_ms()
        c = node.counters
        node_samples = [
            Sample("health/buffer_depth", buffer.depth, now_ms),
            Sample(
                "health/buffer_age_s", 0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000), now_ms
            ),
            Sample("health/buffer_dropped", buffer.dropped, now_ms),
            Sample("health/buffered", c["buffered"], now_ms),
            Sample("health/replayed", c["replayed"], now_ms),
            Sample("health/unsent", c["data_unsent"], now_ms),
            Sample("health/devices_online", sum(r.online for r in readers.values()), now_ms),
        ]
        devices: dict[str, list[Sample]] = {}
        for device, reader in readers.items():
            rc = reader.counters
            before = last.get(device)
            rate = (rc["samples"] - before[1]) / (wall - before[0]) if before and wall > before[0] else 0.0
            last[device] = (wall, rc["samples"])
            devices[device] = [
                Sample("health/connected", reader.online, now_ms),
                Sample("health/samples", rc["samples"], now_ms),
                Sample("health/samples_per_s", round(rate, 3), now_ms),
                Sample("health/bad_values", rc.get("bad_values", 0), now_ms),
                Sample("health/bad_reads", rc.get("bad_reads", 0), now_ms),
                Sample("health/losses", rc.get("losses", 0), now_ms),
                Sample("health/agent_restarts", rc.get("restarts", 0), now_ms),
                Sample("health/sequence_gaps", rc.get("gaps", 0), now_ms),
                Sample("health/observations_lost", rc.get("observations_lost", 0), now_ms),
            ]
        node.publish_health(node_samples, devices)
