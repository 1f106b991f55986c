"""The engine's latest state, held in memory and refreshed by one background task.

Requests read the engine state and market snapshots from here instead of asking Redis each
time: one task per process reads both in one round trip every ``refresh_s``. What a request
sees is at most ``refresh_s`` plus one round trip old, and the heartbeat's age is computed
when the request asks, so a stopped engine is reported unavailable as soon as it would be
with a read per request (the cached heartbeat can only look older, never younger).

Redis failures are not hidden behind old data: while the latest read failed, or no read has
succeeded for ``stale_after_s``, every reader gets a Redis error (answered as 503
``REDIS_UNAVAILABLE``, like a failed read of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

import msgspec
import redis.exceptions

from flashmm.api._state import EngineView, StateReader, require_available
from flashmm.state.schema import EngineState, MarketSnapshot

__all__ = ["REFRESH_S", "STALE_AFTER_S", "CacheSettings", "StateCache", "StateRead"]

log = logging.getLogger("flashmm.api")

REFRESH_S: Final = 0.05
"""Half the engine's default flush period (10 Hz): a request sees each flush within ~50 ms."""
STALE_AFTER_S: Final = 1.0
"""No successful read for this long: Redis counts as not answering."""


class CacheSettings(msgspec.Struct, frozen=True):
    """How often the cache reads Redis and when its data stops counting as current."""

    refresh_s: float = REFRESH_S
    stale_after_s: float = STALE_AFTER_S


class StateRead:
    """One successful read: the engine state (or why there is none) and its markets.

    ``version`` changes only when what Redis held changed, so anything derived from a read
    (a response body) can be kept per version with :meth:`derived`.
    """

    __slots__ = ("_derived", "latency_ms", "problem", "raw", "snapshots", "state", "version")

    def __init__(
        self,
        raw: tuple[bytes | None, ...],
        state: EngineState | None,
        problem: str,
        snapshots: dict[str, MarketSnapshot],
        version: int,
    ) -> None:
        self.raw = raw
        self.state = state
        self.problem = problem
        self.snapshots = snapshots
        self.version = version
        self.latency_ms = 0.0
        """The round trip of the latest read that found this state."""
        self._derived: dict[str, bytes] = {}

    def derived(self, name: str, build: Callable[[], bytes]) -> bytes:
        """``build()``, computed once per version of the state."""
        found = self._derived.get(name)
        if found is None:
            found = self._derived[name] = build()
        return found


class StateCache:
    """Keeps a :class:`StateRead` no older than ``refresh_s`` (plus one round trip)."""

    def __init__(self, reader: StateReader, settings: CacheSettings | None = None) -> None:
        self._reader = reader
        self._settings = settings or CacheSettings()
        self._read: StateRead | None = None
        self._read_at = 0.0  # monotonic time of the latest successful read
        self._error: Exception | None = None
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Lock()

    # ------------------------------------------------------------------ reading
    async def current(self) -> StateRead:
        """The latest read; a Redis error if Redis has not answered lately."""
        if self._task is None:
            await self.start()
        read = self._read
        if self._error is not None:
            raise redis.exceptions.ConnectionError(
                f"the latest read of the engine state failed: {self._error!r}"
            )
        if read is None or time.monotonic() - self._read_at > self._settings.stale_after_s:
            raise redis.exceptions.TimeoutError(
                f"no answer from Redis for over {self._settings.stale_after_s:g} s"
            )
        return read

    def peek(self) -> StateRead | None:
        """The latest read if it is current, else None (never waits, never raises)."""
        if self._error is not None or self._read is None:
            return None
        if time.monotonic() - self._read_at > self._settings.stale_after_s:
            return None
        return self._read

    async def engine(self) -> EngineView:
        """The engine state as of the latest read, judged (heartbeat age) as of now."""
        read = await self.current()
        return self.view(read)

    def view(self, read: StateRead) -> EngineView:
        return self._reader.view(read.state, read.problem)

    async def require_engine(self) -> tuple[EngineState, StateRead]:
        """The available engine's state and the read it came from; 503 saying why if none."""
        read = await self.current()
        return require_available(self.view(read)), read

    # ------------------------------------------------------------------ refreshing
    async def start(self) -> None:
        """Read once (so the first request has data), then keep reading in the background."""
        async with self._first:
            if self._task is not None:
                return
            await self._refresh()
            self._task = asyncio.create_task(self._run(), name="flashmm-state-cache")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.refresh_s)
            await self._refresh()

    async def _refresh(self) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.stale_after_s):
                fresh = await self._fetch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: readers get an error until it answers again
            if self._error is None:
                log.warning("cannot read the engine state from Redis: %r", exc)
            self._error = exc
            return
        if fresh is not None:
            self._read = fresh
        if self._read is not None:
            self._read.latency_ms = (time.perf_counter() - started) * 1000
        self._read_at = time.monotonic()
        if self._error is not None:
            log.info("the engine state can be read from Redis again")
        self._error = None

    async def _fetch(self) -> StateRead | None:
        """A new read, or None when Redis holds what the latest read already has."""
        previous = self._read
        asked = self._markets()
        raw = await self._reader.read_raw(asked)
        if previous is not None and previous.raw == raw:
            return None
        state, problem = self._reader.decode_engine(raw[0])
        markets = state.markets if state is not None else []
        if markets != asked:
            # the markets changed (first read, or an engine restarted with other ones)
            raw = (raw[0], *await self._reader.read_raw_snapshots(markets))
        snapshots = self._reader.decode_snapshots(markets, raw[1:])
        version = previous.version + 1 if previous is not None else 1
        return StateRead(raw, state, problem, snapshots, version)

    def _markets(self) -> list[str]:
        read = self._read
        return read.state.markets if read is not None and read.state is not None else []
