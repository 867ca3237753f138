"""(being written: issue #11)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
page = APIRouter()  # the printable review: a page, opened with a link key (deps.page_caller)
