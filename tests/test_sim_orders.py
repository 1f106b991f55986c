"""The simulator's order entry over real sockets: REST validation, the execution stream, queries.

Every expected amount is worked out by hand in a comment. Defaults of ``conftest.sim_config``:
SEI/USDC has a 0.0001 tick and a 1 SEI lot, ETH/USDC a 0.01 tick and a 0.001 ETH lot; both
accounts start with 10000 SEI, 10000 USDC and 10 ETH; fees are 0 bps maker, 5 bps taker; a
buy locks its notional plus the taker fee, rounded up per lot to 6 decimals
(0.4000 x 1 x 1.0005 = 0.4002 USDC a lot at 0.4000).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import pytest

from conftest import (
    DEMO_ADDRESS,
    DEMO_KEY,
    OTHER_ADDRESS,
    OTHER_KEY,
    WsClient,
    connect,
    order,
    sim_config,
)
from flashmm.venue.sim.config import RateLimitConfig
from flashmm.venue.sim.server import SimServer

ENVELOPE = {"success", "request_id", "order_id", "data", "error", "timestamp"}
START_BALANCES = [  # 10000 SEI, 10000 USDC (6 decimals), 10 ETH (18 decimals), sorted by denom
    {"denom": "usei", "amount": "10000000000"},
    {"denom": "uusdc", "amount": "10000000000"},
    {"denom": "wei", "amount": "10000000000000000000"},
]


# ------------------------------------------------------------------------ helpers


def accepted(response: httpx.Response) -> dict[str, Any]:
    """The body of a successful answer (validation only: no execution data)."""
    body = response.json()
    assert response.status_code == 200, body
    assert set(body) == ENVELOPE
    assert body["success"] is True
    assert body["error"] is None
    return body


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The ``error`` of a refused request, after checking the envelope around it."""
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == ENVELOPE
    assert body["success"] is False
    assert body["order_id"] is None
    assert body["data"] is None
    assert body["error"]["code"] == code
    return body["error"]


