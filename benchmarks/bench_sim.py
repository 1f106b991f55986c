"""The simulator's two speed targets, over loopback sockets, server and client in one process.

- market data: 5-level ``OrderBookUpdate`` deltas delivered to one subscriber (target
  >= 50,000 frames/s), once through the feed alone (encode + send + receive) and once
  through the whole exchange (a replayed delta applied to the matching book, its level
  changes taken, encoded, sent, received);
- order round trip: ``POST /v1/orders`` written to ``new_order_ack`` read from
  ``/v1/stream`` (target p50 <= 500 µs), sent and read by the engine's own clients
  (``flashmm.venue.gateway``), so the figure includes what the engine pays.

Server and client share one uvloop loop: on this kind of machine a cross-process round
trip pays for waking an idle core, which says more about the VM than about the venue.

    pytest benchmarks/bench_sim.py --benchmark-enable --benchmark-only
    python benchmarks/bench_sim.py        # frames/s and round-trip percentiles
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from flashmm.data.events import EVENT_DTYPE, LAST_IN_BATCH, EventKind
from flashmm.venue.gateway import ExecutionStream, GatewaySettings, VenueGateway
from flashmm.venue.order_entry import NewOrderAck, OrderCancelled, OrderRequest, StreamEvent
from flashmm.venue.protocol import encode_subscribe
from flashmm.venue.sim.config import (
    AccountConfig,
    AssetConfig,
    FeedConfig,
    MarketConfig,
    RateLimitConfig,
    SimConfig,
)
from flashmm.venue.sim.exchange import ReplayTape
from flashmm.venue.sim.server import SimServer

FRAMES = 20_000
ORDERS = 2_000
KEY = "bench-key"
_client_ids = itertools.count()


def bench_config() -> SimConfig:
    return SimConfig(
        assets=[
            AssetConfig(symbol="SEI", denom="usei", decimals=6),
            AssetConfig(symbol="USDC", denom="uusdc", decimals=6),
        ],
        markets=[
            MarketConfig(
                market_id="SEI/USDC", base="SEI", quote="USDC", tick_size="0.0001", lot_size="1"
            )
        ],
        accounts=[
            AccountConfig(
                name="bench",
                api_key=KEY,
                address="sei1bench",
                balances={"SEI": "1000000000", "USDC": "1000000000"},
            )
        ],
        feed=FeedConfig(snapshot_interval_s=0.0),
        rate_limit=RateLimitConfig(orders_per_second=1_000_000),
    )


class _Counter(WSListener):
    """Counts text frames; wakes the waiter when ``target`` have arrived."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done: asyncio.Future[None] | None = None
        self.last: bytes = b""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        self.count += 1
        payload = frame.get_payload_as_bytes()
        if self.done is not None and self.count >= self.target and not self.done.done():
            self.last = payload
            self.done.set_result(None)

    def expect(self, more: int) -> asyncio.Future[None]:
        self.target = self.count + more
        self.done = asyncio.get_running_loop().create_future()
        return self.done


@contextmanager
def running_sim() -> Iterator[tuple[asyncio.AbstractEventLoop, SimServer]]:
    loop = uvloop.new_event_loop()
    sim = SimServer(bench_config(), run_flows=False)
    loop.run_until_complete(sim.start())
    try:
        yield loop, sim
    finally:
        loop.run_until_complete(sim.stop())
        loop.close()


async def _subscriber(sim: SimServer) -> _Counter:
    transport, client = await ws_connect(_Counter, sim.urls["market_data"])
    assert isinstance(client, _Counter)
    done = client.expect(2)  # ack + snapshot
    transport.send(WSMsgType.TEXT, encode_subscribe(1, "OrderBookUpdate", "SEI/USDC"))
    await done
    return client


def _delta_rows(n_updates: int, levels: int = 5) -> np.ndarray:
    """``n_updates`` replayed depth deltas of ``levels`` levels per side around 0.4000."""
    rows = np.zeros(n_updates * 2 * levels, dtype=EVENT_DTYPE)
    rng = np.random.default_rng(1)
    rows["kind"] = EventKind.DEPTH_DELTA
    rows["side"] = np.tile(np.repeat([1, -1], levels), n_updates)
    offsets = np.tile(
        np.concatenate([-np.arange(1, levels + 1), np.arange(1, levels + 1)]), n_updates
    )
    rows["price"] = 4000 + offsets
    rows["size"] = rng.integers(1, 1000, len(rows))
    rows["flags"][2 * levels - 1 :: 2 * levels] = LAST_IN_BATCH
    return rows


# ------------------------------------------------------------------------- market data


def _feed_burst(loop: asyncio.AbstractEventLoop, sim: SimServer, client: _Counter) -> float:
    levels = np.array([[0.4000 - i * 0.0001, 100.0 + i] for i in range(5)])
    asks = np.array([[0.4001 + i * 0.0001, 100.0 + i] for i in range(5)])
    seq = itertools.count(1_000_000)

    async def burst() -> float:
        done = client.expect(FRAMES)
        t0 = time.perf_counter()
        for i in range(FRAMES):
            sim.market_data.publish_book("SEI/USDC", next(seq), False, levels, asks, time.time_ns())
            if i % 128 == 0:
                await asyncio.sleep(0)
        await done
        return time.perf_counter() - t0

    return loop.run_until_complete(burst())


