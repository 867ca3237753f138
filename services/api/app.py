"""The FastAPI application. Every route needs a bearer token; writes check the token's role
(admin, viewer, operator, planner, quality: services/api/deps.py). The OpenAPI document
(/openapi.json) and Swagger UI (/docs) are open: they describe the API and hold no data.

Writes are commands to the context service over MQTT (`commands`); without it the API only reads.
Every error answer has one model (services/api/errors.py), declared route by route in the OpenAPI
document; request bodies are bounded (services/api/limits.py)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from services.api import (
    counts,
    dispatch,
    downtime,
    errors,
    exports,
    floor,
    holds,
    losses,
    machines,
    metrics,
    oee,
    pages,
    planner,
    review,
    stops,
)
from services.api import reasons as reason_tree
from services.api.deps import require_token
from services.api.limits import BodyLimit
from services.api.sender import CommandSender
from services.api.settings import ApiSettings
from services.context.reasons import DEFAULT_REASONS, Reason
from services.context.record import RecordReader
from services.context.shifts import ShiftCalendar
from services.oee.engine import Definition
from uns.site import OeeConfig


def create_app(
    settings: ApiSettings,
    store: RecordReader,
    calendar: ShiftCalendar | None = None,
    reasons: dict[str, Reason] | None = None,
    commands: CommandSender | None = None,
    oee_definition: Definition | None = None,
    timezone: str = "UTC",
    clock: Callable[[], int] | None = None,
    reason_window_hours: float | None = None,
) -> FastAPI:
    """`clock`: now in UTC ms (the wall clock; the demo's scaled clock), for reports up to now.
    `reason_window_hours`: the site model's downtime.reason_window_hours (the operator screen lists
    the stops still open to a reason)."""
    hide_link_keys()

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
        docs_url=None,  # served below from the API itself (the plant may have no internet)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.calendar = calendar
    app.state.reasons = reasons if reasons is not None else DEFAULT_REASONS
    app.state.commands = commands
    app.state.oee = oee_definition or Definition.from_config(OeeConfig(), app.state.reasons)
    app.state.timezone = timezone
    app.state.clock = clock or (lambda: int(time.time() * 1000))
    app.state.reason_window_hours = reason_window_hours
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    readers_and_writers = (
        machines,
        floor,
        downtime,
        stops,
        oee,
        losses,
        review,
        planner,
        exports,
        reason_tree,
        counts,
        dispatch,
        holds,
        metrics,
    )
    for module in readers_and_writers:
        app.include_router(
            module.router, dependencies=[Depends(require_token)], responses=errors.responses(401)
        )
    # pages a person opens in a browser take their key from the link (deps.page_caller)
    app.include_router(pages.router)
    _swagger_ui(app)
    app.include_router(review.page)

    made = app.openapi

    def document() -> dict[str, Any]:
        """The OpenAPI document with the one error model only (services/api/errors.py)."""
        if app.openapi_schema is None:
            app.openapi_schema = errors.clean_openapi(made())
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]

    return app


class _LinkKeys(logging.Filter):
    """Pages take their token in the link (`?key=`): the access log shows `key=...` instead."""

    _KEY = re.compile(r"(?<=[?&]key=)[^&\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._KEY.sub("...", a) if isinstance(a, str) else a for a in record.args)
        return True


def hide_link_keys() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _LinkKeys) for f in access.filters):
        access.addFilter(_LinkKeys())


def _swagger_ui(app: FastAPI) -> None:
    """Swagger UI at /docs with its scripts from the API itself: FastAPI's own page loads them from a
    CDN, which a plant network often cannot reach. The files are Swagger UI 5 as fastapi-offline
    packages them (OpenAPI 3.1, which this document is, needs 5). Open without a token: the page and
    the document describe the API and hold no data; "Authorize" takes a token for trying calls."""
    static = importlib.resources.files("fastapi_offline") / "static"
    app.mount("/docs/static", StaticFiles(directory=str(static)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title}: Swagger UI",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon.png",
        )
