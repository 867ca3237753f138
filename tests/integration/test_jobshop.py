"""The three situations a job shop lives with, end to end on seeded scenarios: simulated CNC
controllers (real OPC UA servers) -> bridge -> Mosquitto -> context service -> record, with the
dispatch list, holds, reasons and confirmations sent through the API (over MQTT to the context
service) and as MQTT commands, checked against the scenarios' own ground truth.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bridge.sim.erp import dispatch_list, job_number
from bridge.sim.scenario import MachineScenario
from services.api.app import create_app
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.reasons import taxonomy
from tests.helpers import address, recorder
from tests.integration.test_end_to_end import Stack, start_stack
from uns.broker import Mosquitto
from uns.clock import iso, parse_iso

ADMIN, PLANNER, QUALITY, OPERATOR = "a" * 24, "p" * 24, "q" * 24, "o" * 24
# Wednesday 18 Nov 2026, 14:00 in Dayton (America/New_York): second shift begins
SECOND_SHIFT_MS = parse_iso("2026-11-18T19:00:00.000Z")
HOUR = 3_600_000


@asynccontextmanager
async def api_for(mosquitto: Mosquitto, stack: Stack) -> AsyncIterator[Callable[..., Any]]:
    """The API with its command sender on the test broker; `call(method, path, token, **kw)` runs a
    request off the event loop (the context service answers on it)."""
    site = stack.site
    settings = ApiSettings(
        api_token=SecretStr(ADMIN),
        api_token_planner=SecretStr(PLANNER),
        api_token_quality=SecretStr(QUALITY),
        api_token_operator=SecretStr(OPERATOR),
    )
    sender = CommandSender(address(mosquitto, "services"), f"{site.config.enterprise}/{site.config.site}")
    app = create_app(settings, stack.store, stack.context.calendar, taxonomy(site.config.downtime), sender)
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while sender._client is None or not sender._client.connected:
            assert time.monotonic() < deadline, "the API never reached the broker"
            await asyncio.sleep(0.05)

        async def call(method: str, path: str, token: str = ADMIN, **kw: Any) -> Any:
            headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
            return await asyncio.to_thread(lambda: client.request(method, path, headers=headers, **kw))

        yield call


def _planned(stack: Stack, end_ms: int) -> list[dict[str, Any]]:
    return dispatch_list([stack.scenarios[m.id] for m in stack.site.machines], end_ms)


def _truth_by_state(scenario: MachineScenario, start_ms: int, end_ms: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in scenario.truth(end_ms):
        a, b = max(t.start_ms, start_ms), min(t.end_ms, end_ms)
        if b > a:
            out[t.state] = out.get(t.state, 0.0) + (b - a) / 1000
    return out


async def test_the_night_the_machine_ran_all_night(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Second shift says the machine ran all night; the ERP shows the job late. The record splits
    each operation's window into cutting, setup, waiting and down, with reasons, as it really was."""
    machine = "vf2-01"
    stack = await start_stack(mosquitto, tmp_path, (machine,), seed=11, origin_ms=SECOND_SHIFT_MS)
    end_ms = SECOND_SHIFT_MS + 9 * HOUR  # second shift and the first hour of the third
    try:
        async with api_for(mosquitto, stack) as call:
            sent = await call(
                "PUT",
                f"/api/v1/dispatch/machines/{machine}",
                PLANNER,
                json={"operations": _planned(stack, end_ms), "by": "erp"},
            )
            assert sent.status_code == 200, sent.text
            assert sent.json()["version"] == 1
            # second shift's operator logs in at the terminal; a viewer may not
            login = {"action": "login", "operator": "maria"}
            viewer = await call("POST", f"/api/v1/machines/{machine}/operator", "x" * 24, json=login)
            assert viewer.status_code == 401
            logged = await call("POST", f"/api/v1/machines/{machine}/operator", OPERATOR, json=login)
            assert logged.status_code == 200, logged.text
            await stack.drive(end_ms)
            await asyncio.sleep(1.0)
            ops = (await call("GET", f"/api/v1/operations?machine={machine}")).json()
            jobs = stack.scenarios[machine].jobs(end_ms)
            done = [o for o in ops if o["status"] == "complete"]
            assert len(done) >= 3
            for o in done:
                job = next(j for j in jobs if job_number(0, j.number) == o["job"])
                # started by its program, completed by its quantity: exactly when the scenario did
                assert (parse_iso(o["actual_start"]), parse_iso(o["actual_end"])) == (
                    job.start_ms,
                    job.work_end_ms,
                )
                assert (o["made"], o["good"]) == (job.quantity, job.quantity)
                truth = _truth_by_state(stack.scenarios[machine], job.start_ms, job.work_end_ms)
                assert o["seconds_by_state"] == pytest.approx(truth, abs=0.002)
                window = (job.work_end_ms - job.start_ms) / 1000
                assert sum(o["seconds_by_state"].values()) == pytest.approx(window, abs=0.002)
                assert o["seconds_by_reason"].get("setup") == pytest.approx(truth["setup"], abs=0.002)
            # the operator says what the longest unexplained stop was, after the fact
            intervals = (
                await call(
                    "GET",
                    f"/api/v1/machines/{machine}/intervals",
                    params={"start": iso(SECOND_SHIFT_MS), "end": iso(end_ms)},
                )
            ).json()["intervals"]
            stops = [
                i
                for i in intervals
                if i["reason"] in ("unclassified", "micro_stop") and i["job"] and i["end"] is not None
            ]
            longest = max(stops, key=lambda i: i["duration_s"])
            said = await call(
                "POST",
                f"/api/v1/machines/{machine}/reasons",
                OPERATOR,
                json={"stop_at": longest["start"], "reason": "waiting_inspection", "by": "night-lead"},
            )
            assert said.status_code == 200, said.text
            o = next(
                o
                for o in (await call("GET", f"/api/v1/operations?machine={machine}")).json()
                if o["job"] == longest["job"]
            )
            assert o["seconds_by_reason"]["waiting_inspection"] >= longest["duration_s"]
            audit = (await call("GET", f"/api/v1/machines/{machine}/reasons/audit")).json()
            assert [(a["new"], a["by"], a["via"]) for a in audit] == [
                ("waiting_inspection", "night-lead", "api")
            ]
            # shift by shift: every interval names its shift
            assert {i["shift"] for i in intervals} >= {"2026-11-18/second", "2026-11-18/third"}
            operators = [i["operator"] for i in intervals if i["end"] is not None]  # the open one: no context
            assert set(operators[operators.index("maria") :]) == {"maria"}  # from her login on
    finally:
        await stack.close()


