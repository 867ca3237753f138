"""`make bench`: print the figures (run on an otherwise idle machine)."""

from __future__ import annotations

from bench import (
    api_latency,
    codec,
    context,
    exports,
    historian,
    host,
    load,
    mtconnect,
    oee,
    operations,
    record_writes,
    state_latency,
    store_forward,
    tokens,
)

if __name__ == "__main__":
    codec.report()
    host.report()
    context.report()
    state_latency.report()
    load.report()
    oee.report()
    operations.report()
    historian.report()
    store_forward.report()
    tokens.report()
    exports.report()
    mtconnect.report()
    api_latency.report()
    record_writes.report()