async def place(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """Place an order that must pass validation; its order id."""
    order_id = accepted(await client.post("/v1/orders", json=body))["order_id"]
    assert isinstance(order_id, str) and order_id
    return order_id


async def events(stream: WsClient, n: int) -> list[dict[str, Any]]:
    return [await stream.recv_json() for _ in range(n)]


async def balances(client: httpx.AsyncClient, address: str) -> list[dict[str, str]]:
    response = await client.get(f"/cosmos/bank/v1beta1/balances/{address}")
    assert response.status_code == 200
    return response.json()["balances"]


async def book(client: httpx.AsyncClient, market: str = "SEI/USDC", depth: int = 0) -> dict:
    data = accepted(await client.get(f"/v1/markets/{market}/book", params={"depth": depth}))
    return data["data"]


class Venue:
    """What a refused request must leave alone: the books, balances, open orders and the
    demo account's stream."""

    _probes = itertools.count(1)

    def __init__(self, rest: httpx.AsyncClient, stream: WsClient) -> None:
        self.rest = rest
        self.stream = stream

    async def state(self) -> dict[str, Any]:
        books = []
        for market in ("SEI/USDC", "ETH/USDC"):
            snapshot = await book(self.rest, market)
            del snapshot["timestamp"]
            books.append(snapshot)
        orders = accepted(await self.rest.get("/v1/orders"))["data"]["orders"]
        return {
            "books": books,
            "orders": orders,
            "balances": [await balances(self.rest, a) for a in (DEMO_ADDRESS, OTHER_ADDRESS)],
        }

    async def assert_stream_quiet(self) -> None:
        """No event was sent since the last one read: the stream is ordered, so the next
        event must be the ack of a fresh probe order (then its cancel, which undoes it)."""
        cid = f"probe-{next(self._probes)}"
        probe = order(cid, "buy", "0.01", "0.001", market_id="ETH/USDC")
        order_id = await place(self.rest, probe)
        ack = await self.stream.recv_json()
        assert (ack["type"], ack["client_order_id"]) == ("new_order_ack", cid)
        accepted(await self.rest.delete(f"/v1/orders/{order_id}"))
        gone = await self.stream.recv_json()
        assert (gone["type"], gone["seq"]) == ("order_cancelled", ack["seq"] + 1)

    async def refuses(
        self, request: Awaitable[httpx.Response], status: int, code: str, message: str
    ) -> dict[str, Any]:
        """``request`` is refused with ``code``/``status``/``message`` and changes nothing."""
        before = await self.state()
        error = refused(await request, status, code)
        assert error["message"] == message
        assert await self.state() == before
        await self.assert_stream_quiet()
        return error


@pytest.fixture
def venue(rest: httpx.AsyncClient, stream: WsClient) -> Venue:
    return Venue(rest, stream)


@pytest.fixture
async def other_stream(sim: SimServer) -> AsyncIterator[WsClient]:
    client = await connect(sim.urls["stream"], {"X-API-Key": OTHER_KEY})
    yield client
    client.close()


# ---------------------------------------------------------------------- lifecycle


async def test_resting_order_is_acked_filled_partially_then_fully(
    rest, other_rest, stream, other_stream
) -> None:
    answer = accepted(await rest.post("/v1/orders", json=order("b1", "buy", "0.4000", "10")))
    order_id = answer["order_id"]
    assert answer["data"] is None  # execution is reported only on the stream
    (ack,) = await events(stream, 1)
    assert ack == {
        "type": "new_order_ack",
        "seq": 1,
        "timestamp": ack["timestamp"],
        "order_id": order_id,
        "client_order_id": "b1",
        "market_id": "SEI/USDC",
        "side": "buy",
        "order_type": "limit",
        "time_in_force": "GTC",
        "price": "0.4000",
        "quantity": "10",
    }

    # The other account sells 4 of the 10 at 0.4000: notional 1.6 USDC.
    sell_id = await place(other_rest, order("s1", "sell", "0.4000", "4"))
    fill, position = await events(stream, 2)
    assert fill == {
        "type": "execution_report",
        "seq": 2,
        "timestamp": fill["timestamp"],
        "order_id": order_id,
        "client_order_id": "b1",
        "market_id": "SEI/USDC",
        "trade_id": fill["trade_id"],
        "side": "buy",
        "price": "0.4",
        "quantity": "4",
        "cumulative_quantity": "4",
        "remaining_quantity": "6",
        "liquidity_type": "maker",
        "fee": "0",  # 1.6 x 0 bps
        "fee_asset": "USDC",
        "status": "partially_filled",
    }
    assert fill["trade_id"]
    assert position == {
        "type": "position_update",
        "seq": 3,
        "timestamp": position["timestamp"],
        "market_id": "SEI/USDC",
        "position": "4",
        "average_entry_price": "0.4",
        "balances": {
            "SEI": {"total": "10004", "available": "10004"},
            # total 10000 - 1.6; 6 lots still lock 6 x 0.4002 = 2.4012
            "USDC": {"total": "9998.4", "available": "9995.9988"},
        },
    }
    taker_ack, taker_fill, taker_position = await events(other_stream, 3)
    assert (taker_ack["type"], taker_ack["seq"], taker_ack["order_id"]) == (
        "new_order_ack",
        1,
        sell_id,
    )
    assert taker_fill | {"timestamp": None} == {
        "type": "execution_report",
        "seq": 2,
        "timestamp": None,
        "order_id": sell_id,
        "client_order_id": "s1",
        "market_id": "SEI/USDC",
        "trade_id": fill["trade_id"],  # one trade, two sides
        "side": "sell",
        "price": "0.4",
        "quantity": "4",
        "cumulative_quantity": "4",
        "remaining_quantity": "0",
        "liquidity_type": "taker",
        "fee": "0.0008",  # 1.6 x 5 bps
        "fee_asset": "USDC",
        "status": "filled",
    }
    assert taker_position["seq"] == 3
    assert taker_position["position"] == "-4"
    assert taker_position["balances"] == {
        "SEI": {"total": "9996", "available": "9996"},
        "USDC": {"total": "10001.5992", "available": "10001.5992"},  # 10000 + 1.6 - 0.0008
    }

    # The other 6 at 0.4000: notional 2.4, the order is filled and no longer open.
    await place(other_rest, order("s2", "sell", "0.4000", "6"))
    fill2, position2 = await events(stream, 2)
    assert (fill2["seq"], position2["seq"]) == (4, 5)
    assert fill2["trade_id"] != fill["trade_id"]
    assert (
        fill2["quantity"],
        fill2["cumulative_quantity"],
        fill2["remaining_quantity"],
        fill2["status"],
        fill2["fee"],
    ) == ("6", "10", "0", "filled", "0")
    assert position2["position"] == "10"
    assert position2["balances"] == {
        "SEI": {"total": "10010", "available": "10010"},
        "USDC": {"total": "9996", "available": "9996"},  # 10000 - 4.0, nothing locked
    }
    _, taker_fill2, taker_position2 = await events(other_stream, 3)
    assert taker_fill2["fee"] == "0.0012"  # 2.4 x 5 bps
    assert taker_position2["balances"]["USDC"]["total"] == "10003.998"  # 10000 + 4 - 0.002
    assert accepted(await rest.get("/v1/orders"))["data"] == {"orders": []}


async def test_cancel_after_a_partial_fill_releases_the_rest(rest, other_rest, stream) -> None:
    order_id = await place(rest, order("b1", "buy", "0.4000", "10"))
    await place(other_rest, order("s1", "sell", "0.4000", "3"))
    assert [e["type"] for e in await events(stream, 3)] == [
        "new_order_ack",
        "execution_report",
        "position_update",
    ]
    answer = accepted(await rest.delete(f"/v1/orders/{order_id}"))
    assert (answer["order_id"], answer["data"]) == (order_id, None)
    (gone,) = await events(stream, 1)
    assert gone == {
        "type": "order_cancelled",
        "seq": 4,
        "timestamp": gone["timestamp"],
        "order_id": order_id,
        "client_order_id": "b1",
        "market_id": "SEI/USDC",
        "remaining_quantity": "7",
        "reason": "user",
    }
    # 10000 - 3 x 0.4 = 9998.8 USDC, all of it available again
    assert (await balances(rest, DEMO_ADDRESS))[1] == {"denom": "uusdc", "amount": "9998800000"}
    assert (await book(rest))["bids"] == []


async def test_cancel_all_of_one_market_then_of_every_market(rest, stream) -> None:
    first = await place(rest, order("b1", "buy", "0.3990", "1"))
    second = await place(rest, order("b2", "buy", "0.3980", "2"))
    eth = await place(rest, order("e1", "sell", "3000.00", "0.5", market_id="ETH/USDC"))
    await events(stream, 3)

    answer = accepted(await rest.post("/v1/orders/cancel-all", json={"market_id": "ETH/USDC"}))
    assert answer["data"] == {"cancelled": 1}
    (gone,) = await events(stream, 1)
    assert (gone["type"], gone["order_id"], gone["reason"]) == ("order_cancelled", eth, "user")
    assert gone["remaining_quantity"] == "0.5"
    still_open = accepted(await rest.get("/v1/orders"))["data"]["orders"]
    assert [o["order_id"] for o in still_open] == [first, second]

    answer = accepted(await rest.post("/v1/orders/cancel-all"))  # no body: every market
    assert answer["data"] == {"cancelled": 2}
    cancelled = await events(stream, 2)
    assert [(e["seq"], e["order_id"], e["reason"]) for e in cancelled] == [
        (5, first, "user"),
        (6, second, "user"),
    ]
    assert accepted(await rest.get("/v1/orders"))["data"] == {"orders": []}
    assert await balances(rest, DEMO_ADDRESS) == START_BALANCES
    # nothing left to cancel is not an error
    assert accepted(await rest.post("/v1/orders/cancel-all", json={}))["data"] == {"cancelled": 0}


async def test_ioc_remainder_is_cancelled(rest, other_rest, stream) -> None:
    await place(other_rest, order("s1", "sell", "0.4000", "4"))
    order_id = await place(rest, order("b1", "buy", "0.4000", "10", time_in_force="IOC"))
    ack, fill, position, gone = await events(stream, 4)
    assert (ack["type"], ack["time_in_force"]) == ("new_order_ack", "IOC")
    assert (fill["liquidity_type"], fill["quantity"], fill["remaining_quantity"]) == (
        "taker",
        "4",
        "6",
    )
    assert fill["fee"] == "0.0008"  # 1.6 x 5 bps
    assert position["type"] == "position_update"
    assert (gone["type"], gone["order_id"], gone["reason"], gone["remaining_quantity"]) == (
        "order_cancelled",
        order_id,
        "ioc_remainder",
        "6",
    )
    # 10000 - 1.6 - 0.0008 = 9998.3992 USDC, nothing left locked
    assert (await balances(rest, DEMO_ADDRESS))[1]["amount"] == "9998399200"
    assert accepted(await rest.get("/v1/orders"))["data"] == {"orders": []}


async def test_fok_that_cannot_fill_is_cancelled_without_a_fill(venue, rest, other_rest) -> None:
    await place(other_rest, order("s1", "sell", "0.4000", "4"))
    before = await venue.state()
    order_id = await place(rest, order("b1", "buy", "0.4000", "5", time_in_force="FOK"))
    ack, gone = await events(venue.stream, 2)
    assert (ack["type"], ack["time_in_force"]) == ("new_order_ack", "FOK")
    assert gone == {
        "type": "order_cancelled",
        "seq": 2,
        "timestamp": gone["timestamp"],
        "order_id": order_id,
        "client_order_id": "b1",
        "market_id": "SEI/USDC",
        "remaining_quantity": "5",
        "reason": "fok_unfillable",
    }
    await venue.assert_stream_quiet()  # no execution report followed
    after = await venue.state()
    assert after["balances"] == before["balances"]
    assert after["books"][0]["asks"] == [["0.4", "4"]]


async def test_market_orders_ioc_and_fok(rest, other_rest, stream) -> None:
    await place(other_rest, order("s1", "sell", "0.4000", "4"))
    await place(other_rest, order("s2", "sell", "0.4002", "2"))

    # FOK for 5: 4 at 0.4000 then 1 at 0.4002
    fok = await place(rest, order("m1", "buy", None, "5", type="market", time_in_force="FOK"))
    ack, fill_a, _, fill_b, _ = await events(stream, 5)
    assert (ack["order_id"], ack["order_type"], ack["price"]) == (fok, "market", None)
    assert [(f["price"], f["quantity"], f["fee"], f["status"]) for f in (fill_a, fill_b)] == [
        ("0.4", "4", "0.0008", "partially_filled"),  # 1.6 x 5 bps
        ("0.4002", "1", "0.000201", "filled"),  # 0.4002 x 5 bps = 0.0002001, rounded up
    ]

    # IOC for 5 with 1 left in the book: 1 fills, 4 are cancelled
    ioc = await place(rest, order("m2", "buy", None, "5", type="market", time_in_force="IOC"))
    ack, fill, _, gone = await events(stream, 4)
    assert (ack["order_type"], ack["time_in_force"]) == ("market", "IOC")
    assert (fill["quantity"], fill["remaining_quantity"]) == ("1", "4")
    assert (gone["order_id"], gone["reason"], gone["remaining_quantity"]) == (
        ioc,
        "ioc_remainder",
        "4",
    )

    # a market FOK against an empty side cannot fill at all
    await place(rest, order("m3", "buy", None, "1", type="market", time_in_force="FOK"))
    ack, gone = await events(stream, 2)
    assert (gone["type"], gone["reason"], gone["remaining_quantity"]) == (
        "order_cancelled",
        "fok_unfillable",
        "1",
    )
    # 10000 - (1.6 + 0.0008) - 2 x (0.4002 + 0.000201) = 9997.598398 USDC, 10006 SEI
    assert (await balances(rest, DEMO_ADDRESS))[:2] == [
        {"denom": "usei", "amount": "10006000000"},
        {"denom": "uusdc", "amount": "9997598398"},
    ]


async def test_post_only_order_rests(rest, other_rest, stream) -> None:
    await place(other_rest, order("s1", "sell", "0.4000", "4"))
    order_id = await place(rest, order("p1", "buy", "0.3999", "10", time_in_force="POST_ONLY"))
    (ack,) = await events(stream, 1)
    assert (ack["type"], ack["order_id"], ack["time_in_force"]) == (
        "new_order_ack",
        order_id,
        "POST_ONLY",
    )
    (view,) = accepted(await rest.get("/v1/orders"))["data"]["orders"]
    assert (view["order_id"], view["time_in_force"], view["remaining_quantity"]) == (
        order_id,
        "POST_ONLY",
        "10",
    )
    snapshot = await book(rest)
    assert (snapshot["bids"], snapshot["asks"]) == ([["0.3999", "10"]], [["0.4", "4"]])


async def test_idempotent_resend_places_the_order_once(venue, rest) -> None:
    body = order("b1", "buy", "0.4000", "10")
    first = await place(rest, body)
    (ack,) = await events(venue.stream, 1)
    assert ack["order_id"] == first
    assert await place(rest, body) == first
    await venue.assert_stream_quiet()  # no second ack
    orders = accepted(await rest.get("/v1/orders"))["data"]["orders"]
    assert [o["order_id"] for o in orders] == [first]
    assert (await book(rest))["bids"] == [["0.4", "10"]]


# --------------------------------------------------------------------- refusals


async def test_unauthorized(sim, venue) -> None:
    for headers in ({}, {"X-API-Key": "no-such-key"}):
        async with httpx.AsyncClient(base_url=sim.urls["order_entry"], headers=headers) as anon:
            for request in (
                anon.post("/v1/orders", json=order("b1")),
                anon.delete("/v1/orders/1"),
                anon.post("/v1/orders/cancel-all"),
                anon.get("/v1/orders"),
            ):
                await venue.refuses(
                    request, 401, "UNAUTHORIZED", "missing or unknown X-API-Key header"
                )


INVALID_BODIES: list[tuple[Any, str]] = [
    (b"{not json", "JSON is malformed: object keys must be strings (byte 1)"),
    (b"[]", "Expected `object`, got `array`"),
    (order("b1", foo=1), "Object contains unknown field `foo`"),
    (
        {"market_id": "SEI/USDC", "quantity": "1", "client_order_id": "b1"},
        "Object missing required field `side`",
    ),
    (order("b1", price=None), "a limit order needs a price"),
    (order("b1", type="market", time_in_force="IOC"), "a market order takes no price"),
    (order("b1", price=None, type="market"), "a market order is IOC or FOK"),
    (order("has space"), "client_order_id must be 1-64 characters of [A-Za-z0-9_.:-]"),
    (order("x" * 65), "client_order_id must be 1-64 characters of [A-Za-z0-9_.:-]"),
    (order("b1", side="hold"), "Invalid enum value 'hold' - at `$.side`"),
    (order("b1", quantity=10), "Expected `str`, got `int` - at `$.quantity`"),
    (order("b1", quantity="1e3"), "quantity must be a plain decimal string like '1.25'"),
    (order("b1", price="-1"), "price must be a plain decimal string like '1.25'"),
    (order("b1", price=" 0.4"), "price must be a plain decimal string like '1.25'"),
]


async def test_invalid_request(venue, rest) -> None:
    # one venue for every case: each must leave it exactly as it was
    for body, message in INVALID_BODIES:
        content = body if isinstance(body, bytes) else None
        request = rest.post("/v1/orders", content=content, json=None if content else body)
        await venue.refuses(request, 400, "INVALID_REQUEST", message)


async def test_decimal_errors_name_the_field(venue, rest) -> None:
    error = await venue.refuses(
        rest.post("/v1/orders", json=order("b1", quantity="-1")),
        400,
        "INVALID_REQUEST",
        "quantity must be a plain decimal string like '1.25'",
    )
    assert error["details"] == {"field": "quantity", "increment": "1"}


async def test_unknown_market(venue, rest) -> None:
    message = "unknown market 'DOGE/USDC'"
    error = await venue.refuses(
        rest.post("/v1/orders", json=order("b1", market_id="DOGE/USDC")),
        404,
        "UNKNOWN_MARKET",
        message,
    )
    assert error["details"] == {"markets": ["ETH/USDC", "SEI/USDC"]}
    for request in (
        rest.get("/v1/orders", params={"market_id": "DOGE/USDC"}),
        rest.post("/v1/orders/cancel-all", json={"market_id": "DOGE/USDC"}),
        rest.get("/v1/markets/DOGE/USDC/book"),
    ):
        await venue.refuses(request, 404, "UNKNOWN_MARKET", message)


OFF_GRID: list[tuple[dict[str, str], str, str]] = [
    ({"price": "0.40005"}, "INVALID_TICK_SIZE", "price 0.40005 is not a multiple of 0.0001"),
    ({"price": "0"}, "INVALID_TICK_SIZE", "price must be at least one tick"),
    ({"quantity": "2.5"}, "INVALID_LOT_SIZE", "quantity 2.5 is not a multiple of 1"),
    ({"quantity": "0"}, "INVALID_LOT_SIZE", "quantity must be at least 1 lot(s) of 1"),
    (
        {"market_id": "ETH/USDC", "price": "3000.00", "quantity": "0.0005"},
        "INVALID_LOT_SIZE",
        "quantity 0.0005 is not a multiple of 0.001",
    ),
]


async def test_off_grid_price_or_quantity(venue, rest) -> None:
    for changes, code, message in OFF_GRID:
        await venue.refuses(rest.post("/v1/orders", json=order("b1") | changes), 400, code, message)


async def test_insufficient_balance_counts_locked_funds(venue, rest, stream) -> None:
    # a buy of 30000 at 0.4000 locks 30000 x 0.4002 = 12006 USDC
    error = await venue.refuses(
        rest.post("/v1/orders", json=order("b1", "buy", "0.4000", "30000")),
        400,
        "INSUFFICIENT_BALANCE",
        "account 'demo' needs 12006 USDC available for this order but has 10000 USDC available",
    )
    assert error["details"] == {"asset": "USDC", "required": "12006", "available": "10000"}
    error = await venue.refuses(
        rest.post("/v1/orders", json=order("s1", "sell", "0.4000", "10001")),
        400,
        "INSUFFICIENT_BALANCE",
        "account 'demo' needs 10001 SEI available for this order but has 10000 SEI available",
    )
    assert error["details"] == {"asset": "SEI", "required": "10001", "available": "10000"}

    await place(rest, order("b2", "buy", "0.4000", "10"))  # locks 4.002
    await events(stream, 1)
    # 24980 x 0.4002 = 9996.996 fits in 10000, not in the 9995.998 left available
    error = await venue.refuses(
        rest.post("/v1/orders", json=order("b3", "buy", "0.4000", "24980")),
        400,
        "INSUFFICIENT_BALANCE",
        "account 'demo' needs 9996.996 USDC available for this order "
        "but has 9995.998 USDC available",
    )
    assert error["details"]["available"] == "9995.998"


async def test_post_only_would_cross(venue, rest, other_rest) -> None:
    await place(other_rest, order("s1", "sell", "0.4001", "5"))
    error = await venue.refuses(
        rest.post("/v1/orders", json=order("p1", "buy", "0.4001", time_in_force="POST_ONLY")),
        400,
        "POST_ONLY_WOULD_CROSS",
        "a post-only order at this price would trade at once",
    )
    assert error["details"] == {"best_bid": None, "best_ask": "0.4001"}


async def test_duplicate_client_order_id(venue, rest) -> None:
    order_id = await place(rest, order("b1", "buy", "0.4000", "10"))
    await events(venue.stream, 1)
    error = await venue.refuses(
        rest.post("/v1/orders", json=order("b1", "buy", "0.4000", "11")),
        409,
        "DUPLICATE_CLIENT_ORDER_ID",
        "client_order_id 'b1' was used for a different order",
    )
    assert error["details"] == {"order_id": order_id}


async def test_unknown_order(venue, rest, other_rest) -> None:
    theirs = await place(other_rest, order("s1", "sell", "0.4100", "1"))
    mine = await place(rest, order("b1", "buy", "0.3900", "1"))
    await events(venue.stream, 1)
    accepted(await rest.delete(f"/v1/orders/{mine}"))
    await events(venue.stream, 1)
    for order_id in ("999", theirs, mine):  # never existed, another account's, cancelled
        await venue.refuses(
            rest.delete(f"/v1/orders/{order_id}"),
            404,
            "UNKNOWN_ORDER",
            f"no open order {order_id} for this account",
        )


async def test_market_not_open_after_a_halt(sim, venue, rest) -> None:
    halt = await rest.post("/admin/faults/halt_market", json={"market_id": "SEI/USDC"})
    accepted(halt)
    error = await venue.refuses(
        rest.post("/v1/orders", json=order("b1")), 409, "MARKET_NOT_OPEN", "SEI/USDC is halted"
    )
    assert error["details"] == {"status": "halted"}


async def test_payload_too_large(venue, rest) -> None:
    huge = b'{"market_id": "' + b"x" * 70_000 + b'"}'

    async def chunks():  # no Content-Length: the limit holds while reading, too
        for start in range(0, len(huge), 8192):
            yield huge[start : start + 8192]

    for content in (huge, chunks()):
        await venue.refuses(
            rest.post("/v1/orders", content=content),
            413,
            "PAYLOAD_TOO_LARGE",
            "request body over 65536 bytes",
        )


async def test_unknown_route_answers_in_the_envelope(venue, rest) -> None:
    await venue.refuses(rest.get("/v1/nothing"), 404, "NOT_FOUND", "no route GET /v1/nothing")


async def test_request_id_echoes_the_header(rest) -> None:
    tagged = {"X-Request-ID": "my-req-42"}
    ok = await rest.post("/v1/orders", json=order("b1"), headers=tagged)
    assert accepted(ok)["request_id"] == "my-req-42"
    bad = await rest.post("/v1/orders", json=order("b2", price=None), headers=tagged)
    assert bad.json()["request_id"] == "my-req-42"
    generated = accepted(await rest.get("/v1/orders"))["request_id"]
    other = accepted(await rest.get("/v1/orders"))["request_id"]
    assert generated and other and generated != other  # one per request when none is given


async def test_rate_limited_with_retry_after() -> None:
    config = sim_config(rate_limit=RateLimitConfig(orders_per_second=5))
    async with SimServer(config, run_flows=False) as sim:
        stream = await connect(sim.urls["stream"], {"X-API-Key": DEMO_KEY})
        async with httpx.AsyncClient(
            base_url=sim.urls["order_entry"], headers={"X-API-Key": DEMO_KEY}, timeout=5
        ) as rest:
            ids = [await place(rest, order(f"b{i}", "buy", "0.3000", "1")) for i in range(5)]
            assert [e["seq"] for e in await events(stream, 5)] == [1, 2, 3, 4, 5]
            before = await Venue(rest, stream).state()
            for request in (
                rest.post("/v1/orders", json=order("b5", "buy", "0.3000", "1")),
                rest.delete(f"/v1/orders/{ids[0]}"),
                rest.post("/v1/orders/cancel-all"),
            ):
                response = await request
                error = refused(response, 429, "RATE_LIMITED")
                assert error["message"] == "more than 5 order requests per second"
                assert error["details"]["limit_per_second"] == 5
                assert 0 <= error["details"]["retry_after_ms"] <= 1000
                retry_after = int(response.headers["Retry-After"])
                assert retry_after == 1  # a one-second window, rounded up
            assert await Venue(rest, stream).state() == before  # queries are not limited
            await asyncio.sleep(retry_after)
            # after Retry-After the order passes, and its ack is the next event: the
            # refused requests sent none
            late = await place(rest, order("b6", "buy", "0.3000", "1"))
            (ack,) = await events(stream, 1)
            assert (ack["seq"], ack["order_id"]) == (6, late)
        stream.close()


# ---------------------------------------------------------------------- queries


async def test_open_orders_of_every_market_or_one(rest, other_rest) -> None:
    sei = await place(rest, order("b1", "buy", "0.4000", "10"))
    eth = await place(rest, order("e1", "sell", "3000.00", "0.5", market_id="ETH/USDC"))
    await place(other_rest, order("s1", "sell", "0.4000", "3"))  # fills 3 of b1
    orders = accepted(await rest.get("/v1/orders"))["data"]["orders"]
    assert [o | {"timestamp": None} for o in orders] == [
        {
            "order_id": sei,
            "client_order_id": "b1",
            "market_id": "SEI/USDC",
            "side": "buy",
            "type": "limit",
            "time_in_force": "GTC",
            "price": "0.4000",
            "quantity": "10",
            "remaining_quantity": "7",
            "filled_quantity": "3",
            "timestamp": None,
        },
        {
            "order_id": eth,
            "client_order_id": "e1",
            "market_id": "ETH/USDC",
            "side": "sell",
            "type": "limit",
            "time_in_force": "GTC",
            "price": "3000.00",
            "quantity": "0.5",
            "remaining_quantity": "0.5",
            "filled_quantity": "0",
            "timestamp": None,
        },
    ]
    one = accepted(await rest.get("/v1/orders", params={"market_id": "ETH/USDC"}))
    assert [o["order_id"] for o in one["data"]["orders"]] == [eth]
    # the other account sees only its own (its order filled at once: none open)
    assert accepted(await other_rest.get("/v1/orders"))["data"] == {"orders": []}


async def test_markets(rest) -> None:
    await place(rest, order("b1"))  # one book update: SEI/USDC at sequence 1
    markets = accepted(await rest.get("/v1/markets"))["data"]["markets"]
    assert markets == [
        {
            "market_id": "SEI/USDC",
            "base": "SEI",
            "quote": "USDC",
            "base_denom": "usei",
            "base_decimals": 6,
            "quote_denom": "uusdc",
            "quote_decimals": 6,
            "tick_size": "0.0001",
            "lot_size": "1",
            "status": "open",
            "source": "synthetic",
            "sequence": 1,
        },
        {
            "market_id": "ETH/USDC",
            "base": "ETH",
            "quote": "USDC",
            "base_denom": "wei",
            "base_decimals": 18,
            "quote_denom": "uusdc",
            "quote_decimals": 6,
            "tick_size": "0.01",
            "lot_size": "0.001",
            "status": "open",
            "source": "synthetic",
            "sequence": 0,
        },
    ]


async def test_book_snapshot_depth_and_sequence(venue, rest, other_rest) -> None:
    for body in (
        order("b1", "buy", "0.3990", "5"),
        order("b2", "buy", "0.3995", "3"),
        order("b3", "buy", "0.3995", "2"),
    ):
        await place(rest, body)
    for body in (
        order("s1", "sell", "0.4020", "4"),
        order("s2", "sell", "0.4005", "7"),
        order("s3", "sell", "0.4010", "1"),
    ):
        await place(other_rest, body)
    full = await book(rest)
    assert full["market_id"] == "SEI/USDC"
    assert full["sequence"] == 6  # one update per order placed
    assert full["status"] == "open"
    assert full["bids"] == [["0.3995", "5"], ["0.399", "5"]]  # best first, same level summed
    assert full["asks"] == [["0.4005", "7"], ["0.401", "1"], ["0.402", "4"]]
    top = await book(rest, depth=1)
    assert (top["bids"], top["asks"], top["sequence"]) == ([["0.3995", "5"]], [["0.4005", "7"]], 6)
    await events(venue.stream, 3)
    for depth in ("-1", "two", ""):
        await venue.refuses(
            rest.get("/v1/markets/SEI/USDC/book", params={"depth": depth}),
            400,
            "INVALID_REQUEST",
            "depth must be an integer >= 0",
        )


async def test_cosmos_balances(rest) -> None:
    assert await balances(rest, DEMO_ADDRESS) == START_BALANCES
    await place(rest, order("b1", "buy", "0.4000", "10"))  # locks 10 x 0.4002 = 4.002 USDC
    await place(rest, order("s1", "sell", "3000.00", "0.25", market_id="ETH/USDC"))
    assert await balances(rest, DEMO_ADDRESS) == [
        {"denom": "usei", "amount": "10000000000"},
        {"denom": "uusdc", "amount": "9995998000"},  # (10000 - 4.002) x 10^6
        {"denom": "wei", "amount": "9750000000000000000"},  # (10 - 0.25) x 10^18
    ]
    response = await rest.get("/cosmos/bank/v1beta1/balances/sei1nobody")
    assert response.status_code == 200
    assert response.json() == {"balances": [], "pagination": {"next_key": None, "total": "0"}}


# ----------------------------------------------------------------------- stream


async def test_stream_refuses_bad_key_or_since_with_1008(sim) -> None:
    for query, headers in (
        ("", {}),
        ("", {"X-API-Key": "no-such-key"}),
        ("?since=x", {"X-API-Key": DEMO_KEY}),
    ):
        client = await connect(sim.urls["stream"] + query, headers)
        assert await asyncio.wait_for(client.closed, 5) == 1008, (query, headers)


async def test_stream_key_may_be_a_query_parameter(sim, rest) -> None:
    client = await connect(sim.urls["stream"] + f"?api_key={DEMO_KEY}")
    order_id = await place(rest, order("b1"))
    assert (await client.recv_json())["order_id"] == order_id
    client.close()


async def test_stream_since_resends_exactly_what_followed(sim, venue, rest) -> None:
    order_id = await place(rest, order("b1", "buy", "0.4000", "1"))
    accepted(await rest.delete(f"/v1/orders/{order_id}"))
    await place(rest, order("b2", "buy", "0.3999", "1"))
    live = await events(venue.stream, 3)
    assert [e["seq"] for e in live] == [1, 2, 3]

    resumed = await connect(sim.urls["stream"] + "?since=1", {"X-API-Key": DEMO_KEY})
    assert await events(resumed, 2) == live[1:]
    # then live events follow, without a gap or a repeat
    venue_after = Venue(rest, resumed)
    await venue_after.assert_stream_quiet()
    resumed.close()

    caught_up = await connect(sim.urls["stream"] + "?since=5", {"X-API-Key": DEMO_KEY})
    await Venue(rest, caught_up).assert_stream_quiet()  # nothing resent before the probe
    caught_up.close()


async def test_stream_since_ahead_of_the_stream_is_closed_1011(sim, rest, stream) -> None:
    await place(rest, order("b1"))
    await events(stream, 1)
    ahead = await connect(sim.urls["stream"] + "?since=2", {"X-API-Key": DEMO_KEY})
    assert await asyncio.wait_for(ahead.closed, 5) == 1011


async def test_garbage_from_one_client_does_not_disturb_another(sim, other_rest) -> None:
    """While one client sends malformed and oversized requests, the other account trades
    and its stream stays whole and in order."""
    watcher = await connect(sim.urls["stream"], {"X-API-Key": OTHER_KEY})
    host, port = sim.urls["order_entry"].removeprefix("http://").split(":")

    async def garbage() -> None:
        async with httpx.AsyncClient(
            base_url=sim.urls["order_entry"], headers={"X-API-Key": DEMO_KEY}, timeout=5
        ) as bad:
            for _ in range(3):
                response = await bad.post("/v1/orders", content=b"\xff\x00{" * 50)
                refused(response, 400, "INVALID_REQUEST")
                response = await bad.post("/v1/orders", content=b"x" * 100_000)
                refused(response, 413, "PAYLOAD_TOO_LARGE")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"NOT HTTP\x00\x01\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)  # the server drops that connection only
        writer.close()
        noisy = await connect(sim.urls["stream"], {"X-API-Key": DEMO_KEY})
        noisy.send(b"x" * 100_000)  # over the frame limit: that stream is closed
        await asyncio.wait_for(noisy.closed, 5)

    async def trade() -> list[str]:
        ids = []
        for i in range(6):
            ids.append(await place(other_rest, order(f"s{i}", "sell", f"0.41{i:02d}", "1")))
            await asyncio.sleep(0)
        return ids

    _, ids = await asyncio.gather(garbage(), trade())
    acks = await events(watcher, 6)
    assert [(e["seq"], e["type"], e["order_id"]) for e in acks] == [
        (i + 1, "new_order_ack", order_id) for i, order_id in enumerate(ids)
    ]
    assert len((await book(other_rest))["asks"]) == 6
    watcher.close()
