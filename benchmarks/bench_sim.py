"""The simulator's two speed targets, over loopback sockets, server and client in one process.

- market data: 5-level ``OrderBookUpdate`` deltas delivered to one subscriber (target
  >= 50,000 frames/s), once through the feed alone (encode + send + receive) and once
  through the whole exchange (a replayed delta applied to the matching book, its level
  changes taken, encoded, sent, received);
- order round trip: ``POST /v1/orders`` written to ``new_order_ack`` read from
  ``/v1/stream`` (target p50 <= 500 µs), with a keep-alive HTTP/1.1 client written
  on asyncio streams so that the client's cost stays small next to the server's.

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
from urllib.parse import urlsplit

import msgspec
import numpy as np
import pytest
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from flashmm.data.events import EVENT_DTYPE, LAST_IN_BATCH, EventKind
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
        self.arrivals: dict[str, float] = {}

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        self.count += 1
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"type":"new_order_ack"'):
            # client_order_id is what the round trip is matched by
            cid = msgspec.json.decode(payload)["client_order_id"]
            self.arrivals[cid] = time.perf_counter()
        if self.done is not None and self.count >= self.target and not self.done.done():
            self.last = payload
            self.done.set_result(None)

    def expect(self, more: int) -> asyncio.Future[None]:
        self.target = self.count + more
        self.done = asyncio.get_running_loop().create_future()
        return self.done


class _Http:
    """HTTP/1.1 keep-alive requests on one connection (bodies with Content-Length only)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> _Http:
        parts = urlsplit(url)
        return cls(*await asyncio.open_connection(parts.hostname, parts.port))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: sim\r\nX-API-Key: {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


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
    _, stream = await ws_connect(_Counter, sim.urls["stream"], extra_headers={"X-API-Key": KEY})
    http = await _Http.open(sim.urls["order_entry"])
    to_ack: list[float] = []
    to_answer: list[float] = []
    try:
        for i in range(n):
            cid = f"rt{next(_client_ids)}"  # never reused: a resend would be idempotent
            body = (
                b'{"market_id":"SEI/USDC","side":"buy","price":"0.3000","quantity":"1",'
                b'"time_in_force":"POST_ONLY","client_order_id":"' + cid.encode() + b'"}'
            )
            acked = stream.expect(1)
            t0 = time.perf_counter()
            status, answer = await http.request("POST", "/v1/orders", body)
            t1 = time.perf_counter()
            assert status == 200, answer
            await acked
            to_answer.append(t1 - t0)
            to_ack.append(stream.arrivals.pop(cid) - t0)
            if i % 200 == 199:  # keep the book small: the cancel is not timed
                cancelled = stream.expect(200)
                await http.request("POST", "/v1/orders/cancel-all", b"{}")
                await cancelled
    finally:
        http.close()
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
