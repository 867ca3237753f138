"""Named API tokens: each belongs to a person or a system, with a role and (for operators) the cells
and machines it may act on; issued, listed and revoked with `uns token`, kept in the record as a
hash only, checked on every request (a revoked or expired token is refused at once).

A token reads `uns_<id>_<secret>`: the id finds its row, the secret (32 random bytes) is compared
with the stored SHA-256 in constant time. The secret is random, so a fast hash is enough: nothing can
be guessed from it, and the check costs one indexed read (bench/tokens.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from services.context.record import RecordReader

ROLES = ("viewer", "operator", "planner", "quality", "admin", "display")
DISPLAY = "display"  # a wall display's link: opens the floor view and nothing else (services/api/deps.py)
_FORM = re.compile(r"^uns_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")


class TokenError(ValueError):
    """A token that cannot be issued (bad name, role or scope); the message says which."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the named user (or the role, for a bootstrap token from the environment)."""

    name: str
    role: str
    scope: tuple[str, ...] = ()  # an operator's cells (area/line/cell) and machines; () = everywhere
    token_id: str | None = None  # None: a bootstrap token from the environment

    def may_act_on(self, machine_id: str, cell: str) -> bool:
        """Whether an operator limited to cells or machines may act on this machine."""
        return not self.scope or machine_id in self.scope or cell in self.scope


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(
    store: RecordReader,
    name: str,
    role: str,
    now_ms: int,
    scope: Iterable[str] = (),
    expires_ms: int | None = None,
) -> tuple[str, str]:
    """A new token for `name`: (its id, the token itself, shown this once)."""
    if not NAME.match(name):
        raise TokenError(f"token name {name!r}: 1-64 letters, digits, spaces and ._@- (a person or a system)")
    if role not in ROLES:
        raise TokenError(f"token role {role!r}: expected one of {', '.join(ROLES)}")
    limits = sorted(set(scope))
    if limits and role != "operator":
        raise TokenError(f"only operator tokens are limited to cells or machines, not {role}")
    if expires_ms is not None and expires_ms <= now_ms:
        raise TokenError("a token's expiry must be in the future")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    store.add_token(token_id, _digest(secret), name, role, limits, now_ms, expires_ms)
    return token_id, f"uns_{token_id}_{secret}"


def check(store: RecordReader, token: str, now_ms: int) -> Caller | None:
    """The caller a named token belongs to, or None (unknown, wrong, revoked or expired)."""
    m = _FORM.match(token)
    if m is None:
        return None
    token_id, secret = m.groups()
    row = store.token(token_id)
    if row is None:
        return None
    digest, name, role, scope, expires, revoked = row
    if not hmac.compare_digest(digest, _digest(secret)):
        return None
    if revoked is not None or (expires is not None and expires <= now_ms):
        return None
    return Caller(name, role, tuple(scope), token_id)


def looks_named(token: str) -> bool:
    return token.startswith("uns_")
