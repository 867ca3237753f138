"""(being written: issue #11) Pages a person opens in a browser: they take no bearer token."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
