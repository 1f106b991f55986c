"""The sidecar under load: state served from memory, the fast status path, rate-limit
leases, JWT caching, and a burst of WebSockets on the bounded Redis pool.

Real uvicorn and real Valkey, as in ``test_api.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import jwt
import msgspec
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api_support import (
    SECRET,
    Api,
    api_config,
    auth,
    engine_state,
    running_api,
    token,
    write_state,
)
from flashmm.api._auth import TokenVerifier
from flashmm.api._errors import ApiError
from flashmm.api._ratelimit import RateLimiter, lease_size
from flashmm.config import RateLimitSection
from flashmm.state.valkey import free_port

StartApi = Callable[..., Awaitable[Api]]
SECOND = 1_000_000_000


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def start_api() -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    async with AsyncExitStack() as stack:

        async def start(redis_url: str, **api_changes: Any) -> Api:
            return await stack.enter_async_context(
                running_api(api_config(**api_changes), redis_url)
            )

        yield start


async def get(api: Api, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        return await client.get(path, headers=headers if headers is not None else auth())


# ---------------------------------------------------------------------------- state cache
async def test_the_fast_status_answer_is_the_routes_answer(
    start_api: StartApi, redis: aioredis.Redis, redis_url: str
) -> None:
    await write_state(redis)
    api = await start_api(redis_url)
    headers = auth(subject="fast")
    by_route = await get(api, "/trading/status", headers)  # a token seen for the first time
    from_memory = await get(api, "/trading/status", headers)  # now known: served from memory
    assert by_route.status_code == from_memory.status_code == 200
    assert from_memory.content == by_route.content
    assert from_memory.headers["content-type"] == by_route.headers["content-type"]
    assert from_memory.headers["x-request-id"] != by_route.headers["x-request-id"]
    assert [m["symbol"] for m in from_memory.json()["markets"]] == ["SEI/USDC", "ETH/USDC"]


async def test_a_new_engine_state_is_served_within_a_refresh(
    start_api: StartApi, redis: aioredis.Redis, redis_url: str
) -> None:
    state = await write_state(redis)
    api = await start_api(redis_url)
    assert (await get(api, "/trading/status")).json()["status"] == "active"
    await write_state(redis, msgspec.structs.replace(state, status="paused"))
    seen = []
    for _ in range(40):  # 2 s at most; a refresh is every 50 ms
        seen.append((await get(api, "/trading/status")).json()["status"])
        if seen[-1] == "paused":
            break
        await asyncio.sleep(0.05)
    assert seen[-1] == "paused"


async def test_the_heartbeat_ages_between_refreshes(
    start_api: StartApi, redis: aioredis.Redis, redis_url: str
) -> None:
    # 2 s old against a 3 s limit: fresh now, stale in 1 s though Redis never changes
    await write_state(redis, engine_state(time.time_ns() - 2 * SECOND))
    api = await start_api(redis_url)
    headers = auth(subject="ageing")
    assert (await get(api, "/trading/status", headers)).status_code == 200
    assert (await get(api, "/trading/status", headers)).status_code == 200  # from memory
    await asyncio.sleep(1.2)
    late = await get(api, "/trading/status", headers)
    assert late.status_code == 503
    assert late.json()["error"]["code"] == "ENGINE_UNAVAILABLE"
    assert late.json()["error"]["details"]["heartbeat_age_s"] > 3


async def test_without_redis_requests_are_503_and_websockets_close_1011(
    start_api: StartApi,
) -> None:
    api = await start_api(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    status = await get(api, "/trading/status")
    assert status.status_code == 503
    assert status.json()["error"]["code"] == "REDIS_UNAVAILABLE"
    assert (await get(api, "/health", headers={})).status_code == 503
    url = f"{api.ws}/ws/live-metrics?token={token()}"
    async with connect(url, compression=None) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1011
    assert ws.close_reason is not None and ws.close_reason.startswith("REDIS_UNAVAILABLE")


# ---------------------------------------------------------------------------- websockets
async def test_a_burst_of_websockets_beyond_the_pool_all_get_their_snapshot(
    start_api: StartApi, redis: aioredis.Redis, redis_url: str
) -> None:
    await write_state(redis)
    clients = 120  # more than redis-py's default pool (100) and than ours (32)
    api = await start_api(redis_url, ws_max_per_ip=clients)
    url = f"{api.ws}/ws/live-metrics?token={token()}"

    async def one() -> list[str]:
        async with connect(url, compression=None) as ws:
            await ws.send(json.dumps({"action": "subscribe", "channels": ["trading"]}))
            await asyncio.wait_for(ws.recv(), 20)  # "subscribed"
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 20))
            return [row["symbol"] for row in snapshot["data"]]

    results = await asyncio.gather(*(one() for _ in range(clients)))
    assert results == [["SEI/USDC", "ETH/USDC"]] * clients


# ---------------------------------------------------------------------------- rate limits
def test_lease_sizes() -> None:
    # one token per lease below 200 a window (exact), 1 % of the limit above, 100 at most
    assert [lease_size(n) for n in (1, 60, 199, 200, 450, 10_000, 10**8)] == [
        1,
        1,
        1,
        2,
        4,
        100,
        100,
    ]


async def test_leased_tokens_never_admit_more_than_the_limit(redis: aioredis.Redis) -> None:
    # two processes, 200 a minute: each leases 2 tokens at a time
    settings = RateLimitSection(trading="200/minute")
    first = RateLimiter(redis, "test:rl", settings)
    second = RateLimiter(redis, "test:rl", settings)
    await first.hit("trading", "1.2.3.4")  # leases 2, uses 1
    for _ in range(198):  # 200 less the 2 the first process leased
        await second.hit("trading", "1.2.3.4")
    with pytest.raises(ApiError) as refused:
        await second.hit("trading", "1.2.3.4")
    assert refused.value.status_code == 429
    await first.hit("trading", "1.2.3.4")  # its second leased token
    with pytest.raises(ApiError):
        await first.hit("trading", "1.2.3.4")
    assert await redis.keys("test:rl:trading:1.2.3.4:*") != []


# ---------------------------------------------------------------------------- tokens
def test_a_verified_token_is_remembered_until_it_expires() -> None:
    verifier = TokenVerifier(SECRET, "HS256", cache_size=2)
    short = token(ttl_s=2)  # expires 1 to 2 s from now (exp is whole seconds)
    exp = jwt.decode(short, options={"verify_signature": False})["exp"]
    assert verifier.known(short) is None
    assert verifier.verify(short).subject == "alice"
    assert verifier.known(short) == verifier.verify(short)
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    assert verifier.known(short) is None
    with pytest.raises(ApiError) as expired:
        verifier.verify(short)
    assert expired.value.code == "TOKEN_EXPIRED"
    # bounded: the least recently used token goes first
    a, b, c = (token(subject=s) for s in ("a", "b", "c"))
    for t in (a, b, c):
        verifier.verify(t)
    assert verifier.known(a) is None
    assert verifier.known(b) is not None and verifier.known(c) is not None
