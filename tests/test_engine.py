"""The engine end to end against the real simulator over loopback.

The simulator runs in the test's event loop with no market flow of its own; the "other"
account provides the outside book and takes the engine's quotes, so every fill, price and
PnL below is known. The venue's own ledger is the independent check of the engine's books.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from conftest import DEMO_ADDRESS, DEMO_KEY, order
from flashmm.config import EngineConfig
from flashmm.engine.engine import Engine
from flashmm.engine.journal import Journal
from flashmm.engine.records import OrderState, Side
from flashmm.engine.risk import RiskState
from flashmm.venue.sim.faults import parse_fault
from flashmm.venue.sim.server import SimServer

MARKET = "SEI/USDC"
TICK = Decimal("0.0001")
MICRO = Decimal("0.000001")


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def engine_settings(server: SimServer, journal: Path, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "engine": {
            "journal": str(journal),
            "metrics_port": 0,
            "decide_hz": 20.0,
            "reconcile_interval_s": 0.5,
            "risk_interval_s": 0.1,
            "shutdown_timeout_s": 2.0,
            "log_format": "text",
        },
        "venue": {
            "market_data_urls": [server.urls["market_data"]],
            "rest_url": server.urls["order_entry"],
            "stream_url": server.urls["stream"],
            "api_key": DEMO_KEY,
            "address": DEMO_ADDRESS,
        },
        "feed": {"stale_after_s": 2.0, "backoff_initial_s": 0.02, "backoff_max_s": 0.1},
        "orders": {"ack_timeout_s": 0.5, "reconcile_grace_s": 0.5},
        "quoting": {"base_size_lots": 10, "max_inventory_lots": 1000},
        "markets": [{"market_id": MARKET}],
        "state": {"run_dir": str(journal.parent / "run")},  # a subprocess's embedded Redis
    }
    return _merge(data, changes)


def engine_config(server: SimServer, journal: Path, **changes: Any) -> EngineConfig:
    return msgspec.convert(engine_settings(server, journal, **changes), EngineConfig)


@asynccontextmanager
async def running(config: EngineConfig) -> AsyncIterator[Engine]:
    engine = Engine(config)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def until(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def seed(other: httpx.AsyncClient, bid: str = "0.3990", ask: str = "0.4010") -> None:
    """The outside book: 1000 SEI each side from the other account."""
    for cid, side, price in (("seed-bid", "buy", bid), ("seed-ask", "sell", ask)):
        body = order(f"{cid}-{price}", side, price, "1000", time_in_force="POST_ONLY")
        answer = await other.post("/v1/orders", json=body)
        assert answer.status_code == 200, answer.text


def quotes(engine: Engine) -> tuple[Any, Any] | None:
    """The engine's resting bid and ask on MARKET, once both are open."""
    bid = engine.orders.slots[MARKET, Side.BUY].order
    ask = engine.orders.slots[MARKET, Side.SELL].order
    if bid is None or ask is None:
        return None
    if bid.state is not OrderState.OPEN or ask.state is not OrderState.OPEN:
        return None
    return bid, ask


