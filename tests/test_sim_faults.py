"""Every fault the simulator injects, over real sockets, and what a client sees of it.

Faults are injected with ``POST /admin/faults/{name}`` and counted in ``GET /admin/faults``.
Market-data frames are read as the engine reads them: a ``FrameDecoder`` feeding an
``OrderBook`` of SEI/USDC (tick 0.0001, lot 1).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import DEMO_KEY, WsClient, connect, order, sim_config
from flashmm._core.book import BookStatus, OrderBook
from flashmm.venue.protocol import (
    BookUpdate,
    FrameDecoder,
    FrameError,
    MarketStatus,
    Notification,
    encode_subscribe,
)
from flashmm.venue.sim import faults
from flashmm.venue.sim.config import ScheduledFault
from flashmm.venue.sim.exchange import Exchange
from flashmm.venue.sim.rest import create_app
from flashmm.venue.sim.server import SimServer

# ------------------------------------------------------------------------ helpers


@pytest.fixture
async def admin(sim: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the admin endpoints (no account key: admin trusts loopback only)."""
    async with httpx.AsyncClient(base_url=sim.urls["order_entry"], timeout=5) as client:
        yield client


async def report(admin: httpx.AsyncClient) -> dict[str, Any]:
    response = await admin.get("/admin/faults")
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def inject(admin: httpx.AsyncClient, name: str, **params: Any) -> dict[str, Any]:
    """Inject ``name``; checks that the counter of that fault (and no other) went up by one."""
    before = (await report(admin))["faults"]
    response = await admin.post(f"/admin/faults/{name}", json=params)
    body = response.json()
    assert response.status_code == 200, body
    assert body["success"] is True
    after = (await report(admin))["faults"]
    assert after == before | {name: before[name] + 1}
    assert body["data"]["fault"] == name
    return body["data"]


