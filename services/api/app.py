"""The FastAPI application. Every route needs the bearer token; OpenAPI is at /openapi.json."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI

from services.api import downtime, machines, metrics
from services.api.deps import require_token
from services.api.settings import ApiSettings
from services.context.reasons import DEFAULT_REASONS, Reason
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar


def create_app(
    settings: ApiSettings,
    store: RecordStore,
    calendar: ShiftCalendar | None = None,
    reasons: dict[str, Reason] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Shop-floor UNS API",
        version="1",
        summary="Machine states and intervals from the shop-floor record",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the token like everything else
    )
    app.state.settings = settings
    app.state.store = store
    app.state.calendar = calendar
    app.state.reasons = reasons if reasons is not None else DEFAULT_REASONS
    app.include_router(machines.router, dependencies=[Depends(require_token)])
    app.include_router(downtime.router, dependencies=[Depends(require_token)])
    app.include_router(metrics.router, dependencies=[Depends(require_token)])

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    def openapi() -> dict[str, Any]:
        return app.openapi()

    return app
