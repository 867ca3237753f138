"""`/api/v1/reasons`: the site's downtime taxonomy as a tree (what operators choose from)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from services.api.deps import Reasons

router = APIRouter(prefix="/api/v1/reasons", tags=["downtime"])


class ReasonOut(BaseModel):
    code: str
    name: str
    planned: bool
    loss: str
    children: list[ReasonOut]


@router.get("", response_model=list[ReasonOut], summary="The downtime reason tree")
def reasons(taxonomy: Reasons) -> list[ReasonOut]:
    def node(code: str) -> ReasonOut:
        r = taxonomy[code]
        kids = [c for c, k in taxonomy.items() if k.parent == code]
        return ReasonOut(
            code=r.code, name=r.name, planned=r.planned, loss=r.loss.value, children=[node(c) for c in kids]
        )

    return [node(code) for code, r in taxonomy.items() if r.parent is None]
