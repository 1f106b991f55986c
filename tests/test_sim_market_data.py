"""The simulator's market-data server over real sockets: JSON-RPC, sequences, snapshots."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import msgspec
import numpy as np
import pytest
from picows import WSMsgType

from conftest import WsClient, connect, order, sim_config
from flashmm._core.book import OK, OrderBook
from flashmm.venue.protocol import (
    BookUpdate,
    FrameDecoder,
    MarketStatus,
    Notification,
    RpcError,
    SubscribeAck,
    Trade,
    encode_subscribe,
    encode_unsubscribe,
)
from flashmm.venue.sim.config import FeedConfig, MarketConfig
from flashmm.venue.sim.server import SimServer
from flashmm.venue.sim.synthetic import SyntheticParams


async def subscribe(client: WsClient, event_type: str, market: str, rid: int = 1) -> None:
    client.send(encode_subscribe(rid, event_type, market))
    assert await client.recv_json() == {"jsonrpc": "2.0", "id": rid, "result": {}}


async def rest_book(sim: SimServer, market: str = "SEI/USDC") -> dict:
    async with httpx.AsyncClient(base_url=sim.urls["order_entry"]) as client:
        answer = (await client.get(f"/v1/markets/{market}/book")).json()
    assert answer["success"], answer
    return answer["data"]


def levels(rows: list[list[str]]) -> list[tuple[int, int]]:
    """REST levels of SEI/USDC in ticks (0.0001) and lots (1)."""
    return [(int(Decimal(p) / Decimal("0.0001")), int(Decimal(s))) for p, s in rows]


def book_levels(book: OrderBook) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The book's levels in ticks and lots."""
    sides = []
    for prices, sizes in (book.bids(), book.asks()):
        sides.append(list(zip(prices.tolist(), sizes.tolist(), strict=True)))
    return sides[0], sides[1]


async def test_snapshot_then_deltas_rebuild_the_venue_book(sim, rest, other_rest) -> None:
    await rest.post("/v1/orders", json=order("b1", "buy", "0.4000", "10"))
    md = await connect(sim.urls["market_data"])
    await subscribe(md, "OrderBookUpdate", "SEI/USDC")
    decoder = FrameDecoder()
    book = OrderBook(0.0001, 1.0)

    first = decoder.decode(await md.recv())
    assert isinstance(first, Notification)
    (snap,) = first.events
    assert isinstance(snap, BookUpdate) and snap.is_snapshot
    assert book.apply_snapshot(np.array(snap.bids), np.array(snap.asks), snap.sequence) == OK
    expected_seq = snap.sequence

    steps = [
        (rest, order("b2", "buy", "0.3990", "5")),
        (rest, order("a1", "sell", "0.4100", "7")),
        (other_rest, order("x1", "sell", "0.4000", "4")),  # trades 4 against b1
        (other_rest, order("x2", "buy", "0.4200", "7", time_in_force="IOC")),  # takes a1
    ]
    for client, body in steps:
        assert (await client.post("/v1/orders", json=body)).json()["success"]
        msg = decoder.decode(await md.recv())
        (update,) = msg.events
        assert not update.is_snapshot
        expected_seq += 1
        assert update.sequence == expected_seq  # +1 per update, no gap
        assert book.apply_delta(np.array(update.bids), np.array(update.asks), update.sequence) == OK
        venue = await rest_book(sim)
        assert venue["sequence"] == update.sequence  # REST resync point is the same sequence
        assert book_levels(book) == (levels(venue["bids"]), levels(venue["asks"]))
    assert book_levels(book) == ([(4000, 6), (3990, 5)], [])


