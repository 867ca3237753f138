"""The FastAPI application. Every route needs a bearer token; writes check the token's role
(admin, viewer, operator, planner, quality: services/api/deps.py). OpenAPI is at /openapi.json.

Writes are commands to the context service over MQTT (`commands`); without it the API only reads.
Every error answer has one model (services/api/errors.py), declared route by route in the OpenAPI
document; request bodies are bounded (services/api/limits.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI

from services.api import counts, dispatch, downtime, errors, floor, holds, losses, machines, metrics, oee
from services.api import reasons as reason_tree
from services.api.deps import require_token
from services.api.limits import BodyLimit
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.reasons import DEFAULT_REASONS, Reason
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar
from services.oee.engine import Definition
from uns.site import OeeConfig


def create_app(
    settings: ApiSettings,
    store: RecordStore,
    calendar: ShiftCalendar | None = None,
    reasons: dict[str, Reason] | None = None,
    commands: CommandSender | None = None,
    oee_definition: Definition | None = None,
    timezone: str = "UTC",
    clock: Callable[[], int] | None = None,
) -> FastAPI:
    """`clock`: now in UTC ms (the wall clock; the demo's scaled clock), for reports up to now."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if commands is not None:
            commands.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            if commands is not None:
                commands.stop()

    app = FastAPI(
        lifespan=lifespan,
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
    app.state.commands = commands
    app.state.oee = oee_definition or Definition.from_config(OeeConfig(), app.state.reasons)
    app.state.timezone = timezone
    app.state.clock = clock or (lambda: int(time.time() * 1000))
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    for module in (machines, floor, downtime, oee, losses, reason_tree, counts, dispatch, holds, metrics):
        app.include_router(
            module.router, dependencies=[Depends(require_token)], responses=errors.responses(401)
        )

    made = app.openapi

    def document() -> dict[str, Any]:
        """The OpenAPI document with the one error model only (services/api/errors.py)."""
        if app.openapi_schema is None:
            app.openapi_schema = errors.clean_openapi(made())
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    def openapi() -> dict[str, Any]:
        return app.openapi()

    return app
