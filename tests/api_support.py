"""What the sidecar tests share: an engine's state written to Redis as the engine writes it,
the API served by real uvicorn on 127.0.0.1, tokens, and a stand-in command responder.

The responder answers commands the way the engine's command reader does (one result per
command id on ``{prefix}:command_results``); the real engine end to end is tested by the
engine's own suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis
import uvicorn

from flashmm.api import mint_token
from flashmm.api._server import uvicorn_config
from flashmm.config import EngineConfig, load_config
from flashmm.state.keys import Keys, LiveChannel
from flashmm.state.schema import (
    Command,
    CommandResult,
    Counters,
    EngineState,
    Event,
    MarketSnapshot,
    ModelInfo,
    OrderEvent,
    PortfolioView,
    PositionEvent,
    QuoteEvent,
    QuoteInputs,
    RiskView,
    decode_command,
    encode,
)

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"
KEYS = Keys()
SECOND = 1_000_000_000
NOW = 1_800_000_000 * SECOND
"""A fixed 'now' for event times (2027-01-15T08:00:00Z); heartbeats use the real clock."""


def api_config(**api_changes: Any) -> EngineConfig:
    """The default settings (no environment) with the test secret and ``api_changes``."""
    config = load_config(environ={})
    rate_limits = api_changes.pop("rate_limits", {})
    api = msgspec.structs.replace(
        config.api,
        jwt_secret=SECRET,
        rate_limits=msgspec.structs.replace(config.api.rate_limits, **rate_limits),
        **api_changes,
    )
    return msgspec.structs.replace(config, api=api)


def token(scope: str = "read", subject: str = "alice", ttl_s: int = 3600) -> str:
    return mint_token(SECRET, scope, subject, ttl_s)  # type: ignore[arg-type]


def auth(scope: str = "read", subject: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(scope, subject)}"}


# ---------------------------------------------------------------------------- engine state
def engine_state(
    heartbeat_ns: int, *, status: str = "active", risk: str = "active", reason: str = ""
) -> EngineState:
    return EngineState(
        version="0.1.0",
        pid=4242,
        started_ns=heartbeat_ns - 3600 * SECOND,
        heartbeat_ns=heartbeat_ns,
        ready=True,
        status=status,  # type: ignore[arg-type]
        risk=RiskView(state=risk, reason=reason, source="monitor", since_ns=NOW),  # type: ignore[arg-type]
        markets=["SEI/USDC", "ETH/USDC"],
        portfolio=PortfolioView(
            capital=10_000.0,
            equity=10_000.75,
            realized_pnl=1.5,
            unrealized_pnl=-0.25,
            fees=-0.5,
            net_pnl=0.75,
            daily_pnl=0.75,
            peak_equity=10_001.0,
            drawdown=0.25,
            gross_notional=1050.0,
            long_notional=50.0,
            short_notional=1000.0,
            volume=12_345.0,
        ),
        counters=Counters(
            orders_placed=1250,
            orders_filled=1180,
            fills=1180,
            predictions=15420,
            last_order_ns=NOW,
        ),
        model=ModelInfo(
            version="default-1",
            horizon_ms=200,
            last_prediction_ns=heartbeat_ns,
            predictions_per_second=5.0,
            inference_time_ms=0.04,
            accuracy=0.582,
            scored=900,
        ),
        latency_ms={"decided_p95": 0.04, "acked_p95": 1.2},
        alerts=["feed of ETH/USDC resynced"],
    )


def position(symbol: str, size: float, mark: float, percent: float, pnl: float) -> PositionEvent:
    return PositionEvent(
        symbol=symbol,
        ts_ns=NOW,
        position=size,
        avg_price=mark * 0.98,
        mark_price=mark,
        position_usdc=size * mark,
        position_percent=percent,
        limit_percent=2.0,
        realized_pnl=pnl - 1.0,
        unrealized_pnl=1.0,
        fees=-0.25,
        pnl_usdc=pnl,
        volume_usdc=1000.0 * size,
    )


def snapshots() -> list[MarketSnapshot]:
    """SEI/USDC quoted both sides; ETH/USDC not quoting because its feed is stale."""
    sei = MarketSnapshot(
        symbol="SEI/USDC",
        ts_ns=NOW,
        feed="live",
        book_valid=True,
        staleness_s=0.1,
        sequence=777,
        best_bid=0.4999,
        best_ask=0.5001,
        mid=0.5,
        spread_bps=4.0,
        outside_spread_bps=10.0,
        last_trade_price=0.5,
        volume_24h=125_000.5,
        quote=QuoteEvent(
            symbol="SEI/USDC",
            ts_ns=NOW,
            bid_price=0.4999,
            bid_size=100.0,
            ask_price=0.5001,
            ask_size=100.0,
            spread_bps=4.0,
        ),
        inputs=QuoteInputs(
            ts_ns=NOW,
            mid=0.5,
            fair_value=0.50002,
            reservation_price=0.49998,
            half_spread=0.0001,
            skew_bps=0.4,
            inventory_ratio=0.25,
            volatility=1.5,
            bid_price=0.4999,
            ask_price=0.5001,
            bid_size=100.0,
            ask_size=100.0,
            direction="bullish",
            confidence=0.78,
            price_change_bps=5.2,
        ),
        quoting=True,
        rate_budget_left=9.0,
        position=position("SEI/USDC", 100.0, 0.5, 0.5, 2.25),
        open_orders=2,
        orders_placed=10,
        fills=3,
        daily_pnl=2.25,
        last_quote_ns=NOW,
    )
    eth = MarketSnapshot(
        symbol="ETH/USDC",
        ts_ns=NOW,
        feed="stale",
        book_valid=False,
        staleness_s=12.0,
        sequence=55,
        best_bid=None,
        best_ask=None,
        mid=None,
        spread_bps=None,
        outside_spread_bps=None,
        quoting=False,
        not_quoting=["feed stale for 12.0 s: quotes pulled until it recovers"],
        rate_budget_left=10.0,
        position=position("ETH/USDC", -0.5, 2000.0, -1.0, -1.5),
        open_orders=0,
        daily_pnl=-1.5,
    )
    return [sei, eth]


async def write_state(redis: aioredis.Redis, state: EngineState | None = None) -> EngineState:
    """``{prefix}:engine`` and each ``{prefix}:snapshot:{symbol}``, as the publisher writes them."""
    if state is None:
        state = engine_state(time.time_ns())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(KEYS.engine, encode(state))
        for snap in snapshots():
            pipe.set(KEYS.snapshot(snap.symbol), encode(snap))
        await pipe.execute()
    return state


async def add_history(redis: aioredis.Redis, channel: LiveChannel, events: list[Event]) -> int:
    """Append events to a live channel's history with the next seqs; returns the last seq."""
    newest = await redis.xrevrange(KEYS.history(channel), count=1)
    seq = int(newest[0][1][b"seq"]) if newest else 0
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            seq += 1
            data = encode(msgspec.structs.replace(event, seq=seq))
            pipe.xadd(KEYS.history(channel), {"seq": seq, "data": data})
        await pipe.execute()
    return seq


