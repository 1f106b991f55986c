"""The engine's two latency targets, against the simulator over loopback sockets.

- book update -> order at the venue (target p50 <= 1 ms): the simulator runs in this
  process, the engine as ``flashmm run`` in a subprocess. A trial moves the top of the book
  from another account (an inside bid placed, then cancelled), so the engine's quote
  changes; t0 is stamped when the simulator has written that ``OrderBookUpdate`` frame to
  the engine's socket, t1 when the first bytes of the engine's next new order are read by
  the simulator (and, reported beside it, when the simulator's HTTP server has parsed it
  and handed it to the matching engine). All stamps are taken in this process, so no
  clocks are compared across processes.
  Two market conditions are measured side by side, in alternating blocks: a busy market
  (the top moves every 2-4 ms) and a quiet one (every 20-50 ms, the engine idle between).
- emergency stop -> zero open orders: the engine runs in this process's loop with 20
  resting GTC orders on top of its own two quotes; ``emergency_stop`` is timed until it
  returns, which is after the venue has listed zero open orders.

    pytest benchmarks/bench_engine.py --benchmark-enable -s
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import msgspec
import numpy as np
import pytest
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from flashmm._core.quoting import QuoteParams
from flashmm.config import (
    ENV_PREFIX,
    EngineConfig,
    EngineSection,
    MarketConfig,
    StateSection,
    VenueSection,
)
from flashmm.engine.engine import EmergencyStopReport, Engine
from flashmm.engine.orders import OrderSettings
from flashmm.engine.records import Side
from flashmm.engine.risk import RiskSettings
from flashmm.venue.order_entry import OrderRequest, from_units
from flashmm.venue.sim.config import (
    AccountConfig,
    AssetConfig,
    FeedConfig,
    RateLimitConfig,
    SimConfig,
)
from flashmm.venue.sim.config import MarketConfig as SimMarketConfig
from flashmm.venue.sim.exchange import Account
from flashmm.venue.sim.server import SimServer

MARKET = "SEI/USDC"
TICK_SIZE = Decimal("0.0001")
DEMO_KEY = "demo-key"
OTHER_KEY = "other-key"
DEMO_ADDRESS = "sei1demo"
_DEMO_KEY_HEADER = f"X-API-Key: {DEMO_KEY}".encode()  # as the engine's gateway sends it

# The other account's book, ticks of 0.0001. The engine quotes at least MIN_SPREAD_TICKS
# wide, so its quotes sit behind this book and never set the top: each trial's move of
# the top is the only thing that changes the engine's decision.
BOOK_BID, BOOK_ASK = 3995, 4005
MIN_SPREAD_TICKS = 20
INSIDE_BID = BOOK_BID + 4  # moves the mid by 2 ticks: both quote prices change
FAR_BID = 3000  # the emergency-stop orders rest here, far from any fill

TRIALS, QUICK_TRIALS, WARMUP_TRIALS = 100, 5, 5
ORDER_WAIT_S = 0.2  # a trial without an engine order within this long is counted as missed
# How often the top of book moves, per market condition. In a quiet market the engine
# idles between updates and meets each one with cold caches; in a busy one it does not.
# Both are measured in the same session, in alternating blocks, so both see the same
# machine.
SPACING_S = {"busy": (0.002, 0.004), "quiet": (0.02, 0.05)}
BLOCK_TRIALS = 20
STOP_ROUNDS, QUICK_STOP_ROUNDS = 10, 2
RESTING_ORDERS = 20
ENGINE_START_TIMEOUT_S = 60.0

T = TypeVar("T")
_client_ids = itertools.count()


def bench_config() -> SimConfig:
    """One quiet market (no flow runs); the engine's account and another one."""
    balances = {"SEI": "10000", "USDC": "10000"}
    return SimConfig(
        assets=[
            AssetConfig(symbol="SEI", denom="usei", decimals=6),
            AssetConfig(symbol="USDC", denom="uusdc", decimals=6),
        ],
        markets=[
            SimMarketConfig(
                market_id=MARKET, base="SEI", quote="USDC", tick_size=str(TICK_SIZE), lot_size="1"
            )
        ],
        accounts=[
            AccountConfig(name="demo", api_key=DEMO_KEY, address=DEMO_ADDRESS, balances=balances),
            AccountConfig(name="other", api_key=OTHER_KEY, address="sei1other", balances=balances),
        ],
        feed=FeedConfig(snapshot_interval_s=0.5),
        rate_limit=RateLimitConfig(orders_per_second=10_000),
    )


