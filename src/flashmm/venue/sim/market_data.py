"""The simulator's market-data server: JSON-RPC 2.0 over WebSocket at ``/websocket``.

It speaks the venue's wire contract (DESIGN section 4) with the codec's own encoders:
``subscribe``/``unsubscribe`` by query, an ack, a snapshot right after an
``OrderBookUpdate`` subscription, then every update of that market; ``Trade`` and
``MarketStatus`` likewise. A client's bad request gets a JSON-RPC error and touches
nothing else; a client that does not read its socket is disconnected before it can
hold the server's memory.

Each update is encoded once and wrapped per subscription (ids and queries differ).
Latency faults (delays, stalls) hold frames in one ordered queue, so a client always
sees sequences in order, only late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

from flashmm.venue.protocol import (
    BookUpdate,
    MalformedFrame,
    MarketStatus,
    QueryError,
    SubscribeRequest,
    Trade,
    decode_request,
    encode_ack,
    encode_error,
    encode_events,
    encode_notification_raw,
    parse_query,
)

__all__ = ["BookState", "MarketDataServer", "MarketFormat"]

log = logging.getLogger("flashmm.sim.market_data")

# JSON-RPC 2.0 error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
_MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}


@dataclass(frozen=True, slots=True)
class MarketFormat:
    """How one market's prices and sizes are written: digits after the point."""

    price_decimals: int
    size_decimals: int


@dataclass(frozen=True, slots=True)
class BookState:
    """A market's book as of ``sequence``: what a new subscriber gets first."""

    sequence: int
    timestamp_ns: int
    bids: np.ndarray
    asks: np.ndarray


@dataclass(slots=True, eq=False)
class _Subscription:
    client: _Client
    request_id: int | str
    query: str
    topic: list[_Subscription]  # every subscription to this (event type, market)


