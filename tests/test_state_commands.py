"""Commands through Redis to the real engine, trading against the in-process simulator."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from conftest import sim_config
from flashmm.config import EngineConfig
from flashmm.engine.engine import Engine
from flashmm.engine.risk import RiskState
from flashmm.state.keys import Keys
from flashmm.state.schema import (
    CommandResult,
    EmergencyStopCommand,
    PauseCommand,
    ResumeCommand,
    decode_command_result,
    encode,
)
from flashmm.venue.sim.config import FeedConfig
from flashmm.venue.sim.server import SimServer
from test_engine import MARKET, engine_config, quotes, seed, take, until, venue_open_orders

KEYS = Keys()


@pytest.fixture
async def venue() -> AsyncIterator[SimServer]:
    async with SimServer(
        sim_config(feed=FeedConfig(snapshot_interval_s=0.5)), run_flows=False
    ) as s:
        yield s


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@asynccontextmanager
async def running(config: EngineConfig, redis_url: str) -> AsyncIterator[Engine]:
    engine = Engine(config, redis_url=redis_url)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def send(client: Any, data: bytes | None, entry_id: str = "*") -> None:
    fields = {"data": data} if data is not None else {"other": b"x"}
    client.xadd(KEYS.commands, fields, id=entry_id)


def results(client: Any, command_id: str) -> list[CommandResult]:
    found = [decode_command_result(f[b"data"]) for _, f in client.xrange(KEYS.command_results)]
    return [r for r in found if r.id == command_id]


async def answer(client: Any, command: Any, count: int = 1) -> CommandResult:
    """Send ``command`` and wait for its ``count``-th result."""
    send(client, encode(command))
    got = await until(
        lambda: len(r := results(client, command.id)) >= count and r, f"result of {command.id}"
    )
    return got[count - 1]


def now_ns() -> int:
    return time.time_ns()


async def test_pause_with_a_duration_then_resume(
    venue: SimServer, other: httpx.AsyncClient, client: Any, redis_url: str, tmp_path: Path
) -> None:
    await seed(other)
    async with running(engine_config(venue, tmp_path / "j.sqlite3"), redis_url) as engine:
        await until(lambda: quotes(engine), "both quotes open")
        pause = PauseCommand(
            id="p1", issued_ns=now_ns(), reason="maintenance", duration_s=60.0, subject="alice"
        )
        result = await answer(client, pause)
        assert result.ok and result.kind == "pause" and result.risk_state == "paused"
        assert result.error is None and not result.duplicate
        assert result.paused_at_ns is not None and result.resume_at_ns is not None
        assert result.resume_at_ns - result.paused_at_ns == 60 * 10**9
        assert engine.ladder.state is RiskState.PAUSED
        last = engine.ladder.history[-1]
        assert (last.reason, last.source) == ("maintenance (by alice)", "command")
        await until(lambda: not engine.orders.live_orders(), "quotes pulled")

        resumed = await answer(client, ResumeCommand(id="r1", issued_ns=now_ns()))
        assert resumed.ok and resumed.risk_state == "active"
        assert resumed.resumed_at_ns is not None and resumed.resumed_at_ns >= result.paused_at_ns
        assert engine.ladder.state is RiskState.ACTIVE
        await until(lambda: quotes(engine), "quoting again")


async def test_emergency_stop_flattens_and_leaves_no_open_orders(
    venue: SimServer,
    other: httpx.AsyncClient,
    demo: httpx.AsyncClient,
    client: Any,
    redis_url: str,
    tmp_path: Path,
) -> None:
    await seed(other)
    async with running(engine_config(venue, tmp_path / "j.sqlite3"), redis_url) as engine:
        await until(lambda: quotes(engine), "both quotes open")
        await take(other, "sell", "10", "t1")  # the engine buys 10
        await until(lambda: engine.portfolio.position_lots(MARKET) == 10, "long 10")
        await until(lambda: quotes(engine), "quotes again")
        command = EmergencyStopCommand(id="e1", issued_ns=now_ns())
        result = await answer(client, command)
        assert result.ok and result.kind == "emergency_stop" and result.error is None
        assert result.positions_flattened is True
        assert result.open_orders == 0
        assert result.orders_cancelled is not None and result.orders_cancelled >= 2
        assert result.risk_state == "flattened" and result.stopped_at_ns is not None
        assert await venue_open_orders(demo) == []
        assert engine.portfolio.position_lots(MARKET) == 0


async def test_an_id_is_executed_once_also_across_a_restart(
    venue: SimServer, other: httpx.AsyncClient, client: Any, redis_url: str, tmp_path: Path
) -> None:
    await seed(other)
    journal = tmp_path / "j.sqlite3"
    pause = PauseCommand(id="p1", issued_ns=now_ns(), reason="first")
    async with running(engine_config(venue, journal), redis_url) as engine:
        first = await answer(client, pause)
        assert first.ok and not first.duplicate
        engine.resume("test")  # if the repeat ran again, it would pause once more
        again = await answer(client, pause, count=2)
        assert again.duplicate and again.ok
        assert msgspec.structs.replace(again, duplicate=False) == first
        assert engine.ladder.state is RiskState.ACTIVE
        assert engine.commands is not None and engine.commands.executed == 1
    async with running(engine_config(venue, journal), redis_url) as restarted:
        # the new reader starts after the last command handled: nothing runs again ...
        assert restarted.commands is not None
        await until(lambda: restarted.publisher and restarted.publisher.flushes, "publishing")
        assert results(client, "p1") == [first, again]
        # ... and the same id sent again is still recognised
        third = await answer(client, pause, count=3)
        assert third.duplicate and third.paused_at_ns == first.paused_at_ns
        assert restarted.commands.executed == 0
        assert restarted.ladder.state is RiskState.ACTIVE


async def test_bad_and_expired_commands_are_answered_and_change_nothing(
    venue: SimServer, other: httpx.AsyncClient, client: Any, redis_url: str, tmp_path: Path
) -> None:
    await seed(other)
    # issued two minutes ago: the stream entry's id carries the time Redis received it
    old_ms = int(time.time() * 1000) - 120_000
    old = PauseCommand(id="old", issued_ns=old_ms * 10**6, reason="late")
    send(client, encode(old), entry_id=f"{old_ms}-0")
    async with running(engine_config(venue, tmp_path / "j.sqlite3"), redis_url) as engine:
        (expired,) = await until(lambda: results(client, "old"), "the expired answer")
        assert not expired.ok and expired.error is not None and "expired" in expired.error
        assert expired.risk_state == "active"

        await until(lambda: quotes(engine), "both quotes open")
        negative = PauseCommand(id="m1", issued_ns=now_ns(), reason="x", duration_s=-5.0)
        refused = await answer(client, negative)
        assert not refused.ok and refused.error is not None and "duration_s" in refused.error
        # a pause without its reason: answered by id, as malformed
        send(client, msgspec.msgpack.encode({"type": "pause", "id": "m2", "issued_ns": 1}))
        (malformed,) = await until(lambda: results(client, "m2"), "the malformed answer")
        assert not malformed.ok and malformed.kind == "pause"
        assert malformed.error is not None and "reason" in malformed.error
        # neither an id nor a command: skipped, and the reader goes on
        send(client, b"\x00\xff not msgpack")
        send(client, None)
        send(client, msgspec.msgpack.encode({"type": "reboot", "id": "m3"}))
        after = await answer(client, ResumeCommand(id="r1", issued_ns=now_ns()))
        assert after.ok and after.risk_state == "active"
        assert results(client, "m3") == []
        assert engine.commands is not None and engine.commands.executed == 1  # only r1
        assert engine.ladder.state is RiskState.ACTIVE
        assert quotes(engine) is not None