def order(coid: str, status: str, ts_s: int, order_id: str | None = None) -> OrderEvent:
    return OrderEvent(
        client_order_id=coid,
        order_id=order_id or f"ord_{coid}",
        symbol="SEI/USDC",
        side="buy",
        price="0.4999",
        size="100",
        filled="100" if status == "filled" else "0",
        status=status,
        created_ns=NOW,
        ts_ns=NOW + ts_s * SECOND,
    )


async def add_orders(redis: aioredis.Redis, orders: list[OrderEvent]) -> None:
    for event in orders:
        await redis.xadd(KEYS.stream_orders, {"data": encode(event)})


# ---------------------------------------------------------------------------- the server
class Api(msgspec.Struct):
    url: str
    ws: str
    config: EngineConfig


@contextlib.asynccontextmanager
async def running_api(config: EngineConfig, redis_url: str) -> AsyncIterator[Api]:
    """The API under real uvicorn on 127.0.0.1, any free port, in this event loop."""
    uv = uvicorn_config(config, redis_url, "127.0.0.1", 0)
    uv.timeout_graceful_shutdown = 2
    server = uvicorn.Server(uv)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Api(url=f"http://127.0.0.1:{port}", ws=f"ws://127.0.0.1:{port}", config=config)
    finally:
        server.should_exit = True
        await task


Decide = Callable[[Command], CommandResult | None]


def accept(command: Command) -> CommandResult:
    """The engine's answer to a command it carries out."""
    base: dict[str, Any] = {"id": command.id, "ts_ns": NOW, "ok": True}
    kind = command.__struct_config__.tag
    if kind == "pause":
        return CommandResult(
            **base,
            kind="pause",
            risk_state="paused",
            paused_at_ns=NOW,
            resume_at_ns=NOW + int(command.duration_s * SECOND) if command.duration_s else None,  # type: ignore[union-attr]
        )
    if kind == "resume":
        return CommandResult(**base, kind="resume", risk_state="active", resumed_at_ns=NOW)
    return CommandResult(
        **base,
        kind="emergency_stop",
        risk_state="halted",
        stopped_at_ns=NOW,
        orders_cancelled=15,
        open_orders=0,
        positions_flattened=True,
    )


@contextlib.asynccontextmanager
async def responder(redis_url: str, decide: Decide = accept) -> AsyncIterator[list[Command]]:
    """Answers each command on the stream with ``decide(command)`` (None: no answer)."""
    seen: list[Command] = []
    redis = aioredis.Redis.from_url(redis_url)

    async def run() -> None:
        last = "0-0"
        while True:
            reply = await redis.xread({KEYS.commands: last}, block=100)
            for _stream, rows in reply:
                for entry_id, fields in rows:
                    last = entry_id
                    command = decode_command(fields[b"data"])
                    seen.append(command)
                    result = decide(command)
                    if result is not None:
                        await redis.xadd(KEYS.command_results, {"data": encode(result)})

    task = asyncio.create_task(run())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()
