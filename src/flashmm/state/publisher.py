"""The engine's state publisher: events and latest state to Redis, off the hot path.

The engine calls :meth:`StatePublisher.order`, :meth:`~StatePublisher.fill`,
:meth:`~StatePublisher.alert` and :meth:`~StatePublisher.risk` synchronously; they only
append to a bounded queue (the oldest event is dropped and counted when it is full). A
task flushes at ``[state] flush_hz``: in one MULTI/EXEC pipeline it writes the queued
events (pub/sub, the live channels' history streams with their ``seq``, the order and
fill history streams), the periodic events whose state changed, ``{prefix}:engine`` with
its heartbeat and every ``{prefix}:snapshot:{symbol}``.

Redis slow or down never reaches the engine: a flush is bounded by a timeout, a failed
one is counted and retried with backoff, the latest state is rebuilt at each flush
(coalesced), queued events wait, and one log line marks the outage and one its end.
Sequence numbers continue after the last entry of each history stream, also across a
restart, and an event keeps its number until it is written: a flush whose answer was lost
is not written twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from flashmm.config import StateSection
from flashmm.engine.records import Fill, Order
from flashmm.engine.risk import Transition
from flashmm.metrics import EngineMetrics
from flashmm.state.keys import LIVE_CHANNELS, Keys, LiveChannel
from flashmm.state.schema import (
    AlertEvent,
    Event,
    FillEvent,
    OrderEvent,
    RiskTransitionEvent,
    encode,
)
from flashmm.state.views import Collected, PeriodicEvent

__all__ = [
    "DROP_KINDS",
    "PublisherLimits",
    "StatePublisher",
    "StatePublisherError",
    "StateSource",
    "redact_url",
]

log = logging.getLogger("flashmm.state")

DROP_KINDS: tuple[str, ...] = ("orders", "fills", "alerts", "flushes")
"""Keys of ``EngineState.dropped``: events pushed out of the full queue, by channel, and
flushes that failed (their state was superseded by the next one)."""

AlertLevel = Literal["info", "warning", "critical"]


class StatePublisherError(ValueError):
    """The publisher cannot be set up as asked; the message says what to change."""


class PublisherLimits(msgspec.Struct, frozen=True, kw_only=True):
    """How hard the publisher tries; the defaults suit a local Redis."""

    flush_timeout_s: float = 1.0
    """A flush that takes longer is abandoned and counted; its events go with the next."""
    retry_initial_s: float = 0.1
    """First wait after a failed flush; doubles up to ``retry_max_s``."""
    retry_max_s: float = 5.0
    max_batch_events: int = 5_000
    """Queued events written by one flush at most; a backlog drains over several."""
    connect_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("flush_timeout_s", "retry_initial_s", "retry_max_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise StatePublisherError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.retry_max_s < self.retry_initial_s:
            raise StatePublisherError("retry_max_s must be >= retry_initial_s")
        if self.max_batch_events < 1:
            raise StatePublisherError("max_batch_events must be >= 1")


class StateSource(Protocol):
    """What the publisher publishes (:class:`flashmm.state.views.EngineView` for the engine)."""

    def note_order(self, order: Order, *, new: bool) -> None:
        """An order changed, or is ``new`` (about to be sent); synchronous, O(1)."""

    def note_fill(self, fill: Fill) -> None: ...

    def order_event(self, order: Order) -> OrderEvent: ...

    def fill_event(self, fill: Fill) -> FillEvent: ...

    def collect(
        self, now_ns: int, *, keys: Keys, dropped: dict[str, int], stopping: bool
    ) -> Collected:
        """The latest state and the periodic events that changed since the last commit."""

    def commit(self, changes: list[PeriodicEvent]) -> None:
        """``changes`` were written."""


def redact_url(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def connect(url: str, *, connect_timeout_s: float, timeout_s: float | None) -> aioredis.Redis:
    """A client that fails fast (no retries of its own): the callers retry with backoff."""
    try:
        return aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise StatePublisherError(f"state.redis_url {redact_url(url)!r}: {exc}") from None


class _Queued:
    """One event waiting for a flush: the record as it was, converted at the flush."""

    __slots__ = ("channel", "event", "live", "raw", "stream")

    def __init__(
        self,
        live: LiveChannel,
        channel: str,
        *,
        event: Event | None = None,
        raw: Order | Fill | None = None,
        stream: str | None = None,
    ) -> None:
        self.live = live
        self.channel = channel
        self.event = event
        self.raw = raw
        self.stream = stream


class StatePublisher:
    """Publishes a :class:`StateSource` to Redis; ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        keys: Keys,
        redis_url: str,
        settings: StateSection,
        *,
        source: StateSource,
        limits: PublisherLimits | None = None,
        metrics: EngineMetrics | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.keys = keys
        self.settings = settings
        self.source = source
        self.limits = limits if limits is not None else PublisherLimits()
        self.clock = clock
        self.url = redact_url(redis_url)
        self._redis = connect(
            redis_url,
            connect_timeout_s=self.limits.connect_timeout_s,
            timeout_s=self.limits.flush_timeout_s,
        )
        self._metrics = metrics
        self.dropped: dict[str, int] = dict.fromkeys(DROP_KINDS, 0)
        if metrics is not None:
            for kind in DROP_KINDS:
                metrics.state_dropped.labels(kind)
        self.flushes = 0
        """Flushes written since the start."""
        self.seq: dict[LiveChannel, int] = dict.fromkeys(LIVE_CHANNELS, 0)
        """The last sequence number given out on each live channel."""
        self._queue: deque[_Queued] = deque()
        self._removed = 0  # entries ever taken off the queue's left (written or dropped)
        self._synced = False  # seq continues after Redis's history (read after each failure)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._retry_s = self.limits.retry_initial_s
        self._broken = False  # the last flush raised something else than a Redis failure
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ engine hooks
    def order(self, order: Order, *, new: bool = False) -> None:
        """An order changed state, or is ``new`` and about to be sent (copied now: the
        engine mutates it in place)."""
        self.source.note_order(order, new=new)
        self._push(
            _Queued(
                "orders",
                self.keys.channel("orders", order.market_id),
                raw=msgspec.structs.replace(order),
                stream=self.keys.stream_orders,
            )
        )

    def fill(self, fill: Fill) -> None:
        """A fill, after the journal has it."""
        self.source.note_fill(fill)
        self._push(
            _Queued(
                "fills",
                self.keys.channel("fills", fill.market_id),
                raw=fill,
                stream=self.keys.stream_fills,
            )
        )

    def alert(self, level: AlertLevel, kind: str, message: str, symbol: str | None = None) -> None:
        event = AlertEvent(
            ts_ns=self.clock(), level=level, kind=kind, message=message, symbol=symbol
        )
        self._push(_Queued("alerts", self.keys.alerts, event=event))

    def risk(self, transition: Transition) -> None:
        """The risk ladder moved (on the alerts channel)."""
        event = RiskTransitionEvent(
            ts_ns=transition.ts_ns,
            from_state=transition.from_state.value,
            to_state=transition.to_state.value,
            reason=transition.reason,
            source=transition.source,
            until_ns=transition.until_ns,
        )
        self._push(_Queued("alerts", self.keys.alerts, event=event))

    @property
    def pending(self) -> int:
        """Events waiting for a flush."""
        return len(self._queue)

    @property
    def connected(self) -> bool:
        """False from a failed flush until the next one that succeeds."""
        return self._down_since is None

    def _push(self, entry: _Queued) -> None:
        if len(self._queue) >= self.settings.max_pending_events:
            oldest = self._queue.popleft()
            self._removed += 1
            self._count_drop(oldest.live)
        self._queue.append(entry)

    def _count_drop(self, kind: str) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        if self._metrics is not None:
            self._metrics.state_dropped.labels(kind).inc()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the flush task; returns at once (Redis may still be down)."""
        if self._task is not None:
            raise StatePublisherError("the publisher is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="flashmm.publish")

    async def stop(self) -> None:
        """Write a last state (``stopped``) if Redis is there, then close."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._down_since is None:
            await self._guarded_flush(stopping=True)
        await self._redis.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.settings.flush_hz
        while True:
            started = loop.time()
            if started >= self._retry_at:
                await self._guarded_flush(stopping=False)
            await asyncio.sleep(max(period - (loop.time() - started), 0.0))

    # ------------------------------------------------------------------ one flush
    async def _guarded_flush(self, *, stopping: bool) -> None:
        try:
            await self.flush(stopping=stopping)
        except Exception:  # a bug in a view must not end publishing (or the engine's stop)
            self._count_drop("flushes")
            if not self._broken:
                log.exception("state flush failed (logged once until a flush succeeds)")
            self._broken = True
        else:
            self._broken = False

    async def flush(self, *, stopping: bool = False) -> bool:
        """One bounded attempt to write everything; True if Redis took it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.flush_timeout_s):
                if not self._synced:
                    await self._sync()
                written = await self._write(stopping)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, loop.time())
            return False
        self._recovered(written)
        return True

    async def _sync(self) -> None:
        """Continue each channel's seq after its history; drop events already written."""
        pipe = self._redis.pipeline(transaction=False)
        for channel in LIVE_CHANNELS:
            pipe.xrevrange(self.keys.history(channel), count=1)
        answers = await pipe.execute()
        last: dict[LiveChannel, int] = {}
        for channel, entries in zip(LIVE_CHANNELS, answers, strict=True):
            last[channel] = int(entries[0][1][b"seq"]) if entries else 0
            self.seq[channel] = max(self.seq[channel], last[channel])
        # A flush whose answer was lost may have been written: its events have their seq.
        while self._queue:
            event = self._queue[0].event
            if event is None or not 0 < event.seq <= last[self._queue[0].live]:
                break
            self._queue.popleft()
            self._removed += 1
        self._synced = True

    async def _write(self, stopping: bool) -> int:
        collected = self.source.collect(
            self.clock(), keys=self.keys, dropped=self.dropped, stopping=stopping
        )
        first = self._removed
        batch = list(islice(self._queue, self.limits.max_batch_events))
        pipe = self._redis.pipeline(transaction=True)
        for entry in batch:
            event = self._event(entry)
            data = self._numbered(entry.live, event)
            self._add(pipe, entry.live, entry.channel, data, event.seq)
            if entry.stream is not None:
                pipe.xadd(
                    entry.stream,
                    {"data": data},
                    maxlen=self.settings.stream_maxlen,
                    approximate=True,
                )
        for change in collected.changes:
            if change.live is None:
                pipe.publish(change.channel, encode(change.event))
            else:
                data = self._numbered(change.live, change.event)
                self._add(pipe, change.live, change.channel, data, change.event.seq)
        pipe.set(self.keys.engine, encode(collected.state))
        for snapshot in collected.snapshots:
            pipe.set(self.keys.snapshot(snapshot.symbol), encode(snapshot))
        await pipe.execute()
        written = first + len(batch) - self._removed  # the full queue may have dropped some
        for _ in range(max(written, 0)):
            self._queue.popleft()
        self._removed += max(written, 0)
        self.source.commit(collected.changes)
        self.flushes += 1
        return len(batch)

    def _event(self, entry: _Queued) -> Event:
        if entry.event is None:  # convert once: a retry keeps the event and its seq
            raw = entry.raw
            entry.event = (
                self.source.order_event(raw)
                if isinstance(raw, Order)
                else self.source.fill_event(raw)  # type: ignore[arg-type]
            )
            entry.raw = None
        return entry.event

    def _numbered(self, live: LiveChannel, event: Event) -> bytes:
        if not event.seq:
            self.seq[live] += 1
            event.seq = self.seq[live]
        return encode(event)

    def _add(self, pipe: Pipeline, live: LiveChannel, channel: str, data: bytes, seq: int) -> None:
        pipe.publish(channel, data)
        pipe.xadd(
            self.keys.history(live),
            {"seq": seq, "data": data},
            maxlen=self.settings.history_maxlen,
            approximate=True,
        )

    # ------------------------------------------------------------------ outages
    def _failed(self, exc: BaseException, now: float) -> None:
        self._count_drop("flushes")
        self._synced = False  # the lost answer may hide a written flush: re-read the seqs
        if self._down_since is None:
            self._down_since = now
            self._retry_s = self.limits.retry_initial_s
            log.warning(
                "Redis at %s is not answering (%s); the engine keeps trading, state publishing "
                "retries with backoff and keeps up to %d events",
                self.url,
                type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                self.settings.max_pending_events,
            )
        else:
            self._retry_s = min(self._retry_s * 2, self.limits.retry_max_s)
        self._retry_at = now + self._retry_s

    def _recovered(self, written: int) -> None:
        if self._down_since is None:
            return
        down_s = asyncio.get_running_loop().time() - self._down_since
        self._down_since = None
        self._retry_at = 0.0
        message = (
            f"state publishing to Redis resumed after {down_s:.1f} s; "
            f"dropped so far: {', '.join(f'{k} {v}' for k, v in self.dropped.items())}"
        )
        log.warning("%s; %d queued events written", message, written)
        self.alert("info", "health", message)
