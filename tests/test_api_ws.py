"""The sidecar's WebSockets, ``/ws/live-metrics`` and ``/ws/dashboard``, with real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from api_support import (
    KEYS,
    NOW,
    Api,
    add_history,
    api_config,
    order,
    position,
    running_api,
    token,
    write_state,
)
from flashmm.state.schema import AlertEvent, MarketDataEvent, RiskTransitionEvent

StartApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def start_api(redis_url: str, redis: aioredis.Redis) -> AsyncIterator[StartApi]:
    await write_state(redis)
    async with AsyncExitStack() as stack:

        async def start(**api_changes: Any) -> Api:
            config = api_config(**api_changes)
            return await stack.enter_async_context(running_api(config, redis_url))

        yield start


def client(api: Api, path: str = "/ws/live-metrics", **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", {"Authorization": f"Bearer {token()}"})
    return connect(api.ws + path, additional_headers=headers, compression=None, **kwargs)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def subscribe(ws: ClientConnection, channels: list[str], **extra: Any) -> None:
    await ws.send(json.dumps({"action": "subscribe", "channels": channels, **extra}))
    assert await recv(ws) == {"type": "subscribed", "channels": channels}


def tick(i: int) -> MarketDataEvent:
    return MarketDataEvent(
        symbol="SEI/USDC",
        ts_ns=NOW + i,
        bid=0.4999,
        ask=0.5001,
        mid=0.5,
        spread_bps=4.0,
        last_trade_price=0.5,
        volume_24h=float(i),
    )


async def closed(ws: ClientConnection, timeout: float = 5.0) -> tuple[int | None, str | None]:
    """Read until the server closes; its close code and reason."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code, ws.close_reason


