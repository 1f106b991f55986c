"""One reader per process tails the live channels' history streams and fans events out.

Each WebSocket connection is a :class:`Subscriber` with a bounded queue. The hub never
waits for a client: when a queue is full that client is marked dropped (its session
closes it with a reason) and every other client carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

import redis.asyncio as aioredis

from flashmm.api._cache import StateCache
from flashmm.api._state import HistoryEntry, StateReader
from flashmm.state.keys import LIVE_CHANNELS
from flashmm.state.schema import EngineState

__all__ = ["PNL", "Hub", "Render", "Subscriber"]

log = logging.getLogger("flashmm.api")

PNL: Final = "pnl"
"""Pseudo-channel: the engine's portfolio totals changed (polled, not streamed)."""

Render = Callable[[str, HistoryEntry | EngineState], bytes | None]
"""Turns one event into the bytes a subscriber sends, or None to skip it."""

_BLOCK_MS = 1000
_BATCH = 500
_PNL_POLL_S = 1.0


class Subscriber:
    """One connection's interest and its bounded outgoing queue."""

    def __init__(self, render: Render, maxsize: int) -> None:
        self.render = render
        self.channels: set[str] = set()
        self.queue: asyncio.Queue[tuple[str, int, bytes] | object] = asyncio.Queue(maxsize)
        self.dropped = asyncio.Event()
        self.drop_reason = ""

    def offer_control(self, message: bytes) -> None:
        """Queue a message outside any channel (no seq): pong, heartbeat, acks..."""
        self.offer(("", 0, message))

    def offer(self, item: tuple[str, int, bytes] | object) -> None:
        """Queue ``item``, or mark this subscriber dropped if it has fallen too far behind."""
        if self.dropped.is_set():
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.drop_reason = (
                f"client too slow: more than {self.queue.maxsize} messages waiting; "
                "reconnect and resume with 'since'"
            )
            self.dropped.set()


class Hub:
    """Tails ``{prefix}:history:{channel}`` for all channels with one XREAD BLOCK loop."""

    def __init__(self, redis: aioredis.Redis, reader: StateReader, cache: StateCache) -> None:
        self._redis = redis
        self._reader = reader
        self._cache = cache
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Lock()
        self._last_pnl: tuple[float, ...] | None = None
        self._last_poll = 0.0

    @property
    def connections(self) -> int:
        return len(self._subscribers)

    async def add(self, subscriber: Subscriber) -> None:
        """Start fanning out to ``subscriber``; the reader starts with the first one."""
        async with self._started:
            if self._task is None or self._task.done():
                # the ids are taken before any subscriber reads history: nothing falls between
                ids = {}
                for channel in LIVE_CHANNELS:
                    ids[self._reader.keys.history(channel)] = (
                        await self._reader.last_entry(channel)
                    )[0]
                self._task = asyncio.create_task(self._run(ids), name="flashmm-live-hub")
        self._subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, ids: dict[str, str]) -> None:
        channel_of = {self._reader.keys.history(c): c for c in LIVE_CHANNELS}
        while True:
            try:
                reply = await self._redis.xread(ids, block=_BLOCK_MS, count=_BATCH)
                for stream, rows in reply:
                    key = stream.decode() if isinstance(stream, bytes) else stream
                    channel = channel_of[key]
                    for entry_id, fields in rows:
                        ids[key] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        entry = self._reader.parse_entry(entry_id, fields)
                        if entry is not None:
                            self._fan_out(channel, entry)
                            # let each sender take its message before the next one, so
                            # that a burst fills only the queues of clients that lag
                            await asyncio.sleep(0)
                await self._poll_pnl()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep the ids, try again shortly
                log.warning("live hub cannot read Redis: %r", exc)
                await asyncio.sleep(1.0)

    def _fan_out(self, channel: str, item: HistoryEntry | EngineState) -> None:
        seq = item.seq if isinstance(item, HistoryEntry) else 0
        rendered: dict[Render, bytes | None] = {}
        for sub in list(self._subscribers):
            if channel not in sub.channels:
                continue
            if sub.render not in rendered:
                rendered[sub.render] = sub.render(channel, item)
            message = rendered[sub.render]
            if message is not None:
                sub.offer((channel, seq, message))

    async def _poll_pnl(self) -> None:
        if not any(PNL in s.channels for s in self._subscribers):
            return
        now = time.monotonic()
        if now - self._last_poll < _PNL_POLL_S:
            return
        self._last_poll = now
        view = await self._cache.engine()
        if view.state is None:
            return
        p = view.state.portfolio
        totals = (p.equity, p.net_pnl, p.daily_pnl, p.realized_pnl, p.unrealized_pnl)
        if totals != self._last_pnl:
            self._last_pnl = totals
            self._fan_out(PNL, view.state)