def engine_config(sim: SimServer, journal: Path) -> EngineConfig:
    """The engine on ``sim``'s SEI/USDC: no order budget in the way, risk limits loose."""
    return EngineConfig(
        engine=EngineSection(
            journal=str(journal), metrics_port=0, log_level="warning", log_format="text"
        ),
        venue=VenueSection(
            market_data_urls=[sim.urls["market_data"]],
            rest_url=sim.urls["order_entry"],
            stream_url=sim.urls["stream"],
            api_key=DEMO_KEY,
            address=DEMO_ADDRESS,
        ),
        orders=OrderSettings(orders_per_second=1000, requote_ticks=0),
        risk=RiskSettings(
            position_limit_fraction=0.5, reject_rate_limit=1.0, latency_limit_ms=5000.0
        ),
        quoting=QuoteParams(min_spread_ticks=MIN_SPREAD_TICKS),
        markets=[MarketConfig(market_id=MARKET)],
        state=StateSection(run_dir=str(journal.parent / "run")),
    )


async def _publish_snapshots(sim: SimServer) -> None:
    # What ``Exchange.run`` does besides the flows: keeps the engine's feed from going stale.
    while True:
        await asyncio.sleep(sim.config.feed.snapshot_interval_s)
        sim.exchange.publish_snapshots()


@contextmanager
def running_sim() -> Iterator[tuple[asyncio.AbstractEventLoop, SimServer]]:
    """The simulator on a uvloop loop that runs only inside ``loop.run_until_complete``."""
    loop = uvloop.new_event_loop()
    sim = SimServer(bench_config(), run_flows=False)
    loop.run_until_complete(sim.start())
    snapshots = loop.create_task(_publish_snapshots(sim))
    try:
        yield loop, sim
    finally:
        snapshots.cancel()
        loop.run_until_complete(sim.stop())
        loop.close()


def _account(sim: SimServer, key: str) -> Account:
    account = sim.exchange.account_for_key(key)
    assert account is not None, key
    return account


def _other_order(side: Literal["buy", "sell"], price_ticks: int) -> OrderRequest:
    """A resting order of the other account: 1000 lots, post-only."""
    return OrderRequest(
        market_id=MARKET,
        side=side,
        price=from_units(price_ticks, TICK_SIZE),
        quantity="1000",
        time_in_force="POST_ONLY",
        client_order_id=f"other{next(_client_ids)}",  # never reused: a resend is idempotent
    )


async def _seed_book(sim: SimServer) -> None:
    async with httpx.AsyncClient(
        base_url=sim.urls["order_entry"], headers={"X-API-Key": OTHER_KEY}, timeout=5
    ) as other:
        for side, ticks in (("buy", BOOK_BID), ("sell", BOOK_ASK)):
            body = msgspec.json.encode(_other_order(side, ticks))
            answer = (await other.post("/v1/orders", content=body)).json()
            assert answer["success"], answer


