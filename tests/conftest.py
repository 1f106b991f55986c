"""Shared fixtures: the venue simulator in-process on 127.0.0.1, and real socket clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from flashmm.state.valkey import EmbeddedValkey
from flashmm.venue.sim.config import (
    AccountConfig,
    AssetConfig,
    FeeConfig,
    FeedConfig,
    MarketConfig,
    RateLimitConfig,
    SimConfig,
)
from flashmm.venue.sim.server import SimServer

DEMO_KEY = "demo-key"
OTHER_KEY = "other-key"
DEMO_ADDRESS = "sei1demo"
OTHER_ADDRESS = "sei1other"


def sim_config(**changes: Any) -> SimConfig:
    """Two quiet markets (no flow runs in these tests) and two funded accounts."""
    config = SimConfig(
        assets=[
            AssetConfig(symbol="SEI", denom="usei", decimals=6),
            AssetConfig(symbol="USDC", denom="uusdc", decimals=6),
            AssetConfig(symbol="ETH", denom="wei", decimals=18),
        ],
        markets=[
            MarketConfig(
                market_id="SEI/USDC", base="SEI", quote="USDC", tick_size="0.0001", lot_size="1"
            ),
            MarketConfig(
                market_id="ETH/USDC", base="ETH", quote="USDC", tick_size="0.01", lot_size="0.001"
            ),
        ],
        accounts=[
            AccountConfig(
                name="demo",
                api_key=DEMO_KEY,
                address=DEMO_ADDRESS,
                balances={"SEI": "10000", "USDC": "10000", "ETH": "10"},
            ),
            AccountConfig(
                name="other",
                api_key=OTHER_KEY,
                address=OTHER_ADDRESS,
                balances={"SEI": "10000", "USDC": "10000", "ETH": "10"},
            ),
        ],
        feed=FeedConfig(snapshot_interval_s=0.0),
        rate_limit=RateLimitConfig(orders_per_second=10_000),
    )
    return msgspec.structs.replace(config, **changes) if changes else config


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """The simulator with no market flow: the book moves only when a test trades."""
    async with SimServer(sim_config(), run_flows=False) as server:
        yield server


@pytest.fixture
async def venue() -> AsyncIterator[SimServer]:
    """A quiet simulator that sends a book snapshot every 0.5 s (so a calm book is not stale),
    pays makers a 1 bp rebate and charges takers 5 bp: the engine's end-to-end venue."""
    config = sim_config(
        feed=FeedConfig(snapshot_interval_s=0.5),
        fees=FeeConfig(maker_bps=-1.0, taker_bps=5.0),
    )
    async with SimServer(config, run_flows=False) as server:
        yield server


@pytest.fixture
async def other(venue: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    """The other account on ``venue``: it seeds books and takes the engine's quotes."""
    async with account_client(venue, OTHER_KEY) as client:
        yield client


@pytest.fixture
async def demo(venue: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    """The engine's account on ``venue``."""
    async with account_client(venue, DEMO_KEY) as client:
        yield client


class WsClient(WSListener):
    """A picows client that queues every text message it receives."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: WSTransport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.pongs = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.messages.put_nowait(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.PONG:
            self.pongs += 1
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, payload)

    async def recv(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def recv_json(self, timeout: float = 5.0) -> Any:
        return msgspec.json.decode(await self.recv(timeout))

    async def nothing_for(self, seconds: float) -> bool:
        """True if no message arrives within ``seconds``."""
        try:
            await asyncio.wait_for(self.messages.get(), seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect()


async def connect(url: str, headers: Mapping[str, str] | None = None) -> WsClient:
    _, client = await ws_connect(WsClient, url, extra_headers=headers)
    return client  # type: ignore[return-value]


def account_client(server: SimServer, api_key: str) -> httpx.AsyncClient:
    """An HTTP client of one account's order entry (use with ``async with``)."""
    return httpx.AsyncClient(
        base_url=server.urls["order_entry"], headers={"X-API-Key": api_key}, timeout=5
    )


@pytest.fixture
async def rest(sim: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the demo account."""
    async with account_client(sim, DEMO_KEY) as client:
        yield client


@pytest.fixture
async def other_rest(sim: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the other account."""
    async with account_client(sim, OTHER_KEY) as client:
        yield client


@pytest.fixture
async def stream(sim: SimServer) -> AsyncIterator[WsClient]:
    """The demo account's execution stream."""
    client = await connect(sim.urls["stream"], {"X-API-Key": DEMO_KEY})
    yield client
    client.close()


def order(
    client_order_id: str,
    side: str = "buy",
    price: str | None = "0.4000",
    quantity: str = "10",
    market_id: str = "SEI/USDC",
    **extra: Any,
) -> dict[str, Any]:
    """A ``POST /v1/orders`` body."""
    body: dict[str, Any] = {
        "market_id": market_id,
        "side": side,
        "quantity": quantity,
        "client_order_id": client_order_id,
    }
    if price is not None:
        body["price"] = price
    return body | extra


# ------------------------------------------------------------------ Redis (embedded Valkey)
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """One real valkey-server for the session; tests that restart Redis start their own."""
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedValkey) -> str:
    """The session server's URL, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def fresh_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A server of the test's own, for tests that stop and restart it."""
    server = EmbeddedValkey(tmp_path / "valkey")
    server.start()
    yield server
    server.stop()
