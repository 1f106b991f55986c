"""The venue gateway against the real simulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from conftest import DEMO_ADDRESS, DEMO_KEY, sim_config
from flashmm.venue.gateway import (
    BreakerState,
    ExecutionStream,
    GatewaySettings,
    RateLimited,
    VenueGateway,
    VenueRejected,
    VenueUnavailable,
)
from flashmm.venue.order_entry import (
    ErrorCode,
    ExecutionReport,
    NewOrderAck,
    OrderRequest,
    PositionUpdate,
    StreamEvent,
)
from flashmm.venue.sim.server import SimServer


def settings_for(sim: SimServer, **changes: Any) -> GatewaySettings:
    return GatewaySettings(
        rest_url=sim.urls["order_entry"],
        stream_url=sim.urls["stream"],
        api_key=DEMO_KEY,
        **changes,
    )


def buy(cid: str, price: str = "0.4000", quantity: str = "10", **extra: Any) -> OrderRequest:
    return OrderRequest(
        market_id="SEI/USDC",
        side="buy",
        price=price,
        quantity=quantity,
        client_order_id=cid,
        **extra,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sim_on_port(port: int) -> SimServer:
    config = sim_config()
    server = msgspec.structs.replace(config.server, order_entry_port=port)
    return SimServer(msgspec.structs.replace(config, server=server), run_flows=False)


@pytest.fixture
async def gateway(sim: SimServer) -> AsyncIterator[VenueGateway]:
    async with VenueGateway(settings_for(sim)) as gw:
        yield gw


class Recorder:
    """Collects stream events and gaps; ``wait_for(n)`` until ``n`` events arrived."""

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []
        self.gaps: list[tuple[int, int | None]] = []
        self._arrived = asyncio.Event()

    def on_event(self, event: StreamEvent) -> None:
        self.events.append(event)
        self._arrived.set()

    def on_gap(self, expected: int, got: int | None) -> None:
        self.gaps.append((expected, got))

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.events) < n:
                self._arrived.clear()
                await self._arrived.wait()


async def test_submit_succeeds_and_ack_arrives_on_the_stream(
    sim: SimServer, gateway: VenueGateway
) -> None:
    seen = Recorder()
    stream = ExecutionStream(settings_for(sim), seen.on_event, seen.on_gap, since=0)
    await stream.start()
    try:
        answer = await gateway.submit(buy("gw-1"))
        await seen.wait_for(1)
    finally:
        await stream.stop()
    assert answer.success and answer.order_id is not None
    (ack,) = seen.events
    assert isinstance(ack, NewOrderAck)
    assert (ack.seq, ack.order_id, ack.client_order_id) == (1, answer.order_id, "gw-1")
    assert gateway.counters["succeeded"] == 1 and gateway.counters["failures"] == 0
    # the order is listed, and the keep-alive connection was reused for the listing
    (listed,) = await gateway.open_orders("SEI/USDC")
    assert listed.order_id == answer.order_id
    assert gateway.counters["connections_opened"] == 1


async def test_cancel_cancel_all_book_and_balances(gateway: VenueGateway) -> None:
    first = await gateway.submit(buy("gw-a"))
    await gateway.submit(buy("gw-b", price="0.3999"))
    assert first.order_id is not None
    await gateway.cancel(first.order_id)
    assert [o.client_order_id for o in await gateway.open_orders()] == ["gw-b"]
    book = await gateway.book("SEI/USDC", depth=1)
    assert book.data["bids"][0][0] == "0.3999"
    cancelled = await gateway.cancel_all("SEI/USDC")
    assert cancelled.data == {"cancelled": 1}
    assert await gateway.open_orders() == []
    # 10000 SEI and USDC with 6 decimals, nothing locked or traded any more
    assert (await gateway.balances(DEMO_ADDRESS))["uusdc"] == 10_000 * 10**6


@pytest.mark.parametrize(
    ("request_", "code", "status"),
    [
        (buy("r1", price="0.40005"), ErrorCode.INVALID_TICK_SIZE, 400),
        (buy("r2", quantity="1.5"), ErrorCode.INVALID_LOT_SIZE, 400),
        (buy("r3", quantity="1000000"), ErrorCode.INSUFFICIENT_BALANCE, 400),
        (
            OrderRequest(
                market_id="NOPE/USDC", side="buy", price="1", quantity="1", client_order_id="r4"
            ),
            ErrorCode.UNKNOWN_MARKET,
            404,
        ),
    ],
)
async def test_validation_refusal_is_rejected_without_touching_the_breaker(
    sim: SimServer, request_: OrderRequest, code: ErrorCode, status: int
) -> None:
    # breaker_failures=1: a refusal counted as a failure would open it at once
    async with VenueGateway(settings_for(sim, breaker_failures=1)) as gw:
        with pytest.raises(VenueRejected) as caught:
            await gw.submit(request_)
        assert (caught.value.code, caught.value.status) == (code, status)
        assert gw.breaker.state is BreakerState.CLOSED
        assert gw.counters["rejected"] == 1 and gw.counters["failures"] == 0


async def test_duplicate_client_order_id_and_unknown_order_are_refusals(
    gateway: VenueGateway,
) -> None:
    await gateway.submit(buy("dup"))
    assert (await gateway.submit(buy("dup"))).success  # the same order again is idempotent
    with pytest.raises(VenueRejected) as caught:
        await gateway.submit(buy("dup", price="0.3900"))
    assert caught.value.code is ErrorCode.DUPLICATE_CLIENT_ORDER_ID
    with pytest.raises(VenueRejected) as unknown:
        await gateway.cancel("999999")
    assert unknown.value.code is ErrorCode.UNKNOWN_ORDER
    assert gateway.breaker.consecutive_failures == 0


async def test_unknown_api_key_is_a_refusal(sim: SimServer) -> None:
    settings = msgspec.structs.replace(settings_for(sim), api_key="wrong")
    async with VenueGateway(settings) as gw:
        with pytest.raises(VenueRejected) as caught:
            await gw.submit(buy("k1"))
    assert (caught.value.code, caught.value.status) == (ErrorCode.UNAUTHORIZED, 401)


async def test_429_is_honoured_before_anything_more_is_sent(
    gateway: VenueGateway, rest: httpx.AsyncClient
) -> None:
    injected = await rest.post(
        "/admin/faults/rate_limit_burst", json={"count": 2, "retry_after_s": 0.3}
    )
    assert injected.status_code == 200

    with pytest.raises(RateLimited) as first:
        await gateway.submit(buy("rl-1"))
    assert first.value.sent and first.value.retry_after_s == pytest.approx(0.3)

    # within Retry-After: refused here, and the venue's second 429 is still pending
    with pytest.raises(RateLimited) as held:
        await gateway.open_orders()
    assert not held.value.sent and 0 < held.value.retry_after_s <= 0.3
    report = (await rest.get("/admin/faults")).json()["data"]
    assert report["pending"]["rate_limited_requests"] == 1
    assert gateway.counters["requests"] == 1 and gateway.counters["held_back"] == 1

    await asyncio.sleep(0.31)
    with pytest.raises(RateLimited):  # the second injected 429, only now taken
        await gateway.submit(buy("rl-1"))
    report = (await rest.get("/admin/faults")).json()["data"]
    assert report["pending"]["rate_limited_requests"] == 0

    await asyncio.sleep(0.31)
    assert (await gateway.submit(buy("rl-1"))).success
    assert gateway.counters["rate_limited"] == 2 and gateway.counters["failures"] == 0


async def test_breaker_opens_refuses_probes_and_closes() -> None:
    port = free_port()  # nothing listens here until the simulator starts on it below
    settings = GatewaySettings(
        rest_url=f"http://127.0.0.1:{port}",
        api_key=DEMO_KEY,
        breaker_failures=3,
        breaker_cooldown_s=0.2,
    )
    async with VenueGateway(settings) as gw:
        for _ in range(3):
            with pytest.raises(VenueUnavailable, match="cannot reach"):
                await gw.submit(buy("cb-1"))
        assert gw.breaker.state is BreakerState.OPEN
        assert gw.counters["breaker_opened"] == 1

        with pytest.raises(VenueUnavailable, match="breaker open"):
            await gw.submit(buy("cb-1"))
        assert gw.counters["requests"] == 3  # refused without a connection attempt

        # after the cooldown one probe goes; it fails, so the breaker opens again
        await asyncio.sleep(0.21)
        with pytest.raises(VenueUnavailable, match="cannot reach"):
            await gw.submit(buy("cb-1"))
        assert gw.breaker.state is BreakerState.OPEN
        assert gw.counters["breaker_opened"] == 2

        async with sim_on_port(port):
            with pytest.raises(VenueUnavailable, match="breaker open"):
                await gw.submit(buy("cb-1"))
            await asyncio.sleep(0.21)
            assert (await gw.submit(buy("cb-1"))).success  # the probe
            assert gw.breaker.state is BreakerState.CLOSED
            assert (await gw.open_orders())[0].client_order_id == "cb-1"
        assert gw.counters["failures"] == 4


async def test_half_open_lets_a_single_probe_through(sim: SimServer) -> None:
    async with VenueGateway(settings_for(sim, breaker_failures=1, breaker_cooldown_s=0.0)) as gw:
        gw.breaker.failure()  # as if the venue had just failed once
        assert gw.breaker.state is BreakerState.OPEN
        results = await asyncio.gather(
            gw.submit(buy("hp-1")), gw.submit(buy("hp-2")), return_exceptions=True
        )
    assert results[0].success  # type: ignore[union-attr]
    assert isinstance(results[1], VenueUnavailable) and "half-open" in str(results[1])
    assert gw.breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize("limit", [5, 3])
async def test_in_flight_never_exceeds_the_limit(sim: SimServer, limit: int) -> None:
    async with VenueGateway(settings_for(sim, max_in_flight=limit)) as gw:
        answers = await asyncio.gather(*(gw.submit(buy(f"if-{i}")) for i in range(20)))
        assert all(a.success for a in answers)
        assert len({a.order_id for a in answers}) == 20
        assert gw.peak_in_flight == limit
        assert gw.counters["connections_opened"] == limit  # one connection per slot
        assert gw.in_flight == 0


async def test_keep_alive_connection_closed_by_the_server_is_replaced() -> None:
    port = free_port()
    settings = GatewaySettings(rest_url=f"http://127.0.0.1:{port}", api_key=DEMO_KEY)
    async with VenueGateway(settings) as gw:
        async with sim_on_port(port):
            assert (await gw.submit(buy("ka-1"))).success
        # the simulator closed every connection when it stopped; a new one answers now
        async with sim_on_port(port):
            assert (await gw.submit(buy("ka-2"))).success
        assert gw.counters["connections_opened"] == 2
        assert gw.counters["failures"] == 0


async def test_stream_resumes_after_a_drop_without_losing_or_repeating(
    sim: SimServer, gateway: VenueGateway, rest: httpx.AsyncClient, other_rest: httpx.AsyncClient
) -> None:
    seen = Recorder()
    stream = ExecutionStream(settings_for(sim), seen.on_event, seen.on_gap, since=0)
    await stream.start()
    try:
        await gateway.submit(buy("st-1"))
        await seen.wait_for(1)
        dropped = await rest.post("/admin/faults/drop_connections", json={"target": "stream"})
        assert dropped.json()["data"]["streams_dropped"] == 1
        # the fill happens after the venue closed the stream, before the gateway reconnects
        sell = {"market_id": "SEI/USDC", "side": "sell", "price": "0.4000", "quantity": "10"}
        assert (
            await other_rest.post("/v1/orders", json=sell | {"client_order_id": "x"})
        ).status_code == 200
        await seen.wait_for(3)
        assert await seen_nothing_more(seen, 3)
    finally:
        await stream.stop()
    assert [e.seq for e in seen.events] == [1, 2, 3]
    fills = [e for e in seen.events if isinstance(e, ExecutionReport)]
    assert len(fills) == 1 and fills[0].quantity == "10" and fills[0].status == "filled"
    assert sum(isinstance(e, PositionUpdate) for e in seen.events) == 1
    assert seen.gaps == []
    assert stream.counters["connects"] == 2 and stream.counters["duplicates"] == 0


async def seen_nothing_more(seen: Recorder, n: int, seconds: float = 0.1) -> bool:
    await asyncio.sleep(seconds)
    return len(seen.events) == n


async def test_stream_refused_since_reports_a_gap_and_restarts(sim: SimServer) -> None:
    seen = Recorder()
    # since=5 is ahead of a fresh account's stream (seq 0): the venue closes with 1011
    stream = ExecutionStream(settings_for(sim), seen.on_event, seen.on_gap, since=5)
    await stream.start()
    try:
        async with asyncio.timeout(5):
            while stream.counters["connects"] < 2:
                await asyncio.sleep(0.01)
        async with VenueGateway(settings_for(sim)) as gw:
            await gw.submit(buy("gap-1"))
        await seen.wait_for(1)
    finally:
        await stream.stop()
    assert seen.gaps == [(6, None)]
    assert [e.seq for e in seen.events] == [1]
    assert stream.last_seq == 1


async def test_stream_refused_for_a_bad_key_stops_with_the_reason(sim: SimServer) -> None:
    settings = msgspec.structs.replace(settings_for(sim), api_key="wrong")
    stream = ExecutionStream(settings, Recorder().on_event)
    await stream.start()  # the venue accepts the socket, then closes it with 1008
    try:
        async with asyncio.timeout(5):
            while stream.error is None:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # room for a reconnect that must not happen
    finally:
        await stream.stop()
    assert "unknown API key" in str(stream.error)
    assert stream.counters["connects"] == 1


async def test_stream_start_fails_when_nothing_listens() -> None:
    port = free_port()
    settings = GatewaySettings(
        stream_url=f"ws://127.0.0.1:{port}/v1/stream", api_key=DEMO_KEY, request_timeout_s=0.3
    )
    stream = ExecutionStream(settings, Recorder().on_event)
    with pytest.raises(VenueUnavailable, match="cannot open the execution stream"):
        await stream.start()


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="rest_url"):
        GatewaySettings(rest_url="https://venue")
    with pytest.raises(ValueError, match="api_key"):
        GatewaySettings(api_key="key\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="max_in_flight"):
        GatewaySettings(max_in_flight=0)
