"""`/metrics`: Prometheus text exposition of machine states and the health of host, bridges and machines."""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from services.api.deps import Store
from services.context.state import MachineState

router = APIRouter(tags=["metrics"])

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(store: Store) -> str:
    lines = [
        "# HELP uns_machine_state 1 for the state each machine is in now, 0 for the others.",
        "# TYPE uns_machine_state gauge",
    ]
    states = store.current_states()
    for c in states:
        for state in MachineState:
            lines.append(
                f'uns_machine_state{{machine="{_label(c.machine_id)}",state="{state.value}"}} '
                f"{int(c.state is state)}"
            )
    lines += [
        "# HELP uns_machine_state_since_seconds When the current state began (Unix time).",
        "# TYPE uns_machine_state_since_seconds gauge",
    ]
    lines += [
        f'uns_machine_state_since_seconds{{machine="{_label(c.machine_id)}"}} {c.since_ms / 1000}'
        for c in states
        if c.since_ms is not None
    ]
    lines += [
        "# HELP uns_machine_part_counter The machine's part counter as last seen.",
        "# TYPE uns_machine_part_counter gauge",
    ]
    lines += [
        f'uns_machine_part_counter{{machine="{_label(c.machine_id)}"}} {c.counter}'
        for c in states
        if c.counter is not None
    ]
    grouped: dict[str, list[str]] = {}  # Prometheus wants one metric's samples together
    for scope, name, value, _ in store.health():
        if value is None:
            continue
        kind, _, ident = scope.partition("/")
        label = {"host": "host", "edge": "edge_node", "machine": "machine"}.get(kind, "scope")
        metric = f"uns_{_NAME.sub('_', kind)}_{_NAME.sub('_', name)}"
        grouped.setdefault(metric, []).append(f'{metric}{{{label}="{_label(ident)}"}} {value:g}')
    for metric in sorted(grouped):
        lines += [f"# TYPE {metric} gauge", *grouped[metric]]
    return "\n".join(lines) + "\n"


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(store: Store) -> PlainTextResponse:
    return PlainTextResponse(render(store), media_type="text/plain; version=0.0.4")
