"""Market flow in the simulator: replayed real data with queue-position fills, and the
synthetic market's determinism."""

from __future__ import annotations

import itertools
from decimal import Decimal

import httpx
import numpy as np

from conftest import DEMO_KEY, connect, sim_config
from flashmm.data.events import EventKind
from flashmm.venue.sim.config import AccountConfig, AssetConfig, MarketConfig, ReplayConfig
from flashmm.venue.sim.exchange import Exchange
from flashmm.venue.sim.server import SimServer
from flashmm.venue.sim.synthetic import SyntheticParams

TICK, LOT = Decimal("0.01"), Decimal("0.000001")


def replay_config():
    return sim_config(
        assets=[
            AssetConfig(symbol="BTC", denom="sat", decimals=8),
            AssetConfig(symbol="USDT", denom="usdt", decimals=8),
        ],
        markets=[
            MarketConfig(
                market_id="BTC/USDT",
                base="BTC",
                quote="USDT",
                tick_size=str(TICK),
                lot_size=str(LOT),
                source="replay",
                replay=ReplayConfig(file="sample:btcusdt_spot_20240808", speed=0, loop=False),
            )
        ],
        accounts=[
            AccountConfig(
                name="demo",
                api_key=DEMO_KEY,
                address="sei1demo",
                balances={"BTC": "10", "USDT": "1000000"},
            )
        ],
    )


async def test_resting_orders_fill_from_recorded_trades_behind_the_queue() -> None:
    async with SimServer(replay_config(), run_flows=False) as sim:
        ex = sim.exchange
        market = ex.markets["BTC/USDT"]
        events = ex.load_replay(market)
        tape = ex.replay_tape(events)
        steps = iter(range(len(tape)))
        for k in steps:  # up to and including the first snapshot
            ex.apply_replay_step(market, tape, k)
            if tape.kinds[k] == EventKind.DEPTH_SNAPSHOT:
                break
        bid = market.book.best_bid()
        queue_ahead = market.book.outside_size(1, bid)
        assert bid is not None and queue_ahead > 0

        stream = await connect(sim.urls["stream"], {"X-API-Key": DEMO_KEY})
        async with httpx.AsyncClient(
            base_url=sim.urls["order_entry"], headers={"X-API-Key": DEMO_KEY}
        ) as rest:
            price = str(bid * TICK)
            for cid, px in (("front", price), ("deep", str((bid - 50_000) * TICK))):
                body = {
                    "market_id": "BTC/USDT",
                    "side": "buy",
                    "price": px,
                    "quantity": "0.001",
                    "client_order_id": cid,
                }
                assert (await rest.post("/v1/orders", json=body)).json()["success"]
        acks = [await stream.recv_json() for _ in range(2)]
        assert [a["type"] for a in acks] == ["new_order_ack", "new_order_ack"]

        # Step the recording. The queue model makes a fill cost something: the queue ahead
        # of us starts at the displayed size and only shrinks to what stays displayed, so
        # unless the market trades through our price, the recorded sells at our price must
        # cover the smallest displayed size seen there, plus our own size.
        account = ex.account_for_key(DEMO_KEY)
        assert account is not None
        traded_at, traded_through, min_displayed = 0, 0, queue_ahead
        fill = None
        for k in steps:
            side, px, size = tape.rows[tape.starts[k]]
            if tape.kinds[k] == EventKind.TRADE and side == -1 and px == bid:
                traded_at += size
            if tape.kinds[k] == EventKind.TRADE and side == -1 and px < bid:
                traded_through += size
            ex.apply_replay_step(market, tape, k)
            if account.seq > 2:  # an event beyond the two acks
                fill = await stream.recv_json()
                break
            min_displayed = min(min_displayed, market.book.outside_size(1, bid))
        assert fill is not None, "a bid at the best price never filled over the whole slice"
        assert fill["type"] == "execution_report"
        assert fill["client_order_id"] == "front"
        assert fill["liquidity_type"] == "maker" and fill["price"] == str(bid * TICK).rstrip("0")
        assert traded_at + traded_through > 0  # never filled for free
        if not traded_through:
            assert traded_at >= min_displayed + 1000  # 0.001 BTC = 1000 lots
        # the deep order is still there, untouched
        async with httpx.AsyncClient(
            base_url=sim.urls["order_entry"], headers={"X-API-Key": DEMO_KEY}
        ) as rest:
            open_orders = (await rest.get("/v1/orders")).json()["data"]["orders"]
        assert [o["client_order_id"] for o in open_orders if o["filled_quantity"] == "0"] == [
            "deep"
        ]


def test_replay_book_matches_the_recording_at_every_snapshot() -> None:
    ex = Exchange(replay_config())
    market = ex.markets["BTC/USDT"]
    events = ex.load_replay(market)
    checked = 0
    tape = ex.replay_tape(events)
    for k in range(3000):
        batch = events[tape.starts[k] : tape.ends[k]]
        ex.apply_replay_step(market, tape, k)
        if batch["kind"][0] == EventKind.DEPTH_SNAPSHOT:
            bids, asks = market.book.depth(1 << 30)
            rows = batch[batch["size"] > 0]
            want_bids = sorted(
                zip(
                    rows[rows["side"] == 1]["price"].tolist(),
                    rows[rows["side"] == 1]["size"].tolist(),
                    strict=True,
                ),
                reverse=True,
            )
            assert bids == want_bids
            assert asks[0][0] == int(rows[rows["side"] == -1]["price"].min())
            checked += 1
    assert checked >= 1


def run_synthetic(seed: int, actions: int) -> list[tuple[int, tuple]]:
    params = SyntheticParams(seed=seed, initial_price_ticks=4000)
    config = sim_config(
        markets=[
            MarketConfig(
                market_id="SEI/USDC",
                base="SEI",
                quote="USDC",
                tick_size="0.0001",
                lot_size="1",
                synthetic=params,
            )
        ]
    )
    ticks = itertools.count(1_700_000_000_000_000_000, 1000)
    ex = Exchange(config, clock=lambda: next(ticks))
    market = ex.markets["SEI/USDC"]
    from flashmm.venue.sim.synthetic import SyntheticFlow

    market.flow = SyntheticFlow(params, 1_700_000_000_000_000_000)
    trail = []
    for _ in range(actions):
        ex.apply_flow_action(market, market.flow.next_action())
        trail.append((market.book.next_trade_id, market.book.depth(5)))
    return trail


def test_synthetic_market_is_deterministic_for_a_seed() -> None:
    a = run_synthetic(3, 3000)
    assert a == run_synthetic(3, 3000)
    assert a != run_synthetic(4, 3000)
    trades = a[-1][0] - 1
    assert trades > 50  # takers did trade against the resting flow
    spreads = [asks[0][0] - bids[0][0] for _, (bids, asks) in a if bids and asks]
    assert len(spreads) > 0.9 * len(a)  # a two-sided market nearly all the time
    assert np.median(spreads) >= 2  # thin: spreads of several ticks, like the small Sei pairs
