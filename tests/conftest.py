"""Shared fixtures: a real Mosquitto with the project's own config, ACL and fresh passwords."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import OPEN
from uns.broker import Mosquitto


@pytest.fixture(autouse=True)
def _stop_mqtt_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto", "acme")
    broker.start()
    yield broker
    broker.stop()
