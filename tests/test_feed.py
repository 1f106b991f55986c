"""The market-data feed against the real simulator over 127.0.0.1: sync, faults, failover."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from conftest import order
from flashmm._core.book import OrderBook
from flashmm.venue.feed import (
    FeedConfigError,
    FeedError,
    FeedMarket,
    FeedSettings,
    FeedState,
    MarketFeed,
)
from flashmm.venue.protocol import BookUpdate, Trade
from flashmm.venue.sim.server import SimServer

SEI = FeedMarket("SEI/USDC", tick_size=0.0001, lot_size=1.0)
ETH = FeedMarket("ETH/USDC", tick_size=0.01, lot_size=0.001)
WAIT_S = 1.5

Levels = list[tuple[int, int]]


class Recorder:
    """A feed listener that keeps everything it is told."""

    def __init__(self) -> None:
        self.states: list[tuple[str, FeedState, str]] = []
        self.books: list[tuple[str, bool]] = []  # (market_id, rebuilt by a resync)
        self.trades: list[Trade] = []
        self.alerts: list[str] = []
        self._changed = asyncio.Event()
        self._seen: dict[str, int] = {}  # per market: states already matched by a wait

    def on_book(self, market_id: str, book: OrderBook, update: BookUpdate | None) -> None:
        self.books.append((market_id, update is None))
        self._changed.set()

    def on_trade(self, market_id: str, trade: Trade) -> None:
        self.trades.append(trade)
        self._changed.set()

    def on_state(self, market_id: str, state: FeedState, reason: str) -> None:
        self.states.append((market_id, state, reason))
        self._changed.set()

    def on_alert(self, message: str) -> None:
        self.alerts.append(message)
        self._changed.set()

    async def wait_for(self, done: Callable[[], bool], timeout: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def wait_state(
        self, state: FeedState, reason: str | None = None, market_id: str = "SEI/USDC"
    ) -> None:
        """Wait for a state change after the one the previous wait matched."""

        def seen() -> bool:
            for i in range(self._seen.get(market_id, 0), len(self.states)):
                m, s, r = self.states[i]
                if m == market_id and s is state and (reason is None or r == reason):
                    self._seen[market_id] = i + 1
                    return True
            return False

        await self.wait_for(seen)


def settings(sim: SimServer, **changes: Any) -> FeedSettings:
    base = FeedSettings(
        urls=[sim.urls["market_data"]],
        rest_url=sim.urls["order_entry"],
        markets=[SEI],
        stale_after_s=30.0,  # the test markets are quiet: no staleness unless a test asks
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        seed=7,
    )
    return msgspec.structs.replace(base, **changes) if changes else base


@contextlib.asynccontextmanager
async def running(config: FeedSettings) -> AsyncIterator[tuple[MarketFeed, Recorder]]:
    recorder = Recorder()
    feed = MarketFeed(config, recorder)
    await feed.start()
    try:
        yield feed, recorder
    finally:
        await feed.stop()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/websocket"


async def place(rest: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
    response = await rest.post("/v1/orders", json=order(*args, **kwargs))
    assert response.status_code == 200, response.text


async def fault(rest: httpx.AsyncClient, name: str, **params: Any) -> None:
    response = await rest.post(f"/admin/faults/{name}", json=params)
    assert response.status_code == 200, response.text


def feed_levels(book: OrderBook) -> tuple[Levels, Levels]:
    bp, bs = book.bids()
    bids = list(zip(bp.tolist(), bs.tolist(), strict=True))
    ap, as_ = book.asks()
    return bids, list(zip(ap.tolist(), as_.tolist(), strict=True))


async def venue_levels(rest: httpx.AsyncClient, market: FeedMarket) -> tuple[Levels, Levels]:
    response = await rest.get(f"/v1/markets/{market.market_id}/book")
    data = response.json()["data"]

    def units(rows: list[list[str]]) -> Levels:
        return [
            (round(float(p) / market.tick_size), round(float(s) / market.lot_size)) for p, s in rows
        ]

    return units(data["bids"]), units(data["asks"])


async def two_sided(rest: httpx.AsyncClient) -> None:
    await place(rest, "bid-1", "buy", "0.4000", "10")
    await place(rest, "ask-1", "sell", "0.4100", "5")


# ---------------------------------------------------------------------------- sync


async def test_initial_snapshot_puts_every_market_live_with_the_venue_book(sim, rest) -> None:
    await two_sided(rest)
    await place(rest, "eth-bid", "buy", "2000.00", "0.5", market_id="ETH/USDC")
    async with running(settings(sim, markets=[SEI, ETH])) as (feed, rec):
        await rec.wait_state(FeedState.LIVE, "in sync")
        await rec.wait_state(FeedState.LIVE, "in sync", market_id="ETH/USDC")
        # 0.4000 / 0.0001 = 4000 ticks; 2000.00 / 0.01 = 200000 ticks, 0.5 / 0.001 = 500 lots
        assert feed_levels(feed.books["SEI/USDC"]) == ([(4000, 10)], [(4100, 5)])
        assert feed_levels(feed.books["ETH/USDC"]) == ([(200000, 500)], [])
        assert feed_levels(feed.books["SEI/USDC"]) == await venue_levels(rest, SEI)
        assert feed.state("SEI/USDC") is FeedState.LIVE
        assert feed.counters["connects"] == 1
        assert feed.counters["reconnects"] == 0


async def test_orders_and_trades_reach_the_feed(sim, rest, other_rest) -> None:
    async with running(settings(sim)) as (feed, rec):
        await rec.wait_state(FeedState.LIVE)
        await two_sided(rest)
        book = feed.books["SEI/USDC"]
        await rec.wait_for(lambda: feed_levels(book) == ([(4000, 10)], [(4100, 5)]))
        await place(other_rest, "taker", "sell", "0.4000", "3")
        await rec.wait_for(lambda: len(rec.trades) == 1)
        trade = rec.trades[0]
        assert (trade.price, trade.size, trade.side) == (0.4, 3.0, -1)
        await rec.wait_for(lambda: feed_levels(book) == ([(4000, 7)], [(4100, 5)]))
        assert feed_levels(book) == await venue_levels(rest, SEI)


# ---------------------------------------------------------------------------- integrity


async def test_gap_pulls_then_resyncs_to_the_venue_book(sim, rest) -> None:
    async with running(settings(sim)) as (feed, rec):
        await rec.wait_state(FeedState.LIVE)
        await fault(rest, "skip_sequence", market_id="SEI/USDC", count=2)
        await two_sided(rest)  # the first of these updates jumps the sequence
        await rec.wait_state(FeedState.PULLED, "gap")
        await rec.wait_state(FeedState.LIVE, "resynced")
        book = feed.books["SEI/USDC"]
        await rec.wait_for(lambda: feed_levels(book) == ([(4000, 10)], [(4100, 5)]))
        assert feed_levels(book) == await venue_levels(rest, SEI)
        assert feed.counters["gaps"] == 1
        assert ("SEI/USDC", True) in rec.books  # the listener saw the rebuilt book


async def test_crossed_frame_pulls_then_resyncs(sim, rest) -> None:
    await two_sided(rest)
    async with running(settings(sim)) as (feed, rec):
        await rec.wait_state(FeedState.LIVE)
        await fault(rest, "crossed_frame", market_id="SEI/USDC")
        await rec.wait_state(FeedState.PULLED, "crossed")
        await rec.wait_state(FeedState.LIVE, "resynced")
        book = feed.books["SEI/USDC"]
        assert feed_levels(book) == ([(4000, 10)], [(4100, 5)])
        assert book.best_bid < book.best_ask
        assert feed.counters["crossed"] == 1


async def test_malformed_frame_is_counted_and_resyncs_every_market(sim, rest) -> None:
    await two_sided(rest)
    async with running(settings(sim, markets=[SEI, ETH])) as (feed, rec):
        await rec.wait_state(FeedState.LIVE)
        await rec.wait_state(FeedState.LIVE, market_id="ETH/USDC")
        await fault(rest, "malformed_frame")
        for market_id in ("SEI/USDC", "ETH/USDC"):
            await rec.wait_state(FeedState.PULLED, "malformed frame", market_id=market_id)
            await rec.wait_state(FeedState.LIVE, "resynced", market_id=market_id)
        assert feed.counters["malformed_frames"] == 1
        assert feed_levels(feed.books["SEI/USDC"]) == ([(4000, 10)], [(4100, 5)])


async def test_stalled_feed_is_pulled_as_stale_then_live_without_resync(sim, rest) -> None:
    async with running(settings(sim, stale_after_s=0.2)) as (feed, rec):
        await rec.wait_state(FeedState.LIVE)
        await fault(rest, "stall_feed", duration_s=0.6)
        await place(rest, "bid-1", "buy", "0.4000", "10")  # held by the stall
        await rec.wait_state(FeedState.PULLED, "stale")
        await rec.wait_state(FeedState.LIVE, "in sync")
        assert feed_levels(feed.books["SEI/USDC"]) == ([(4000, 10)], [])
        assert feed.counters["stale"] >= 1
        assert feed.counters["resyncs"] == 0  # the sequence continued: nothing to rebuild


async def test_venue_halt_then_open(sim, rest) -> None:
    await two_sided(rest)
    async with running(settings(sim)) as (feed, rec):
        await rec.wait_state(FeedState.LIVE)
        await fault(rest, "halt_market", market_id="SEI/USDC", status="halted")
        await rec.wait_state(FeedState.HALTED, "halted")
        assert feed.counters["halts"] == 1
        await fault(rest, "halt_market", market_id="SEI/USDC", status="open")
        await rec.wait_state(FeedState.LIVE, "resynced")
        assert feed_levels(feed.books["SEI/USDC"]) == await venue_levels(rest, SEI)


# ---------------------------------------------------------------------------- connection


async def test_dropped_connection_pulls_then_reconnects(sim, rest) -> None:
    await two_sided(rest)
    async with running(settings(sim)) as (feed, rec):
        await rec.wait_state(FeedState.LIVE)
        await fault(rest, "drop_connections", target="market_data")
        await rec.wait_state(FeedState.PULLED, "disconnected")
        await rec.wait_state(FeedState.LIVE, "in sync")
        assert feed_levels(feed.books["SEI/USDC"]) == ([(4000, 10)], [(4100, 5)])
        assert feed.counters["disconnects"] == 1
        assert feed.counters["reconnects"] == 1
        assert feed.counters["failovers"] == 0


async def test_failover_to_the_backup_url(sim) -> None:
    backup = sim.urls["market_data"]
    async with running(settings(sim, urls=[closed_port_url(), backup])) as (feed, rec):
        await rec.wait_state(FeedState.LIVE)
        assert feed.connected_url == backup
        assert feed.counters["connect_failures"] == 1
        assert feed.counters["failovers"] == 1
        assert feed.counters["reconnects"] == 1


async def test_all_urls_dead_halts_every_market_and_alerts(sim) -> None:
    dead = [closed_port_url(), closed_port_url()]
    config = settings(sim, urls=dead, markets=[SEI, ETH], max_attempts=3)
    async with running(config) as (feed, rec):
        await rec.wait_state(FeedState.HALTED, "feed unavailable")
        await rec.wait_state(FeedState.HALTED, "feed unavailable", market_id="ETH/USDC")
        assert len(rec.alerts) == 1
        assert "3 failed connects" in rec.alerts[0]
        assert feed.counters["connect_failures"] == 3


class _QuietVenue(WSListener):
    """A market-data socket that acks subscriptions, then sends nothing, and answers the
    feed's pings only if told to (automatic pongs are off on its server)."""

    def __init__(self, answers_pings: bool, pings: list[int]) -> None:
        self.answers_pings = answers_pings
        self.pings = pings

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.PING:
            self.pings.append(1)
            if self.answers_pings:
                transport.send(WSMsgType.PONG, frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.TEXT:
            request_id = msgspec.json.decode(frame.get_payload_as_bytes())["id"]
            ack = {"jsonrpc": "2.0", "id": request_id, "result": {}}
            transport.send(WSMsgType.TEXT, msgspec.json.encode(ack))


@pytest.mark.parametrize("answers_pings", [True, False], ids=["pongs", "no-pongs"])
async def test_a_connection_whose_pings_go_unanswered_is_dropped(sim, answers_pings) -> None:
    pings: list[int] = []

    def factory(request: WSUpgradeRequest) -> WSListener:
        return _QuietVenue(answers_pings, pings)

    server = await ws_create_server(factory, "127.0.0.1", 0, enable_auto_pong=False)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/websocket"
    config = settings(sim, urls=[url], ping_interval_s=0.1, pong_timeout_s=0.1)
    try:
        async with running(config) as (feed, rec):
            if answers_pings:
                async with asyncio.timeout(WAIT_S):  # several pings, each answered
                    while len(pings) < 5:
                        await asyncio.sleep(0.01)
                assert feed.counters["disconnects"] == 0
                assert feed.connected_url == url
            else:
                await rec.wait_state(FeedState.PULLED, "disconnected")
                assert feed.counters["disconnects"] >= 1
                assert pings  # the feed asked, and dropped the connection for the silence
    finally:
        server.close()
        await server.wait_closed()


async def test_start_twice_is_refused(sim) -> None:
    async with running(settings(sim)) as (feed, _):
        with pytest.raises(FeedError, match="already started"):
            await feed.start()


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"urls": []}, "at least one"),
        ({"urls": ["http://127.0.0.1:1/websocket"]}, "ws://"),
        ({"rest_url": "127.0.0.1:1"}, "rest_url"),
        ({"markets": [SEI, SEI]}, "listed twice"),
        ({"ping_interval_s": 1.0, "pong_timeout_s": 2.0}, "pong_timeout_s .* <= ping_interval_s"),
        ({"markets": [FeedMarket("X/Y", 0.0, 1.0)]}, "tick_size"),
        ({"stale_after_s": 0.0}, "stale_after_s"),
        ({"backoff_max_s": 0.001}, "backoff_max_s"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_settings_reject_values_that_cannot_work(changes: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {
        "urls": ["ws://127.0.0.1:1/websocket"],
        "rest_url": "http://127.0.0.1:1",
        "markets": [SEI],
        "backoff_initial_s": 0.01,
    }
    with pytest.raises(FeedConfigError, match=message):
        FeedSettings(**(base | changes))