async def test_trades_and_market_status_notifications(sim, rest, other_rest) -> None:
    md = await connect(sim.urls["market_data"])
    await subscribe(md, "Trade", "SEI/USDC", 7)
    await subscribe(md, "MarketStatus", "SEI/USDC", 8)
    current = FrameDecoder().decode(await md.recv())  # the status now comes first
    assert current.id == 8 and current.events == [MarketStatus("SEI/USDC", "open")]
    await rest.post("/v1/orders", json=order("b1", "buy", "0.4000", "3"))
    await rest.post("/v1/orders", json=order("b2", "buy", "0.3999", "5"))
    await other_rest.post(
        "/v1/orders", json=order("s1", "sell", None, "6", type="market", time_in_force="IOC")
    )
    decoder = FrameDecoder()
    msg = decoder.decode(await md.recv())
    assert msg.id == 7
    assert [(t.price, t.size, t.side) for t in msg.events] == [(0.4, 3.0, -1), (0.3999, 3.0, -1)]
    assert all(isinstance(t, Trade) and t.market_id == "SEI/USDC" for t in msg.events)
    ids = [int(t.trade_id) for t in msg.events]
    assert ids[1] == ids[0] + 1

    async with httpx.AsyncClient(base_url=sim.urls["order_entry"]) as admin:
        r = await admin.post(
            "/admin/faults/halt_market", json={"market_id": "SEI/USDC", "status": "halted"}
        )
        assert r.json()["success"], r.text
    status = decoder.decode(await md.recv())
    assert status.id == 8
    assert status.events == [MarketStatus("SEI/USDC", "halted")]


async def test_each_market_has_its_own_sequence(sim, rest) -> None:
    md = await connect(sim.urls["market_data"])
    decoder = FrameDecoder()
    seqs = {}
    for rid, market in ((1, "SEI/USDC"), (2, "ETH/USDC")):
        await subscribe(md, "OrderBookUpdate", market, rid)
        msg = decoder.decode(await md.recv())
        seqs[msg.events[0].market_id] = msg.events[0].sequence
    await rest.post("/v1/orders", json=order("e1", "buy", "3000.00", "0.5", market_id="ETH/USDC"))
    msg = decoder.decode(await md.recv())
    (update,) = msg.events
    assert (msg.id, update.market_id, update.sequence) == (2, "ETH/USDC", seqs["ETH/USDC"] + 1)
    assert update.bids.tolist() == [[3000.0, 0.5]]
    await rest.post("/v1/orders", json=order("s1", "buy", "0.4000", "1"))
    msg = decoder.decode(await md.recv())
    assert (msg.id, msg.events[0].sequence) == (1, seqs["SEI/USDC"] + 1)


@pytest.mark.parametrize(
    ("payload", "code", "rid"),
    [
        (b"{not json", -32700, None),
        (b'{"jsonrpc":"2.0","method":"subscribe","id":3}', -32600, 3),  # no params
        (b'{"jsonrpc":"2.0","method":"status","id":4,"params":{"query":"x"}}', -32600, 4),
        (encode_subscribe(5, "OrderBookUpdate", "XRP/USDC"), -32602, 5),  # unknown market
        (
            b'{"jsonrpc":"2.0","method":"subscribe","id":6,"params":{"query":"tm.event=\'Tx\'"}}',
            -32602,
            6,
        ),
        (encode_unsubscribe(9, "Trade", "SEI/USDC"), -32603, 9),  # not subscribed
    ],
)
async def test_bad_requests_get_json_rpc_errors_and_disturb_nobody(
    sim, rest, payload: bytes, code: int, rid: int | None
) -> None:
    bystander = await connect(sim.urls["market_data"])
    await subscribe(bystander, "OrderBookUpdate", "SEI/USDC")
    await bystander.recv()  # snapshot
    bad = await connect(sim.urls["market_data"])
    bad.send(payload)
    reply = FrameDecoder().decode(await bad.recv())
    assert isinstance(reply, RpcError)
    assert (reply.code, reply.id) == (code, rid)
    assert reply.data  # says what was wrong
    # both connections still work
    await subscribe(bad, "Trade", "SEI/USDC", 11)
    await rest.post("/v1/orders", json=order("b1"))
    assert FrameDecoder().decode(await bystander.recv()).events[0].bids.tolist() == [[0.4, 10.0]]


async def test_duplicate_subscription_is_refused(sim) -> None:
    md = await connect(sim.urls["market_data"])
    await subscribe(md, "Trade", "SEI/USDC", 1)
    md.send(encode_subscribe(2, "Trade", "SEI/USDC"))
    reply = msgspec.json.decode(await md.recv())
    assert reply["id"] == 2 and reply["error"]["data"] == "already subscribed"