# ---------------------------------------------------------------------------- live metrics
async def test_subscribe_sends_a_snapshot_then_events_with_seqs(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    await add_history(redis, "trading", [tick(1), tick(2)])
    api = await start_api()
    async with client(api) as ws:
        await subscribe(ws, ["trading", "positions"])
        trading = await recv(ws)
        assert (trading["channel"], trading["seq"], trading["snapshot"]) == ("trading", 2, True)
        assert trading["data"][0] == {
            "symbol": "SEI/USDC",
            "bid": "0.4999",
            "ask": "0.5001",
            "mid": 0.5,
            "spread_bps": 4.0,
            "last_trade_price": "0.5",
            "volume_24h": 125000.5,
        }
        positions = await recv(ws)
        assert (positions["channel"], positions["seq"]) == ("positions", 0)
        # SEI: position 0.5 % of equity, within a 2 % limit
        assert positions["data"][0]["risk_percent"] == 0.5
        assert positions["data"][0]["pnl_usdc"] == 2.25
        await add_history(redis, "trading", [tick(3)])
        await add_history(redis, "positions", [position("SEI/USDC", 50.0, 0.5, 0.25, 1.0)])
        events = [await recv(ws), await recv(ws)]
    by_channel = {e["channel"]: e for e in events}
    assert by_channel["trading"]["seq"] == 3
    assert by_channel["trading"]["data"]["volume_24h"] == 3.0
    assert by_channel["trading"]["timestamp"] == "2027-01-15T08:00:00.000Z"
    assert set(by_channel["trading"]) == {"channel", "seq", "timestamp", "data"}
    assert (by_channel["positions"]["seq"], by_channel["positions"]["data"]["position_usdc"]) == (
        1,
        25.0,
    )


async def test_resume_replays_what_was_missed_without_a_snapshot(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    await add_history(redis, "orders", [order(f"o{i}", "open", i) for i in range(5)])
    api = await start_api()
    async with client(api) as ws:
        await subscribe(ws, ["orders"], since={"orders": 2})
        replayed = [await recv(ws) for _ in range(3)]
        assert [m["seq"] for m in replayed] == [3, 4, 5]
        assert [m["data"]["client_order_id"] for m in replayed] == ["o2", "o3", "o4"]
        await add_history(redis, "orders", [order("o5", "open", 5)])
        live = await recv(ws)
    assert (live["seq"], live["data"]["status"], live["data"]["state"]) == (6, "active", "open")


async def test_resume_from_a_trimmed_point_sends_a_snapshot_with_the_reason(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    await add_history(redis, "alerts", [_alert(i) for i in range(6)])
    await redis.xtrim(KEYS.history("alerts"), maxlen=3, approximate=False)  # 4..6 remain
    api = await start_api()
    async with client(api) as ws:
        await subscribe(ws, ["alerts"], since={"alerts": 1})
        snapshot = await recv(ws)
        assert snapshot["snapshot"] is True
        assert snapshot["seq"] == 6
        assert snapshot["reason"] == "events after seq 1 are no longer in history"
        assert [a["message"] for a in snapshot["data"]] == ["alert 3", "alert 4", "alert 5"]
        # a resume point inside what is kept replays exactly the rest
        await subscribe(ws, ["alerts"], since={"alerts": 4})
        assert [(await recv(ws))["seq"] for _ in range(2)] == [5, 6]


def _alert(i: int) -> AlertEvent:
    return AlertEvent(ts_ns=NOW + i, level="warning", kind="feed", message=f"alert {i}")


async def test_unsubscribe_ping_and_bad_messages(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    api = await start_api()
    async with client(api) as ws:
        await subscribe(ws, ["trading"])
        await recv(ws)  # snapshot
        await ws.send(json.dumps({"action": "unsubscribe", "channels": ["trading"]}))
        assert await recv(ws) == {"type": "unsubscribed", "channels": ["trading"]}
        await add_history(redis, "trading", [tick(1)])
        await ws.send(json.dumps({"action": "subscribe", "channels": ["nope"]}))
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", "INVALID_MESSAGE")
        assert "nope" in error["message"] or "channels" in error["message"]
        await ws.send(json.dumps({"action": "ping"}))
        # the trading tick above was not sent: the next message is the pong
        assert (await recv(ws))["type"] == "pong"


async def test_websocket_auth_by_header_or_query_and_refusals(start_api: StartApi) -> None:
    api = await start_api()
    async with client(api, headers={}) as ws:
        assert await closed(ws) == (
            4401,
            "AUTH_MISSING: this endpoint needs 'Authorization: Bearer <token>'",
        )
    async with client(api, headers={"Authorization": "Bearer forged.token.here"}) as ws:
        code, reason = await closed(ws)
        assert (code, reason.split(":")[0]) == (4401, "TOKEN_MALFORMED")
    async with connect(f"{api.ws}/ws/live-metrics?token={token()}") as ws:
        await subscribe(ws, ["fills"])
        assert (await recv(ws))["channel"] == "fills"
    evil = {"Authorization": f"Bearer {token()}", "Origin": "https://evil.example.com"}
    async with client(api, headers=evil) as ws:
        assert (await closed(ws))[0] == 4403


async def test_connections_per_address_are_capped(start_api: StartApi) -> None:
    api = await start_api(ws_max_per_ip=2)
    async with client(api) as one, client(api) as two:
        async with client(api) as three:
            code, reason = await closed(three)
        assert (code, reason) == (1013, "TOO_MANY_CONNECTIONS: at most 2 per address")
        for ws in (one, two):
            await ws.send(json.dumps({"action": "ping"}))
            assert (await recv(ws))["type"] == "pong"
    # the slots come back when clients leave
    await asyncio.sleep(0.1)
    async with client(api) as again:
        await again.send(json.dumps({"action": "ping"}))
        assert (await recv(again))["type"] == "pong"


async def test_a_slow_client_is_dropped_and_the_others_get_everything(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    api = await start_api(ws_send_queue=16)
    count = 4000
    big = "x" * 4096  # 16 MB in all: more than the socket buffers hold for a client that stalls
    subscribe_alerts = json.dumps({"action": "subscribe", "channels": ["alerts"]})

    def read_everything() -> list[int]:
        # the fast client reads in its own thread, as a separate program would
        with sync_connect(
            api.ws + "/ws/live-metrics",
            additional_headers={"Authorization": f"Bearer {token()}"},
            compression=None,
        ) as fast:
            fast.send(subscribe_alerts)
            json.loads(fast.recv(5))  # subscribed
            json.loads(fast.recv(5))  # snapshot
            ready.set()
            return [json.loads(fast.recv(20))["seq"] for _ in range(count)]

    ready = threading.Event()
    async with client(api, max_queue=1) as slow:
        await subscribe(slow, ["alerts"])
        await recv(slow)  # snapshot; from now on it reads nothing
        fast_seqs = asyncio.create_task(asyncio.to_thread(read_everything))
        while not ready.is_set():
            await asyncio.sleep(0.01)
        for start in range(0, count, 500):
            events = [
                AlertEvent(ts_ns=NOW, level="info", kind="test", message=f"{i} {big}")
                for i in range(start, start + 500)
            ]
            await add_history(redis, "alerts", events)
        assert await fast_seqs == list(range(1, count + 1))
        code, reason = await closed(slow, timeout=20)
    assert code == 1008
    assert reason.startswith("client too slow: more than 16 messages waiting")


# ---------------------------------------------------------------------------- dashboard
async def test_dashboard_connected_heartbeat_ping_and_typed_events(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    api = await start_api(ws_heartbeat_s=0.2)
    async with client(api, "/ws/dashboard") as ws:
        connected = await recv(ws)
        assert connected["type"] == "connected"
        assert connected["payload"]["heartbeat_s"] == 0.2
        await ws.send("ping")
        kinds = set()
        while not {"pong", "heartbeat"} <= kinds:
            kinds.add((await recv(ws))["type"])
        await add_history(redis, "positions", [position("SEI/USDC", -20.0, 0.5, -0.1, 0.5)])
        await add_history(
            redis,
            "alerts",
            [
                RiskTransitionEvent(
                    ts_ns=NOW,
                    from_state="active",
                    to_state="halted",
                    reason="drawdown",
                    source="monitor",
                )
            ],
        )
        await add_history(redis, "orders", [order("n1", "pending_new", 0), order("n1", "open", 1)])
        events: dict[str, Any] = {}
        while not {"position_updated", "ess_state_changed", "order_placed"} <= set(events):
            message = await recv(ws)
            events.setdefault(message["type"], message)
    assert events["position_updated"]["payload"]["side"] == "SHORT"
    assert events["position_updated"]["payload"]["size"] == 20.0
    assert events["ess_state_changed"]["payload"]["ess_state"] == "tripped"
    assert events["ess_state_changed"]["payload"]["previous_ess_state"] == "armed"
    # one order_placed per order: its first state only
    assert events["order_placed"]["payload"]["client_order_id"] == "n1"


async def test_dashboard_pnl_updates_when_the_portfolio_changes(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    api = await start_api(ws_heartbeat_s=30)
    async with client(api, "/ws/dashboard") as ws:
        assert (await recv(ws))["type"] == "connected"
        first = await recv(ws)
        assert first["type"] == "pnl_updated"
        assert first["payload"]["equity"] == 10_000.75
        state = await write_state(redis)  # a fresh heartbeat, the same portfolio
        state.portfolio.equity = 10_010.0
        await write_state(redis, state)
        update = await recv(ws)
    assert update["type"] == "pnl_updated"
    assert update["payload"]["equity"] == 10_010.0
