"""The engine's market-data client: one picows connection, failover, per-market resync.

:class:`MarketFeed` connects to the first reachable URL of :attr:`FeedSettings.urls`
(primary first, then backups), subscribes every market to ``MarketStatus``,
``OrderBookUpdate`` and ``Trade``, and applies book frames straight from the decoder's
arrays to one :class:`~flashmm._core.book.OrderBook` per market. It reports through a
:class:`FeedListener`; the engine quotes a market only while its state is ``LIVE``.

Integrity: a GAP, CROSSED or REJECTED frame, a delta to an unsynced book, or a frame the
decoder rejects pulls the market (``PULLED``) and resyncs it: REST snapshot with its
sequence, deltas received meanwhile buffered and replayed, ``LIVE`` only when the result
is a valid, uncrossed book. No book update for ``stale_after_s`` pulls a ``LIVE`` market
until the next in-sequence update. A venue ``halted``/``closed`` status is ``HALTED``;
``open`` resyncs. A dropped connection pulls every market and reconnects with
exponential backoff and jitter; after ``max_attempts`` consecutive failures every market
is ``HALTED`` and the listener gets an alert. Each event is counted in
:attr:`MarketFeed.counters` and logged on ``flashmm.feed``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from enum import StrEnum
from time import perf_counter_ns
from typing import Any, Protocol

import httpx
import msgspec
import numpy as np
from picows import WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from flashmm._core.book import CROSSED, GAP, OK, REJECTED, STALE, OrderBook
from flashmm.venue.protocol import (
    BookUpdate,
    FrameDecoder,
    FrameError,
    MarketStatus,
    Notification,
    RpcError,
    Trade,
    encode_subscribe,
)

__all__ = [
    "COUNTER_NAMES",
    "FeedConfigError",
    "FeedError",
    "FeedListener",
    "FeedMarket",
    "FeedSettings",
    "FeedState",
    "FeedTuning",
    "MarketFeed",
    "SnapshotError",
]

log = logging.getLogger("flashmm.feed")

# Subscribed in this order: the status first, so a market halted at connect time never
# shows LIVE for the moment between its book snapshot and its status.
_EVENT_TYPES = ("MarketStatus", "OrderBookUpdate", "Trade")

COUNTER_NAMES: tuple[str, ...] = (
    "connects",
    "connect_failures",
    "reconnects",
    "failovers",
    "disconnects",
    "gaps",
    "crossed",
    "rejected",
    "unsynced",
    "stale",
    "old_frames",
    "resyncs",
    "resync_failures",
    "malformed_frames",
    "halts",
    "rpc_errors",
    "unknown_market_events",
    "listener_errors",
)
"""Every key of :attr:`MarketFeed.counters`."""


class FeedError(RuntimeError):
    """The feed was used out of order (started twice, for example)."""


class FeedConfigError(ValueError):
    """A :class:`FeedSettings` value that cannot work; the message names it."""


class SnapshotError(RuntimeError):
    """The venue's REST book snapshot could not be fetched or read."""


class FeedState(StrEnum):
    """What the engine may do with a market."""

    SYNCING = "syncing"
    """Started, no book yet: do not quote."""
    LIVE = "live"
    """The book is valid and current: quoting allowed."""
    PULLED = "pulled"
    """Quotes must come off; a resync or reconnect is under way."""
    HALTED = "halted"
    """Halted or closed by the venue, or the feed gave up: do not quote."""


