"""Sparkplug B 3.0 topic names: `spBv1.0/<group>/<type>/<edge>[/<device>]` and `spBv1.0/STATE/<host>`."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

NAMESPACE = "spBv1.0"


class TopicError(ValueError):
    """A topic that is not a Sparkplug B 3.0 topic; the message says why."""


class MessageType(enum.StrEnum):
    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    NDATA = "NDATA"
    NCMD = "NCMD"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    DDATA = "DDATA"
    DCMD = "DCMD"

    @property
    def is_device(self) -> bool:
        return self.value[0] == "D"

    @property
    def carries_seq(self) -> bool:
        """NDEATH and the commands carry no seq; everything else an edge node sends does."""
        return self not in (MessageType.NDEATH, MessageType.NCMD, MessageType.DCMD)


_FORBIDDEN = frozenset("/+#")


def check_id(kind: str, value: str) -> str:
    """A group, edge node, device or host id: non-empty, no `/`, `+` or `#`."""
    if not value or any(c in _FORBIDDEN for c in value):
        raise TopicError(f"{kind} {value!r} must be non-empty and contain no '/', '+' or '#'")
    return value


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    group_id: str
    message_type: MessageType
    edge_node_id: str
    device_id: str | None = None

    def __post_init__(self) -> None:
        check_id("group id", self.group_id)
        check_id("edge node id", self.edge_node_id)
        if self.message_type.is_device:
            if self.device_id is None:
                raise TopicError(f"{self.message_type} needs a device id")
            check_id("device id", self.device_id)
        elif self.device_id is not None:
            raise TopicError(f"{self.message_type} takes no device id")

    @property
    def node_key(self) -> tuple[str, str]:
        return (self.group_id, self.edge_node_id)

    def __str__(self) -> str:
        base = f"{NAMESPACE}/{self.group_id}/{self.message_type}/{self.edge_node_id}"
        return base if self.device_id is None else f"{base}/{self.device_id}"


@functools.lru_cache(maxsize=8192)
def parse(topic: str) -> SparkplugTopic:
    """Parse a Sparkplug edge-node or device topic; STATE topics are parsed by `parse_state`."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != NAMESPACE:
        raise TopicError(
            f"{topic!r} is not a Sparkplug B topic ({NAMESPACE}/<group>/<type>/<edge>[/<device>])"
        )
    try:
        message_type = MessageType(parts[2])
    except ValueError:
        raise TopicError(f"{topic!r}: unknown message type {parts[2]!r}") from None
    expected = 5 if message_type.is_device else 4
    if len(parts) != expected:
        raise TopicError(
            f"{topic!r}: {message_type} topics have {expected} levels, this one has {len(parts)}"
        )
    return SparkplugTopic(parts[1], message_type, parts[3], parts[4] if expected == 5 else None)


def state_topic(host_id: str) -> str:
    return f"{NAMESPACE}/STATE/{check_id('host id', host_id)}"


def parse_state(topic: str) -> str | None:
    """The host id of a `spBv1.0/STATE/<host>` topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == NAMESPACE and parts[1] == "STATE" and parts[2]:
        return parts[2]
    return None
