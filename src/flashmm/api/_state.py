"""What the sidecar reads of the engine's state in Redis, decoded with the shared schema.

The engine is *available* when its state is present, written by this schema version, and
its heartbeat is at most ``state.heartbeat_timeout_s`` old. Nothing here writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from flashmm.api._clock import now_ns
from flashmm.api._errors import ApiError
from flashmm.engine.records import LIVE_STATES
from flashmm.state.keys import Keys, LiveChannel
from flashmm.state.schema import (
    EngineState,
    Event,
    FillEvent,
    MarketSnapshot,
    OrderEvent,
    SchemaMismatch,
    decode_engine_state,
    decode_event,
    decode_snapshot,
)

__all__ = [
    "EngineView",
    "HistoryEntry",
    "OrderFilter",
    "StateReader",
    "order_status",
    "require_available",
    "unavailable",
]

log = logging.getLogger("flashmm.api")

OrderFilter = Literal["active", "filled", "cancelled", "rejected"]
_PAGE = 500
_MAX_ORDER_SCAN = 50_000
"""Order history entries read at most to find the live orders (newest first)."""


def order_status(engine_state: str) -> OrderFilter:
    """The API's four order statuses from the engine's eight order states."""
    if engine_state in LIVE_STATES:  # OrderState is a StrEnum: its names match
        return "active"
    if engine_state == "filled":
        return "filled"
    if engine_state == "rejected":
        return "rejected"
    return "cancelled"  # cancelled, and expired (never reached the venue)


class EngineView(msgspec.Struct, frozen=True, kw_only=True):
    """The engine state as read now, and whether it counts as available."""

    state: EngineState | None
    available: bool
    reason: str
    """Why the engine is unavailable (empty when it is available)."""
    heartbeat_age_s: float | None


class HistoryEntry(msgspec.Struct, frozen=True):
    stream_id: str
    seq: int
    event: Event


def unavailable(view: EngineView) -> ApiError:
    """503 ``ENGINE_UNAVAILABLE`` saying why the engine of ``view`` is unavailable."""
    details: dict[str, object] = {}
    if view.heartbeat_age_s is not None:
        details["heartbeat_age_s"] = round(view.heartbeat_age_s, 3)
    return ApiError(503, "ENGINE_UNAVAILABLE", view.reason, details)


def require_available(view: EngineView) -> EngineState:
    """The state of ``view``; :func:`unavailable` raised if the engine is unavailable."""
    if not view.available or view.state is None:
        raise unavailable(view)
    return view.state


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StateReader:
    """Reads the engine's latest state, snapshots and histories."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, heartbeat_timeout_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.heartbeat_timeout_s = heartbeat_timeout_s

    async def read_raw(self, markets: list[str]) -> tuple[bytes | None, ...]:
        """The engine state and each market's snapshot as stored, in one round trip.

        One transaction, so the state and snapshots come from the same engine flush.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.engine)
            if markets:
                pipe.mget([self.keys.snapshot(s) for s in markets])
            replies = await pipe.execute()
        return (replies[0], *(replies[1] if markets else ()))

    async def read_raw_snapshots(self, markets: list[str]) -> tuple[bytes | None, ...]:
        if not markets:
            return ()
        return tuple(await self.redis.mget([self.keys.snapshot(s) for s in markets]))

    @staticmethod
    def decode_engine(raw: bytes | None) -> tuple[EngineState | None, str]:
        """The stored engine state, or None and why there is none usable."""
        if raw is None:
            return None, (
                "no engine has published its state: is `flashmm run` started with the "
                "same [state] settings?"
            )
        try:
            return decode_engine_state(raw), ""
        except SchemaMismatch as exc:
            return None, str(exc)
        except msgspec.DecodeError as exc:
            return None, f"the engine state in Redis cannot be read: {exc}"

    def view(self, state: EngineState | None, problem: str) -> EngineView:
        """``state`` (or ``problem``, why there is none) judged as of now."""
        if state is None:
            return EngineView(state=None, available=False, reason=problem, heartbeat_age_s=None)
        return self.judge(state, now_ns())

    def judge(self, state: EngineState, at_ns: int) -> EngineView:
        """Whether ``state`` counts as an available engine at ``at_ns`` (heartbeat age)."""
        age = max(0.0, (at_ns - state.heartbeat_ns) / 1e9)
        if age > self.heartbeat_timeout_s:
            return EngineView(
                state=state,
                available=False,
                reason=f"the engine's heartbeat is {age:.1f} s old "
                f"(limit {self.heartbeat_timeout_s:g} s): it is stopped or stuck",
                heartbeat_age_s=age,
            )
        if state.status == "stopped":
            return EngineView(
                state=state, available=False, reason="the engine has stopped", heartbeat_age_s=age
            )
        return EngineView(state=state, available=True, reason="", heartbeat_age_s=age)

    @staticmethod
    def decode_snapshots(
        symbols: Iterable[str], raws: Iterable[bytes | None]
    ) -> dict[str, MarketSnapshot]:
        """The readable snapshots by symbol, in the order given; missing ones left out."""
        out: dict[str, MarketSnapshot] = {}
        for symbol, raw in zip(symbols, raws, strict=True):
            if raw is None:
                continue
            try:
                out[symbol] = decode_snapshot(raw)
            except msgspec.DecodeError as exc:
                log.warning("unreadable snapshot of %s: %s", symbol, exc)
        return out

    async def engine(self) -> EngineView:
        """The engine state read from Redis now (the cache serves requests; this is for
        the few that must not act on a state up to one refresh old)."""
        return self.view(*self.decode_engine(await self.redis.get(self.keys.engine)))

    async def require_engine(self) -> EngineState:
        """The engine state; 503 ``ENGINE_UNAVAILABLE`` saying why if it is unavailable."""
        return require_available(await self.engine())

    # ------------------------------------------------------------------ histories
    @staticmethod
    def parse_entry(stream_id: bytes | str, fields: dict[bytes, bytes]) -> HistoryEntry | None:
        """One history stream entry (fields ``seq``, ``data``); None if it cannot be read."""
        try:
            event = decode_event(fields[b"data"])
            seq = int(fields.get(b"seq", event.seq))
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            log.warning("unreadable history entry %s: %r", _text(stream_id), exc)
            return None
        return HistoryEntry(_text(stream_id), seq, event)

    def _entries(self, rows: list[tuple[bytes, dict[bytes, bytes]]]) -> list[HistoryEntry]:
        return [e for e in (self.parse_entry(i, f) for i, f in rows) if e is not None]

    async def last_entry(self, channel: LiveChannel) -> tuple[str, int]:
        """``(stream id, seq)`` of the channel's newest event, ``("0-0", 0)`` if none."""
        rows = await self.redis.xrevrange(self.keys.history(channel), count=1)
        entries = self._entries(rows)
        return (entries[0].stream_id, entries[0].seq) if entries else ("0-0", 0)

    async def recent(self, key: str, count: int) -> list[HistoryEntry]:
        """The ``count`` newest events of a stream, oldest first."""
        return self._entries(await self.redis.xrevrange(key, count=count))[::-1]

    async def history_after(self, channel: LiveChannel, seq: int) -> list[HistoryEntry] | None:
        """The channel's events after ``seq``, oldest first; None if some are gone."""
        key = self.keys.history(channel)
        newer: list[HistoryEntry] = []
        upper = "+"
        while True:
            rows = await self.redis.xrevrange(key, max=upper, count=_PAGE)
            page = self._entries(rows)
            for entry in page:
                if entry.seq <= seq:
                    return newer[::-1]
                newer.append(entry)
            if len(rows) < _PAGE:
                # reached the oldest entry kept: complete only if it is the very next one
                oldest = newer[-1].seq if newer else None
                if oldest is None:
                    return [] if seq == 0 else None
                return newer[::-1] if oldest == seq + 1 else None
            upper = "(" + _text(rows[-1][0])

    async def orders(
        self, status: OrderFilter | None, limit: int, expected_active: int
    ) -> list[OrderEvent]:
        """Each order's latest state, newest first, filtered by ``status`` (None: active).

        Walks the order history backwards; live orders are found once ``expected_active``
        (the engine's count) of them are seen, or the walk reaches its bound.
        """
        wanted = status or "active"
        seen: set[str] = set()
        found: list[OrderEvent] = []
        upper = "+"
        scanned = 0
        while scanned < _MAX_ORDER_SCAN:
            rows = await self.redis.xrevrange(self.keys.stream_orders, max=upper, count=_PAGE)
            scanned += len(rows)
            for entry in self._entries(rows):
                order = entry.event
                if not isinstance(order, OrderEvent) or order.client_order_id in seen:
                    continue
                seen.add(order.client_order_id)
                if order_status(order.status) == wanted:
                    found.append(order)
                    if len(found) >= limit:
                        return found
            if wanted == "active" and len(found) >= expected_active:
                return found
            if len(rows) < _PAGE:
                break
            upper = "(" + _text(rows[-1][0])
        return found

    async def fills(self, limit: int) -> list[FillEvent]:
        """The newest ``limit`` fills, newest first."""
        rows = await self.redis.xrevrange(self.keys.stream_fills, count=limit)
        return [e.event for e in self._entries(rows) if isinstance(e.event, FillEvent)]