async def test_a_high_mix_cell_needs_a_confirmation_only_when_two_operations_match(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Programs and fixtures change constantly: operations start and complete from program changes
    and counts alone; when two queued operations use the same program, the machine asks, and an MQTT
    command from the cell's terminal answers."""
    machines = ("vf2-01", "vf2-02")
    stack = await start_stack(mosquitto, tmp_path, machines, seed=5, origin_ms=SECOND_SHIFT_MS)
    end_ms = SECOND_SHIFT_MS + 6 * HOUR
    root = f"{stack.site.config.enterprise}/{stack.site.config.site}"
    planned = _planned(stack, end_ms)
    jobs = stack.scenarios["vf2-01"].jobs(end_ms)
    twin = {
        **next(o for o in planned if o["job"] == job_number(0, jobs[2].number)),
        "job": "99001",
        "sequence": 99,
    }
    viewer = await recorder(mosquitto, "viewer", f"{root}/#", client_id="cell-terminal")
    terminal = await recorder(mosquitto, "integration", f"{root}/_reply/terminal/#", client_id="terminal-cmd")
    try:
        async with api_for(mosquitto, stack) as call:
            sent = await call(
                "PUT",
                "/api/v1/dispatch/cells/machining/mills/cell-1",
                PLANNER,
                json={"operations": [*planned, twin]},
            )
            assert sent.status_code == 200, sent.text
            drive = asyncio.create_task(stack.drive(end_ms))

            def asks(topic: str, payload: bytes) -> bool:
                return (
                    topic.endswith("/vf2-01/job") and json.loads(payload)["confirmation_needed"] is not None
                )

            [(_, payload)] = await viewer.wait_for(asks, timeout=30)
            asked = json.loads(payload)["confirmation_needed"]
            assert parse_iso(asked["since"]) == jobs[2].start_ms
            assert {c["job"] for c in asked["candidates"]} == {job_number(0, jobs[2].number), "99001"}
            assert terminal.client is not None
            terminal.client.publish(
                f"{root}/_command/operation",
                json.dumps(
                    {
                        "action": "confirm",
                        "machine": "vf2-01",
                        "job": job_number(0, jobs[2].number),
                        "operation": "20",
                        "by": "cell-1 terminal",
                        "id": "c1",
                        "reply_to": f"{root}/_reply/terminal/c1",
                    }
                ).encode(),
                1,
            )
            [(_, reply)] = await terminal.wait_for(lambda t, p: t.endswith("/c1"), timeout=10)
            assert json.loads(reply)["ok"] is True
            await drive
            await asyncio.sleep(1.0)
            ops = {o["job"]: o for o in (await call("GET", "/api/v1/operations")).json()}
            for index, machine in enumerate(machines):
                # the first job's program was loaded before the dispatch list came: no change, no start
                # (docs/jobs.md); the last may still run
                for job in stack.scenarios[machine].jobs(end_ms)[1:-1]:
                    o = ops[job_number(index, job.number)]
                    assert (o["status"], parse_iso(o["actual_start"]), parse_iso(o["actual_end"])) == (
                        "complete",
                        job.start_ms,
                        job.work_end_ms,
                    ), o
                    assert o["made"] == job.quantity
            assert ops["99001"]["status"] == "planned"
            asked_any = [
                p for t, p in viewer.messages if t.endswith("/job") and json.loads(p)["confirmation_needed"]
            ]
            assert {json.loads(p)["machine"] for p in asked_any} == {"vf2-01"}  # asked once, on one machine
            closed = [json.loads(p) for t, p in viewer.messages if t.endswith("/vf2-01/intervals")]
            assert closed
            assert {"job", "operation", "shift", "operator", "reason", "reason_source"} <= set(closed[0])
    finally:
        for rec in (viewer, terminal):
            if rec.client is not None:
                rec.client.stop()
        await stack.close()


async def test_a_quality_hold_blocks_flow_and_the_planner_sees_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The QMS holds one job: that machine's stops during the hold are quality hold, not machine down,
    and the planner sees which machines and jobs a disposition blocked."""
    machines = ("vf2-01", "st20-01")
    stack = await start_stack(mosquitto, tmp_path, machines, seed=8, origin_ms=SECOND_SHIFT_MS)
    end_ms = SECOND_SHIFT_MS + 6 * HOUR
    try:
        async with api_for(mosquitto, stack) as call:
            mine = [o for o in _planned(stack, end_ms) if o["machine"] == "st20-01"]
            sent = await call("PUT", "/api/v1/dispatch/machines/st20-01", PLANNER, json={"operations": mine})
            assert sent.status_code == 200, sent.text
            # the other machine's list comes as the ERP's CSV export
            columns = ("job", "operation", "machine", "program", "quantity", "planned_start", "sequence")
            lines = [",".join(columns)] + [
                ",".join(str(o[c]) for c in columns)
                for o in _planned(stack, end_ms)
                if o["machine"] == "vf2-01"
            ]
            csv_type = {"Content-Type": "text/csv"}
            url = "/api/v1/dispatch/csv?machine=vf2-01"
            bad = "\n".join([*lines, "1,10,vf2-01,O1,lots,,1"])
            refused = await call("POST", url, PLANNER, content=bad, headers=csv_type)
            assert refused.status_code == 422
            assert refused.json()["detail"].startswith(f"dispatch CSV, line {len(lines) + 1}: quantity: ")
            sent = await call("POST", url, PLANNER, content="\n".join(lines), headers=csv_type)
            assert sent.status_code == 200, sent.text
            assert sent.json()["version"] == 2
            forbidden = await call(
                "POST", "/api/v1/holds", OPERATOR, json={"action": "open", "hold": "X", "machine": "vf2-01"}
            )
            assert forbidden.status_code == 403
            second = stack.scenarios["vf2-01"].jobs(end_ms)[1]  # its first job began before the list came
            opened_at = (second.start_ms + second.work_end_ms) // 2
            closed_at = second.work_end_ms + 20 * 60_000
            await stack.drive(opened_at)
            await asyncio.sleep(0.2)
            held_job = stack.context.current("vf2-01")
            assert held_job is not None
            assert held_job.job == job_number(0, second.number)
            opened = await call(
                "POST",
                "/api/v1/holds",
                QUALITY,
                json={
                    "action": "open",
                    "hold": "NCR-2211",
                    "job": held_job.job,
                    "note": "thread gauge fail",
                    "at": iso(opened_at),
                },
            )
            assert opened.status_code == 200, opened.text
            assert opened.json()["machines"] == ["vf2-01"]
            await stack.drive(closed_at)
            while stack.clock.now_ms() < closed_at:  # the last change may come before the close
                await asyncio.sleep(0.02)
            closed = await call(
                "POST",
                "/api/v1/holds",
                QUALITY,
                json={"action": "close", "hold": "NCR-2211", "at": iso(closed_at)},
            )
            assert closed.status_code == 200, closed.text
            await stack.drive(end_ms)
            await asyncio.sleep(1.0)
            intervals = stack.store.intervals("vf2-01", opened_at, closed_at)
            under = [i for i in intervals if i.hold == "NCR-2211"]
            assert under
            assert all(
                i.reason == "quality_hold" and i.source == "hold" for i in under if i.state.value != "running"
            )
            assert all(i.job == held_job.job for i in under)
            # the other machine ran on: none of its stops are quality hold
            assert all(
                i.reason != "quality_hold" for i in stack.store.intervals("st20-01", SECOND_SHIFT_MS, end_ms)
            )
            [hold] = (await call("GET", "/api/v1/holds")).json()
            stopped = sum((i.end_ms - i.start_ms) / 1000 for i in under if i.state.value != "running")
            assert hold["machines_blocked"] == {"vf2-01": stopped}
            assert hold["jobs_blocked"] == [f"{held_job.job}/{held_job.operation}"]
            downtime = (
                await call(
                    "GET", "/api/v1/downtime", params={"start": iso(SECOND_SHIFT_MS), "end": iso(end_ms)}
                )
            ).json()
            held_rows = [r for r in downtime["rows"] if r["reason"] == "quality_hold"]
            assert {r["machine"] for r in held_rows} == {"vf2-01"}
    finally:
        await stack.close()
