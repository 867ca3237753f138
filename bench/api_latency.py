"""API latency under 8 concurrent clients, against a real uvicorn on a free port, over the record of
bench/oee.py (50 machines x 30 days: 483,000 intervals, 240,000 part counts, 6,000 operations) with
its shift calendar: p50 and p95 of

- the live machines list (`GET /api/v1/machines`; goal: p95 under 100 ms),
- 30 days of downtime (`GET /api/v1/downtime`; goal: p95 under 1 s): all clients the same window
  (wall displays, one dashboard on several screens: identical requests in flight share one
  computation, services/api/coalesce.py), and each request a window of its own (nothing shared),
- the morning review of one production day (`GET /api/v1/review`: a review is of one day),
- 30 days of utilisation by machine and shift (`GET /api/v1/planner/utilisation`), the planner's
  30-day report over the whole record (goal: p95 under 1 s).

Each endpoint on its own: 8 threads with an httpx client each ask it one after another until the
answers asked for came (the first of each thread, the warm-up, is not counted); and one client
alone, for what one request costs. The API runs in a process of its own (as `uns api` does), the
clients in threads of this one."""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn
from pydantic import SecretStr

from bench.oee import CYCLE_MS, DAYS, MACHINES, PARTS, SHIFTS, T0, build
from services.api.app import create_app
from services.api.settings import ApiSettings
from services.context.jobs import ACTIVE, COMPLETE, PLANNED, Operation
from services.context.reasons import DEFAULT_REASONS
from services.context.record import RecordStore
from services.context.shifts import calendar_for
from services.oee.engine import Definition
from uns.broker import free_port
from uns.clock import iso
from uns.site import OeeConfig, parse_site

CLIENTS = 8
TOKEN = "b" * 32
END = T0 + DAYS * 86_400_000


def plan(store: RecordStore) -> None:
    """bench/oee.py dispatches every job as planned: here they ran as the record says (a job of 40
    parts every 6 h), each planned for 6 h less 0, 10 or 20 min (two in three end late); the last
    one is running at the end and the next one waits."""
    jobs = DAYS * 86_400_000 // CYCLE_MS // 40
    for n in range(MACHINES):
        ops = []
        for j in range(jobs + 1):
            start = T0 + j * 40 * CYCLE_MS
            end = start + 40 * CYCLE_MS
            status = COMPLETE if j < jobs - 1 else ACTIVE if j == jobs - 1 else PLANNED
            actual = (start, end if status == COMPLETE else None) if status != PLANNED else (None, None)
            planned_end = end - (j % 3) * 600_000
            ops.append(
                Operation(
                    f"J{n}-{j}",
                    "10",
                    f"m{n}",
                    f"O{j % PARTS}",
                    40,
                    j,
                    f"P-{n}-{j % PARTS}",
                    None,
                    start,
                    planned_end,
                    status,
                    *actual,
                )
            )
        store.save_dispatch(f"m{n}", "bench", "bench", T0, "{}", ops, [])


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


Params = dict[str, str] | Callable[[int], dict[str, str]]


def _load(base: str, path: str, params: Params, requests: int, clients: int) -> list[float]:
    """Seconds of each answer, `clients` asking at once (`params` of the n-th request: `params(n)`)."""
    timings: list[float] = []
    lock = threading.Lock()
    left = [requests]

    def of(n: int) -> dict[str, str]:
        return params(n) if callable(params) else params

    def client() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
            c.get(path, params=of(-1)).raise_for_status()  # warm-up
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                    n = left[0]
                started = time.perf_counter()
                c.get(path, params=of(n)).raise_for_status()
                elapsed = time.perf_counter() - started
                with lock:
                    timings.append(elapsed)

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return timings


def run(requests: dict[str, int] | None = None) -> dict[str, tuple[float, float, int, float]]:
    """(p50 s, p95 s, answers) of each endpoint with `CLIENTS` at once, and its p50 with one client."""
    site = parse_site(SHIFTS)
    assert site.config.shifts is not None
    calendar = calendar_for(site.config.shifts, site.config.timezone)
    asks: dict[str, tuple[str, Params]] = {
        "GET /api/v1/machines (the live list)": ("/api/v1/machines", {}),
        "GET /api/v1/downtime, 30 days": (
            "/api/v1/downtime",
            {"start": iso(END - 30 * 86_400_000), "end": iso(END)},
        ),
        "GET /api/v1/downtime, 30 days, a window of its own each": (
            "/api/v1/downtime",
            lambda n: {"start": iso(END - 30 * 86_400_000 - n * 60_000), "end": iso(END - n * 60_000)},
        ),
        "GET /api/v1/review, one day": ("/api/v1/review", {}),
        "GET /api/v1/planner/utilisation, 30 days": (
            "/api/v1/planner/utilisation",
            {"start": iso(END - 30 * 86_400_000), "end": iso(END)},
        ),
    }
    counts = requests or {name: 400 if "machines" in name else 48 for name in asks}
    out: dict[str, tuple[float, float, int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "record.db"
        store = RecordStore(path)
        build(store, calendar)
        plan(store)
        store.close()
        port = free_port()
        # the API in a process of its own, as `uns api` runs: the clients here do not share its GIL
        server = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(path, port), name="bench[api].uvicorn", daemon=True
        )
        server.start()
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if not server.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the API did not start")
                try:
                    httpx.get(f"{base}/docs", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            for name, (path_, params) in asks.items():
                alone = statistics.median(_load(base, path_, params, 5, 1))
                timings = _load(base, path_, params, counts[name], CLIENTS)
                out[name] = (statistics.median(timings), _percentile(timings, 95), len(timings), alone)
        finally:
            server.terminate()
            server.join(timeout=30)
    return out


def _serve(path: Path, port: int) -> None:
    site = parse_site(SHIFTS)
    assert site.config.shifts is not None
    store = RecordStore(path)
    app = create_app(
        ApiSettings(api_token=SecretStr(TOKEN)),
        store,
        calendar_for(site.config.shifts, site.config.timezone),
        oee_definition=Definition.from_config(OeeConfig(), DEFAULT_REASONS),
        timezone=site.config.timezone,
        clock=lambda: END,
    )
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")).run()


def report() -> None:
    for name, (p50, p95, n, alone) in run().items():
        print(
            f"API latency, {MACHINES} machines x {DAYS} days, {CLIENTS} clients at once, {name}:"
            f" p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms ({n} answers); one client alone:"
            f" p50 {alone * 1000:.0f} ms"
        )


if __name__ == "__main__":
    report()
