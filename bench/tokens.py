"""The cost of checking a named API token with 1,000 issued: `tokens.check` alone (one indexed read
of the record and a SHA-256), and a whole `GET /api/v1/machines` with a named token against one with
the bootstrap token from the environment."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api import tokens
from services.api.app import create_app
from services.api.settings import ApiSettings
from services.context.record import RecordStore

ISSUED = 1_000
CHECKS = 20_000
REQUESTS = 1_000


def report() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = RecordStore(Path(folder) / "record.db")
        now = int(time.time() * 1000)
        issued = [tokens.issue(store, f"user-{n}", "operator", now)[1] for n in range(ISSUED)]
        started = time.perf_counter()
        for n in range(CHECKS):
            assert tokens.check(store, issued[n % ISSUED], now) is not None
        check_us = (time.perf_counter() - started) / CHECKS * 1e6
        bootstrap = "b" * 24
        with TestClient(create_app(ApiSettings(api_token=SecretStr(bootstrap)), store)) as client:
            per_request = {}
            for label, token in (("bootstrap", bootstrap), ("named", issued[ISSUED // 2])):
                headers = {"Authorization": f"Bearer {token}"}
                client.get("/api/v1/machines", headers=headers)
                started = time.perf_counter()
                for _ in range(REQUESTS):
                    client.get("/api/v1/machines", headers=headers)
                per_request[label] = (time.perf_counter() - started) / REQUESTS * 1e6
        store.close()
    print(
        f"tokens: check with {ISSUED:,} issued {check_us:.1f} us; GET /api/v1/machines"
        f" {per_request['named']:.0f} us with a named token, {per_request['bootstrap']:.0f} us with"
        " the bootstrap one"
    )


if __name__ == "__main__":
    report()
