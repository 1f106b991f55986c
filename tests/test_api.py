"""The ``flashmm api`` sidecar over HTTP: real uvicorn, real Valkey, real httpx.

The engine's side is its state written to Redis as the publisher writes it, and a small
responder that answers commands as the engine's command reader does (the end-to-end run
with the real engine belongs to the engine's tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from api_support import (
    KEYS,
    NOW,
    SECRET,
    Api,
    accept,
    add_history,
    add_orders,
    api_config,
    auth,
    engine_state,
    order,
    responder,
    running_api,
    token,
    write_state,
)
from flashmm.api import InsecureSecret, create_app, mint_token
from flashmm.cli import app as cli_app
from flashmm.state.schema import AuditEntry, CommandResult, FillEvent, PredictionEvent

StartApi = Callable[..., Awaitable[Api]]
_audit_decoder = msgspec.msgpack.Decoder(AuditEntry)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def start_api(redis_url: str) -> AsyncIterator[StartApi]:
    """Starts the API with ``[api]`` changes; every one started is stopped after the test."""
    async with AsyncExitStack() as stack:

        async def start(**api_changes: Any) -> Api:
            config = api_config(**api_changes)
            return await stack.enter_async_context(running_api(config, redis_url))

        yield start


@pytest.fixture
async def api(start_api: StartApi, redis: aioredis.Redis) -> Api:
    """The API with default settings over a live engine's state."""
    await write_state(redis)
    return await start_api()


async def get(api: Api, path: str, scope: str | None = "read", **kwargs: Any) -> httpx.Response:
    headers = auth(scope) if scope else {}
    headers |= kwargs.pop("headers", {})
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        return await client.get(path, headers=headers, **kwargs)


async def post(
    api: Api, path: str, body: Any = None, scope: str | None = "admin", **kwargs: Any
) -> httpx.Response:
    headers = auth(scope) if scope else {}
    headers |= kwargs.pop("headers", {})
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        return await client.post(path, json=body, headers=headers, **kwargs)


async def audit_entries(redis: aioredis.Redis) -> list[AuditEntry]:
    rows = await redis.xrange(KEYS.audit)
    return [_audit_decoder.decode(fields[b"data"]) for _id, fields in rows]


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The spec's error body; checks its fixed parts on the way."""
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details", "timestamp", "request_id"}
    assert error["timestamp"].endswith("Z")
    assert error["request_id"] == response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- health
async def test_health_needs_no_token_and_reports_each_component(api: Api) -> None:
    response = await get(api, "/health", scope=None)
    assert response.status_code == 200
    body = response.json()
    # ETH/USDC's feed is stale: the system trades, degraded
    assert body["status"] == "degraded"
    assert body["components"] == {
        "redis": "healthy",
        "websocket": "degraded",
        "ml_model": "healthy",
        "trading_engine": "healthy",
    }
    assert body["uptime_seconds"] == 3600
    assert body["version"] == "0.1.0"


