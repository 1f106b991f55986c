"""The sidecar end to end with the real engine: admin commands, positions and a Redis restart.

Everything is real and runs in the test's event loop: the simulator on 127.0.0.1, the engine
trading against it and publishing to an embedded Valkey, the sidecar under uvicorn reading
that Valkey, and httpx / websockets clients. The venue (its order list and ledger) and the
engine's journal are the independent checks of what the API says.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from api_support import SECRET, auth, running_api, token
from flashmm.engine.engine import Engine
from flashmm.engine.journal import Journal
from flashmm.engine.records import Side
from flashmm.engine.risk import RiskState
from flashmm.state.valkey import EmbeddedValkey
from flashmm.venue.sim.server import SimServer
from test_engine import (
    MARKET,
    TICK,
    engine_config,
    quotes,
    seed,
    take,
    until,
    venue_open_orders,
    venue_position,
)

T = TypeVar("T")

HTTP_TIMEOUT_S = 5.0
"""A sidecar request that takes longer than this counts as hanging."""
MICRO = Decimal("0.000001")
CONFIRM = {"confirmation": "EMERGENCY_STOP_CONFIRMED"}


class System(msgspec.Struct):
    """The engine and an admin client of the sidecar that reads its state."""

    engine: Engine
    http: httpx.AsyncClient
    ws_url: str


@asynccontextmanager
async def running_system(venue: SimServer, journal: Path, redis_url: str) -> AsyncIterator[System]:
    """Engine and sidecar with one configuration, as `flashmm run` and `flashmm api` share it."""
    config = engine_config(
        venue,
        journal,
        api={
            "jwt_secret": SECRET,
            "command_timeout_s": 10.0,
            # the tests poll; the limits themselves are tested in test_api.py
            "rate_limits": {"health": "6000/minute", "trading": "6000/minute"},
        },
    )
    engine = Engine(config, redis_url=redis_url)
    await engine.start()
    try:
        async with (
            running_api(config, redis_url) as api,
            httpx.AsyncClient(
                base_url=api.url, headers=auth("admin"), timeout=HTTP_TIMEOUT_S
            ) as http,
        ):
            yield System(engine=engine, http=http, ws_url=api.ws + "/ws/live-metrics")
    finally:
        await engine.stop()


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 5.0
) -> T:
    """Await ``probe`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def body_if(http: httpx.AsyncClient, path: str, check: Callable[[Any], bool]) -> Any:
    """The JSON of a 200 answer to ``GET path`` that passes ``check``, else None."""
    answer = await http.get(path)
    if answer.status_code != 200:
        return None
    body = answer.json()
    return body if check(body) else None


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def maker_fee(price_ticks: int, size: int) -> Decimal:
    """The venue's 1 bp maker rebate (a negative fee) in whole micro-USDC, towards zero."""
    return (-(Decimal(price_ticks) * TICK * size) / 10_000).quantize(MICRO, rounding=ROUND_CEILING)


async def open_client_ids(demo: httpx.AsyncClient) -> set[str]:
    return {o["client_order_id"] for o in await venue_open_orders(demo)}


async def quotes_listed(engine: Engine, demo: httpx.AsyncClient) -> bool:
    """The venue lists exactly the engine's two open quotes."""
    both = quotes(engine)
    if both is None:
        return False
    return await open_client_ids(demo) == {o.client_order_id for o in both}


# ---------------------------------------------------------------------- pause and resume


async def test_pause_and_resume_through_the_api_reach_the_engine_and_the_venue(
    venue: SimServer,
    other: httpx.AsyncClient,
    demo: httpx.AsyncClient,
    redis_url: str,
    tmp_path: Path,
) -> None:
    await seed(other)
    async with running_system(venue, tmp_path / "j.sqlite3", redis_url) as system:
        engine, http = system.engine, system.http
        await until(lambda: quotes(engine), "both quotes open")
        await eventually(
            lambda: body_if(
                http, "/trading/status", lambda b: b["markets"][0]["status"] == "trading"
            ),
            "the sidecar sees the engine trading",
        )

        paused = await http.post(
            "/admin/pause",
            json={"reason": "maintenance", "duration_seconds": 60},
            headers={"X-Request-ID": "pause-1"},
        )
        assert paused.status_code == 200, paused.text
        # the answer came after the engine's ack: the ladder has already moved
        assert engine.ladder.state is RiskState.PAUSED
        body = paused.json()
        assert body["status"] == "paused" and body["risk_state"] == "paused"
        assert body["reason"] == "maintenance" and body["duplicate"] is False
        paused_at, resume_at = parse_time(body["paused_at"]), parse_time(body["resume_at"])
        assert (resume_at - paused_at).total_seconds() == 60.0
        assert engine.ladder.until_ns is not None
        assert abs(engine.ladder.until_ns / 1e9 - resume_at.timestamp()) < 0.001  # ms precision

        await until(lambda: not engine.orders.live_orders(), "quotes pulled")
        assert await venue_open_orders(demo) == []
        status = await eventually(
            lambda: body_if(http, "/trading/status", lambda b: b["risk_level"] == "paused"),
            "the pause published",
        )
        assert [m["status"] for m in status["markets"]] == ["paused"]
        assert "maintenance" in status["risk_reason"]
        # published once the cancels are confirmed (until then they count as open)
        why = await eventually(
            lambda: body_if(http, f"/trading/why?symbol={MARKET}", lambda b: not b["open_orders"]),
            "why not quoting",
        )
        assert why["risk"]["state"] == "paused" and "maintenance" in why["risk"]["reason"]
        assert why["risk"]["until"] == body["resume_at"]
        assert why["reasons"] and "paused" in why["reasons"][0]
        assert "maintenance" in why["reasons"][0]
        assert why["live_quote"] is None and why["quoting"] is False

        resumed = await http.post("/admin/resume", headers={"X-Request-ID": "resume-1"})
        assert resumed.status_code == 200, resumed.text
        assert engine.ladder.state is RiskState.ACTIVE
        assert resumed.json()["status"] == "active" and resumed.json()["risk_state"] == "active"
        await until(lambda: quotes(engine), "quoting again")
        await eventually(lambda: quotes_listed(engine, demo), "the quotes at the venue")
        await eventually(
            lambda: body_if(http, f"/trading/why?symbol={MARKET}", lambda b: b["quoting"]),
            "quoting published",
        )

        audit = (await http.get("/admin/audit")).json()["entries"]
        mine = {e["request_id"]: e for e in audit if e["request_id"] in ("pause-1", "resume-1")}
        assert mine["pause-1"]["action"] == "pause"
        assert mine["resume-1"]["action"] == "resume"
        for entry, answer in ((mine["pause-1"], body), (mine["resume-1"], resumed.json())):
            assert (entry["subject"], entry["scope"]) == ("alice", "admin")
            assert (entry["result"], entry["status_code"]) == ("ok", 200)
            assert entry["details"]["command_id"] == answer["command_id"]
        # newest first
        assert [e["request_id"] for e in audit][:2] == ["resume-1", "pause-1"]


# ---------------------------------------------------------------------- emergency stop


async def test_emergency_stop_through_the_api_cancels_flattens_and_is_idempotent(
    venue: SimServer,
    other: httpx.AsyncClient,
    demo: httpx.AsyncClient,
    redis_url: str,
    tmp_path: Path,
) -> None:
    await seed(other)
    journal = tmp_path / "j.sqlite3"
    async with running_system(venue, journal, redis_url) as system:
        engine, http = system.engine, system.http
        await until(lambda: quotes(engine), "both quotes open")
        await take(other, "sell", "10", "t1")  # the engine buys 10: a position to flatten
        await until(lambda: engine.portfolio.position_lots(MARKET) == 10, "long 10")
        await until(lambda: quotes(engine), "quotes again")
        await eventually(lambda: quotes_listed(engine, demo), "the quotes at the venue")
        await eventually(
            lambda: body_if(http, "/trading/status", lambda b: b["status"] == "active"),
            "the engine published",
        )

        for unconfirmed in ({}, {"confirmation": "yes"}):
            refused = await http.post("/admin/emergency-stop", json=unconfirmed)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "INVALID_REQUEST"
            assert "confirmation" in refused.json()["error"]["message"]
        # nothing happened: still active, quoting, long
        assert engine.ladder.state is RiskState.ACTIVE
        assert venue_position(venue).size == 10
        await eventually(lambda: quotes_listed(engine, demo), "still quoting at the venue")

        stopped = await http.post("/admin/emergency-stop", json=CONFIRM | {"reason": "drill"})
        assert stopped.status_code == 200, stopped.text
        body = stopped.json()
        assert body["status"] == "emergency_stopped" and body["risk_state"] == "flattened"
        assert body["orders_cancelled"] >= 2  # the bid and the ask
        assert body["positions_flattened"] is True and body["open_orders"] == 0
        assert engine.ladder.state is RiskState.FLATTENED
        assert await venue_open_orders(demo) == []
        assert venue_position(venue).size == 0
        assert engine.portfolio.position_lots(MARKET) == 0
        assert engine.orders.counters["fills"] == 2  # the fill taken, and the flattening one

        again = await http.post("/admin/emergency-stop", json=CONFIRM)
        assert again.status_code == 200, again.text
        second = again.json()
        assert second["command_id"] != body["command_id"]  # a new request, not a replay
        assert second["orders_cancelled"] == 0 and second["open_orders"] == 0
        assert second["positions_flattened"] is True and second["risk_state"] == "flattened"
        # it traded nothing and left nothing open
        assert engine.orders.counters["fills"] == 2
        assert await venue_open_orders(demo) == []
        assert venue_position(venue).size == 0

        audit = (await http.get("/admin/audit")).json()["entries"]
        assert [(e["action"], e["status_code"]) for e in audit[:4]] == [
            ("emergency_stop", 200),
            ("emergency_stop", 200),
            ("/admin/emergency-stop", 400),
            ("/admin/emergency-stop", 400),
        ]
        assert audit[2]["result"].startswith("refused: INVALID_REQUEST")
    # the journal (locked while the engine runs) has the two fills and no more
    bought, sold = Journal(str(journal)).load(now_ns=0).fills
    assert (bought.side, bought.size_lots, sold.side, sold.size_lots) == (
        Side.BUY,
        10,
        Side.SELL,
        10,
    )


# ---------------------------------------------------------------------- positions and PnL


async def test_positions_and_fills_agree_with_the_journal_and_the_venue_ledger(
    venue: SimServer, other: httpx.AsyncClient, redis_url: str, tmp_path: Path
) -> None:
    await seed(other)
    journal = tmp_path / "j.sqlite3"
    async with running_system(venue, journal, redis_url) as system:
        engine, http = system.engine, system.http
        _, ask = await until(lambda: quotes(engine), "both quotes open")
        await take(other, "buy", "10", "t1")  # lifts the engine's ask: short 10
        await until(lambda: engine.portfolio.position_lots(MARKET) == -10, "short 10")
        sold_at = ask.price_ticks

        def short(body: Any) -> bool:
            return body["positions"][0]["base_balance"] == -10

        (first,) = (await eventually(lambda: body_if(http, "/trading/positions", short), "-10"))[
            "positions"
        ]
        ledger = venue_position(venue)
        assert ledger.size == -10 and first["symbol"] == MARKET
        assert Decimal(str(first["avg_price"])) == ledger.avg_entry_price == sold_at * TICK
        assert first["realized_pnl"] == 0.0 == float(ledger.realized_pnl)

        bid, _ = await until(lambda: quotes(engine), "quotes back")
        await take(other, "sell", "10", "t2")  # hits the engine's bid: flat again
        await until(lambda: engine.portfolio.position_lots(MARKET) == 0, "flat")
        bought_at = bid.price_ticks

        def flat(body: Any) -> bool:
            return body["positions"][0]["base_balance"] == 0

        (final,) = (await eventually(lambda: body_if(http, "/trading/positions", flat), "flat"))[
            "positions"
        ]
        orders = await eventually(
            lambda: body_if(http, "/trading/orders", lambda b: len(b["recent_fills"]) == 2),
            "both fills listed",
        )

    # hand check: 10 SEI sold at `sold_at` and bought back at `bought_at`, maker rebates on both
    realized = (sold_at - bought_at) * 10 * TICK
    fees = maker_fee(sold_at, 10) + maker_fee(bought_at, 10)
    assert final["realized_pnl"] == pytest.approx(float(realized), abs=1e-9)
    assert final["position_usdc"] == 0.0 and final["unrealized_pnl"] == 0.0
    assert final["quote_balance"] == pytest.approx(float(realized - fees), abs=1e-9)
    ledger = venue_position(venue)
    assert ledger.size == 0 and ledger.realized_pnl == realized and ledger.fees_paid == fees

    journaled = Journal(str(journal)).load(now_ns=0).fills
    assert [f.side for f in journaled] == [Side.SELL, Side.BUY]
    # newest first in the API, in execution order in the journal
    for shown, fill in zip(reversed(orders["recent_fills"]), journaled, strict=True):
        assert shown["fill_id"] == fill.trade_id
        assert shown["order_id"] == fill.order_id
        assert shown["client_order_id"] == fill.client_order_id
        assert shown["side"] == fill.side.wire and shown["symbol"] == MARKET
        assert Decimal(shown["price"]) == fill.price_ticks * TICK
        assert Decimal(shown["size"]) == fill.size_lots == 10
        assert Decimal(shown["fee"]) == fill.fee == maker_fee(fill.price_ticks, 10)
        assert shown["liquidity"] == fill.liquidity == "maker"
    assert [f.price_ticks for f in journaled] == [sold_at, bought_at]


# ---------------------------------------------------------------------- Redis restart


@asynccontextmanager
async def live_client(system: System, channel: str) -> AsyncIterator[tuple[ClientConnection, Any]]:
    """A ``/ws/live-metrics`` client subscribed to ``channel``, and the snapshot it got."""
    async with connect(
        system.ws_url,
        additional_headers={"Authorization": f"Bearer {token()}"},
        compression=None,
    ) as ws:
        await ws.send(json.dumps({"action": "subscribe", "channels": [channel]}))
        assert await recv(ws) == {"type": "subscribed", "channels": [channel]}
        snapshot = await recv(ws)
        assert snapshot["channel"] == channel and snapshot["snapshot"] is True
        yield ws, snapshot


async def refused(http: httpx.AsyncClient, method: str, path: str) -> httpx.Response | None:
    """The answer to ``method path`` if it is 503, else None."""
    answer = await http.request(method, path)
    return answer if answer.status_code == 503 else None


async def recv(ws: ClientConnection, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def test_a_redis_restart_leaves_trading_on_and_the_sidecar_recovers(
    venue: SimServer,
    other: httpx.AsyncClient,
    demo: httpx.AsyncClient,
    fresh_valkey: EmbeddedValkey,
    tmp_path: Path,
) -> None:
    await seed(other)
    port = fresh_valkey.port
    async with (
        running_system(venue, tmp_path / "j.sqlite3", fresh_valkey.url) as system,
        AsyncExitStack() as sockets,
    ):
        engine, http = system.engine, system.http
        await until(lambda: quotes(engine), "both quotes open")
        await eventually(
            lambda: body_if(http, "/trading/status", lambda b: b["status"] == "active"),
            "the engine published",
        )
        before, empty = await sockets.enter_async_context(live_client(system, "fills"))
        assert empty["data"] == []

        fresh_valkey.stop()
        # the sidecar says it cannot tell (it may answer from a read of just before, but
        # not for long), and it does nothing: a hang would fail on the client's timeout
        for method, path in (("GET", "/trading/status"), ("POST", "/admin/resume")):
            answer = await eventually(partial(refused, http, method, path), f"503 from {path}")
            error = answer.json()["error"]
            assert error["code"] in ("REDIS_UNAVAILABLE", "ENGINE_UNAVAILABLE")
            assert error["message"]
        # the engine trades on without Redis
        await take(other, "buy", "10", "t1")
        await until(lambda: engine.portfolio.position_lots(MARKET) == -10, "the fill")
        await eventually(lambda: quotes_listed(engine, demo), "requoted at the venue")
        assert engine.ladder.state is RiskState.ACTIVE
        assert (await http.get("/trading/status")).status_code == 503

        fresh_valkey.start()  # the same port, empty
        assert fresh_valkey.port == port
        status = await eventually(
            lambda: body_if(http, "/trading/status", lambda b: b["status"] == "active"),
            "the sidecar answers again",
            timeout=10,
        )
        assert status["markets"][0]["position_usdc"] < 0  # the short taken during the outage
        # the fill made during the outage reaches the subscriber that stayed connected ...
        queued = await recv(before, timeout=10)
        assert queued["channel"] == "fills" and queued["seq"] == 1
        assert queued["data"]["side"] == "sell" and Decimal(queued["data"]["size"]) == 10
        # ... and from now on every request works the first time (no connection left broken)
        after, snapshot = await sockets.enter_async_context(live_client(system, "fills"))
        assert [f["fill_id"] for f in snapshot["data"]] == [queued["data"]["fill_id"]]
        positions = await http.get("/trading/positions")
        assert positions.status_code == 200, positions.text
        assert positions.json()["positions"][0]["base_balance"] == -10

        await until(lambda: quotes(engine), "quotes")
        await take(other, "sell", "10", "t2")  # a new event after the restart
        await until(lambda: engine.portfolio.position_lots(MARKET) == 0, "flat")
        for ws in (before, after):
            event = await recv(ws)
            assert event["channel"] == "fills" and event["seq"] == 2
            assert event["data"]["side"] == "buy" and Decimal(event["data"]["size"]) == 10
        # commands reach the engine again
        paused = await http.post("/admin/pause", json={"reason": "after the restart"})
        assert paused.status_code == 200, paused.text
        assert engine.ladder.state is RiskState.PAUSED