def _exchange_burst(
    loop: asyncio.AbstractEventLoop, sim: SimServer, client: _Counter, tape: ReplayTape
) -> float:
    ex = sim.exchange
    market = ex.markets["SEI/USDC"]

    async def burst() -> float:
        done = client.expect(FRAMES)
        t0 = time.perf_counter()
        for i in range(FRAMES):
            ex.apply_replay_step(market, tape, i)
            if i % 128 == 0:
                await asyncio.sleep(0)
        await done
        return time.perf_counter() - t0

    return loop.run_until_complete(burst())


@pytest.mark.parametrize("path", ["feed", "exchange"])
def test_market_data_frames_per_second(benchmark, path: str) -> None:
    with running_sim() as (loop, sim):
        client = loop.run_until_complete(_subscriber(sim))
        tape = ReplayTape(_delta_rows(FRAMES))
        if path == "feed":
            run = lambda: _feed_burst(loop, sim, client)  # noqa: E731
        else:
            run = lambda: _exchange_burst(loop, sim, client, tape)  # noqa: E731
        seconds = benchmark.pedantic(run, rounds=3, iterations=1)
        assert client.count >= FRAMES + 2
        assert b'"kind":"delta"' in client.last
        if seconds:
            benchmark.extra_info["frames_per_s"] = round(FRAMES / seconds)


# ------------------------------------------------------------------------- round trip


async def _round_trips(sim: SimServer, n: int) -> tuple[list[float], list[float]]:
    """Orders through the engine's own gateway; acks read by its own execution stream."""
    settings = GatewaySettings(
        rest_url=sim.urls["order_entry"], stream_url=sim.urls["stream"], api_key=KEY
    )
    acks: dict[str, float] = {}
    cancels = 0

    def on_event(event: StreamEvent) -> None:
        nonlocal cancels
        if isinstance(event, NewOrderAck):
            acks[event.client_order_id] = time.perf_counter()
        elif isinstance(event, OrderCancelled):
            cancels += 1

    stream = ExecutionStream(settings, on_event)
    await stream.start()
    to_ack: list[float] = []
    to_answer: list[float] = []
    try:
        async with VenueGateway(settings) as gateway:
            for i in range(n):
                cid = f"rt{next(_client_ids)}"  # never reused: a resend would be idempotent
                req = OrderRequest(
                    market_id="SEI/USDC",
                    side="buy",
                    price="0.3000",
                    quantity="1",
                    time_in_force="POST_ONLY",
                    client_order_id=cid,
                )
                t0 = time.perf_counter()
                answer = await gateway.submit(req)
                t1 = time.perf_counter()
                assert answer.success, answer
                while cid not in acks:
                    await asyncio.sleep(0)
                to_answer.append(t1 - t0)
                to_ack.append(acks.pop(cid) - t0)
                if i % 200 == 199:  # keep the book small: the cancel is not timed
                    goal = cancels + 200
                    await gateway.cancel_all()
                    while cancels < goal:
                        await asyncio.sleep(0)
    finally:
        await stream.stop()
    return to_ack, to_answer


def test_order_round_trip(benchmark) -> None:
    with running_sim() as (loop, sim):
        loop.run_until_complete(_round_trips(sim, 50))  # warm up
        result: dict[str, list[float]] = {}

        def run() -> None:
            result["ack"], result["answer"] = loop.run_until_complete(_round_trips(sim, 500))

        benchmark.pedantic(run, rounds=1, iterations=1)
        ack = np.array(result["ack"]) * 1e6
        benchmark.extra_info["ack_p50_us"] = round(float(np.percentile(ack, 50)), 1)
        benchmark.extra_info["ack_p99_us"] = round(float(np.percentile(ack, 99)), 1)
        assert len(ack) == 500


def main() -> None:
    with running_sim() as (loop, sim):
        client = loop.run_until_complete(_subscriber(sim))
        tape = ReplayTape(_delta_rows(FRAMES))
        feed = [FRAMES / _feed_burst(loop, sim, client) for _ in range(5)]
        exchange = [FRAMES / _exchange_burst(loop, sim, client, tape) for _ in range(5)]
        print(f"market data, 5-level deltas, one subscriber, {FRAMES} frames x 5 rounds:")
        print(f"  feed only        median {statistics.median(feed):>9,.0f} frames/s")
        print(f"  through exchange median {statistics.median(exchange):>9,.0f} frames/s")
        loop.run_until_complete(_round_trips(sim, 200))
        ack, answer = loop.run_until_complete(_round_trips(sim, ORDERS))
        for name, xs in (("REST answer", answer), ("new_order_ack", ack)):
            us = np.array(xs) * 1e6
            p50, p90, p99 = np.percentile(us, [50, 90, 99])
            print(
                f"order round trip to {name:14s} ({ORDERS} orders): p50 {p50:6.0f} µs, "
                f"p90 {p90:6.0f} µs, p99 {p99:6.0f} µs"
            )


if __name__ == "__main__":
    main()
