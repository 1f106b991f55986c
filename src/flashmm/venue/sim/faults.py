"""The faults the simulator injects on demand, as typed requests.

Each fault is a tagged Struct whose fields are its parameters; :func:`parse_fault`
turns a name and a parameter mapping (from the admin endpoint or a scheduled entry in
the configuration) into one, or raises :class:`FaultError` naming what is wrong. The
exchange applies it, logs it and counts it, so tests can assert the engine's reaction.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

__all__ = [
    "FAULT_NAMES",
    "DelayFrames",
    "DropConnections",
    "Fault",
    "FaultError",
    "HaltMarket",
    "RateLimitBurst",
    "RejectOrders",
    "SendCrossedFrame",
    "SendMalformedFrame",
    "SkipSequence",
    "StallFeed",
    "parse_fault",
]


class FaultError(ValueError):
    """An unknown fault or parameters it does not take."""


class _Fault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DropConnections(_Fault, tag="drop_connections"):
    """Close client connections abruptly: market data, execution streams, or both."""

    target: Literal["market_data", "stream", "all"] = "all"


class SkipSequence(_Fault, tag="skip_sequence"):
    """The market's next update carries a sequence ``count`` higher than it should."""

    market_id: str
    count: int = 1


class SendCrossedFrame(_Fault, tag="crossed_frame"):
    """Send one delta whose best bid is above the best ask (the venue's book is unchanged)."""

    market_id: str


class SendMalformedFrame(_Fault, tag="malformed_frame"):
    """Send one frame that is not valid JSON to every market-data client."""


class DelayFrames(_Fault, tag="delay_frames"):
    """Deliver market data ``delay_ms`` late for ``duration_s`` (0: until a delay of 0)."""

    delay_ms: float
    duration_s: float = 0.0


class StallFeed(_Fault, tag="stall_feed"):
    """Send no market data for ``duration_s`` with sockets open, then the backlog."""

    duration_s: float


class RateLimitBurst(_Fault, tag="rate_limit_burst"):
    """Answer the next ``count`` order-entry requests with 429 and ``Retry-After``."""

    count: int
    retry_after_s: float = 1.0


class RejectOrders(_Fault, tag="reject_orders"):
    """The matcher rejects the next ``count`` valid orders (``order_rejected`` on the stream)."""

    count: int
    reason: str = "rejected by the venue"


class HaltMarket(_Fault, tag="halt_market"):
    """Set a market's status; ``closed`` cancels its resting orders, ``open`` resumes it."""

    market_id: str
    status: Literal["halted", "closed", "open"] = "halted"


Fault = (
    DropConnections
    | SkipSequence
    | SendCrossedFrame
    | SendMalformedFrame
    | DelayFrames
    | StallFeed
    | RateLimitBurst
    | RejectOrders
    | HaltMarket
)

_TYPES: dict[str, type[_Fault]] = {
    t.__struct_config__.tag: t  # type: ignore[misc]
    for t in get_args(Fault)
}
FAULT_NAMES: tuple[str, ...] = tuple(_TYPES)


def parse_fault(name: str, params: dict[str, Any] | None = None) -> Fault:
    """The fault ``name`` with ``params``; :class:`FaultError` if either is wrong."""
    kind = _TYPES.get(name)
    if kind is None:
        raise FaultError(f"unknown fault {name!r}; faults: {', '.join(FAULT_NAMES)}")
    try:
        fault = msgspec.convert(params or {}, kind)
    except msgspec.ValidationError as exc:
        raise FaultError(f"fault {name}: {exc}") from None
    for field in ("count", "delay_ms", "duration_s", "retry_after_s"):
        value = getattr(fault, field, None)
        if value is not None and not value >= 0:
            raise FaultError(f"fault {name}: {field} must be >= 0, got {value!r}")
    if getattr(fault, "count", 1) == 0:
        raise FaultError(f"fault {name}: count must be >= 1")
    return fault  # type: ignore[return-value]
