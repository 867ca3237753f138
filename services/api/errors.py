"""The API's one error model: every 4xx and 5xx answer is an `Error` (what, where, why), and the
OpenAPI document declares it, route by route, for the codes each route can answer.

- `status`: the HTTP status again (for logs and proxies that lose it)
- `error`: what went wrong, a short stable word (`invalid_request`, `invalid`, `not_found`,
  `too_large`, ...): `invalid_request` is a request the OpenAPI document already says is wrong (a
  missing field, a wrong type, a datetime without offset); `invalid` one of the right form that is
  refused for what it says (a window backwards or too long, a CSV line, a refused command)
- `detail`: why, in one line that names where (`query.start: Input should have timezone info`)
- `errors`: each problem on its own: `loc` (where: `["query", "start"]`, `["body", "operations", 2,
  "quantity"]`, `["body", "line 3", "quantity"]` for a CSV, `["header", "Authorization"]`), `msg` (why),
  `type` (what kind)

FastAPI's own request validation answers (a list under `detail`, with the request's input echoed) are
turned into this model; so are Starlette's 404 and 405, and a body FastAPI could not parse at all (its
400 is a 422 here, like every other invalid body).
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

logger = logging.getLogger(__name__)

KINDS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}

DESCRIPTIONS = {
    401: "No bearer token, or one this API does not know",
    403: "The token's role may not do this",
    404: "An unknown machine, job, operation, reason or hold",
    409: "A conflict with the record (e.g. a hold already open, nothing to confirm)",
    413: "The request is larger than this API or the broker takes (the limit is in `detail`)",
    415: "The body's declared charset is not one this API can decode",
    422: "An invalid request: each problem with where it is (`errors[].loc`) and why",
    503: "The broker or the context service is not there, or did not answer in time (writes only)",
}


class Problem(BaseModel):
    loc: list[str | int] = Field(
        description="where: the part of the request, then the field", examples=[["query", "start"]]
    )
    msg: str = Field(description="why", examples=["Input should have timezone info"])
    type: str = Field(description="what kind of problem", examples=["timezone_aware"])


class Error(BaseModel):
    """Every error answer of the API (4xx and 5xx)."""

    status: int = Field(description="the HTTP status", examples=[422])
    error: str = Field(description="what went wrong, a short stable word", examples=["invalid"])
    detail: str = Field(
        description="why, in one line that names where",
        examples=["query.start: Input should have timezone info"],
    )
    errors: list[Problem] = Field(description="each problem on its own (at least one)")


class ApiError(HTTPException):
    """An HTTP error that says where (`loc`) and may carry several problems."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        loc: Sequence[str | int] = (),
        *,
        problems: Sequence[Problem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, detail, headers=headers)
        self.problems = list(problems) or [Problem(loc=list(loc), msg=detail, type=kind(status_code))]


def kind(status: int) -> str:
    if status in KINDS:
        return KINDS[status]
    try:
        return http.HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these codes (each with the one error model)."""
    return {code: {"model": Error, "description": DESCRIPTIONS[code]} for code in codes}


WRITE = (403, 404, 409, 413, 422, 503)  # a write: its role, the context service, the limits, the broker
INVALID_REQUEST = "invalid_request"  # the request breaks the OpenAPI document (FastAPI's validation)


def answer(
    status: int,
    detail: str,
    problems: list[Problem],
    headers: Mapping[str, str] | None = None,
    error: str | None = None,
) -> JSONResponse:
    body = Error(status=status, error=error or kind(status), detail=detail, errors=problems)
    return JSONResponse(body.model_dump(mode="json"), status, headers=headers)


def _where(loc: Sequence[Any]) -> list[str | int]:
    return [p if isinstance(p, int) else str(p) for p in loc]


def validation_problems(errors: Sequence[Any]) -> list[Problem]:
    """Pydantic's errors without the input they echo (it may be bytes that are not text)."""
    out = []
    for e in errors:
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        reason = (e.get("ctx") or {}).get("error") if isinstance(e.get("ctx"), dict) else None
        if e.get("type") == "json_invalid" and reason:
            msg = f"{msg}: {reason}"
        out.append(Problem(loc=_where(e.get("loc", ())), msg=msg, type=str(e.get("type", "invalid"))))
    return out


def one_line(problems: Sequence[Problem]) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in pr.loc)}: {pr.msg}" if pr.loc else pr.msg for pr in problems)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status, detail, headers = exc.status_code, str(exc.detail), dict(exc.headers or {})
    if status == 400:  # FastAPI's "There was an error parsing the body" (e.g. JSON that is not UTF-8)
        msg = f"{detail} (a JSON body must be UTF-8)"
        problems = [Problem(loc=["body"], msg=msg, type="body_unparsable")]
        return answer(422, one_line(problems), problems, headers, INVALID_REQUEST)
    if status == 405 and (methods := _methods(request)):
        headers["Allow"] = ", ".join(methods)
    problems = exc.problems if isinstance(exc, ApiError) else [Problem(loc=[], msg=detail, type=kind(status))]
    return answer(status, detail, problems, headers)


def _methods(request: Request) -> list[str]:
    """Every method the OpenAPI document names for this path (FastAPI nests included routers, so
    Starlette's 405 knows the first route's methods only)."""
    spec: dict[str, Any] = request.app.openapi()
    path = request.url.path
    for template, item in spec.get("paths", {}).items():
        regex, _, _ = compile_path(template)
        if regex.match(path):
            found = {m.upper() for m in item}
            return sorted(found | ({"HEAD"} if "GET" in found else set()))
    return []


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = validation_problems(exc.errors())
    return answer(422, one_line(problems), problems, error=INVALID_REQUEST)


async def _failed(request: Request, exc: Exception) -> JSONResponse:
    # Starlette raises it again after this answer: the server logs the traceback
    logger.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    problems = [Problem(loc=[], msg="internal error (logged)", type="internal")]
    return answer(500, "internal error: the API logged it", problems)


def install(app: FastAPI) -> None:
    """Every error answer in the one model."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _failed)


def clean_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """FastAPI adds its own 422 (`HTTPValidationError`, `detail` as a list) to every route with
    parameters; the routes declare their 422 with `Error` where one can happen, so the others go.
    An error is JSON also where the route answers text (/metrics)."""
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            for code, response in list(operation.get("responses", {}).items()):
                refs = [c.get("schema", {}).get("$ref", "") for c in response.get("content", {}).values()]
                if any(r.endswith("/HTTPValidationError") for r in refs):
                    del operation["responses"][code]
                elif any(r.endswith("/Error") for r in refs):
                    response["content"] = {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    }
    schemas = spec.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return spec
