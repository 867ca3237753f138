"""The reader's reconnect loop (bridge/reader.py) stops when it is cancelled, also when a protocol
library swallows the cancellation and raises an error of its own instead (asyncua can, while it
connects: a bridge that never stops)."""

from __future__ import annotations

import asyncio

from bridge.reader import MachineReader
from uns.site import load_site
from unscli.cli import DEFAULT_SITE


class Swallowing(MachineReader):
    """A session that turns cancellation into an ordinary error, as some libraries do."""

    sessions = 0

    async def _session(self) -> None:
        self.sessions += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionError("connection closed") from None


async def test_a_cancellation_the_library_swallowed_still_stops_the_reader() -> None:
    machine = load_site(DEFAULT_SITE).machine("vf2-01")
    reader = Swallowing(
        machine,
        on_online=lambda s: None,
        on_samples=lambda s: None,
        on_offline=lambda: None,
        now_ms=lambda: 0,
    )
    task = asyncio.create_task(reader.run())
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done
    assert task.cancelled()
    assert reader.sessions == 1
