"""Bounded request bodies: a body above `max_body_bytes` (UNS_MAX_BODY_BYTES) is answered 413 before
any route sees it. A declared Content-Length above the limit is refused without reading a byte; a
body without one (chunked) is read up to the limit, then refused."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import Problem, answer


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int | None) -> None:
        said = f"is {size} bytes, more than" if size is not None else "is more than"
        detail = (
            f"the request body {said} {self.max_bytes} bytes, this API's limit (UNS_MAX_BODY_BYTES); "
            "send the dispatch list of one machine or cell at a time"
        )
        response = answer(413, detail, [Problem(loc=["body"], msg=detail, type="too_large")])
        response.headers["Connection"] = "close"  # what is left of the body is not read
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        if length is not None and length > self.max_bytes:
            await self._refuse(scope, receive, send, length)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._refuse(scope, receive, send, None)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        given = False

        async def replay() -> Message:
            nonlocal given
            if given:
                return await receive()
            given = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)
