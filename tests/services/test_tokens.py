"""Named API tokens (services/api/tokens.py, `uns token`): issued to a person or a system with a role,
kept in the record as a hash only, refused at once when revoked or expired; the environment's tokens
still work, for bootstrap."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api import tokens
from services.api.app import create_app
from services.api.settings import ApiSettings
from services.context.record import RecordStore

NOW = int(time.time() * 1000)


@pytest.fixture
def store(make_record: Callable[..., RecordStore], tmp_path: Path) -> RecordStore:
    return make_record("record")


def client(store: RecordStore) -> TestClient:
    return TestClient(create_app(ApiSettings(api_token=SecretStr("b" * 24)), store))


def get(c: TestClient, token: str) -> int:
    return c.get("/api/v1/machines", headers={"Authorization": f"Bearer {token}"}).status_code


def test_a_named_token_is_checked_by_its_hash_and_refused_once_revoked_or_expired(
    store: RecordStore, tmp_path: Path
) -> None:
    ann_id, ann = tokens.issue(store, "Ann Smith", "operator", NOW, ["machining/mills/cell-1"])
    _, short = tokens.issue(store, "night-kiosk", "viewer", NOW, expires_ms=NOW + 1)
    with client(store) as c:
        assert get(c, ann) == 200
        assert get(c, ann[:-1] + ("A" if ann[-1] != "A" else "B")) == 401  # one character off
        assert get(c, "uns_000000000000_" + "x" * 43) == 401
        time.sleep(0.01)
        assert get(c, short) == 401  # expired
        assert get(c, "b" * 24) == 200  # the bootstrap token from the environment
        assert store.revoke_tokens("Ann Smith", NOW) == 1
        assert get(c, ann) == 401  # revoked: refused at once, no restart
    with store._use() as db:  # what the record keeps: on SQLite and on PostgreSQL
        kept = db.execute("SELECT digest FROM api_token WHERE token_id = ?", (ann_id,)).fetchone()[0]
    assert ann.split("_", 2)[2] not in kept
    assert len(kept) == 64


def test_a_caller_knows_who_it_is_and_where_it_may_act() -> None:
    caller = tokens.Caller("Ann Smith", "operator", ("machining/mills/cell-1", "lynx-01"))
    assert caller.may_act_on("vf2-01", "machining/mills/cell-1")
    assert caller.may_act_on("lynx-01", "turning/lathes/cell-3")
    assert not caller.may_act_on("st20-01", "turning/lathes/cell-3")
    assert tokens.Caller("lead", "admin").may_act_on("st20-01", "turning/lathes/cell-3")


@pytest.mark.parametrize(
    ("name", "role", "scope", "message"),
    [
        ("", "operator", [], "token name ''"),
        ("ann", "boss", [], "token role 'boss'"),
        ("erp", "planner", ["machining/mills/cell-1"], "only operator tokens are limited"),
    ],
)
def test_bad_tokens_are_not_issued(
    store: RecordStore, name: str, role: str, scope: list[str], message: str
) -> None:
    with pytest.raises(tokens.TokenError, match=message):
        tokens.issue(store, name, role, NOW, scope)


def test_uns_token_issues_lists_and_revokes(tmp_path: Path) -> None:
    record = tmp_path / "record.db"

    def uns(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "unscli.cli", "token", *args, "--record", str(record)],
            capture_output=True,
            text=True,
            check=False,
        )

    issued = uns("issue", "Ann Smith", "--role", "operator", "--cell", "machining/mills/cell-1")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.splitlines()[1]
    assert token.startswith("uns_")
    links = issued.stdout.splitlines()[2:]  # her cell's machines' operator screens (docs/floor-view.md)
    assert links == [
        f"operator screen for {m}: http://127.0.0.1:8000/operator/{m}?key={token}"
        for m in ("vf2-01", "vf2-02")
    ]
    wall = uns("issue", "hall TV", "--role", "display", "--api-url", "http://uns.plant:8000/")
    assert (
        wall.stdout.splitlines()[2]
        == f"floor view: http://uns.plant:8000/floor?key={wall.stdout.splitlines()[1]}"
    )
    listed = uns("list")
    assert "Ann Smith" in listed.stdout
    assert "machining/mills/cell-1" in listed.stdout
    secret = token.split("_", 2)[2]  # uns_<id>_<secret>; the secret may itself hold "_"
    assert len(secret) == 43
    assert secret not in listed.stdout  # the secret is shown once, at issue
    bad = uns("issue", "Bob", "--role", "operator", "--cell", "machining/mills/cell-9")
    assert bad.returncode == 2
    assert "not in the site model" in bad.stderr
    assert "machining/mills/cell-9" in bad.stderr
    assert uns("revoke", "Ann Smith").returncode == 0
    assert "revoked" in uns("list").stdout
    assert uns("revoke", "nobody").returncode == 2
