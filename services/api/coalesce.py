"""Identical report requests that arrive while the same report is being computed share that
computation (request coalescing): eight wall displays, or a Grafana dashboard opened on eight
screens, asking for the same 30 days cost the record one read, not eight.

A request shares only with one that is still running: same path, same query string, same caller
(its token or link key) and the record unchanged since (SQLite's `data_version`: another process,
the context service, committed nothing; where both share one connection, as in `uns demo`, that
cannot be seen, and the one computation in flight is the bound). The answer it gets was computed for
a moment at most one computation earlier than its own; nothing is kept after the computation ends."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, cast

from fastapi import Request, Response

from services.context.record import RecordReader

P = ParamSpec("P")
_Key = tuple[Any, ...]


class Coalescer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[_Key, Future[tuple[bytes, int, str | None, dict[str, str]]]] = {}
        self.shared = 0  # answers given from another request's computation

    def run(self, key: _Key, compute: Callable[[], Response]) -> Response:
        with self._lock:
            running = self._running.get(key)
            if running is None:
                running = self._running[key] = Future()
                owner = True
            else:
                self.shared += 1
                owner = False
        if owner:
            try:
                answer = compute()
                kept = (bytes(answer.body), answer.status_code, answer.media_type, _headers(answer))
            except BaseException as e:
                running.set_exception(e)
                raise
            else:
                running.set_result(kept)
            finally:
                with self._lock:
                    del self._running[key]
            return answer
        body, status, media_type, headers = running.result()
        return Response(body, status_code=status, media_type=media_type, headers=headers)


def _headers(answer: Response) -> dict[str, str]:
    """The answer's own headers, but those a Response of the same body sets itself."""
    return {k: v for k, v in answer.headers.items() if k.lower() not in ("content-length", "content-type")}


COALESCER = Coalescer()


def shared(route: Callable[P, Response]) -> Callable[P, Response]:
    """A report route (called with `request` and `store` by keyword, as FastAPI does) whose
    identical concurrent requests share one computation."""

    @functools.wraps(route)
    def run(*args: P.args, **kwargs: P.kwargs) -> Response:
        request = kwargs["request"]
        store = cast(RecordReader, kwargs["store"])  # (the route's own parameter)
        assert isinstance(request, Request)
        key = (
            id(store),
            store.data_version(),
            request.url.path,
            request.url.query,
            request.headers.get("authorization"),
        )
        return COALESCER.run(key, lambda: route(*args, **kwargs))

    return run
