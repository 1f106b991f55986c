"""The simulator's order-entry server: REST ``/v1/...``, ``WS /v1/stream`` and ``/admin``.

REST answers validation only, at once, in the :class:`~flashmm.venue.order_entry.ApiResponse`
envelope; execution goes to the account's stream. Accounts are found by the
``X-API-Key`` header (the stream also takes ``?api_key=``). ``/admin`` (faults) answers
only clients on the loopback interface.

Request bodies are decoded with msgspec, not pydantic: the envelope and the error codes
are the venue's contract, and one typed decode is the cheapest validation there is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from typing import Any

import msgspec
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from flashmm.venue.order_entry import (
    HTTP_STATUS,
    ApiError,
    ApiResponse,
    CancelAllRequest,
    ErrorCode,
    OrderRequest,
)
from flashmm.venue.protocol import format_rfc3339_ns
from flashmm.venue.sim.exchange import Account, Exchange, OrderError, StreamGap
from flashmm.venue.sim.faults import FaultError, parse_fault

__all__ = ["create_app"]

log = logging.getLogger("flashmm.sim.rest")

_encode = msgspec.json.Encoder().encode
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_JSON = "application/json"


class _Failure(Exception):
    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error = ApiError(code=code, message=message, details=details)
        self.headers = headers


def create_app(exchange: Exchange, *, max_request_bytes: int = 64 * 1024) -> _OrderEntry:
    """The order-entry ASGI app around ``exchange``."""
    app = FastAPI(
        title="FlashMM venue simulator: order entry",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    request_ids = itertools.count(1)
    # The asyncio flavour: the threaded one starts a timer thread on the first request
    # after every quiet spell (~0.4 ms, in the order path) and takes the GIL every 10 ms.
    limiter = MovingWindowRateLimiter(MemoryStorage())
    limit = RateLimitItemPerSecond(exchange.config.rate_limit.orders_per_second)

    def request_id_of(request: Request) -> str:
        """The client's ``X-Request-ID``, or one made once per request."""
        rid = getattr(request.state, "request_id", None)
        if rid is None:
            given = request.headers.get("x-request-id")
            rid = given if given and len(given) <= 128 else f"sim-{next(request_ids)}"
            request.state.request_id = rid
        return rid

    def answer(
        request_id: str,
        *,
        order_id: str | None = None,
        data: Any = None,
        failure: _Failure | None = None,
    ) -> Response:
        body = ApiResponse(
            success=failure is None,
            request_id=request_id,
            timestamp=format_rfc3339_ns(time.time_ns()),
            order_id=order_id,
            data=data,
            error=failure.error if failure else None,
        )
        status = HTTP_STATUS[failure.error.code] if failure else 200
        return Response(
            _encode(body),
            status_code=status,
            media_type=_JSON,
            headers=failure.headers if failure else None,
        )

    def account_of(request: Request) -> Account:
        key = request.headers.get("x-api-key")
        account = exchange.account_for_key(key) if key else None
        if account is None:
            raise _Failure(ErrorCode.UNAUTHORIZED, "missing or unknown X-API-Key header")
        return account

    async def check_rate(account: Account) -> None:
        burst = exchange.take_forced_rate_limit()
        if burst is not None:
            raise _Failure(
                ErrorCode.RATE_LIMITED,
                "rate limited (injected fault)",
                {"retry_after_ms": round(burst * 1000)},
                {"Retry-After": str(max(1, math.ceil(burst)))},
            )
        if not await limiter.hit(limit, account.name):
            reset = (await limiter.get_window_stats(limit, account.name)).reset_time
            wait = max(0.0, reset - time.time())
            raise _Failure(
                ErrorCode.RATE_LIMITED,
                f"more than {limit.amount} order requests per second",
                {"retry_after_ms": round(wait * 1000), "limit_per_second": limit.amount},
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )

    too_large = f"request body over {max_request_bytes} bytes"

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_request_bytes:
            raise _Failure(ErrorCode.PAYLOAD_TOO_LARGE, too_large)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                raise _Failure(ErrorCode.PAYLOAD_TOO_LARGE, too_large)
            chunks.append(chunk)
        return b"".join(chunks)

    def decode(body: bytes, kind: type[msgspec.Struct]) -> Any:
        try:
            return msgspec.json.decode(body or b"{}", type=kind)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise _Failure(ErrorCode.INVALID_REQUEST, str(exc)) from None

    # A handler raises what refuses its request; these turn it into the envelope.
    @app.exception_handler(_Failure)
    async def refused(request: Request, failure: _Failure) -> Response:
        return answer(request_id_of(request), failure=failure)

    @app.exception_handler(OrderError)
    async def refused_by_venue(request: Request, exc: OrderError) -> Response:
        return answer(request_id_of(request), failure=_Failure(exc.code, str(exc), exc.details))

    @app.exception_handler(FaultError)
    async def bad_fault(request: Request, exc: FaultError) -> Response:
        failure = _Failure(ErrorCode.INVALID_REQUEST, str(exc))
        return answer(request_id_of(request), failure=failure)

    # -------------------------------------------------------------------- orders
    async def submit_order(scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/orders``: validate and place an order; execution follows on
        ``/v1/stream``. Served on ASGI directly (see :class:`_OrderEntry`)."""
        request = Request(scope, receive)
        try:
            account = account_of(request)
            await check_rate(account)
            order_id = exchange.place_order(account, decode(await body_of(request), OrderRequest))
            response = answer(request_id_of(request), order_id=order_id)
        except _Failure as failure:
            response = answer(request_id_of(request), failure=failure)
        except OrderError as exc:
            failure = _Failure(exc.code, str(exc), exc.details)
            response = answer(request_id_of(request), failure=failure)
        await response(scope, receive, send)

    @app.post("/v1/orders/cancel-all")
    async def cancel_all(request: Request) -> Response:
        """Cancel every open order of the account (of one market if given)."""
        account = account_of(request)
        await check_rate(account)
        req = decode(await body_of(request), CancelAllRequest)
        cancelled = exchange.cancel_all(account, req.market_id)
        return answer(request_id_of(request), data={"cancelled": cancelled})

    @app.delete("/v1/orders/{order_id}")
    async def cancel_order(order_id: str, request: Request) -> Response:
        """Cancel one open order; ``order_cancelled`` follows on the stream."""
        account = account_of(request)
        await check_rate(account)
        exchange.cancel_order(account, order_id)
        return answer(request_id_of(request), order_id=order_id)

    @app.get("/v1/orders")
    async def open_orders(request: Request) -> Response:
        """The account's open orders (``?market_id=`` for one market)."""
        account = account_of(request)
        orders = exchange.open_orders(account, request.query_params.get("market_id"))
        return answer(request_id_of(request), data={"orders": orders})

    # ------------------------------------------------------------------- markets
    @app.get("/v1/markets")
    async def markets(request: Request) -> Response:
        """Every market with its increments, assets and status."""
        return answer(request_id_of(request), data={"markets": exchange.market_list()})

    @app.get("/v1/markets/{market_id:path}/book")
    async def book(market_id: str, request: Request) -> Response:
        """The market's book with its sequence, to resync a feed (``?depth=N``, default all)."""
        raw_depth = request.query_params.get("depth", "0")
        if not raw_depth.isdigit():
            raise _Failure(ErrorCode.INVALID_REQUEST, "depth must be an integer >= 0")
        data = exchange.book_snapshot(market_id, int(raw_depth))
        return answer(request_id_of(request), data=data)

    @app.get("/cosmos/bank/v1beta1/balances/{address}")
    async def balances(address: str) -> Response:
        """Cosmos bank balances of an account address, in each asset's smallest unit."""
        found = exchange.cosmos_balances(address)
        body = {"balances": found, "pagination": {"next_key": None, "total": str(len(found))}}
        return Response(_encode(body), media_type=_JSON)

    @app.get("/health")
    async def health() -> Response:
        """Liveness."""
        return Response(_encode({"status": "ok"}), media_type=_JSON)

    # -------------------------------------------------------------------- stream
    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        """The account's execution events, in ``seq`` order; ``?since=N`` resends after N."""
        key = websocket.headers.get("x-api-key") or websocket.query_params.get("api_key")
        account = exchange.account_for_key(key) if key else None
        since_text = websocket.query_params.get("since")
        # Accept before refusing: a close before the handshake is a bare HTTP 403, and the
        # client would never see the close code and reason that say what is wrong.
        await websocket.accept()
        if account is None:
            await websocket.close(code=1008, reason="missing or unknown API key")
            return
        if since_text is not None and not since_text.isdigit():
            await websocket.close(code=1008, reason="since must be an integer >= 0")
            return
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        try:
            detach = exchange.attach_stream(
                account, queue.put_nowait, None if since_text is None else int(since_text)
            )
        except StreamGap as exc:
            await websocket.close(code=1011, reason=str(exc)[:120])
            return
        receiver = asyncio.create_task(_drain_client(websocket, queue))
        try:
            while (frame := await queue.get()) is not None:
                await websocket.send_text(frame.decode())
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            detach()
            receiver.cancel()

    # --------------------------------------------------------------------- admin
    @app.get("/admin/faults")
    async def fault_counts(request: Request) -> Response:
        """What was injected so far, and the server's counters (loopback only)."""
        _require_loopback(request)
        return answer(request_id_of(request), data=exchange.fault_report())

    @app.post("/admin/faults/{name}")
    async def inject(name: str, request: Request) -> Response:
        """Inject the fault ``name`` with the JSON body as its parameters (loopback only)."""
        _require_loopback(request)
        params = decode(await body_of(request), dict)  # type: ignore[arg-type]
        result = exchange.inject(parse_fault(name, params))
        return answer(request_id_of(request), data=result)

    # Route misses and wrong methods answer in the venue's envelope too.
    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        return answer(
            request_id_of(request),
            failure=_Failure(ErrorCode.NOT_FOUND, f"no route {request.method} {request.url.path}"),
        )

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc: Exception) -> Response:
        failure = _Failure(
            ErrorCode.METHOD_NOT_ALLOWED, f"{request.method} is not served at {request.url.path}"
        )
        return answer(request_id_of(request), failure=failure)

    return _OrderEntry(app, submit_order)


class _OrderEntry:
    """The order-entry app, with ``POST /v1/orders`` answered on ASGI directly.

    Order submission is the path every latency figure goes through. FastAPI's routing
    and middleware stack cost more than the matching itself (~0.3 ms an order on a quiet
    market), so orders go around them, with the same helpers and answers as every other
    route, which stays the FastAPI app's.
    """

    def __init__(self, app: FastAPI, submit_order: ASGIApp) -> None:
        self.app = app
        self._submit_order = submit_order

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/orders" and scope["method"] == "POST":
            await self._submit_order(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _drain_client(websocket: WebSocket, queue: asyncio.Queue[bytes | None]) -> None:
    """Read (and ignore) what the client sends, so a close is noticed at once."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    queue.put_nowait(None)


def _require_loopback(request: Request) -> None:
    if request.client is None or request.client.host not in _LOOPBACK:
        raise _Failure(ErrorCode.FORBIDDEN, "admin is loopback only")