async def test_health_is_503_once_the_heartbeat_is_older_than_the_timeout(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    stale = engine_state(time.time_ns() - 10 * 1_000_000_000)  # limit: 3 s
    await write_state(redis, stale)
    api = await start_api()
    response = await get(api, "/health", scope=None)
    assert response.status_code == 503
    assert response.json()["components"]["trading_engine"] == "unhealthy"
    status = await get(api, "/trading/status")
    assert status.status_code == 503
    error = error_of(status)
    assert error["code"] == "ENGINE_UNAVAILABLE"
    assert "heartbeat" in error["message"]
    assert error["details"]["heartbeat_age_s"] >= 10


async def test_health_detailed_has_system_and_component_details(api: Api) -> None:
    response = await get(api, "/health/detailed")
    assert response.status_code == 200
    body = response.json()
    assert set(body["system"]) == {
        "cpu_percent",
        "memory_percent",
        "disk_percent",
        "network_latency_ms",
    }
    engine = body["components"]["trading_engine"]
    assert (engine["status"], engine["orders_placed"], engine["orders_filled"]) == (
        "active",
        1250,
        1180,
    )
    assert engine["heartbeat_age_s"] < 3
    model = body["components"]["ml_model"]
    assert (model["accuracy"], model["model_confidence"]) == (0.582, 0.78)
    assert body["components"]["websocket"]["markets"] == {"SEI/USDC": "live", "ETH/USDC": "stale"}


# ---------------------------------------------------------------------------- trading
async def test_trading_status_per_market(api: Api) -> None:
    body = (await get(api, "/trading/status")).json()
    assert body == {
        "status": "active",
        "markets": [
            {
                "symbol": "SEI/USDC",
                "status": "trading",
                "last_quote_time": "2027-01-15T08:00:00.000Z",
                "spread_bps": 4.0,
                "position_usdc": 50.0,
                "daily_pnl_usdc": 2.25,
            },
            {
                "symbol": "ETH/USDC",
                "status": "stale",
                "last_quote_time": None,
                "spread_bps": None,
                "position_usdc": -1000.0,
                "daily_pnl_usdc": -1.5,
            },
        ],
        "total_pnl_usdc": 0.75,
        "risk_level": "active",
        "risk_reason": "",
    }


async def test_positions_with_balances_and_utilization(api: Api) -> None:
    body = (await get(api, "/trading/positions")).json()
    sei, eth = body["positions"]
    # 100 SEI at 0.5 = 50 USDC; PnL 2.25, so trading moved 2.25 - 50 = -47.75 USDC
    assert (sei["base_balance"], sei["quote_balance"], sei["position_usdc"]) == (
        100.0,
        -47.75,
        50.0,
    )
    assert (eth["base_balance"], eth["quote_balance"]) == (-0.5, -1.5 + 1000.0)
    assert body["total_position_usdc"] == 50.0 - 1000.0
    # |-1.0| % of a 2.0 % limit: 50 % used (SEI: 0.5 of 2.0 = 25 %)
    assert body["risk_utilization_percent"] == 50.0
    assert sei["last_updated"] == "2027-01-15T08:00:00.000Z"


async def test_orders_fold_history_to_each_orders_latest_state(
    api: Api, redis: aioredis.Redis
) -> None:
    await add_orders(
        redis,
        [
            order("a", "pending_new", 0),
            order("b", "open", 1),
            order("c", "open", 2),
            order("a", "open", 3),
            order("b", "filled", 4),
            order("c", "pending_cancel", 5),
            order("d", "open", 6),
            order("d", "cancelled", 7),
        ],
    )
    await redis.xadd(
        KEYS.stream_fills,
        {
            "data": msgspec.msgpack.encode(
                FillEvent(
                    fill_id="fill_1",
                    order_id="ord_b",
                    client_order_id="b",
                    symbol="SEI/USDC",
                    side="buy",
                    price="0.4999",
                    size="100",
                    fee="-0.01",
                    liquidity="maker",
                    ts_ns=NOW,
                )
            )
        },
    )
    live = (await get(api, "/trading/orders")).json()
    # newest first; pending_cancel is still live at the venue
    assert [(o["client_order_id"], o["status"], o["state"]) for o in live["active_orders"]] == [
        ("c", "active", "pending_cancel"),
        ("a", "active", "open"),
    ]
    assert live["active_orders"][1]["price"] == "0.4999"
    assert live["recent_fills"][0]["fill_id"] == "fill_1"
    assert live["recent_fills"][0]["timestamp"] == "2027-01-15T08:00:00.000Z"
    filled = (await get(api, "/trading/orders", params={"status": "filled"})).json()
    assert [o["client_order_id"] for o in filled["active_orders"]] == ["b"]
    cancelled = (await get(api, "/trading/orders", params={"status": "cancelled"})).json()
    assert [o["client_order_id"] for o in cancelled["active_orders"]] == ["d"]
    one = (await get(api, "/trading/orders", params={"limit": 1})).json()
    assert [o["client_order_id"] for o in one["active_orders"]] == ["c"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"limit": "many"}, "query.limit"),
        ({"status": "open"}, "query.status"),
    ],
)
async def test_bad_order_query_is_400_naming_the_field(
    api: Api, params: dict[str, Any], field: str
) -> None:
    response = await get(api, "/trading/orders", params=params)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "INVALID_REQUEST"
    assert [f["field"] for f in error["details"]["fields"]] == [field]


