"""The state publisher and its views, against a real Valkey server.

Unit tests drive the publisher with a recorded source (a fixed engine state); the
end-to-end tests run the real engine against the in-process simulator, as
``test_engine.py`` does, and read back what it published.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from conftest import sim_config
from flashmm.config import EngineConfig, StateSection
from flashmm.engine.engine import Engine
from flashmm.engine.journal import Journal
from flashmm.engine.orders import MarketSpec
from flashmm.engine.records import Fill, Order, OrderState, Side
from flashmm.engine.risk import RiskState, Transition
from flashmm.metrics import EngineMetrics
from flashmm.state.keys import Keys, LiveChannel
from flashmm.state.publisher import StatePublisher, redact_url
from flashmm.state.schema import (
    AlertEvent,
    Counters,
    EngineState,
    FillEvent,
    ModelInfo,
    OrderEvent,
    PortfolioView,
    QuoteEvent,
    RiskTransitionEvent,
    RiskView,
    decode_engine_state,
    decode_event,
    decode_snapshot,
)
from flashmm.state.valkey import EmbeddedValkey, free_port
from flashmm.state.views import (
    Collected,
    PeriodicEvent,
    PnlTracker,
    PredictionScorer,
    VolumeWindow,
    decimal_text,
    fill_event,
    order_event,
)
from flashmm.venue.sim.config import FeedConfig
from flashmm.venue.sim.server import SimServer
from test_engine import MARKET, engine_config, quotes, seed, take, until

KEYS = Keys()
SEI = MarketSpec(market_id=MARKET, tick_size=Decimal("0.0001"), lot_size=Decimal("1"))
ETH = MarketSpec(market_id="ETH/USDC", tick_size=Decimal("0.01"), lot_size=Decimal("0.001"))
MINUTE_NS = 60 * 10**9


# ---------------------------------------------------------------------- helpers
class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now_ns: int = 1_700_000_000 * 10**9) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


class RecordedSource:
    """An engine-like source: a fixed state, and the periodic events a test sets."""

    def __init__(self) -> None:
        self.changes: list[PeriodicEvent] = []
        self.committed: list[PeriodicEvent] = []
        self.new_orders = 0

    def note_order(self, order: Order, *, new: bool) -> None:
        self.new_orders += new

    def note_fill(self, fill: Fill) -> None:
        pass

    def order_event(self, order: Order) -> OrderEvent:
        return order_event(order, SEI, quote_time_in_force="POST_ONLY")

    def fill_event(self, fill: Fill) -> FillEvent:
        return fill_event(fill, SEI)

    def collect(
        self, now_ns: int, *, keys: Keys, dropped: dict[str, int], stopping: bool
    ) -> Collected:
        state = EngineState(
            version="test",
            pid=1,
            started_ns=0,
            heartbeat_ns=now_ns,
            ready=not stopping,
            status="stopped" if stopping else "active",
            risk=RiskView(state="active"),
            markets=[MARKET],
            portfolio=PortfolioView(
                capital=1.0, equity=1.0, realized_pnl=0.0, unrealized_pnl=0.0, fees=0.0,
                net_pnl=0.0, daily_pnl=0.0, peak_equity=1.0, drawdown=0.0, gross_notional=0.0,
                long_notional=0.0, short_notional=0.0, volume=0.0,
            ),
            counters=Counters(),
            model=ModelInfo(version="m", horizon_ms=200),
            dropped=dict(dropped),
        )  # fmt: skip
        return Collected(state=state, snapshots=[], changes=list(self.changes))

    def commit(self, changes: list[PeriodicEvent]) -> None:
        self.committed.extend(changes)
        self.changes = []


def publisher(
    url: str,
    source: RecordedSource | None = None,
    clock: Callable[[], int] | None = None,
    **settings: Any,
) -> StatePublisher:
    return StatePublisher(
        KEYS,
        url,
        StateSection(**settings),
        source=source or RecordedSource(),
        clock=clock or Clock(),
        metrics=EngineMetrics(),
    )


def an_order(state: OrderState = OrderState.OPEN, price_ticks: int = 4000) -> Order:
    return Order(
        client_order_id="c1",
        market_id=MARKET,
        side=Side.BUY,
        price_ticks=price_ticks,
        size_lots=10,
        filled_lots=3,
        state=state,
        order_id="v1",
        created_ns=5,
        updated_ns=7,
    )


A_FILL = Fill(
    trade_id="t1",
    order_id="v1",
    client_order_id="c1",
    market_id=MARKET,
    side=Side.BUY,
    price_ticks=3999,
    size_lots=3,
    fee=Decimal("-0.000119"),
    liquidity="maker",
    ts_ns=9,
)


def history(url: str, channel: LiveChannel) -> list[tuple[int, Any]]:
    """(seq field, decoded event) of every entry of a live channel's history stream."""
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(KEYS.history(channel))
    finally:
        client.close()
    return [(int(fields[b"seq"]), decode_event(fields[b"data"])) for _, fields in entries]


