"""Time at the API's edge: RFC 3339 UTC strings with ``Z``, from the schema's nanoseconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["now_ns", "rfc3339", "rfc3339_now"]


def now_ns() -> int:
    return time.time_ns()


def rfc3339(ns: int | None) -> str | None:
    """``2024-01-01T00:00:00.123Z`` (milliseconds), or None for None."""
    if ns is None:
        return None
    stamp = datetime.fromtimestamp(ns // 1_000_000 / 1000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def rfc3339_now() -> str:
    return rfc3339(now_ns())  # type: ignore[return-value]
