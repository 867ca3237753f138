from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.historian.servers import Influx16, VictoriaMetrics


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def influx16(tmp_path: Path) -> Iterator[Influx16]:
    server = Influx16(tmp_path / "influx")
    server.start()
    yield server
    server.stop()