async def _demo_orders(demo: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = (await demo.get("/v1/orders", params={"market_id": MARKET})).json()
    assert answer["success"], answer
    return answer["data"]["orders"]


async def _until_listed(
    demo: httpx.AsyncClient, done: Callable[[list[dict[str, Any]]], bool], what: str
) -> None:
    """Poll the demo account's open orders until ``done`` holds (5 s at most)."""
    deadline = time.monotonic() + 5.0
    while not done(listed := await _demo_orders(demo)):
        if time.monotonic() >= deadline:
            pytest.fail(f"no {what} at the venue after 5 s; it lists {listed}")
        await asyncio.sleep(0.01)


def _two_quotes(listed: list[dict[str, Any]], besides: AbstractSet[str] = frozenset()) -> bool:
    """The engine quotes both sides (orders in ``besides`` aside)."""
    sides = {o["side"] for o in listed if o["client_order_id"] not in besides}
    return sides == {"buy", "sell"}


def _all_resting(ids: AbstractSet[str], listed: list[dict[str, Any]]) -> bool:
    """Every order of ``ids`` is open, and the engine quotes both sides besides them."""
    return ids <= {o["client_order_id"] for o in listed} and _two_quotes(listed, ids)


# ------------------------------------------------------------ book update -> order


class _UpdateToOrder:
    """Stamps the book update a trial causes (t0) and the next demo order to arrive: when
    its request reaches the simulator's socket, and when it reaches the matching engine."""

    def __init__(self, sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.sent_ns = 0
        self.received_ns = 0
        self.arrived: asyncio.Future[tuple[int, int]] | None = None
        publish_book = sim.market_data.publish_book
        place_order = sim.exchange.place_order
        data_received = HttpToolsProtocol.data_received

        def stamped_publish_book(market_id: str, *args: Any) -> None:
            publish_book(market_id, *args)
            if self.armed and market_id == MARKET:
                self.sent_ns = time.perf_counter_ns()  # the frame is in the engine's socket
                self.armed = False

        def stamped_data_received(protocol: HttpToolsProtocol, data: bytes) -> None:
            # The first bytes of the engine's next new order, as the simulator reads them.
            if (
                self.sent_ns
                and not self.received_ns
                and data.startswith(b"POST /v1/orders HTTP/")
                and _DEMO_KEY_HEADER in data
            ):
                self.received_ns = time.perf_counter_ns()
            data_received(protocol, data)

        def stamped_place_order(account: Account, req: OrderRequest) -> str:
            arrived = self.arrived
            # An order whose bytes came in before t0 was not caused by this trial.
            if account.name == "demo" and self.received_ns and arrived and not arrived.done():
                arrived.set_result((self.received_ns, time.perf_counter_ns()))
            return place_order(account, req)

        monkeypatch.setattr(sim.market_data, "publish_book", stamped_publish_book)
        monkeypatch.setattr(HttpToolsProtocol, "data_received", stamped_data_received)
        monkeypatch.setattr(sim.exchange, "place_order", stamped_place_order)

    def move(self, action: Callable[[], T]) -> tuple[T, asyncio.Future[tuple[int, int]]]:
        """Run ``action`` (a change of the top of book); the future gets the order's two
        arrival stamps once it comes."""
        self.sent_ns = self.received_ns = 0
        arrived = self.arrived = asyncio.get_running_loop().create_future()
        self.armed = True
        try:
            done = action()
        finally:
            self.armed = False
        assert self.sent_ns, "the move did not publish a book update"
        return done, arrived


async def _trials(
    sim: SimServer, probe: _UpdateToOrder, n: int, spacing_s: tuple[float, float], seed: int = 0
) -> tuple[list[tuple[int, int]], int]:
    """``n`` moves of the top of book, ``spacing_s`` apart (a uniform range); returns the
    latencies (ns: to the simulator's socket, to its matching engine) and the missed count."""
    other = _account(sim, OTHER_KEY)
    rng = random.Random(seed)  # spacing varies so trials do not lock onto the engine's timers
    latencies: list[tuple[int, int]] = []
    missed = 0
    inside_id: str | None = None
    for _ in range(n):
        if inside_id is None:
            request = _other_order("buy", INSIDE_BID)
            inside_id, arrived = probe.move(partial(sim.exchange.place_order, other, request))
        else:
            _, arrived = probe.move(partial(sim.exchange.cancel_order, other, inside_id))
            inside_id = None
        try:
            received, matched = await asyncio.wait_for(arrived, ORDER_WAIT_S)
            latencies.append((received - probe.sent_ns, matched - probe.sent_ns))
        except TimeoutError:
            missed += 1
        await asyncio.sleep(rng.uniform(*spacing_s))
    if inside_id is not None:
        sim.exchange.cancel_order(other, inside_id)
    return latencies, missed


async def _start_engine_process(
    config_path: Path, ready: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """``flashmm run`` in a subprocess; returns once its ready file exists."""
    # FLASHMM_* variables of whoever runs the benchmark must not change what it measures.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flashmm",
                "run",
                "--config",
                config_path,
                "--ready-file",
                ready,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while not ready.exists():  # the simulator answers the engine's start-up while we wait
        if proc.poll() is not None or time.monotonic() >= deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"the engine did not start: {log_path.read_text(errors='replace')}")
        await asyncio.sleep(0.02)
    return proc


async def _stop_engine_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then wait while the simulator confirms the engine's cancels."""
    proc.terminate()
    deadline = time.monotonic() + 10.0
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _percentiles_us(latencies_ns: list[int]) -> dict[str, float]:
    us = np.array(latencies_ns) / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {
        "p50_us": round(float(p50), 1),
        "p90_us": round(float(p90), 1),
        "p99_us": round(float(p99), 1),
        "max_us": round(float(us.max()), 1),
    }


def test_book_update_to_order(benchmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trials = QUICK_TRIALS if benchmark.disabled else TRIALS
    block = min(BLOCK_TRIALS, trials)
    with running_sim() as (loop, sim):
        loop.run_until_complete(_seed_book(sim))
        # Before the engine connects: the event loop binds a connection's data_received
        # when the connection opens, so the socket stamp must be in place by then.
        probe = _UpdateToOrder(sim, monkeypatch)
        config_path = tmp_path / "engine.toml"
        config_path.write_bytes(msgspec.toml.encode(engine_config(sim, tmp_path / "journal.db")))
        ready = tmp_path / "engine.ready.json"
        proc = loop.run_until_complete(
            _start_engine_process(config_path, ready, tmp_path / "engine.log")
        )
        try:

            async def quoting() -> None:
                async with httpx.AsyncClient(
                    base_url=sim.urls["order_entry"], headers={"X-API-Key": DEMO_KEY}, timeout=5
                ) as demo:
                    await _until_listed(demo, _two_quotes, "engine quotes")

            loop.run_until_complete(quoting())
            # connections, caches
            loop.run_until_complete(_trials(sim, probe, WARMUP_TRIALS, SPACING_S["busy"]))
            result: dict[str, tuple[list[tuple[int, int]], int]] = {c: ([], 0) for c in SPACING_S}

            def run() -> None:
                for seed in range(trials // block):
                    for condition, spacing in SPACING_S.items():
                        got, missed = loop.run_until_complete(
                            _trials(sim, probe, block, spacing, seed)
                        )
                        so_far, missed_so_far = result[condition]
                        result[condition] = (so_far + got, missed_so_far + missed)

            benchmark.pedantic(run, rounds=1, iterations=1)
            inside = _engine_stage_latencies(tmp_path / "run")
        finally:
            loop.run_until_complete(_stop_engine_process(proc))
    lines = []
    for condition, (latencies, missed) in result.items():
        done = len(latencies) + missed
        assert latencies, f"{condition}: no engine order arrived after any of {done} book updates"
        low, high = (x * 1e3 for x in SPACING_S[condition])
        lines.append(
            f"{condition} market (top moves every {low:.0f}-{high:.0f} ms), {len(latencies)} of "
            f"{done} trials ({missed} without an order in {ORDER_WAIT_S * 1e3:.0f} ms):"
        )
        info: dict[str, Any] = {"trials": done, "missed": missed}
        for k, where in enumerate(("at the simulator", "at its matching engine")):
            stats = _percentiles_us([pair[k] for pair in latencies])
            info[where] = stats
            lines.append(
                f"    {where:22s} "
                + ", ".join(f"{name.removesuffix('_us')} {v:.0f} µs" for name, v in stats.items())
            )
        benchmark.extra_info[condition] = info
    print(
        "\nbook update -> order (the request's first bytes read by the simulator; then handed "
        "to its matching engine)\n  "
        + "\n  ".join(lines)
        + "\ninside the engine (its latest 1024 ticks, frame received -> ...): "
        + ", ".join(f"{k} {v * 1e3:.0f} µs" for k, v in inside.items())
    )


def _engine_stage_latencies(run_dir: Path) -> dict[str, float]:
    """The engine's own stage percentiles (ms), as it published them to its Redis."""
    import redis

    from flashmm.state.keys import Keys
    from flashmm.state.schema import decode_engine_state
    from flashmm.state.valkey import read_url_file

    url = read_url_file(run_dir)
    assert url is not None, f"the engine wrote no redis.url in {run_dir}"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 2.0
        while True:  # the state is flushed at 10 Hz: wait for one after the trials
            data = client.get(Keys().engine)
            latency = decode_engine_state(data).latency_ms if data else {}
            if "tick_to_order_p50" in latency or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        client.close()
    wanted = ("decided", "tick_to_order", "acked")
    return {k: v for k, v in latency.items() if k.rsplit("_", 1)[0] in wanted}


# ------------------------------------------------------------ emergency stop


async def _stop_rounds(
    sim: SimServer, journal: Path, rounds: int
) -> list[tuple[int, EmergencyStopReport]]:
    """``rounds`` emergency stops of 20 resting orders + the engine's quotes; resumes between."""
    engine = Engine(engine_config(sim, journal))
    await engine.start()
    results: list[tuple[int, EmergencyStopReport]] = []
    try:
        async with httpx.AsyncClient(
            base_url=sim.urls["order_entry"], headers={"X-API-Key": DEMO_KEY}, timeout=5
        ) as demo:
            for _ in range(rounds):
                await _until_listed(demo, _two_quotes, "engine quotes")
                resting = {
                    engine.orders.submit_order(
                        MARKET, Side.BUY, 1, price_ticks=FAR_BID - i, time_in_force="GTC"
                    ).client_order_id
                    for i in range(RESTING_ORDERS)
                }
                await _until_listed(
                    demo, partial(_all_resting, resting), f"{RESTING_ORDERS} resting orders"
                )
                t0 = time.perf_counter_ns()
                report = await engine.emergency_stop("bench")
                elapsed = time.perf_counter_ns() - t0
                assert report.open_orders == 0, report
                assert report.orders_cancelled >= RESTING_ORDERS + 2, report
                assert await _demo_orders(demo) == []
                results.append((elapsed, report))
                engine.resume("bench")
    finally:
        await engine.stop()
    return results


def test_emergency_stop_to_zero_open_orders(benchmark, tmp_path: Path) -> None:
    rounds = QUICK_STOP_ROUNDS if benchmark.disabled else STOP_ROUNDS
    with running_sim() as (loop, sim):
        loop.run_until_complete(_seed_book(sim))
        result: dict[str, list[tuple[int, EmergencyStopReport]]] = {}

        def run() -> None:
            result["rounds"] = loop.run_until_complete(
                _stop_rounds(sim, tmp_path / "journal.db", rounds)
            )

        benchmark.pedantic(run, rounds=1, iterations=1)
    stops = result["rounds"]
    assert len(stops) == rounds
    stats = _percentiles_us([elapsed for elapsed, _ in stops])
    own_ms = np.array([report.elapsed_ms for _, report in stops])
    benchmark.extra_info.update(
        {k.replace("_us", "_ms"): round(v / 1e3, 2) for k, v in stats.items()},
        rounds=rounds,
        report_elapsed_p50_ms=round(float(np.median(own_ms)), 2),
        orders_cancelled=stops[0][1].orders_cancelled,
    )
    print(
        f"\nemergency stop -> zero open orders ({RESTING_ORDERS} resting + quotes), "
        f"{rounds} rounds: "
        + ", ".join(f"{k.removesuffix('_us')} {v / 1e3:.2f} ms" for k, v in stats.items())
        + f"; report.elapsed_ms p50 {np.median(own_ms):.2f} ms"
    )
