"""ISA-95 paths of the readable UNS tree: enterprise/site/area/line/cell/machine."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LEVELS = ("enterprise", "site", "area", "line", "cell", "machine")


class PathError(ValueError):
    pass


def check_segment(level: str, value: str) -> str:
    """One level of the tree: letters, digits, `_`, `-`, `.`; starts with a letter or digit; at most 64.

    This keeps out the MQTT wildcards `+` and `#`, the level separator `/`, spaces and `$`.
    """
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise PathError(
            f"{level} {value!r} is not a valid topic level: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, at most 64 characters"
        )
    return value


@dataclass(frozen=True, slots=True)
class Isa95Path:
    enterprise: str
    site: str
    area: str
    line: str
    cell: str
    machine: str

    def __post_init__(self) -> None:
        for level in LEVELS:
            check_segment(level, getattr(self, level))

    def __str__(self) -> str:
        return "/".join(getattr(self, level) for level in LEVELS)

    def topic(self, leaf: str) -> str:
        """The topic of one readable value under this machine, e.g. `.../state`."""
        return f"{self}/{leaf}"