class FeedMarket(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One market to follow, with the increments its book is kept in."""

    market_id: str
    tick_size: float
    lot_size: float


class FeedTuning(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the feed reacts, times in seconds: shared by :class:`FeedSettings` and the
    engine config's ``[feed]`` section, so the two cannot drift apart."""

    ping_interval_s: float = 5.0
    """Send a WS ping after this long without incoming data."""
    pong_timeout_s: float = 5.0
    """Drop the connection when a ping gets no pong within this long."""
    stale_after_s: float = 2.0
    """A LIVE market with no book update for this long is pulled."""
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    max_attempts: int = 10
    """Consecutive failed connects (or resyncs of one market) before giving up."""
    connect_timeout_s: float = 5.0
    """TCP connect plus WebSocket handshake."""
    snapshot_timeout_s: float = 5.0


class FeedSettings(FeedTuning):
    """Where the feed connects, and (from :class:`FeedTuning`) how it reacts."""

    urls: list[str]
    """Market-data WebSocket URLs: the primary first, then the backups in order."""
    rest_url: str
    """Order-entry base URL (``GET /v1/markets/{id}/book`` for resync snapshots)."""
    markets: list[FeedMarket]
    seed: int | None = None
    """Seed of the backoff jitter (``None``: unpredictable)."""

    def __post_init__(self) -> None:
        if not self.urls:
            raise FeedConfigError("urls must list at least one market-data WebSocket URL")
        for url in self.urls:
            if not url.startswith(("ws://", "wss://")):
                raise FeedConfigError(f"market-data URL must start with ws:// or wss://: {url!r}")
        if not self.rest_url.startswith(("http://", "https://")):
            raise FeedConfigError(
                f"rest_url must start with http:// or https://: {self.rest_url!r}"
            )
        if not self.markets:
            raise FeedConfigError("markets must list at least one market")
        seen: set[str] = set()
        for market in self.markets:
            if not market.market_id:
                raise FeedConfigError("a market has an empty market_id")
            if market.market_id in seen:
                raise FeedConfigError(f"market {market.market_id!r} is listed twice")
            seen.add(market.market_id)
            if not (market.tick_size > 0 and market.lot_size > 0):
                raise FeedConfigError(
                    f"market {market.market_id!r}: tick_size and lot_size must be > 0"
                )
        for name in (
            "ping_interval_s",
            "pong_timeout_s",
            "stale_after_s",
            "backoff_initial_s",
            "connect_timeout_s",
            "snapshot_timeout_s",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise FeedConfigError(f"{name} must be > 0, got {value!r}")
        if not self.pong_timeout_s <= self.ping_interval_s:
            # the WebSocket client judges one ping at a time: its answer is due before
            # the next one
            raise FeedConfigError(
                f"pong_timeout_s ({self.pong_timeout_s}) must be <= ping_interval_s "
                f"({self.ping_interval_s})"
            )
        if not self.backoff_max_s >= self.backoff_initial_s:
            raise FeedConfigError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_initial_s "
                f"({self.backoff_initial_s})"
            )
        if self.max_attempts < 1:
            raise FeedConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")


class FeedListener(Protocol):
    """What the engine implements; called on the event loop, must not block."""

    def on_book(self, market_id: str, book: OrderBook, update: BookUpdate | None) -> None:
        """The book changed; ``update`` is ``None`` when it was rebuilt by a resync."""

    def on_trade(self, market_id: str, trade: Trade) -> None: ...

    def on_state(self, market_id: str, state: FeedState, reason: str) -> None: ...

    def on_alert(self, message: str) -> None: ...


# ---------------------------------------------------------------------------- REST snapshot


class _SnapshotData(msgspec.Struct):
    sequence: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class _SnapshotReply(msgspec.Struct):
    data: _SnapshotData | None = None
    error: Any = None


_decode_snapshot = msgspec.json.Decoder(_SnapshotReply).decode


def _levels(rows: list[tuple[str, str]]) -> np.ndarray:
    try:
        return np.array([(float(p), float(s)) for p, s in rows], dtype=np.float64).reshape(-1, 2)
    except ValueError as exc:
        raise SnapshotError(f"snapshot level is not a number: {exc}") from None


# ---------------------------------------------------------------------------- per market


class _Market:
    """A market's book and sync state."""

    __slots__ = (
        "book",
        "buffer",
        "halted_by_venue",
        "last_update",
        "market_id",
        "reason",
        "resync_task",
        "state",
    )

    def __init__(self, spec: FeedMarket) -> None:
        self.market_id = spec.market_id
        self.book = OrderBook(spec.tick_size, spec.lot_size)
        self.state = FeedState.SYNCING
        self.reason = "starting"
        self.last_update = 0.0
        self.halted_by_venue = False
        # Book frames received while a resync is under way: (sequence, is_snapshot,
        # bids, asks), copied out of the decoder's arena. None when not resyncing.
        self.buffer: list[tuple[int, bool, np.ndarray, np.ndarray]] | None = None
        self.resync_task: asyncio.Task[None] | None = None


class _Connection(WSListener):
    """One WebSocket connection; owns the frame decoder of that connection."""

    def __init__(self, feed: MarketFeed) -> None:
        self.feed = feed
        self.decoder = FrameDecoder()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            self.feed._on_text(self.decoder, frame.get_payload_as_bytes())
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


# ---------------------------------------------------------------------------- the feed


class MarketFeed:
    """Market data of several markets over one connection; see the module docstring."""

    def __init__(self, settings: FeedSettings, listener: FeedListener) -> None:
        self.settings = settings
        self.listener = listener
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._markets = {spec.market_id: _Market(spec) for spec in settings.markets}
        self.books: dict[str, OrderBook] = {m: s.book for m, s in self._markets.items()}
        self.connected_url: str | None = None
        # perf_counter_ns() stamps of the frame being handled, for the engine's stage latencies
        self.frame_ns = 0
        self.decoded_ns = 0
        self._rng = random.Random(settings.seed)
        self._subscriptions: dict[int, tuple[str, str]] = {}
        self._transport: WSTransport | None = None
        self._http: httpx.AsyncClient | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stale_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle
    def state(self, market_id: str) -> FeedState:
        """The market's current state."""
        return self._markets[market_id].state

    def staleness_s(self, market_id: str) -> float:
        """Seconds since the market's book last changed (infinite before its first book)."""
        last = self._markets[market_id].last_update
        return self._now() - last if last else float("inf")

    async def start(self) -> None:
        """Start connecting; returns at once (states arrive through the listener)."""
        if self._supervisor is not None:
            raise FeedError("the feed is already started; stop() it first")
        self._loop = asyncio.get_running_loop()
        self._http = httpx.AsyncClient(
            base_url=self.settings.rest_url, timeout=self.settings.snapshot_timeout_s
        )
        for m in self._markets.values():
            m.halted_by_venue = False
            self._set_state(m, FeedState.SYNCING, "starting")
        self._supervisor = asyncio.create_task(self._supervise(), name="flashmm.feed")
        self._supervisor.add_done_callback(self._supervisor_done)
        self._schedule_stale_check()

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug, not a venue condition: nothing reconnects any more, so say so loudly.
        log.error("market-data supervisor crashed", exc_info=task.exception())
        for m in self._markets.values():
            self._cancel_resync(m)
            self._set_state(m, FeedState.HALTED, "feed crashed")
        self._alert(f"market-data feed crashed: {task.exception()!r}")

    async def stop(self) -> None:
        """Disconnect and stop every task; the feed can be started again."""
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        tasks = [m.resync_task for m in self._markets.values() if m.resync_task is not None]
        if self._supervisor is not None:
            tasks.append(self._supervisor)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._supervisor = None
        if self._transport is not None:
            self._transport.disconnect()
            self._transport = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ---------------------------------------------------------------- connection
    def _backoff(self, attempt: int) -> float:
        """Exponential delay before ``attempt`` (1-based), with 'equal jitter': half fixed,
        half random, so clients dropped together do not come back together."""
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2.0 ** (attempt - 1))
        return delay * (0.5 + 0.5 * self._rng.random())

    async def _supervise(self) -> None:
        s = self.settings
        urls = s.urls
        index = 0
        failures = 0
        last_url = urls[0]  # connecting first to a backup is a failover too
        first = True
        while True:
            url = urls[index % len(urls)]
            try:
                transport, conn = await ws_connect(
                    lambda: _Connection(self),
                    url,
                    websocket_handshake_timeout=s.connect_timeout_s,
                    enable_auto_ping=True,
                    auto_ping_idle_timeout=s.ping_interval_s,
                    auto_ping_reply_timeout=s.pong_timeout_s,
                    disconnect_on_exception=False,
                    logger_name="feed",
                )
            except (OSError, TimeoutError, WSError) as exc:
                failures += 1
                first = False
                self.counters["connect_failures"] += 1
                log.warning("connect to %s failed (%d/%d): %s", url, failures, s.max_attempts, exc)
                if failures >= s.max_attempts:
                    self._give_up(failures)
                    return
                index += 1
                await asyncio.sleep(self._backoff(failures))
                continue
            assert isinstance(conn, _Connection)
            self.counters["connects"] += 1
            if not first:
                self.counters["reconnects"] += 1
            if url != last_url:
                self.counters["failovers"] += 1
                log.warning("failover: connected to %s (was %s)", url, last_url)
            else:
                log.info("connected to %s", url)
            first = False
            failures = 0
            last_url = url
            self.connected_url = url
            self._transport = transport
            self._subscribe()
            try:
                await asyncio.shield(conn.closed)
            finally:
                # Cancelled by stop(): the transport is closed there.
                if conn.closed.done():
                    self._transport = None
                    self.connected_url = None
            self.counters["disconnects"] += 1
            log.warning("disconnected from %s", url)
            self._on_disconnected()
            index = 0  # the primary is preferred whenever it is reachable
            await asyncio.sleep(self._backoff(1))

    def _subscribe(self) -> None:
        transport = self._transport
        assert transport is not None
        self._subscriptions.clear()
        request_id = 0
        for market_id in self._markets:
            for event_type in _EVENT_TYPES:
                request_id += 1
                self._subscriptions[request_id] = (market_id, event_type)
                transport.send(WSMsgType.TEXT, encode_subscribe(request_id, event_type, market_id))

    def _on_disconnected(self) -> None:
        for m in self._markets.values():
            self._cancel_resync(m)
            m.book.invalidate()
            if m.state is not FeedState.HALTED:
                self._set_state(m, FeedState.PULLED, "disconnected")

    def _give_up(self, failures: int) -> None:
        urls = ", ".join(self.settings.urls)
        message = f"market-data feed gave up after {failures} failed connects to {urls}"
        log.error("%s", message)
        for m in self._markets.values():
            m.halted_by_venue = False
            self._set_state(m, FeedState.HALTED, "feed unavailable")
        self._alert(message)

    # ------------------------------------------------------------------- frames
    def _on_text(self, decoder: FrameDecoder, payload: bytes) -> None:
        self.frame_ns = perf_counter_ns()
        try:
            msg = decoder.decode(payload)
        except FrameError as exc:
            self._on_bad_frame(exc)
            return
        self.decoded_ns = perf_counter_ns()
        try:
            if type(msg) is Notification:
                for event in msg.events:
                    kind = type(event)
                    if kind is BookUpdate:
                        self._on_book(event)  # type: ignore[arg-type]
                    elif kind is Trade:
                        self._on_trade(event)  # type: ignore[arg-type]
                    else:
                        self._on_status(event)  # type: ignore[arg-type]
            elif type(msg) is RpcError:
                self._on_rpc_error(msg)
        except Exception:
            # A listener bug must not take the connection down with it.
            self.counters["listener_errors"] += 1
            log.exception("feed listener raised")

    def _on_bad_frame(self, exc: FrameError) -> None:
        # The frame cannot be attributed to a market and may have carried a book update
        # of any of them: every market that is not halted resyncs.
        self.counters["malformed_frames"] += 1
        log.warning("undecodable market-data frame, resyncing: %s", exc)
        for m in self._markets.values():
            if m.state is not FeedState.HALTED and m.buffer is None:
                self._start_resync(m, "malformed frame")

    def _on_book(self, update: BookUpdate) -> None:
        m = self._markets.get(update.market_id)
        if m is None:
            self.counters["unknown_market_events"] += 1
            return
        if m.buffer is not None:
            # Copies: the decoder's arrays are overwritten by its next frame.
            m.buffer.append(
                (update.sequence, update.is_snapshot, update.bids.copy(), update.asks.copy())
            )
            return
        book = m.book
        if update.is_snapshot:
            status = book.apply_snapshot(update.bids, update.asks, update.sequence)
        else:
            status = book.apply_delta(update.bids, update.asks, update.sequence)
        if status == OK:
            m.last_update = self._now()
            if m.state is not FeedState.LIVE and m.state is not FeedState.HALTED:
                self._set_state(m, FeedState.LIVE, "in sync")
            self.listener.on_book(m.market_id, book, update)
        elif status == STALE:
            self.counters["old_frames"] += 1
        elif m.state is not FeedState.HALTED:
            self._on_integrity(m, status, update.sequence)

    def _on_integrity(self, m: _Market, status: int, sequence: int) -> None:
        if status == GAP:
            counter, reason = "gaps", "gap"
        elif status == CROSSED:
            counter, reason = "crossed", "crossed"
        elif status == REJECTED:
            counter, reason = "rejected", "rejected"
        else:
            counter, reason = "unsynced", "unsynced"
        self.counters[counter] += 1
        log.warning(
            "%s: %s at sequence %d (book at %d)", m.market_id, reason, sequence, m.book.sequence
        )
        self._start_resync(m, reason)

    def _on_trade(self, trade: Trade) -> None:
        if trade.market_id not in self._markets:
            self.counters["unknown_market_events"] += 1
            return
        self.listener.on_trade(trade.market_id, trade)

    def _on_status(self, status: MarketStatus) -> None:
        m = self._markets.get(status.market_id)
        if m is None:
            self.counters["unknown_market_events"] += 1
            return
        if status.status == "open":
            if m.halted_by_venue:
                m.halted_by_venue = False
                log.warning("%s: market open again, resyncing", m.market_id)
                self._start_resync(m, "market open")
            return
        if not m.halted_by_venue:
            self.counters["halts"] += 1
            log.warning("%s: market %s by the venue", m.market_id, status.status)
        m.halted_by_venue = True
        self._cancel_resync(m)
        self._set_state(m, FeedState.HALTED, status.status)

    def _on_rpc_error(self, error: RpcError) -> None:
        self.counters["rpc_errors"] += 1
        target = self._subscriptions.get(error.id) if isinstance(error.id, int) else None
        if target is None:
            log.warning("venue error: %s %s", error.message, error.data)
            return
        market_id, event_type = target
        message = (
            f"{market_id}: subscribe to {event_type} refused: {error.message} {error.data or ''}"
        )
        log.error("%s", message)
        m = self._markets[market_id]
        self._cancel_resync(m)
        self._set_state(m, FeedState.HALTED, "subscribe refused")
        self._alert(message)

    # ------------------------------------------------------------------- resync
    def _start_resync(self, m: _Market, reason: str) -> None:
        self._cancel_resync(m)
        m.book.invalidate()
        m.buffer = []
        self._set_state(m, FeedState.PULLED, reason)
        m.resync_task = asyncio.get_running_loop().create_task(self._resync(m, reason))

    def _cancel_resync(self, m: _Market) -> None:
        task = m.resync_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        m.resync_task = None
        m.buffer = None

    async def _resync(self, m: _Market, reason: str) -> None:
        s = self.settings
        for attempt in range(1, s.max_attempts + 1):
            self.counters["resyncs"] += 1
            log.info("%s: resync (%s), attempt %d", m.market_id, reason, attempt)
            try:
                sequence, bids, asks = await self._fetch_snapshot(m.market_id)
            except (httpx.HTTPError, SnapshotError) as exc:
                self.counters["resync_failures"] += 1
                log.warning("%s: resync snapshot failed: %s", m.market_id, exc)
                await asyncio.sleep(self._backoff(attempt))
                continue
            if self._rebuild(m, sequence, bids, asks):
                m.buffer = None
                m.resync_task = None
                m.last_update = self._now()
                log.info("%s: resynced at sequence %d", m.market_id, m.book.sequence)
                if m.state is not FeedState.HALTED:
                    self._set_state(m, FeedState.LIVE, "resynced")
                try:
                    self.listener.on_book(m.market_id, m.book, None)
                except Exception:
                    self.counters["listener_errors"] += 1
                    log.exception("feed listener raised in on_book")
                return
            self.counters["resync_failures"] += 1
            log.warning("%s: snapshot %d and buffered frames disagree", m.market_id, sequence)
            await asyncio.sleep(self._backoff(attempt))
        m.buffer = None
        m.resync_task = None
        message = f"{m.market_id}: resync failed {s.max_attempts} times; market halted"
        log.error("%s", message)
        self._set_state(m, FeedState.HALTED, "resync failed")
        self._alert(message)

    def _rebuild(self, m: _Market, sequence: int, bids: np.ndarray, asks: np.ndarray) -> bool:
        """Snapshot, then the buffered frames after it; True if the book ends valid."""
        book = m.book
        book.apply_snapshot(bids, asks, sequence)
        # Frames the snapshot already contains are skipped; a buffered snapshot frame
        # can still repair a book the REST snapshot left invalid.
        for seq, is_snapshot, b, a in m.buffer or ():
            if book.is_valid and seq <= book.sequence:
                continue
            if is_snapshot:
                book.apply_snapshot(b, a, seq)
            else:
                book.apply_delta(b, a, seq)
        if m.buffer is not None:
            m.buffer.clear()
        # GAP, CROSSED, REJECTED and UNSYNCED all leave the book invalid.
        return bool(book.is_valid)

    async def _fetch_snapshot(self, market_id: str) -> tuple[int, np.ndarray, np.ndarray]:
        http = self._http
        if http is None:
            raise SnapshotError("the feed is not started")
        response = await http.get(f"/v1/markets/{market_id}/book")
        try:
            reply = _decode_snapshot(response.content)
        except msgspec.DecodeError as exc:
            raise SnapshotError(
                f"book snapshot of {market_id!r} (HTTP {response.status_code}) unreadable: {exc}"
            ) from None
        if reply.data is None:
            raise SnapshotError(
                f"book snapshot of {market_id!r} refused (HTTP {response.status_code}): "
                f"{reply.error}"
            )
        data = reply.data
        return data.sequence, _levels(data.bids), _levels(data.asks)

    # ---------------------------------------------------------------- staleness
    def _now(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else 0.0

    def _schedule_stale_check(self) -> None:
        loop = self._loop
        assert loop is not None
        # Checked four times per limit: a stale market is pulled within 1.25x the limit.
        self._stale_timer = loop.call_later(self.settings.stale_after_s / 4, self._check_stale)

    def _check_stale(self) -> None:
        now = self._now()
        limit = self.settings.stale_after_s
        for m in self._markets.values():
            if m.state is FeedState.LIVE and now - m.last_update > limit:
                self.counters["stale"] += 1
                log.warning("%s: no book update for %.3f s", m.market_id, now - m.last_update)
                self._set_state(m, FeedState.PULLED, "stale")
        self._schedule_stale_check()

    # ------------------------------------------------------------------- output
    def _set_state(self, m: _Market, state: FeedState, reason: str) -> None:
        if m.state is state and m.reason == reason:
            return
        m.state = state
        m.reason = reason
        if state is FeedState.LIVE:
            m.last_update = self._now()
        log.info("%s: %s (%s)", m.market_id, state.value, reason)
        try:
            self.listener.on_state(m.market_id, state, reason)
        except Exception:
            self.counters["listener_errors"] += 1
            log.exception("feed listener raised in on_state")

    def _alert(self, message: str) -> None:
        try:
            self.listener.on_alert(message)
        except Exception:
            self.counters["listener_errors"] += 1
            log.exception("feed listener raised in on_alert")