async def place(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/v1/orders", json=body)
    assert response.status_code == 200, response.text
    return response.json()["order_id"]


async def subscribe(client: WsClient, event_type: str, market: str = "SEI/USDC") -> None:
    client.send(encode_subscribe(1, event_type, market))
    assert await client.recv_json() == {"jsonrpc": "2.0", "id": 1, "result": {}}


class Feed:
    """A market-data client of one market's book, decoding like the engine does."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.decoder = FrameDecoder()
        self.book = OrderBook(0.0001, 1.0)
        self.sequence = 0  # of the first snapshot

    @classmethod
    async def open(cls, sim: SimServer) -> Feed:
        """Subscribed to SEI/USDC's book, with its first snapshot applied."""
        feed = cls(await connect(sim.urls["market_data"]))
        await subscribe(feed.client, "OrderBookUpdate")
        snapshot = await feed.update()
        assert snapshot.is_snapshot
        status = feed.book.apply_snapshot(
            np.array(snapshot.bids), np.array(snapshot.asks), snapshot.sequence
        )
        assert status == BookStatus.OK
        feed.sequence = snapshot.sequence
        return feed

    async def update(self) -> BookUpdate:
        message = self.decoder.decode(await self.client.recv())
        assert isinstance(message, Notification)
        (update,) = message.events
        assert isinstance(update, BookUpdate)
        return update

    def apply(self, update: BookUpdate) -> BookStatus:
        """Apply a delta to the client's book."""
        assert not update.is_snapshot
        return BookStatus(
            self.book.apply_delta(np.array(update.bids), np.array(update.asks), update.sequence)
        )

    async def frames_sent(self, admin: httpx.AsyncClient) -> int:
        return (await report(admin))["market_data"]["frames_sent"]


def test_every_fault_is_covered() -> None:
    """The tests below cover these faults; a new fault needs a test here."""
    assert set(faults.FAULT_NAMES) == {
        "drop_connections",
        "skip_sequence",
        "crossed_frame",
        "malformed_frame",
        "delay_frames",
        "stall_feed",
        "rate_limit_burst",
        "reject_orders",
        "halt_market",
    }


# ------------------------------------------------------------------- connections


@pytest.mark.parametrize(
    ("target", "dropped"),
    [
        ("all", {"market_data", "stream"}),
        ("market_data", {"market_data"}),
        ("stream", {"stream"}),
    ],
)
async def test_drop_connections(sim, admin, rest, target: str, dropped: set[str]) -> None:
    feed = await Feed.open(sim)
    stream = await connect(sim.urls["stream"], {"X-API-Key": DEMO_KEY})
    result = await inject(admin, "drop_connections", target=target)
    expected: dict[str, Any] = {"fault": "drop_connections"}
    if "market_data" in dropped:
        expected["market_data_dropped"] = 1
    if "stream" in dropped:
        expected["streams_dropped"] = 1
    assert result == expected

    if "market_data" in dropped:
        await asyncio.wait_for(feed.client.closed, 5)
        feed = await Feed.open(sim)  # the server takes new connections
    if "stream" in dropped:
        await asyncio.wait_for(stream.closed, 5)
        stream = await connect(sim.urls["stream"], {"X-API-Key": DEMO_KEY})
    # the connections that were kept, and the new ones, carry on
    order_id = await place(rest, order("b1"))
    ack = await stream.recv_json()
    assert (ack["type"], ack["order_id"], ack["seq"]) == ("new_order_ack", order_id, 1)
    update = await feed.update()
    assert update.sequence == feed.sequence + 1
    assert feed.apply(update) == BookStatus.OK
    stream.close()


# ----------------------------------------------------------------- frame contents


async def test_skip_sequence_is_a_gap_for_the_client(sim, admin, rest) -> None:
    await place(rest, order("b1", "buy", "0.4000", "10"))
    feed = await Feed.open(sim)
    assert await inject(admin, "skip_sequence", market_id="SEI/USDC", count=2) == {
        "fault": "skip_sequence",
        "skipped": 2,
    }
    await place(rest, order("b2", "buy", "0.3999", "5"))
    update = await feed.update()
    assert update.sequence == feed.sequence + 3  # +1, plus the 2 skipped
    assert feed.apply(update) == BookStatus.GAP
    # the venue's REST book is at the same sequence, to resync from
    book = (await rest.get("/v1/markets/SEI/USDC/book")).json()["data"]
    assert book["sequence"] == update.sequence
    await place(rest, order("b3", "buy", "0.3998", "5"))
    assert (await feed.update()).sequence == update.sequence + 1  # only one skip


@pytest.mark.parametrize(
    "resting",
    [
        [order("b1", "buy", "0.3999", "10"), order("s1", "sell", "0.4001", "10")],
        [order("b1", "buy", "0.3999", "10")],  # no ask: the frame must bring one
        [],
    ],
    ids=["both-sides", "bids-only", "empty"],
)
async def test_crossed_frame_crosses_only_the_client_book(
    sim, admin, rest, resting: list[dict[str, Any]]
) -> None:
    for body in resting:
        await place(rest, body)
    venue_before = (await rest.get("/v1/markets/SEI/USDC/book")).json()["data"]
    feed = await Feed.open(sim)
    result = await inject(admin, "crossed_frame", market_id="SEI/USDC")
    assert result == {"fault": "crossed_frame", "sequence": feed.sequence + 1}
    update = await feed.update()
    assert update.sequence == feed.sequence + 1
    assert feed.apply(update) == BookStatus.CROSSED
    # the venue's own book did not change, and it is not crossed
    venue = (await rest.get("/v1/markets/SEI/USDC/book")).json()["data"]
    assert (venue["bids"], venue["asks"]) == (venue_before["bids"], venue_before["asks"])
    if venue["bids"] and venue["asks"]:
        assert float(venue["bids"][0][0]) < float(venue["asks"][0][0])


async def test_malformed_frame_is_rejected_and_the_server_keeps_serving(sim, admin, rest) -> None:
    feed = await Feed.open(sim)
    trades = await connect(sim.urls["market_data"])
    await subscribe(trades, "Trade")
    assert await inject(admin, "malformed_frame") == {"fault": "malformed_frame", "clients": 2}
    for client in (feed.client, trades):
        with pytest.raises(FrameError):
            FrameDecoder().decode(await client.recv())
    # the same connection then carries good frames, and new clients are served
    await place(rest, order("b1"))
    update = await feed.update()
    assert (update.sequence, feed.apply(update)) == (feed.sequence + 1, BookStatus.OK)
    late = await Feed.open(sim)
    assert late.sequence == update.sequence


# ---------------------------------------------------------------------- latency


async def test_delay_frames_then_the_delay_ends(sim, admin, rest) -> None:
    feed = await Feed.open(sim)
    await inject(admin, "delay_frames", delay_ms=200, duration_s=0.6)
    injected = time.monotonic()  # the server's 0.6 s timer started before this
    sent = await feed.frames_sent(admin)
    placed = time.monotonic()
    await place(rest, order("b1", "buy", "0.4000", "1"))
    await place(rest, order("b2", "buy", "0.3999", "1"))
    assert await feed.frames_sent(admin) == sent  # held, not sent
    first, second = await feed.update(), await feed.update()
    assert time.monotonic() - placed >= 0.2
    assert (first.sequence, second.sequence) == (feed.sequence + 1, feed.sequence + 2)

    await asyncio.sleep(max(0.0, injected + 0.6 - time.monotonic()) + 0.05)
    sent = await feed.frames_sent(admin)
    await place(rest, order("b3", "buy", "0.3998", "1"))
    # sent as the order was placed: nothing held any more
    assert await feed.frames_sent(admin) == sent + 1
    assert (await feed.update()).sequence == feed.sequence + 3


async def test_stall_feed_holds_frames_then_sends_the_backlog_in_order(sim, admin, rest) -> None:
    feed = await Feed.open(sim)
    stalled = time.monotonic()
    await inject(admin, "stall_feed", duration_s=0.5)
    sent = await feed.frames_sent(admin)
    for i in range(3):
        await place(rest, order(f"b{i}", "buy", f"0.399{i}", "1"))
    assert await feed.frames_sent(admin) == sent
    assert feed.client.messages.empty()
    assert not feed.client.closed.done()  # the socket stays open
    first = await feed.update()
    assert time.monotonic() - stalled >= 0.5  # nothing came during the stall
    backlog = [first, await feed.update(), await feed.update()]
    assert [u.sequence for u in backlog] == [feed.sequence + i for i in (1, 2, 3)]
    assert [feed.apply(u) for u in backlog] == [BookStatus.OK] * 3
    assert not feed.client.closed.done()


# ------------------------------------------------------------------- order entry


async def test_rate_limit_burst(admin, rest, stream) -> None:
    await inject(admin, "rate_limit_burst", count=2, retry_after_s=1.5)
    assert (await report(admin))["pending"]["rate_limited_requests"] == 2
    for request in (
        rest.post("/v1/orders", json=order("b1")),
        rest.delete("/v1/orders/1"),  # cancels count as order requests too
    ):
        response = await request
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"  # 1.5 s, rounded up
        error = response.json()["error"]
        assert error == {
            "code": "RATE_LIMITED",
            "message": "rate limited (injected fault)",
            "details": {"retry_after_ms": 1500},
        }
    order_id = await place(rest, order("b2"))
    ack = await stream.recv_json()  # the first event: the refused requests sent none
    assert (ack["type"], ack["seq"], ack["order_id"]) == ("new_order_ack", 1, order_id)
    assert (await report(admin))["pending"]["rate_limited_requests"] == 0


async def test_reject_orders(admin, rest, stream) -> None:
    before = (await rest.get("/cosmos/bank/v1beta1/balances/sei1demo")).json()
    await inject(admin, "reject_orders", count=1, reason="venue busy")
    rejected = await place(rest, order("b1", "buy", "0.4000", "10"))  # validation passed
    assert await stream.recv_json() | {"timestamp": None} == {
        "type": "order_rejected",
        "seq": 1,
        "timestamp": None,
        "order_id": rejected,
        "client_order_id": "b1",
        "market_id": "SEI/USDC",
        "code": "REJECTED",
        "reason": "venue busy",
    }
    assert (await rest.get("/cosmos/bank/v1beta1/balances/sei1demo")).json() == before
    assert (await rest.get("/v1/orders")).json()["data"] == {"orders": []}
    # the next order is served normally, and its ack comes next: no ack of the rejected one
    order_id = await place(rest, order("b2", "buy", "0.4000", "10"))
    ack = await stream.recv_json()
    assert (ack["type"], ack["seq"], ack["order_id"]) == ("new_order_ack", 2, order_id)


async def test_halt_open_and_close_a_market(sim, admin, rest, stream) -> None:
    watcher = await connect(sim.urls["market_data"])
    await subscribe(watcher, "MarketStatus")
    decoder = FrameDecoder()

    async def status() -> str:
        message = decoder.decode(await watcher.recv())
        assert isinstance(message, Notification)
        (event,) = message.events
        assert isinstance(event, MarketStatus) and event.market_id == "SEI/USDC"
        return event.status

    assert await status() == "open"  # a new subscriber hears the status first
    resting = await place(rest, order("b1", "buy", "0.3900", "1"))
    await stream.recv_json()

    await inject(admin, "halt_market", market_id="SEI/USDC")  # "halted" by default
    assert await status() == "halted"
    response = await rest.post("/v1/orders", json=order("b2"))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "MARKET_NOT_OPEN"
    assert response.json()["error"]["message"] == "SEI/USDC is halted"
    # other markets trade on
    await place(rest, order("e1", "sell", "3000.00", "0.5", market_id="ETH/USDC"))
    assert (await stream.recv_json())["market_id"] == "ETH/USDC"

    await inject(admin, "halt_market", market_id="SEI/USDC", status="open")
    assert await status() == "open"
    reopened = await place(rest, order("b3", "buy", "0.3800", "1"))
    assert (await stream.recv_json())["order_id"] == reopened

    await inject(admin, "halt_market", market_id="SEI/USDC", status="closed")
    assert await status() == "closed"
    cancelled = [await stream.recv_json(), await stream.recv_json()]
    assert [(e["type"], e["order_id"], e["reason"]) for e in cancelled] == [
        ("order_cancelled", resting, "market_closed"),
        ("order_cancelled", reopened, "market_closed"),
    ]
    response = await rest.post("/v1/orders", json=order("b4"))
    assert (response.status_code, response.json()["error"]["message"]) == (
        409,
        "SEI/USDC is closed",
    )
    markets = (await rest.get("/v1/markets")).json()["data"]["markets"]
    assert [m["status"] for m in markets] == ["closed", "open"]


# ----------------------------------------------------------------- bad requests


async def test_bad_fault_requests_are_refused_and_inject_nothing(sim, admin) -> None:
    names = ", ".join(faults.FAULT_NAMES)
    cases: list[tuple[str, Any, int, str, str]] = [
        ("nope", {}, 400, "INVALID_REQUEST", f"unknown fault 'nope'; faults: {names}"),
        (
            "skip_sequence",
            {},
            400,
            "INVALID_REQUEST",
            "fault skip_sequence: Object missing required field `market_id`",
        ),
        (
            "skip_sequence",
            {"market_id": "SEI/USDC", "count": 0},
            400,
            "INVALID_REQUEST",
            "fault skip_sequence: count must be >= 1",
        ),
        (
            "delay_frames",
            {"delay_ms": -5},
            400,
            "INVALID_REQUEST",
            "fault delay_frames: delay_ms must be >= 0, got -5.0",
        ),
        (
            "drop_connections",
            {"target": "everything"},
            400,
            "INVALID_REQUEST",
            "fault drop_connections: Invalid enum value 'everything' - at `$.target`",
        ),
        (
            "halt_market",
            {"market_id": "SEI/USDC", "bogus": 1},
            400,
            "INVALID_REQUEST",
            "fault halt_market: Object contains unknown field `bogus`",
        ),
        ("halt_market", [], 400, "INVALID_REQUEST", "Expected `object`, got `array`"),
        (
            "halt_market",
            {"market_id": "DOGE/USDC"},
            404,
            "UNKNOWN_MARKET",
            "unknown market 'DOGE/USDC'",
        ),
    ]
    for name, params, status, code, message in cases:
        response = await admin.post(f"/admin/faults/{name}", json=params)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert (error["code"], error["message"]) == (code, message)
    response = await admin.post("/admin/faults/halt_market", content=b"{oops")
    assert response.json()["error"]["code"] == "INVALID_REQUEST"

    assert set((await report(admin))["faults"].values()) == {0}
    markets = (await admin.get("/v1/markets")).json()["data"]["markets"]
    assert [m["status"] for m in markets] == ["open", "open"]


async def test_admin_is_refused_to_a_non_loopback_client() -> None:
    # Real sockets here would always come from 127.0.0.1, so the real app is driven
    # through httpx's ASGI transport, which lets the test set the client's address.
    exchange = Exchange(sim_config())
    transport = httpx.ASGITransport(app=create_app(exchange), client=("10.1.2.3", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://venue") as remote:
        for request in (
            remote.post("/admin/faults/halt_market", json={"market_id": "SEI/USDC"}),
            remote.get("/admin/faults"),
        ):
            response = await request
            assert response.status_code == 403
            error = response.json()["error"]
            assert (error["code"], error["message"]) == ("FORBIDDEN", "admin is loopback only")
        # the venue itself still answers that client, and nothing was injected
        markets = (await remote.get("/v1/markets")).json()["data"]["markets"]
        assert [m["status"] for m in markets] == ["open", "open"]
    assert set(exchange.fault_counts.values()) == {0}


# -------------------------------------------------------------------- scheduled


async def test_scheduled_fault_fires_by_itself() -> None:
    config = sim_config(
        faults=[ScheduledFault(at_s=0.05, fault="halt_market", params={"market_id": "SEI/USDC"})]
    )
    async with (
        SimServer(config, run_flows=True) as sim,
        httpx.AsyncClient(base_url=sim.urls["order_entry"], timeout=5) as client,
    ):
        deadline = time.monotonic() + 5
        while (counts := (await report(client))["faults"])["halt_market"] == 0:
            assert time.monotonic() < deadline, "the scheduled fault never fired"
            await asyncio.sleep(0.02)
        assert counts == dict.fromkeys(faults.FAULT_NAMES, 0) | {"halt_market": 1}
        markets = (await client.get("/v1/markets")).json()["data"]["markets"]
        assert [(m["market_id"], m["status"]) for m in markets] == [
            ("SEI/USDC", "halted"),
            ("ETH/USDC", "open"),
        ]