def read_key(url: str, key: str) -> bytes | None:
    client = redis.Redis.from_url(url)
    try:
        return client.get(key)  # type: ignore[return-value]
    finally:
        client.close()


async def next_message(pubsub: Any, timeout: float = 3.0) -> Any:
    """The next published message (subscribe confirmations are skipped)."""
    message = await until_async(
        lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05),
        "a published message",
        timeout,
    )
    return message


async def until_async(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        result = await check()
        if result:
            return result
    raise AssertionError(f"timed out waiting for {what}")


def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


# ---------------------------------------------------------------------- views
def test_order_and_fill_events_carry_exact_decimals() -> None:
    event = order_event(an_order(), SEI, quote_time_in_force="POST_ONLY")
    assert (event.price, event.size, event.filled) == ("0.4000", "10", "3")
    assert (event.order_type, event.time_in_force, event.status) == ("limit", "GTC", "open")
    assert (event.created_ns, event.ts_ns) == (5, 7)
    # a flattening order has no price: a market IOC
    market = order_event(an_order(price_ticks=0), SEI, quote_time_in_force="GTC")
    assert (market.order_type, market.time_in_force) == ("market", "IOC")
    fill = fill_event(A_FILL, SEI)
    assert (fill.price, fill.size, fill.fee, fill.side) == ("0.3999", "3", "-0.000119", "buy")
    # 1500 lots of 0.001 ETH at 250000 ticks of 0.01
    assert decimal_text(1500, ETH.lot_size) == "1.500"
    assert decimal_text(250_000, ETH.tick_size) == "2500.00"


def test_volume_window_sums_the_last_24_hours() -> None:
    window = VolumeWindow()
    t0 = 1_000 * MINUTE_NS
    window.add(t0, 2.0, 10.0)  # 20
    window.add(t0 + 30 * 10**9, 3.0, 1.0)  # 3, same minute
    window.add(t0 + MINUTE_NS, 1.0, 5.0)  # 5, the next minute
    assert window.total(t0 + MINUTE_NS) == 28.0
    assert (window.last_price, window.trades) == (1.0, 3)
    # 24 h after the first minute it has left the window; the second minute has not
    assert window.total(t0 + 1440 * MINUTE_NS) == 5.0
    window.add(t0 + 1441 * MINUTE_NS, 4.0, 1.0)  # the bucket of the first minute is reused
    assert window.total(t0 + 1441 * MINUTE_NS) == 4.0
    assert window.total(t0 + 5000 * MINUTE_NS) == 0.0


def test_prediction_scorer_scores_each_sample_once_after_its_horizon() -> None:
    scorer = PredictionScorer(200, band_bps=1.0)
    ms = 1_000_000
    scorer.sample("m", 0, 100.0, 1.0)  # bullish
    scorer.sample("m", 10 * ms, 100.0, -1.0)  # bearish
    scorer.sample("m", 20 * ms, 100.0, 0.0)  # neutral
    assert scorer.score("m", 199 * ms, 101.0) == 0  # no horizon over yet
    assert scorer.accuracy is None
    # at 215 ms two horizons are over: the mid rose 1%, the bullish one was right
    assert scorer.score("m", 215 * ms, 101.0) == 2
    assert (scorer.scored, scorer.correct) == (2, 1)
    # the neutral one: 100 -> 100.005 is 0.5 bps, inside the 1 bp band
    assert scorer.score("m", 300 * ms, 100.005) == 1
    assert (scorer.scored, scorer.correct) == (3, 2)
    assert scorer.accuracy == pytest.approx(2 / 3)
    assert scorer.score("m", 900 * ms, 50.0) == 0  # each is scored once


def test_pnl_tracker_restarts_the_daily_pnl_at_utc_midnight() -> None:
    day = 24 * 3600 * 10**9
    tracker = PnlTracker()
    start = 10 * day + 23 * 3600 * 10**9  # 23:00 UTC: the day starts with the engine
    tracker.update(start, 5.0, 105.0, {"m": 5.0})
    assert tracker.daily(7.0) == 2.0
    tracker.update(start + 1800 * 10**9, 8.0, 108.0, {"m": 8.0})
    assert tracker.drawdown(104.0) == 4.0  # from the peak of 108
    tracker.update(11 * day + 60 * 10**9, 6.0, 106.0, {"m": 6.0})  # 00:01 the next day
    assert tracker.daily(6.5) == 0.5
    assert tracker.market_daily("m", 4.0) == -2.0
    assert tracker.peak_equity == 108.0


def test_redact_url_hides_the_password() -> None:
    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://:s3cret@host/0") == "redis://:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


# ---------------------------------------------------------------------- publisher
async def test_events_reach_channels_history_and_streams(redis_url: str) -> None:
    clock = Clock()
    source = RecordedSource()
    pub = publisher(redis_url, source, clock)
    listener = aioredis.Redis.from_url(redis_url)
    channels = [KEYS.channel("orders", MARKET), KEYS.channel("fills", MARKET), KEYS.alerts]
    pubsub = listener.pubsub()
    await pubsub.subscribe(*channels, KEYS.channel("quotes", MARKET))
    try:
        order = an_order()
        pub.order(order, new=True)
        order.state = OrderState.FILLED  # the engine mutates its orders: the event kept a copy
        pub.fill(A_FILL)
        pub.alert("warning", "feed", "gap on SEI/USDC", symbol=MARKET)
        pub.risk(
            Transition(from_state=RiskState.ACTIVE, to_state=RiskState.PAUSED, reason="r", ts_ns=3)
        )
        quote = QuoteEvent(
            symbol=MARKET, ts_ns=1, bid_price=0.4, bid_size=1.0, ask_price=None, ask_size=0.0,
            spread_bps=None,
        )  # fmt: skip
        source.changes = [
            PeriodicEvent(
                key=("quotes", MARKET),
                live=None,
                channel=KEYS.channel("quotes", MARKET),
                event=quote,
            )
        ]
        assert source.new_orders == 1
        assert await pub.flush()
        assert pub.pending == 0
        assert source.committed[0].event is quote

        got: list[Any] = []
        while len(got) < 5:
            message = await next_message(pubsub)
            got.append((message["channel"].decode(), decode_event(message["data"])))
        by_channel = {channel: [e for c, e in got if c == channel] for channel, _ in got}
        (order_ev,) = by_channel[channels[0]]
        assert isinstance(order_ev, OrderEvent)
        assert (order_ev.status, order_ev.price, order_ev.seq) == ("open", "0.4000", 1)
        (fill_ev,) = by_channel[channels[1]]
        assert msgspec.structs.replace(fill_ev, seq=0) == fill_event(A_FILL, SEI)
        assert (fill_ev.fill_id, fill_ev.seq) == ("t1", 1)
        alert, risk = by_channel[KEYS.alerts]
        assert isinstance(alert, AlertEvent) and isinstance(risk, RiskTransitionEvent)
        assert (alert.seq, risk.seq, risk.to_state) == (1, 2, "paused")
        assert alert.ts_ns == clock.now_ns
        assert by_channel[KEYS.channel("quotes", MARKET)] == [quote]

        assert history(redis_url, "orders") == [(1, order_ev)]
        assert history(redis_url, "alerts") == [(1, alert), (2, risk)]
        assert history(redis_url, "fills") == [(1, fill_ev)]
        client = redis.Redis.from_url(redis_url)
        assert [decode_event(f[b"data"]) for _, f in client.xrange(KEYS.stream_fills)] == [fill_ev]
        assert [decode_event(f[b"data"]) for _, f in client.xrange(KEYS.stream_orders)] == [
            order_ev
        ]
        client.close()
        state = read_key(redis_url, KEYS.engine)
        assert state is not None
        assert decode_engine_state(state).heartbeat_ns == clock.now_ns
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await pub.stop()


async def test_seq_continues_after_a_publisher_restart(redis_url: str) -> None:
    first = publisher(redis_url)
    for i in range(3):
        first.alert("info", "health", f"a{i}")
    assert await first.flush()
    await first.stop()
    second = publisher(redis_url)
    second.alert("info", "health", "b0")
    second.order(an_order())
    assert await second.flush()
    second.alert("info", "health", "b1")
    assert await second.flush()
    await second.stop()
    alerts = history(redis_url, "alerts")
    assert [seq for seq, _ in alerts] == [1, 2, 3, 4, 5]
    assert [e.message for _, e in alerts] == ["a0", "a1", "a2", "b0", "b1"]
    assert [e.seq for _, e in alerts] == [1, 2, 3, 4, 5]  # the event's own seq matches
    assert [seq for seq, _ in history(redis_url, "orders")] == [1]
    # the last flush at stop says the engine stopped
    state = read_key(redis_url, KEYS.engine)
    assert state is not None
    assert decode_engine_state(state).status == "stopped"


async def test_a_full_queue_drops_the_oldest_and_counts_it() -> None:
    pub = publisher(dead_url(), max_pending_events=3)
    for i in range(5):
        pub.alert("info", "health", f"a{i}")
    assert pub.pending == 3
    assert pub.dropped["alerts"] == 2
    assert not await pub.flush()  # nobody listens on that port
    assert not pub.connected
    assert pub.dropped["flushes"] == 1
    assert pub.pending == 3  # kept for when Redis is back
    sample = pub._metrics.registry.get_sample_value  # type: ignore[union-attr]
    assert sample("flashmm_state_dropped_total", {"kind": "alerts"}) == 2
    assert sample("flashmm_state_dropped_total", {"kind": "flushes"}) == 1
    await pub.stop()


async def test_publishing_catches_up_when_redis_returns(fresh_valkey: EmbeddedValkey) -> None:
    url = fresh_valkey.url
    pub = publisher(url, max_pending_events=3)
    pub.alert("info", "health", "before")
    assert await pub.flush()
    fresh_valkey.stop()
    for i in range(4):
        pub.alert("info", "health", f"during{i}")
    assert not await pub.flush()
    assert not await pub.flush()
    fresh_valkey.start()  # the same port; an empty server (no persistence)
    assert await pub.flush()
    assert pub.connected and pub.pending == 1  # the "publishing resumed" alert, for next time
    alerts = history(url, "alerts")
    # during0 was pushed out of the full queue; seq goes on from the process's own count
    assert [(seq, e.message) for seq, e in alerts] == [
        (2, "during1"),
        (3, "during2"),
        (4, "during3"),
    ]
    assert await pub.flush()
    seq, resumed = history(url, "alerts")[-1]
    assert seq == 5 and resumed.level == "info" and "resumed" in resumed.message
    state = read_key(url, KEYS.engine)
    assert state is not None
    assert decode_engine_state(state).dropped == {
        "orders": 0,
        "fills": 0,
        "alerts": 1,
        "flushes": 2,
    }
    await pub.stop()


# ---------------------------------------------------------------------- the real engine
@pytest.fixture
async def venue() -> AsyncIterator[SimServer]:
    async with SimServer(
        sim_config(feed=FeedConfig(snapshot_interval_s=0.5)), run_flows=False
    ) as s:
        yield s


def published_state(url: str) -> EngineState | None:
    data = read_key(url, KEYS.engine)
    return decode_engine_state(data) if data is not None else None


async def test_engine_state_snapshot_and_fills_as_journaled(
    venue: SimServer, other: httpx.AsyncClient, redis_url: str, tmp_path: Path
) -> None:
    await seed(other)
    journal = tmp_path / "j.sqlite3"
    engine = Engine(engine_config(venue, journal), redis_url=redis_url)
    await engine.start()
    listener = aioredis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(KEYS.channel("fills", MARKET))
    try:
        assert engine.ready_payload()["urls"]["redis"] == redis_url
        await until(lambda: quotes(engine), "both quotes open")
        state = await until(lambda: published_state(redis_url), "the engine state")
        later = await until(
            lambda: (s := published_state(redis_url)) and s.heartbeat_ns > state.heartbeat_ns and s,
            "a newer heartbeat",
        )
        assert later.ready and later.status == "active" and later.markets == [MARKET]

        def snapshot() -> Any:
            data = read_key(redis_url, KEYS.snapshot(MARKET))
            snap = decode_snapshot(data) if data is not None else None
            return snap if snap is not None and snap.quoting else None

        snap = await until(snapshot, "a quoting snapshot")
        bid, ask = quotes(engine)  # type: ignore[misc]
        assert snap.not_quoting == [] and snap.feed == "live" and snap.book_valid
        assert snap.quote is not None
        assert snap.quote.bid_price == pytest.approx(bid.price_ticks * 0.0001)
        assert snap.quote.ask_price == pytest.approx(ask.price_ticks * 0.0001)
        # the seeded book is 0.3990 / 0.4010: 50 bps wide without the engine's own orders
        assert snap.outside_spread_bps == pytest.approx((0.4010 - 0.3990) / 0.4 * 1e4)
        assert snap.inputs is not None and snap.inputs.mid == pytest.approx(0.4)

        await take(other, "buy", "10", "t1")  # lifts the engine's ask
        live_fill = decode_event((await next_message(pubsub))["data"])
        assert isinstance(live_fill, FillEvent)
        position = await until(
            lambda: (s := published_state(redis_url)) and s.counters.fills == 1 and s,
            "the fill counted",
        )
        assert position.portfolio.short_notional > 0
        # the decision the fill's book update caused was timed and reported
        timed = await until(
            lambda: (s := published_state(redis_url)) and "decided_p50" in s.latency_ms and s,
            "decision latency",
        )
        assert timed.latency_ms["decided_p50"] > 0
        assert timed.model.inference_time_ms == timed.latency_ms["decided_p50"]
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await engine.stop()

    final = published_state(redis_url)
    assert final is not None and final.status == "stopped" and not final.ready
    data = read_key(redis_url, KEYS.snapshot(MARKET))
    assert data is not None
    stopped = decode_snapshot(data)
    assert stopped.quote is None and not stopped.quoting  # quotes were pulled first
    assert stopped.not_quoting == ["the engine is not running (starting up or stopped)"]

    (journaled,) = Journal(str(journal)).load(now_ns=0).fills
    expected = fill_event(journaled, SEI)
    assert msgspec.structs.replace(live_fill, seq=0) == expected
    assert expected.price == format(ask.price_ticks * SEI.tick_size, "f")  # the lifted ask
    ((seq, from_history),) = history(redis_url, "fills")
    assert seq == 1 and from_history == live_fill
    client = redis.Redis.from_url(redis_url)
    ((_, fields),) = client.xrange(KEYS.stream_fills)
    client.close()
    assert decode_event(fields[b"data"]) == live_fill


async def test_redis_outage_the_engine_trades_on_and_state_catches_up(
    venue: SimServer, other: httpx.AsyncClient, fresh_valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    await seed(other)
    url = fresh_valkey.url
    journal = tmp_path / "j.sqlite3"
    async with running(engine_config(venue, journal), url) as engine:
        await until(lambda: quotes(engine), "both quotes open")
        await until(lambda: published_state(url), "the engine state")
        publisher = engine.publisher
        assert publisher is not None
        fresh_valkey.stop()
        await until(lambda: not publisher.connected, "the outage noticed")
        await take(other, "buy", "10", "t1")  # trading goes on
        await until(lambda: engine.portfolio.position_lots(MARKET) == -10, "the fill")
        await until(lambda: quotes(engine), "quotes back without Redis")
        await until(lambda: publisher.dropped["flushes"] >= 2, "failed flushes counted")
        sample = engine.metrics.registry.get_sample_value
        assert sample("flashmm_state_dropped_total", {"kind": "flushes"}) >= 2

        fresh_valkey.start()  # the same port, empty
        state = await until(lambda: published_state(url), "the state back", timeout=10)
        assert state.dropped["flushes"] >= 2 and state.counters.fills == 1
        ((_, queued),) = await until(lambda: history(url, "fills"), "the queued fill written")
        # the order events made during the outage went out too, in seq order
        seqs = [seq for seq, _ in history(url, "orders")]
        assert len(seqs) > 2 and seqs == sorted(set(seqs))
    (journaled,) = Journal(str(journal)).load(now_ns=0).fills
    assert msgspec.structs.replace(queued, seq=0) == fill_event(journaled, SEI)


@asynccontextmanager
async def running(config: EngineConfig, redis_url: str) -> AsyncIterator[Engine]:
    engine = Engine(config, redis_url=redis_url)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()