async def venue_open_orders(demo: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = await demo.get("/v1/orders")
    assert answer.status_code == 200
    return answer.json()["data"]["orders"]


async def take(other: httpx.AsyncClient, side: str, quantity: str, cid: str) -> None:
    """A market order of the other account (IOC)."""
    body = order(cid, side, None, quantity, type="market", time_in_force="IOC")
    answer = await other.post("/v1/orders", json=body)
    assert answer.status_code == 200, answer.text


def venue_position(venue: SimServer) -> Any:
    return venue.exchange.ledger.position("demo", venue.exchange.markets[MARKET].spec)


def inject(venue: SimServer, name: str, **params: Any) -> None:
    venue.exchange.inject(parse_fault(name, params))


# ---------------------------------------------------------------------- quoting and fills


async def test_quotes_both_sides_fills_and_pnl_match_the_venue(
    venue: SimServer, other: httpx.AsyncClient, demo: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    async with running(engine_config(venue, tmp_path / "j.sqlite3")) as engine:
        bid, ask = await until(lambda: quotes(engine), "both quotes open")
        # passive, inside the outside book, and on the venue
        assert 3990 < bid.price_ticks < ask.price_ticks < 4010
        listed = {o["client_order_id"] for o in await venue_open_orders(demo)}
        assert listed == {bid.client_order_id, ask.client_order_id}

        await take(other, "buy", "10", "t1")  # lifts the engine's ask
        await until(lambda: engine.portfolio.position_lots(MARKET) == -10, "the ask filled")
        sold_at = ask.price_ticks
        await until(lambda: quotes(engine), "quotes back")
        bid_now = engine.orders.slots[MARKET, Side.BUY].order
        assert bid_now is not None
        await take(other, "sell", "10", "t2")  # hits the engine's bid
        await until(lambda: engine.portfolio.position_lots(MARKET) == 0, "the bid filled")
        bought_at = bid_now.price_ticks

        pos = engine.portfolio.position(MARKET)
        # hand check: 10 SEI sold at `sold_at`, bought back at `bought_at`
        expected = float((sold_at - bought_at) * 10 * TICK)
        assert pos.realized_pnl == pytest.approx(expected, abs=1e-9)
        # a maker rebate of 1 bp of each fill's notional, paid by the venue (a negative fee)
        # in whole micro-USDC, rounded towards zero
        fees = sum(
            (-(Decimal(px) * TICK * 10) / 10_000).quantize(MICRO, rounding=ROUND_CEILING)
            for px in (sold_at, bought_at)
        )
        assert pos.fees == float(fees)
        assert pos.net_pnl == pytest.approx(expected - float(fees), abs=1e-9)
        # the venue's ledger agrees, to the unit
        ledger = venue_position(venue)
        assert ledger.size == 0
        assert float(ledger.realized_pnl) == pytest.approx(pos.realized_pnl, abs=1e-9)
        assert float(ledger.fees_paid) == pytest.approx(pos.fees, abs=1e-6)
        assert engine.orders.counters["fills"] == 2
        assert engine.orders.counters["duplicate_fills"] == 0


async def test_requotes_only_beyond_the_tolerance_and_within_the_budget(
    venue: SimServer, other: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    config = engine_config(venue, tmp_path / "j.sqlite3", orders={"orders_per_second": 4})
    async with running(config) as engine:
        bid, ask = await until(lambda: quotes(engine), "both quotes open")
        await asyncio.sleep(0.5)
        # a calm book: the same two orders stay (queue position kept)
        assert quotes(engine) == (bid, ask)
        assert engine.orders.counters["submitted"] == 2
        # move the outside book many times quickly; the budget (4/s) holds new orders back
        for i in range(12):
            price = "0.3995" if i % 2 == 0 else "0.3991"
            await other.post("/v1/orders", json=order(f"mv{i}", "buy", price, "5"))
            await other.delete(f"/v1/orders/{(await last_order_id(other))}")
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.2)
        created = sorted(o.created_ns for o in engine.orders.orders.values())
        for i, start in enumerate(created):
            in_window = [t for t in created[i:] if t - start < 1_000_000_000]
            assert len(in_window) <= 4, "more than 4 new orders in one second"


async def last_order_id(client: httpx.AsyncClient) -> str:
    listed = (await client.get("/v1/orders")).json()["data"]["orders"]
    newest = max(listed, key=lambda o: int(o["order_id"]))
    return str(newest["order_id"])


# ---------------------------------------------------------------------- feed integrity


async def test_feed_drop_fails_over_to_the_backup_url(
    venue: SimServer, other: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    dead = "ws://127.0.0.1:9/websocket"  # discard port: nothing listens
    config = engine_config(
        venue,
        tmp_path / "j.sqlite3",
        venue={"market_data_urls": [dead, venue.urls["market_data"]]},
    )
    async with running(config) as engine:
        await until(lambda: quotes(engine), "quotes via the backup")
        assert engine.feed.connected_url == venue.urls["market_data"]
        assert engine.feed.counters["failovers"] == 1
        first = quotes(engine)
        inject(venue, "drop_connections", target="market_data")
        # quotes come off while the feed is down, then come back on a new connection
        await until(lambda: engine.orders.counters["own_cancels"] >= 2, "quotes pulled")
        assert first is not None and all(o.state is OrderState.CANCELLED for o in first)
        assert "feed" in first[0].reason
        await until(lambda: quotes(engine), "quotes after the reconnect")
        assert engine.feed.counters["reconnects"] >= 1


@pytest.mark.parametrize(
    ("fault", "reason", "counter"),
    [("skip_sequence", "gap", "gaps"), ("crossed_frame", "crossed", "crossed")],
)
async def test_book_integrity_fault_pulls_resyncs_and_resumes(
    venue: SimServer,
    other: httpx.AsyncClient,
    tmp_path: Path,
    fault: str,
    reason: str,
    counter: str,
) -> None:
    await seed(other)
    async with running(engine_config(venue, tmp_path / "j.sqlite3")) as engine:
        before = await until(lambda: quotes(engine), "quotes")
        inject(venue, fault, market_id=MARKET)
        await other.post("/v1/orders", json=order("nudge", "buy", "0.3980", "1"))
        await until(lambda: all(o.state is OrderState.CANCELLED for o in before), "quotes pulled")
        assert reason in before[0].reason
        assert engine.feed.counters[counter] == 1
        assert engine.feed.counters["resyncs"] >= 1
        after = await until(lambda: quotes(engine), "quotes after the resync")
        assert {o.client_order_id for o in after}.isdisjoint(o.client_order_id for o in before)
        # the resynced book is the venue's
        assert engine.feed.books[MARKET].best_bid == max(
            after[0].price_ticks, venue.exchange.markets[MARKET].book.best_bid() or 0
        )


async def test_stale_feed_pulls_quotes_until_updates_return(
    venue: SimServer, other: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    config = engine_config(venue, tmp_path / "j.sqlite3", feed={"stale_after_s": 0.3})
    async with running(config) as engine:
        before = await until(lambda: quotes(engine), "quotes")
        inject(venue, "stall_feed", duration_s=1.0)
        await until(lambda: all(o.state is OrderState.CANCELLED for o in before), "pulled")
        assert "stale" in before[0].reason
        assert engine.feed.counters["stale"] >= 1
        await until(lambda: quotes(engine), "quotes after the stall", timeout=5)


# ---------------------------------------------------------------------- venue refusals


async def test_rate_limit_burst_backs_off_without_breaching_the_budget(
    venue: SimServer, other: httpx.AsyncClient, demo: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    async with running(engine_config(venue, tmp_path / "j.sqlite3")) as engine:
        await until(lambda: quotes(engine), "quotes")
        inject(venue, "rate_limit_burst", count=3, retry_after_s=0.5)
        engine.pause("test")  # cancel-all: answered 429
        await until(lambda: engine.gateway.counters["rate_limited"] >= 1, "a 429")
        await until(lambda: not engine.orders.live_orders(), "quotes cancelled after the wait")
        assert await venue_open_orders(demo) == []
        engine.resume("test")
        await until(lambda: quotes(engine), "quotes after the burst")
        # while Retry-After ran, requests were held back here instead of hitting the venue
        assert engine.gateway.counters["rate_limited"] <= 3
        created = sorted(o.created_ns for o in engine.orders.orders.values())
        for i, start in enumerate(created):
            assert len([t for t in created[i:] if t - start < 1_000_000_000]) <= 10


# ---------------------------------------------------------------------- risk


async def test_emergency_stop_cancels_everything_and_flattens(
    venue: SimServer, other: httpx.AsyncClient, demo: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    async with running(engine_config(venue, tmp_path / "j.sqlite3")) as engine:
        await until(lambda: quotes(engine), "quotes")
        await take(other, "sell", "10", "t1")  # the engine buys 10
        await until(lambda: engine.portfolio.position_lots(MARKET) == 10, "long 10")
        await until(lambda: quotes(engine), "quotes again")
        report = await engine.emergency_stop("test")
        assert report.open_orders == 0
        assert report.flat
        assert report.orders_cancelled >= 2
        assert report.risk_state == RiskState.FLATTENED
        assert await venue_open_orders(demo) == []
        assert venue_position(venue).size == 0
        assert engine.portfolio.position_lots(MARKET) == 0
        # idempotent: a second call changes nothing and says so
        again = await engine.emergency_stop("test again")
        assert again.already_stopped and again.flat and again.open_orders == 0
        await asyncio.sleep(0.3)
        assert await venue_open_orders(demo) == []  # no quoting while flattened


async def test_drawdown_halts_cancels_and_stays_halted(
    venue: SimServer, other: httpx.AsyncClient, demo: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    # capital 10000 USDC + 10000 SEI at 0.40 = 14000; a 0.01% drawdown is 1.40 USDC
    config = engine_config(
        venue, tmp_path / "j.sqlite3", risk={"max_drawdown": 0.0001, "max_daily_drawdown": 0.0001}
    )
    async with running(config) as engine:
        await until(lambda: quotes(engine), "quotes")
        await take(other, "sell", "100", "t1")  # fills the engine's 10-lot bid, then the seed
        await until(lambda: engine.portfolio.position_lots(MARKET) == 10, "long 10")
        # the market drops: the outside book moves to 0.2000/0.2010
        for o in (await other.get("/v1/orders")).json()["data"]["orders"]:
            await other.delete(f"/v1/orders/{o['order_id']}")
        await seed(other, bid="0.2000", ask="0.2010")
        # 10 SEI lose ~0.19 each = ~1.9 USDC > 1.40
        await until(lambda: engine.ladder.state is RiskState.HALTED, "HALTED", timeout=5)
        assert "drawdown" in engine.ladder.history[-1].reason
        await until(lambda: not engine.orders.live_orders(), "orders cancelled")
        assert await venue_open_orders(demo) == []
        await asyncio.sleep(0.5)
        assert engine.ladder.state is RiskState.HALTED
        assert await venue_open_orders(demo) == []
    # the halt is journaled: a restarted engine comes back halted
    with Journal(tmp_path / "j.sqlite3") as journal:
        risk = journal.load().risk
    assert risk is not None and risk.state == "halted"


async def test_venue_rejects_pause_quoting_for_the_cooldown_then_it_resumes(
    venue: SimServer, other: httpx.AsyncClient, demo: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    risk = {"reject_min_orders": 4, "reject_rate_limit": 0.5, "cooldown_s": 1.0}
    async with running(engine_config(venue, tmp_path / "j.sqlite3", risk=risk)) as engine:
        await until(lambda: quotes(engine), "quotes")
        inject(venue, "reject_orders", count=4)
        engine.pause("requote")  # pull the quotes, so the next ones meet the rejecting venue
        engine.resume("requote")
        await until(lambda: engine.ladder.state is RiskState.PAUSED, "paused by rejects")
        paused = engine.ladder.history[-1]
        assert paused.reason.startswith("reject rate") and "paused 1 s" in paused.reason
        assert engine.orders.counters["rejected"] >= 4
        await until(lambda: not engine.orders.live_orders(), "quotes pulled")
        assert await venue_open_orders(demo) == []
        # the venue accepts orders again; after the cooldown the engine quotes by itself
        await until(lambda: engine.ladder.state is RiskState.ACTIVE, "resumed", timeout=5)
        await until(lambda: quotes(engine), "quotes after the cooldown")
        assert len(await venue_open_orders(demo)) == 2


async def test_pause_pulls_quotes_and_resume_restores_them(
    venue: SimServer, other: httpx.AsyncClient, demo: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    async with running(engine_config(venue, tmp_path / "j.sqlite3")) as engine:
        await until(lambda: quotes(engine), "quotes")
        assert engine.pause("maintenance") is not None
        assert engine.pause("again") is None  # idempotent
        await until(lambda: not engine.orders.live_orders(), "quotes pulled")
        assert await venue_open_orders(demo) == []
        assert engine.resume("done") is not None
        await until(lambda: quotes(engine), "quotes back")


# ---------------------------------------------------------------------- recovery


async def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    await until(
        lambda: path.exists() or proc.poll() is not None, "the engine's ready file", timeout
    )
    if proc.poll() is not None:
        raise AssertionError(f"engine exited with {proc.returncode}")


async def _exited(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Wait for ``proc`` without blocking the loop the simulator runs on."""
    await until(lambda: proc.poll() is not None, "the engine to exit", timeout)
    return proc.returncode


def _engine_process(config: Path, ready: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flashmm",
            "run",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


async def test_sigkill_and_restart_recover_positions_without_duplicates(
    venue: SimServer, other: httpx.AsyncClient, demo: httpx.AsyncClient, tmp_path: Path
) -> None:
    await seed(other)
    settings = engine_settings(venue, tmp_path / "j.sqlite3")
    config = tmp_path / "engine.toml"
    config.write_bytes(msgspec.toml.encode(settings))
    ready = tmp_path / "ready.json"
    proc = _engine_process(config, ready, tmp_path / "engine1.log")
    try:
        await _wait_file(ready, proc)
        await until(
            lambda: len(venue.exchange.open_orders(demo_account(venue), MARKET)) == 2,
            "quotes",
            timeout=10,
        )
        await take(other, "sell", "10", "t1")  # the engine buys 10
        await until(lambda: venue_position(venue).size == 10, "the fill")
        await asyncio.sleep(0.3)  # it journals and requotes
        proc.send_signal(signal.SIGKILL)
        await _exited(proc)
        # while it is dead, its resting ask is lifted: a fill it must learn on restart
        assert len(venue.exchange.open_orders(demo_account(venue), MARKET)) >= 1
        await take(other, "buy", "4", "t2")
        dead_position = venue_position(venue).size
        assert dead_position == 6
    finally:
        if proc.poll() is None:
            proc.kill()
    ready.unlink(missing_ok=True)
    proc = _engine_process(config, ready, tmp_path / "engine2.log")
    try:
        await _wait_file(ready, proc)
        await until(
            lambda: len(venue.exchange.open_orders(demo_account(venue), MARKET)) == 2,
            "quotes again",
            timeout=10,
        )
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert await _exited(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not ready.exists()
    # SIGTERM cancelled every quote
    assert await venue_open_orders(demo) == []
    with Journal(tmp_path / "j.sqlite3") as journal:
        state = journal.load()
    # every venue fill exactly once, and the journal's position is the venue's
    position = sum(f.size_lots * f.side for f in state.fills)
    assert Decimal(position) == venue_position(venue).size == 6
    trade_ids = [(f.trade_id, f.client_order_id) for f in state.fills]
    assert len(trade_ids) == len(set(trade_ids))
    assert not any(o.is_live for o in state.orders.values())
    # no client order id was ever sent twice for different orders
    log2 = (tmp_path / "engine2.log").read_text()
    assert "DUPLICATE_CLIENT_ORDER_ID" not in log2


def demo_account(venue: SimServer) -> Any:
    return venue.exchange.account_for_key(DEMO_KEY)
