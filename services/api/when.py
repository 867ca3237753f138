"""`When`: a moment in a request, as the OpenAPI document says it: an ISO-8601 date and time with
its offset (`2026-11-18T14:00:00-05:00`, `...Z`) in the years 1970 to 2999 (the document says so
with a pattern). Pydantic alone would also take a number as Unix seconds (`end=0.5` is 1970), which
the document does not allow and nobody means, and a year 1 or 9999 that the shift calendar cannot
turn into a local day (a 500)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, WithJsonSchema

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
YEARS = (1970, 2999)
PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}"


def _iso_only(value: Any) -> Any:
    if isinstance(value, str) and _ISO.match(value):
        return value
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        raise ValueError("expected an ISO-8601 datetime with offset, e.g. 2026-11-18T14:00:00-05:00")
    return value  # a datetime (from Python), or something pydantic refuses itself


def _in_range(value: datetime) -> datetime:
    if not YEARS[0] <= value.year <= YEARS[1]:  # the year as written, as the pattern says
        raise ValueError(f"expected a year from {YEARS[0]} to {YEARS[1]}")
    return value


When = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_only),
    AfterValidator(_in_range),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": PATTERN}),
]