async def test_unsubscribe_stops_updates(sim, rest) -> None:
    md = await connect(sim.urls["market_data"])
    await subscribe(md, "OrderBookUpdate", "SEI/USDC", 1)
    await md.recv()  # snapshot
    md.send(encode_unsubscribe(2, "OrderBookUpdate", "SEI/USDC"))
    assert await md.recv_json() == {"jsonrpc": "2.0", "id": 2, "result": {}}
    await rest.post("/v1/orders", json=order("b1"))
    assert await md.nothing_for(0.2)
    assert sim.market_data.subscribers("OrderBookUpdate", "SEI/USDC") == 0


async def test_huge_request_closes_only_that_connection(sim, rest) -> None:
    bystander = await connect(sim.urls["market_data"])
    await subscribe(bystander, "OrderBookUpdate", "SEI/USDC")
    await bystander.recv()
    big = await connect(sim.urls["market_data"])
    big.send(b'{"jsonrpc":"2.0","method":"subscribe","id":1,"params":{"query":"' + b"x" * 100_000)
    assert await asyncio.wait_for(big.closed, 5) == 1009  # message too big
    await rest.post("/v1/orders", json=order("b1"))
    update = FrameDecoder().decode(await bystander.recv()).events[0]
    assert update.bids.tolist() == [[0.4, 10.0]]


async def test_fragmented_request_is_reassembled(sim) -> None:
    md = await connect(sim.urls["market_data"])
    payload = encode_subscribe(4, "Trade", "ETH/USDC")
    assert md.transport is not None
    md.transport.send(WSMsgType.TEXT, payload[:20], fin=False)
    md.transport.send(WSMsgType.CONTINUATION, payload[20:], fin=True)
    assert await md.recv_json() == {"jsonrpc": "2.0", "id": 4, "result": {}}


async def test_ping_is_answered_and_other_paths_refused(sim) -> None:
    md = await connect(sim.urls["market_data"])
    assert md.transport is not None
    md.transport.send_ping(b"hi")
    for _ in range(100):
        if md.pongs:
            break
        await asyncio.sleep(0.01)
    assert md.pongs == 1
    wrong = sim.urls["market_data"].replace("/websocket", "/other")
    with pytest.raises(Exception, match="404"):
        await connect(wrong)


async def test_ack_and_snapshot_reach_a_subscriber_in_that_order(sim, rest) -> None:
    await rest.post("/v1/orders", json=order("b1", "buy", "0.3000", "2"))
    md = await connect(sim.urls["market_data"])
    md.send(encode_subscribe("abc", "OrderBookUpdate", "SEI/USDC"))
    decoder = FrameDecoder()
    ack = decoder.decode(await md.recv())
    assert isinstance(ack, SubscribeAck) and ack.id == "abc"
    snap = decoder.decode(await md.recv())
    assert snap.id == "abc" and snap.events[0].bids.tolist() == [[0.3, 2.0]]


async def test_periodic_snapshots_carry_new_sequences() -> None:
    quiet = SyntheticParams(
        limit_rate_per_s=0.01,
        market_base_rate_per_s=0.0,
        market_excitation_per_s=0.0,
        initial_levels_per_side=2,
    )
    config = sim_config(
        feed=FeedConfig(snapshot_interval_s=0.05),
        markets=[
            MarketConfig(
                market_id="SEI/USDC",
                base="SEI",
                quote="USDC",
                tick_size="0.0001",
                lot_size="1",
                synthetic=quiet,
            )
        ],
    )
    async with SimServer(config) as sim:
        md = await connect(sim.urls["market_data"])
        await subscribe(md, "OrderBookUpdate", "SEI/USDC")
        decoder = FrameDecoder()
        seen = []
        while len(seen) < 4:
            update = decoder.decode(await md.recv()).events[0]
            if update.is_snapshot:
                seen.append(update.sequence)
        assert seen == sorted(seen) and len(set(seen[1:])) == 3
        # the synthetic flow seeded both sides before the first periodic snapshot
        assert update.bids.shape[0] >= 1 and update.asks.shape[0] >= 1


async def test_other_account_orders_are_visible_in_the_public_book(sim, other_rest) -> None:
    await other_rest.post("/v1/orders", json=order("o1", "sell", "0.5000", "9"))
    book = await rest_book(sim)
    assert book["asks"] == [["0.5", "9"]] and book["bids"] == []
    # a public book names no owner
    assert set(book) == {"market_id", "sequence", "timestamp", "status", "bids", "asks"}
