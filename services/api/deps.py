"""Dependencies shared by the routers: the record store and the bearer-token check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.settings import ApiSettings
from services.context.reasons import Reason
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar

_bearer = HTTPBearer(auto_error=False, description="the token `uns demo` prints, or UNS_API_TOKEN")


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_store(request: Request) -> RecordStore:
    store: RecordStore = request.app.state.store
    return store


def require_token(
    settings: Annotated[ApiSettings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if credentials is None or not hmac.compare_digest(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
            headers={"WWW-Authenticate": "Bearer"},
        )


def get_calendar(request: Request) -> ShiftCalendar | None:
    calendar: ShiftCalendar | None = request.app.state.calendar
    return calendar


def get_reasons(request: Request) -> dict[str, Reason]:
    reasons: dict[str, Reason] = request.app.state.reasons
    return reasons


Store = Annotated[RecordStore, Depends(get_store)]
Reasons = Annotated[dict[str, Reason], Depends(get_reasons)]
Calendar = Annotated[ShiftCalendar | None, Depends(get_calendar)]
Settings = Annotated[ApiSettings, Depends(get_settings)]