async def test_why_explains_quoting_and_not_quoting(api: Api) -> None:
    sei = (await get(api, "/trading/why", params={"symbol": "SEI/USDC"})).json()
    assert (sei["quoting"], sei["reasons"]) == (True, [])
    decision = sei["last_decision"]
    assert (decision["mid"], decision["fair_value"], decision["reservation_price"]) == (
        0.5,
        0.50002,
        0.49998,
    )
    assert (decision["skew_bps"], decision["volatility"]) == (0.4, 1.5)
    assert decision["prediction"] == {
        "direction": "bullish",
        "confidence": 0.78,
        "price_change_bps": 5.2,
    }
    assert (sei["rate_budget_left"], sei["book"]["valid"], sei["risk"]["state"]) == (
        9.0,
        True,
        "active",
    )
    eth = (await get(api, "/trading/why", params={"symbol": "ETH/USDC"})).json()
    assert eth["quoting"] is False
    assert eth["reasons"] == ["feed stale for 12.0 s: quotes pulled until it recovers"]
    assert (eth["book"]["feed"], eth["book"]["staleness_s"], eth["last_decision"]) == (
        "stale",
        12.0,
        None,
    )


async def test_why_of_an_unknown_symbol_lists_the_supported_ones(api: Api) -> None:
    response = await get(api, "/trading/why", params={"symbol": "INVALID/PAIR"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "INVALID_SYMBOL"
    assert error["details"] == {"supported_symbols": ["SEI/USDC", "ETH/USDC"]}


async def test_a_paused_engine_says_so_in_status_and_why(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    paused = engine_state(time.time_ns(), status="paused", risk="paused", reason="maintenance")
    await write_state(redis, paused)
    api = await start_api()
    status = (await get(api, "/trading/status")).json()
    assert [m["status"] for m in status["markets"]] == ["paused", "paused"]
    why = (await get(api, "/trading/why", params={"symbol": "SEI/USDC"})).json()
    assert why["reasons"][0] == "risk state is paused: maintenance"


async def test_no_engine_state_is_503_in_the_error_format(
    start_api: StartApi,
) -> None:
    api = await start_api()
    response = await get(api, "/trading/positions", headers={"X-Request-ID": "mine-1"})
    assert response.status_code == 503
    error = error_of(response)
    assert (error["code"], error["request_id"]) == ("ENGINE_UNAVAILABLE", "mine-1")
    assert "flashmm run" in error["message"]


# ---------------------------------------------------------------------------- metrics
async def test_prometheus_metrics_of_the_specification(api: Api) -> None:
    response = await get(api, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(response.text.splitlines())
    assert "# TYPE flashmm_predictions_total counter" in lines
    assert "flashmm_predictions_total 15420.0" in lines
    assert "flashmm_prediction_accuracy 0.582" in lines
    # 10 bps without our orders, 4 with: 6 bps better
    assert 'flashmm_spread_improvement_bps{market="SEI/USDC"} 6.0' in lines
    assert not any(line.startswith('flashmm_spread_improvement_bps{market="ETH') for line in lines)
    assert "flashmm_engine_up 1.0" in lines


async def test_prometheus_without_an_engine_reports_it_down(start_api: StartApi) -> None:
    api = await start_api()
    text = (await get(api, "/metrics")).text
    assert "flashmm_engine_up 0.0" in text.splitlines()
    assert "flashmm_predictions_total" not in text


async def test_trading_metrics_in_json(api: Api) -> None:
    body = (await get(api, "/metrics/trading")).json()
    m = body["metrics"]
    assert (m["total_volume_usdc"], m["total_trades"], m["maker_fee_earned_usdc"]) == (
        12345.0,
        1180,
        0.5,
    )
    assert (m["average_spread_bps"], m["spread_improvement_percent"]) == (4.0, 60.0)
    assert (m["system_uptime_seconds"], m["latency_p95_ms"]) == (3600, 1.2)
    assert m["orders_per_minute"] == pytest.approx(1250 / 60, rel=1e-3)
    assert body["by_market"]["SEI/USDC"] == {
        "volume_usdc": 100_000.0,  # 1000 x the position, as the helper records it
        "trades": 3,
        "spread_bps": 4.0,
        "position_usdc": 50.0,
        "pnl_usdc": 2.25,
    }


# ---------------------------------------------------------------------------- dashboard
async def test_dashboard_snapshot(api: Api, redis: aioredis.Redis) -> None:
    await add_history(
        redis,
        "predictions",
        [
            PredictionEvent(
                symbol="SEI/USDC",
                ts_ns=NOW + i,
                direction="bearish",
                confidence=0.6,
                price_change_bps=-3.0,
                horizon_ms=200,
                model_version="default-1",
            )
            for i in range(3)
        ],
    )
    body = (await get(api, "/api/dashboard/snapshot")).json()
    assert body["portfolio"]["equity"] == 10_000.75
    # equity less the net position: 10000.75 - (50 - 1000)
    assert body["portfolio"]["cash"] == 10_950.75
    assert body["portfolio"]["position_count"] == 2
    assert [(p["symbol"], p["side"], p["size"]) for p in body["positions"]] == [
        ("SEI/USDC", "LONG", 100.0),
        ("ETH/USDC", "SHORT", 0.5),
    ]
    assert len(body["signals"]) == 3
    assert body["signals"][0]["direction"] == "bearish"
    risk = body["risk"]
    assert (risk["ess_state"], risk["net_exposure"], risk["risk_limit_pct"]) == (
        "armed",
        -950.0,
        50.0,
    )
    assert body["system"]["alerts"] == ["feed of ETH/USDC resynced"]
    assert {s["name"] for s in body["system"]["services"]} == {
        "redis",
        "websocket",
        "ml_model",
        "trading_engine",
    }


# ---------------------------------------------------------------------------- auth
def _forged() -> str:
    return mint_token("another-secret-that-is-long-enough-for-hs256-000", "admin", "mallory")


def _expired() -> str:
    now = int(time.time())
    claims = {"sub": "alice", "scope": "read", "iat": now - 7200, "exp": now - 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _unsigned() -> str:
    return jwt.encode({"sub": "x", "scope": "admin", "iat": 0, "exp": 2**40}, None, "none")


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "AUTH_MISSING"),
        ("Basic YWxpY2U6c2VjcmV0", 401, "TOKEN_MALFORMED"),
        ("Bearer not.a.jwt", 401, "TOKEN_MALFORMED"),
        ("Bearer " + _expired(), 401, "TOKEN_EXPIRED"),
        ("Bearer " + _forged(), 401, "TOKEN_BAD_SIGNATURE"),
        ("Bearer " + _unsigned(), 401, "TOKEN_BAD_ALGORITHM"),
    ],
    ids=["none", "basic", "malformed", "expired", "forged", "alg-none"],
)
async def test_bad_tokens_are_401_saying_why(
    api: Api, authorization: str | None, status: int, code: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await get(api, "/trading/status", scope=None, headers=headers)
    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert response.headers["www-authenticate"] == "Bearer"


async def test_read_scope_cannot_act_and_the_refusal_is_audited(
    api: Api, redis: aioredis.Redis
) -> None:
    response = await post(api, "/admin/resume", scope="read", headers={"X-Request-ID": "r-9"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "INSUFFICIENT_SCOPE"
    [entry] = await audit_entries(redis)
    assert (entry.action, entry.subject, entry.scope, entry.status_code) == (
        "/admin/resume",
        "alice",
        "read",
        403,
    )
    assert (entry.client, entry.request_id) == ("127.0.0.1", "r-9")
    assert entry.result.startswith("refused: INSUFFICIENT_SCOPE")
    # admin implies read
    assert (await get(api, "/trading/status", scope="admin")).status_code == 200


async def test_refuses_to_start_without_a_secret(redis_url: str) -> None:
    no_secret = msgspec.structs.replace(
        api_config(), api=msgspec.structs.replace(api_config().api, jwt_secret="")
    )
    with pytest.raises(InsecureSecret, match="FLASHMM_API__JWT_SECRET"):
        create_app(no_secret, redis_url)
    short = msgspec.structs.replace(
        no_secret, api=msgspec.structs.replace(no_secret.api, jwt_secret="short")
    )
    with pytest.raises(InsecureSecret, match="at least 32"):
        create_app(short, redis_url)
    result = CliRunner().invoke(
        cli_app, ["api", "--redis-url", redis_url], env={"FLASHMM_API__JWT_SECRET": ""}
    )
    assert result.exit_code == 2
    assert "no JWT secret" in result.output


def test_token_command_prints_a_token_of_the_scope() -> None:
    result = CliRunner().invoke(
        cli_app,
        ["token", "--scope", "admin", "--subject", "bob", "--ttl", "60"],
        env={"FLASHMM_API__JWT_SECRET": SECRET},
    )
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["scope"], claims["sub"], claims["exp"] - claims["iat"]) == ("admin", "bob", 60)
    bad = CliRunner().invoke(
        cli_app, ["token", "--scope", "root"], env={"FLASHMM_API__JWT_SECRET": SECRET}
    )
    assert bad.exit_code == 2
    assert "read or admin" in bad.output


# ---------------------------------------------------------------------------- limits
async def test_rate_limit_per_group_answers_429_with_retry_after(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    await write_state(redis)
    api = await start_api(rate_limits={"trading": "2/minute", "health": "1/minute"})
    codes = [(await get(api, "/trading/status")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    limited = await get(api, "/trading/positions")
    error = error_of(limited)
    assert error["code"] == "RATE_LIMITED"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert error["details"]["limit"] == "2 per 1 minute"
    # another group keeps its own budget; even unauthenticated requests count
    assert (await get(api, "/health", scope=None)).status_code == 200
    assert (await get(api, "/health", scope=None)).status_code == 429
    assert (await get(api, "/metrics")).status_code == 200


async def test_rate_limits_are_shared_between_sidecar_processes(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    await write_state(redis)
    first = await start_api(rate_limits={"trading": "2/minute"})
    second = await start_api(rate_limits={"trading": "2/minute"})
    assert (await get(first, "/trading/status")).status_code == 200
    assert (await get(second, "/trading/status")).status_code == 200
    assert (await get(first, "/trading/status")).status_code == 429


async def test_body_over_the_limit_is_413(start_api: StartApi, redis: aioredis.Redis) -> None:
    await write_state(redis)
    api = await start_api(max_body_bytes=256)
    response = await post(api, "/admin/pause", {"reason": "x" * 400})
    assert response.status_code == 413
    assert error_of(response)["code"] == "BODY_TOO_LARGE"
    [entry] = await audit_entries(redis)
    assert (entry.action, entry.status_code) == ("/admin/pause", 413)


async def test_cors_allows_only_configured_origins(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    await write_state(redis)
    api = await start_api(cors_origins=["https://dash.example.com"])
    preflight = {"Access-Control-Request-Method": "GET"}
    async with httpx.AsyncClient(base_url=api.url) as client:
        ok = await client.options(
            "/trading/status", headers={"Origin": "https://dash.example.com", **preflight}
        )
        evil = await client.options(
            "/trading/status", headers={"Origin": "https://evil.example.com", **preflight}
        )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://dash.example.com"
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers
    plain = await get(api, "/trading/status", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in plain.headers


async def test_unknown_path_is_404_in_the_error_format(api: Api) -> None:
    response = await get(api, "/trading/nothing")
    assert response.status_code == 404
    assert error_of(response)["code"] == "NOT_FOUND"
    assert response.headers["x-request-id"].startswith("req_")


# ---------------------------------------------------------------------------- admin
async def test_pause_waits_for_the_engine_and_is_audited(
    api: Api, redis: aioredis.Redis, redis_url: str
) -> None:
    async with responder(redis_url) as commands:
        response = await post(
            api,
            "/admin/pause",
            {"reason": "Manual intervention required", "duration_seconds": 300},
            headers={"Idempotency-Key": "pause-1"},
        )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "paused",
        "reason": "Manual intervention required",
        "paused_at": "2027-01-15T08:00:00.000Z",
        "resume_at": "2027-01-15T08:05:00.000Z",
        "command_id": "pause-1",
        "duplicate": False,
        "risk_state": "paused",
    }
    [command] = commands
    assert (command.id, command.subject, command.duration_s) == ("pause-1", "alice", 300.0)
    assert command.request_id == response.headers["x-request-id"]
    [entry] = await audit_entries(redis)
    assert (entry.action, entry.result, entry.status_code, entry.subject) == (
        "pause",
        "ok",
        200,
        "alice",
    )
    assert entry.details["command_id"] == "pause-1"


async def test_resume_and_emergency_stop(api: Api, redis_url: str) -> None:
    async with responder(redis_url):
        resumed = await post(api, "/admin/resume")
        stopped = await post(
            api, "/admin/emergency-stop", {"confirmation": "EMERGENCY_STOP_CONFIRMED"}
        )
    assert resumed.json()["status"] == "active"
    assert resumed.json()["resumed_at"] == "2027-01-15T08:00:00.000Z"
    body = stopped.json()
    assert (body["status"], body["orders_cancelled"], body["positions_flattened"]) == (
        "emergency_stopped",
        15,
        True,
    )
    assert body["risk_state"] == "halted"


async def test_emergency_stop_without_the_confirmation_is_refused(
    api: Api, redis: aioredis.Redis
) -> None:
    response = await post(api, "/admin/emergency-stop", {"confirmation": "yes"})
    assert response.status_code == 400
    error = error_of(response)
    assert [f["field"] for f in error["details"]["fields"]] == ["body.confirmation"]
    assert await redis.xlen(KEYS.commands) == 0
    [entry] = await audit_entries(redis)
    assert (entry.action, entry.status_code, entry.subject) == (
        "/admin/emergency-stop",
        400,
        "alice",
    )


async def test_unknown_pause_fields_are_refused(api: Api) -> None:
    response = await post(api, "/admin/pause", {"reason": "x", "duration": 5})
    assert response.status_code == 400
    fields = [f["field"] for f in error_of(response)["details"]["fields"]]
    assert fields == ["body.duration"]


async def test_no_answer_from_the_engine_is_504_and_audited_as_timeout(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    await write_state(redis)
    api = await start_api(command_timeout_s=0.3)
    response = await post(api, "/admin/resume")
    assert response.status_code == 504
    error = error_of(response)
    assert error["code"] == "ENGINE_TIMEOUT"
    assert await redis.xlen(KEYS.commands) == 1  # it was sent
    [entry] = await audit_entries(redis)
    assert (entry.action, entry.result, entry.status_code) == ("resume", "timeout", 504)


async def test_a_command_the_engine_refuses_is_409_with_its_reason(
    api: Api, redis_url: str
) -> None:
    def refuse(command: Any) -> CommandResult:
        return CommandResult(
            id=command.id,
            kind="pause",
            ok=False,
            ts_ns=NOW,
            risk_state="halted",
            error="the risk state is halted, above paused",
        )

    async with responder(redis_url, refuse):
        response = await post(api, "/admin/pause", {"reason": "x"})
    assert response.status_code == 409
    error = error_of(response)
    assert "the risk state is halted" in error["message"]
    assert error["details"]["risk_state"] == "halted"


async def test_commands_need_an_available_engine(
    start_api: StartApi, redis: aioredis.Redis
) -> None:
    api = await start_api()
    response = await post(api, "/admin/resume")
    assert response.status_code == 503
    assert await redis.xlen(KEYS.commands) == 0
    [entry] = await audit_entries(redis)
    assert (entry.action, entry.status_code) == ("resume", 503)
    assert entry.result.startswith("error: ")


async def test_audit_log_lists_admin_actions_newest_first(api: Api, redis_url: str) -> None:
    async with responder(redis_url, accept):
        await post(api, "/admin/pause", {"reason": "one"})
        await post(api, "/admin/resume")
    body = (await get(api, "/admin/audit", scope="admin")).json()
    assert [(e["action"], e["result"]) for e in body["entries"]] == [
        ("resume", "ok"),
        ("pause", "ok"),
    ]
    assert body["entries"][0]["timestamp"].endswith("Z")
    assert (await get(api, "/admin/audit", scope="read")).status_code == 403


async def test_bad_idempotency_key_is_refused(api: Api) -> None:
    response = await post(api, "/admin/resume", headers={"Idempotency-Key": "no spaces!"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "INVALID_REQUEST"
    assert [f["field"] for f in error["details"]["fields"]] == ["header.Idempotency-Key"]


# ---------------------------------------------------------------------------- the command
def test_api_command_serves_and_writes_its_ready_file(redis_url: str, tmp_path: Path) -> None:
    ready = tmp_path / "api.ready.json"
    env = os.environ | {"FLASHMM_API__JWT_SECRET": SECRET}
    cmd = [sys.executable, "-m", "flashmm", "api", "--port", "0", "--redis-url", redis_url]
    proc = subprocess.Popen(
        [*cmd, "--ready-file", str(ready)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "no ready file"
        payload = json.loads(ready.read_text())
        assert payload["pid"] == proc.pid
        health = httpx.get(payload["urls"]["api"] + "/health", timeout=5)
        assert health.json()["components"]["redis"] == "healthy"
        assert payload["urls"]["live_metrics"].endswith("/ws/live-metrics")
        authorized = httpx.get(
            payload["urls"]["api"] + "/trading/status",
            headers={"Authorization": f"Bearer {token()}"},
            timeout=5,
        )
        assert authorized.status_code == 503  # no engine: but the token was accepted
    finally:
        proc.terminate()
        proc.wait(10)
    assert not ready.exists()


async def test_unknown_query_parameters_are_refused(api: Api) -> None:
    response = await get(api, "/trading/orders", params={"limt": 5})
    assert response.status_code == 400
    error = error_of(response)
    assert error["message"] == (
        "unknown query parameter(s): limt; this endpoint takes limit, status"
    )
    assert [f["field"] for f in error["details"]["fields"]] == ["query.limt"]
