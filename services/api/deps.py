"""Dependencies shared by the routers: the record store and the bearer-token check."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api import tokens
from services.api.errors import ApiError
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.reasons import Reason
from services.context.record import RecordReader
from services.context.shifts import ShiftCalendar
from services.oee.engine import Definition

_bearer = HTTPBearer(auto_error=False, description="the token `uns demo` prints, or UNS_API_TOKEN")


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_store(request: Request) -> RecordReader:
    store: RecordReader = request.app.state.store
    return store


def require_token(
    request: Request,
    settings: Annotated[ApiSettings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's role, from its bearer token (every role may read); 401 without a known token.
    A named token (`uns token issue`) names its user; the tokens from the environment (UNS_API_TOKEN,
    UNS_API_TOKEN_<ROLE>) are for bootstrap and name only their role. The caller is kept on the
    request (`get_caller`)."""
    given = credentials.credentials if credentials is not None else ""
    caller = _caller(request, settings, given)
    if credentials is None or caller is None:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
            ["header", "Authorization"],
            headers={"WWW-Authenticate": "Bearer"},
        )
    if caller.role == tokens.DISPLAY:
        raise ApiError(
            status.HTTP_403_FORBIDDEN,
            "a display link opens the floor view only (/floor?key=...), not the API",
            ["header", "Authorization"],
        )
    request.state.caller = caller
    return caller.role


def _caller(request: Request, settings: ApiSettings, given: str) -> tokens.Caller | None:
    caller = None
    if tokens.looks_named(given):
        caller = tokens.check(request.app.state.store, given, int(time.time() * 1000))
    else:
        role = None
        for name, token in settings.tokens().items():  # compare with every token: no early exit
            if hmac.compare_digest(given.encode(), token.get_secret_value().encode()) and role is None:
                role = name
        caller = tokens.Caller(f"{role} token", role) if role is not None else None
    return caller


def page_caller(
    request: Request,
    settings: Annotated[ApiSettings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    key: Annotated[
        str | None,
        Query(description="a display link's key or any API token (a browser cannot send a header)"),
    ] = None,
) -> tokens.Caller:
    """Who opens a page (the floor view, the operator screen, the printable review): the `key` in
    the page's link (a display token from `uns token issue --role display`, or any named or bootstrap
    token), else a bearer header. 401 naming `key` without a valid one."""
    given = key if key is not None else (credentials.credentials if credentials is not None else "")
    caller = _caller(request, settings, given) if given else None
    if caller is None:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "missing, malformed, revoked or expired link key: open the link `uns token issue --role "
            "display` printed, or add ?key=<token>",
            ["query", "key"],
        )
    request.state.caller = caller
    return caller


def get_caller(request: Request, role: Annotated[str, Depends(require_token)]) -> tokens.Caller:
    """Who is asking (after the token check)."""
    caller: tokens.Caller = request.state.caller
    return caller


def allow(*roles: str) -> Callable[[str], str]:
    """A dependency that lets these roles (and admin) through, and answers 403 to the others."""

    def check(role: Annotated[str, Depends(require_token)]) -> str:
        if role != "admin" and role not in roles:
            raise ApiError(
                status.HTTP_403_FORBIDDEN,
                f"the {role} role may not do this (allowed: admin, {', '.join(roles)})",
                ["header", "Authorization"],
            )
        return role

    return check


def author(caller: tokens.Caller, given: str | None) -> str:
    """Who the record names for a write. A named token's user is the author: the body's `by` cannot
    change that, only add who it was for (a system's token entering for a person:
    `J. Ortiz (token mes)`). A bootstrap token names its role unless the body names a person."""
    if caller.token_id is None:
        return given or f"api:{caller.role}"
    if given is None or given == caller.name:
        return caller.name
    suffix = f" (token {caller.name})"
    return given[: max(1, 64 - len(suffix))] + suffix


def acting_on(store: RecordReader, caller: tokens.Caller, machine_id: str) -> None:
    """403 when an operator's token is limited to cells or machines and this machine is not one of
    them. An unknown machine passes here: the context service answers 404 for it."""
    if not caller.scope:
        return
    current = store.current_state(machine_id)
    if current is None:
        return
    cell = "/".join(current.path.split("/")[2:5])  # area/line/cell of enterprise/site/area/line/cell/...
    if not caller.may_act_on(machine_id, cell):
        raise ApiError(
            status.HTTP_403_FORBIDDEN,
            f"{caller.name} may act on {', '.join(caller.scope)} only, not {machine_id} (cell {cell})",
            ["path", "machine_id"],
        )


def get_commands(request: Request) -> CommandSender:
    sender: CommandSender | None = request.app.state.commands
    if sender is None:
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE, "this API is not connected to the broker: it only reads"
        )
    return sender


def get_calendar(request: Request) -> ShiftCalendar | None:
    calendar: ShiftCalendar | None = request.app.state.calendar
    return calendar


def get_reasons(request: Request) -> dict[str, Reason]:
    reasons: dict[str, Reason] = request.app.state.reasons
    return reasons


def get_oee(request: Request) -> Definition:
    definition: Definition = request.app.state.oee
    return definition


Store = Annotated[RecordReader, Depends(get_store)]
OeeDefinition = Annotated[Definition, Depends(get_oee)]
Reasons = Annotated[dict[str, Reason], Depends(get_reasons)]
Calendar = Annotated[ShiftCalendar | None, Depends(get_calendar)]
Settings = Annotated[ApiSettings, Depends(get_settings)]
Commands = Annotated[CommandSender, Depends(get_commands)]
Who = Annotated[tokens.Caller, Depends(get_caller)]
PageCaller = Annotated[tokens.Caller, Depends(page_caller)]