class _Client(WSListener):
    def __init__(self, server: MarketDataServer, peer: str) -> None:
        self.server = server
        self.peer = peer
        self.transport: WSTransport | None = None
        self.subscriptions: dict[str, _Subscription] = {}  # query -> subscription
        self._parts: list[bytes] = []
        self._parts_size = 0

    # picows callbacks -----------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.server._clients.add(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.server._forget(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if kind not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            return  # pings are answered by picows; pongs need nothing
        if kind != WSMsgType.CONTINUATION:
            self._parts.clear()
            self._parts_size = 0
        payload = frame.get_payload_as_bytes()
        self._parts_size += len(payload)
        if self._parts_size > self.server.max_message_bytes:
            self.server.counters["oversized_requests"] += 1
            transport.send_close(WSCloseCode.MESSAGE_TOO_BIG, b"request too large")
            transport.disconnect()
            return
        if not frame.fin:
            self._parts.append(payload)
            return
        if self._parts:
            self._parts.append(payload)
            payload = b"".join(self._parts)
            self._parts.clear()
        self.server._on_request(self, payload)

    def send(self, frame: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        transport.send(WSMsgType.TEXT, frame)
        buffered = transport.underlying_transport.get_write_buffer_size()
        if buffered > self.server.max_buffered_bytes:
            # A client that stops reading would grow this buffer without bound.
            self.server.counters["slow_clients_dropped"] += 1
            log.warning("dropping %s: %d bytes unread", self.peer, buffered)
            transport.disconnect(graceful=False)


class MarketDataServer:
    """WS ``/websocket`` for a set of markets; the exchange calls the ``publish_*`` methods.

    ``book_state(market_id)`` must return the market's current :class:`BookState`
    (sent to each new ``OrderBookUpdate`` subscriber), and ``market_status(market_id)``
    its status (sent to each new ``MarketStatus`` subscriber).
    """

    def __init__(
        self,
        markets: dict[str, MarketFormat],
        book_state: Callable[[str], BookState],
        market_status: Callable[[str], str] = lambda market_id: "open",
        *,
        max_message_bytes: int = 64 * 1024,
        max_buffered_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.markets = dict(markets)
        self.book_state = book_state
        self.market_status = market_status
        self.max_message_bytes = max_message_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.counters: dict[str, int] = {
            "connections": 0,
            "requests": 0,
            "request_errors": 0,
            "oversized_requests": 0,
            "slow_clients_dropped": 0,
            "frames_sent": 0,
        }
        self._topics: dict[tuple[str, str], list[_Subscription]] = {
            (etype, m): []
            for m in self.markets
            for etype in ("OrderBookUpdate", "Trade", "MarketStatus")
        }
        self._clients: set[_Client] = set()
        self._server: asyncio.Server | None = None
        # Latency faults: frames wait here, in order, until their due time.
        self._held: deque[tuple[float, _Client, bytes]] = deque()
        self._delay_s = 0.0
        self._stalled_until = 0.0
        self._drain_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen; returns the ``ws://host:port/websocket`` URL."""

        def factory(request: WSUpgradeRequest) -> WSListener | None:
            if request.path.split(b"?", 1)[0] != b"/websocket":
                return None  # picows answers 404
            self.counters["connections"] += 1
            return _Client(self, f"client-{self.counters['connections']}")

        self._server = await ws_create_server(
            factory,
            host,
            port,
            max_frame_size=self.max_message_bytes,
            websocket_handshake_timeout=5,
            enable_auto_pong=True,
        )
        sock_port = self._server.sockets[0].getsockname()[1]
        return f"ws://{host}:{sock_port}/websocket"

    async def close(self) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # ----------------------------------------------------------------- requests
    def _on_request(self, client: _Client, payload: bytes) -> None:
        self.counters["requests"] += 1
        try:
            request = decode_request(payload)
        except MalformedFrame as exc:
            request_id, code = _classify(payload)
            self._reply_error(client, request_id, exc, code)
            return
        query = request.params.query
        try:
            event_type, market_id = parse_query(query)
        except QueryError as exc:
            self._reply_error(client, request.id, exc, INVALID_PARAMS)
            return
        topic = self._topics.get((event_type, market_id))
        if topic is None:
            self._reply_error(
                client,
                request.id,
                QueryError(f"unknown market {market_id!r}; markets: {sorted(self.markets)}"),
                INVALID_PARAMS,
            )
            return
        if isinstance(request, SubscribeRequest):
            if query in client.subscriptions:
                self._reply_error(
                    client, request.id, QueryError("already subscribed"), INTERNAL_ERROR
                )
                return
            sub = _Subscription(client, request.id, query, topic)
            client.subscriptions[query] = sub
            topic.append(sub)
            client.send(encode_ack(request.id))
            if event_type == "OrderBookUpdate":
                self._send_snapshot(sub, market_id)
            elif event_type == "MarketStatus":  # what it is now, then every change
                status = MarketStatus(market_id, self.market_status(market_id))
                self._broadcast(market_id, [sub], [status])
        else:
            sub = client.subscriptions.pop(query, None)
            if sub is None:
                self._reply_error(client, request.id, QueryError("not subscribed"), INTERNAL_ERROR)
                return
            topic.remove(sub)
            client.send(encode_ack(request.id))

    def _reply_error(
        self, client: _Client, request_id: int | str | None, exc: Exception, code: int
    ) -> None:
        self.counters["request_errors"] += 1
        client.send(encode_error(request_id, code, _MESSAGES[code], str(exc)))

    def _send_snapshot(self, sub: _Subscription, market_id: str) -> None:
        state = self.book_state(market_id)
        update = BookUpdate(
            market_id, state.timestamp_ns, state.sequence, True, state.bids, state.asks
        )
        self._broadcast(market_id, [sub], [update])

    def _forget(self, client: _Client) -> None:
        self._clients.discard(client)
        for sub in client.subscriptions.values():
            sub.topic.remove(sub)
        client.subscriptions.clear()

    # ----------------------------------------------------------------- publishing
    def subscribers(self, event_type: str, market_id: str) -> int:
        return len(self._topics[(event_type, market_id)])

    def publish_book(
        self,
        market_id: str,
        sequence: int,
        is_snapshot: bool,
        bids: np.ndarray,
        asks: np.ndarray,
        timestamp_ns: int,
    ) -> None:
        topic = self._topics[("OrderBookUpdate", market_id)]
        if topic:
            update = BookUpdate(market_id, timestamp_ns, sequence, is_snapshot, bids, asks)
            self._broadcast(market_id, topic, [update])

    def publish_trades(self, market_id: str, trades: list[Trade]) -> None:
        topic = self._topics[("Trade", market_id)]
        if topic and trades:
            self._broadcast(market_id, topic, trades)

    def publish_status(self, market_id: str, status: str) -> None:
        topic = self._topics[("MarketStatus", market_id)]
        if topic:
            self._broadcast(market_id, topic, [MarketStatus(market_id, status)])

    def send_garbage(self, frame: bytes) -> int:
        """Send ``frame`` verbatim to every client (fault injection)."""
        for client in list(self._clients):
            self._emit(client, frame)
        return len(self._clients)

    def _broadcast(
        self,
        market_id: str,
        topic: list[_Subscription],
        events: list[BookUpdate | Trade | MarketStatus],
    ) -> None:
        fmt = self.markets[market_id]
        body = encode_events(
            events, price_decimals=fmt.price_decimals, size_decimals=fmt.size_decimals
        )
        for sub in topic:
            self._emit(sub.client, encode_notification_raw(sub.request_id, sub.query, body))

    def _emit(self, client: _Client, frame: bytes) -> None:
        if self._held or self._delay_s > 0.0 or self._stalled_until:
            self._hold(client, frame)
            return
        self.counters["frames_sent"] += 1
        client.send(frame)

    # --------------------------------------------------------------- latency faults
    def set_delay(self, seconds: float) -> None:
        """Deliver every frame ``seconds`` late from now on (0 ends the spike)."""
        self._delay_s = max(0.0, float(seconds))
        self._schedule_drain()

    def stall(self, seconds: float) -> None:
        """Hold every frame for ``seconds`` while sockets stay open; then send the backlog."""
        self._stalled_until = time.monotonic() + max(0.0, float(seconds))
        self._schedule_drain()

    def _hold(self, client: _Client, frame: bytes) -> None:
        self._held.append((time.monotonic() + self._delay_s, client, frame))
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
        now = time.monotonic()
        due = max(self._stalled_until, self._held[0][0] if self._held else 0.0)
        if self._stalled_until and self._stalled_until <= now:
            self._stalled_until = 0.0
        if not self._held and not self._stalled_until:
            return
        loop = asyncio.get_running_loop()
        self._drain_handle = loop.call_later(max(0.0, due - now), self._drain)

    def _drain(self) -> None:
        self._drain_handle = None
        now = time.monotonic()
        if self._stalled_until > now:
            self._schedule_drain()
            return
        self._stalled_until = 0.0
        while self._held and self._held[0][0] <= now:
            _, client, frame = self._held.popleft()
            self.counters["frames_sent"] += 1
            client.send(frame)
        if self._held:
            self._schedule_drain()

    # ------------------------------------------------------------------ faults
    def drop_connections(self) -> int:
        """Close every client connection abruptly (no close frame)."""
        clients = list(self._clients)
        for client in clients:
            if client.transport is not None:
                client.transport.disconnect(graceful=False)
        return len(clients)


def _classify(payload: bytes) -> tuple[int | str | None, int]:
    """The ``id`` of a request that failed to decode (if readable) and the error code:
    parse error for text that is not JSON, invalid request for JSON of the wrong shape."""
    try:
        obj = msgspec.json.decode(payload)
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        return None, PARSE_ERROR
    request_id = obj.get("id") if isinstance(obj, dict) else None
    return (request_id if isinstance(request_id, int | str) else None), INVALID_REQUEST
