"""The engine's venue gateway: order entry over keep-alive HTTP/1.1, execution over ``/v1/stream``.

:class:`VenueGateway` sends REST requests on a small pool of persistent connections (one
request per connection at a time, never pipelined), honours ``429 Retry-After`` for every
later request, and wraps the venue in a circuit breaker so a venue that is down is refused
at once instead of being hammered. :class:`ExecutionStream` delivers each execution event
exactly once across reconnects by resuming with ``?since=<last seq>``.

httpx is not used here: its per-request cost is several hundred µs, and the engine's budget
from book update to order at the venue is 1 ms p50.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from flashmm.venue.order_entry import (
    ApiResponse,
    CancelAllRequest,
    ErrorCode,
    MarketView,
    OrderRequest,
    OrderView,
    StreamEvent,
    decode_stream_event,
)

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "ExecutionStream",
    "GatewayError",
    "GatewaySettings",
    "GatewayTimeout",
    "GatewayTuning",
    "RateLimited",
    "VenueGateway",
    "VenueProtocolError",
    "VenueRejected",
    "VenueUnavailable",
]

log = logging.getLogger("flashmm.venue.gateway")

_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 16 * 1024 * 1024
_DEFAULT_RETRY_AFTER_S = 1.0  # a 429 that says nothing about when to come back
_CLOSE_SINCE_REFUSED = 1011  # the venue no longer holds the events after ``since``
_CLOSE_POLICY = 1008  # bad key or bad query: retrying the same request cannot help


class GatewayTuning(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Timeouts and breaker: shared by :class:`GatewaySettings` and the engine config's
    ``[gateway]`` section, so the two cannot drift apart."""

    request_timeout_s: float = 2.0
    breaker_failures: int = 5  # consecutive failures that open the breaker
    breaker_cooldown_s: float = 2.0
    stream_reconnect_max_s: float = 2.0  # longest wait between stream reconnects


class GatewaySettings(GatewayTuning):
    """Where the venue is and how hard the gateway may push it."""

    rest_url: str = "http://127.0.0.1:8081"
    stream_url: str = "ws://127.0.0.1:8081/v1/stream"
    api_key: str = ""
    max_in_flight: int = 5

    def __post_init__(self) -> None:
        rest = urlsplit(self.rest_url)
        if rest.scheme != "http" or not rest.hostname:
            raise ValueError(f"rest_url must be http://host[:port], got {self.rest_url!r}")
        stream = urlsplit(self.stream_url)
        if stream.scheme not in ("ws", "wss") or not stream.hostname:
            raise ValueError(
                f"stream_url must be ws[s]://host[:port]/path, got {self.stream_url!r}"
            )
        if not self.api_key.isprintable() or not self.api_key.isascii():
            raise ValueError("api_key must be printable ASCII (it travels in an HTTP header)")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self.request_timeout_s <= 0 or self.breaker_cooldown_s < 0:
            raise ValueError("request_timeout_s must be > 0 and breaker_cooldown_s >= 0")
        if self.breaker_failures < 1:
            raise ValueError("breaker_failures must be at least 1")
        if self.stream_reconnect_max_s <= 0:
            raise ValueError("stream_reconnect_max_s must be > 0")


# ---------------------------------------------------------------------- errors


class GatewayError(Exception):
    """Base of every error the gateway raises."""


class VenueRejected(GatewayError):
    """The venue refused the request in a well-formed answer; nothing happened there."""

    def __init__(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None, status: int
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.status = status


class RateLimited(GatewayError):
    """A 429, or a request held back because the venue's ``Retry-After`` has not passed."""

    def __init__(self, retry_after_s: float, *, sent: bool) -> None:
        where = "venue answered 429" if sent else "held back: venue's Retry-After not passed"
        super().__init__(f"rate limited ({where}); retry in {retry_after_s:.3f} s")
        self.retry_after_s = retry_after_s
        self.sent = sent


class VenueUnavailable(GatewayError):
    """The venue could not be reached, failed (5xx), or the breaker is open."""


class GatewayTimeout(GatewayError):
    """No complete answer within ``request_timeout_s``; the request's outcome is unknown."""


class VenueProtocolError(GatewayError):
    """The venue answered something that is not valid HTTP or not the agreed envelope."""


# --------------------------------------------------------------------- breaker


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """CLOSED -> OPEN after ``failures`` consecutive failures -> HALF_OPEN after ``cooldown_s``
    (one probe request) -> CLOSED on its success, OPEN again on its failure."""

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.times_opened = 0
        self._clock = clock
        self._opened_at = 0.0
        self._probing = False

    def admit(self) -> None:
        """Let one request through, or raise :class:`VenueUnavailable` at once."""
        if self.state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.OPEN:
            left = self._opened_at + self.cooldown_s - self._clock()
            if left > 0:
                raise VenueUnavailable(f"circuit breaker open; next probe in {left:.3f} s")
            self.state = BreakerState.HALF_OPEN
        if self._probing:
            raise VenueUnavailable("circuit breaker half-open; a probe request is under way")
        self._probing = True

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._probing = False

    def failure(self) -> None:
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or self.consecutive_failures >= self.threshold:
            if self.state is not BreakerState.OPEN:
                self.times_opened += 1
                log.warning("circuit breaker open after %d failures", self.consecutive_failures)
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        """The admitted request ended without telling anything about the venue's health."""
        self._probing = False


# ------------------------------------------------------------------ connection


class _ConnectionLost(Exception):
    """The server closed the connection before any byte of the answer arrived."""


class _Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time, Content-Length bodies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = False  # reused connections may have been closed by the server meanwhile

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        return cls(*await asyncio.open_connection(host, port, limit=_MAX_HEAD_BYTES))

    @property
    def reusable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def request(self, head: bytes, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send one request; returns status, lower-cased headers and body."""
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise _ConnectionLost
        self.used = True
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise VenueProtocolError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
        headers: dict[bytes, bytes] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n"):
            if not line:
                raise VenueProtocolError("connection closed inside the answer's headers")
            name, sep, value = line.partition(b":")
            if not sep:
                raise VenueProtocolError(f"malformed header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in headers:
            raise VenueProtocolError("chunked answers are not supported; expected Content-Length")
        length_text = headers.get(b"content-length", b"0")
        if not length_text.isdigit() or int(length_text) > _MAX_BODY_BYTES:
            raise VenueProtocolError(f"bad Content-Length {length_text[:20]!r}")
        try:
            payload = await self.reader.readexactly(int(length_text))
        except asyncio.IncompleteReadError:
            raise VenueProtocolError("connection closed inside the answer's body") from None
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return int(parts[1]), headers, payload

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------- gateway


class _Coin(msgspec.Struct):
    denom: str
    amount: str


class _Balances(msgspec.Struct):
    balances: list[_Coin]


_envelope = msgspec.json.Decoder(ApiResponse)
_balances = msgspec.json.Decoder(_Balances)
_encode = msgspec.json.Encoder().encode


class VenueGateway:
    """REST order entry to the venue; ``async with VenueGateway(settings) as gw:``."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        url = urlsplit(settings.rest_url)
        self._host = url.hostname or ""
        self._port = url.port or 80
        self._prefix = url.path.rstrip("/")
        self._fixed_headers = (
            f"Host: {url.netloc}\r\nX-API-Key: {settings.api_key}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._in_flight = 0
        self._retry_at = 0.0  # monotonic time before which nothing is sent (429)
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
        self.peak_in_flight = 0
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "requests",  # sent to the venue
                "succeeded",
                "rejected",  # well-formed 4xx refusals
                "rate_limited",  # 429 answers
                "held_back",  # refused locally while Retry-After runs
                "breaker_refused",  # refused locally while the breaker is open
                "timeouts",
                "failures",  # transport errors, 5xx, timeouts, malformed answers
                "breaker_opened",
                "connections_opened",
                "stale_retries",  # a kept-alive connection the server had closed
            ),
            0,
        )

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self._in_flight

    async def __aenter__(self) -> VenueGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every idle connection (busy ones close when their request ends)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------ endpoints
    async def submit(self, req: OrderRequest) -> ApiResponse:
        """``POST /v1/orders``; the order's fate follows on the :class:`ExecutionStream`."""
        return await self._call("POST", "/v1/orders", _encode(req))

    async def cancel(self, order_id: str) -> ApiResponse:
        return await self._call("DELETE", f"/v1/orders/{quote(order_id, safe='')}")

    async def cancel_all(self, market_id: str | None = None) -> ApiResponse:
        """Cancel every open order of the account (of ``market_id`` only if given)."""
        body = _encode(CancelAllRequest(market_id=market_id))
        return await self._call("POST", "/v1/orders/cancel-all", body)

    async def open_orders(self, market_id: str | None = None) -> list[OrderView]:
        query = f"?{urlencode({'market_id': market_id})}" if market_id is not None else ""
        answer = await self._call("GET", f"/v1/orders{query}")
        try:
            return msgspec.convert(answer.data["orders"], list[OrderView])
        except (TypeError, KeyError, msgspec.ValidationError) as exc:
            self._failed()
            raise VenueProtocolError(f"GET /v1/orders answered no order list: {exc}") from None

    async def markets(self) -> list[MarketView]:
        """Every market of the venue with its increments and status."""
        answer = await self._call("GET", "/v1/markets")
        try:
            return msgspec.convert(answer.data["markets"], list[MarketView])
        except (TypeError, KeyError, msgspec.ValidationError) as exc:
            self._failed()
            raise VenueProtocolError(f"GET /v1/markets answered no market list: {exc}") from None

    async def book(self, market_id: str, depth: int = 0) -> ApiResponse:
        """The book snapshot with its sequence (``data``), to resync the feed; 0 = all levels."""
        if depth < 0:
            raise ValueError("depth must be >= 0")
        return await self._call(
            "GET", f"/v1/markets/{quote(market_id, safe='/')}/book?depth={depth}"
        )

    async def balances(self, address: str) -> dict[str, int]:
        """Bank balances of ``address``: denom -> amount in the asset's smallest unit."""
        status, headers, payload = await self._send(
            "GET", f"/cosmos/bank/v1beta1/balances/{quote(address, safe='')}", b""
        )
        if status != 200:
            self._answered_error(status, headers, payload)
        try:
            coins = _balances.decode(payload).balances
            found = {coin.denom: int(coin.amount) for coin in coins}
        except (msgspec.DecodeError, ValueError) as exc:
            self._failed()
            raise VenueProtocolError(f"malformed balances answer: {exc}") from None
        self.counters["succeeded"] += 1
        return found

    # ------------------------------------------------------------ machinery
    async def _call(self, method: str, path: str, body: bytes = b"") -> ApiResponse:
        status, headers, payload = await self._send(method, path, body)
        if status != 200:
            self._answered_error(status, headers, payload)
        try:
            answer = _envelope.decode(payload)
        except msgspec.DecodeError as exc:
            self._failed()
            raise VenueProtocolError(f"{method} {path}: malformed envelope: {exc}") from None
        if not answer.success:  # a 200 that says it failed breaks the contract
            self._failed()
            raise VenueProtocolError(f"{method} {path}: status 200 with success=false")
        self.counters["succeeded"] += 1
        return answer

    def _answered_error(self, status: int, headers: dict[bytes, bytes], payload: bytes) -> NoReturn:
        """Raise the error that goes with a non-200 answer, after counting it."""
        try:
            error = _envelope.decode(payload).error
        except msgspec.DecodeError:
            error = None
        if status == 429:
            self.counters["rate_limited"] += 1
            wait = _retry_after(headers.get(b"retry-after"), error.details if error else None)
            self._retry_at = max(self._retry_at, time.monotonic() + wait)
            raise RateLimited(wait, sent=True)
        if status >= 500 or error is None:
            self._failed()
            text = error.message if error else payload[:200].decode(errors="replace")
            raise VenueUnavailable(f"venue answered HTTP {status}: {text}")
        self.counters["rejected"] += 1
        raise VenueRejected(error.code, error.message, error.details, status)

    def _failed(self) -> None:
        self.counters["failures"] += 1
        before = self.breaker.times_opened
        self.breaker.failure()
        self.counters["breaker_opened"] += self.breaker.times_opened - before

    async def _send(
        self, method: str, path: str, body: bytes
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """One request on a pooled connection, under the rate limit, breaker and timeout."""
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            self.counters["held_back"] += 1
            raise RateLimited(wait, sent=False)
        try:
            self.breaker.admit()
        except VenueUnavailable:
            self.counters["breaker_refused"] += 1
            raise
        head = b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (
            method.encode(),
            (self._prefix + path).encode(),
            self._fixed_headers,
            len(body),
        )
        try:
            return await self._send_admitted(method, path, head, body)
        finally:
            # a probe that was cancelled, or ended in a 429, must not hold HALF_OPEN forever
            self.breaker.release()

    async def _send_admitted(
        self, method: str, path: str, head: bytes, body: bytes
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        async with self._slots:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            self.counters["requests"] += 1
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    status, headers, payload = await self._exchange(head, body)
            except TimeoutError:
                self.counters["timeouts"] += 1
                self._failed()
                raise GatewayTimeout(
                    f"{method} {path}: no answer within {self.settings.request_timeout_s} s"
                ) from None
            except OSError as exc:
                self._failed()
                raise VenueUnavailable(f"{method} {path}: cannot reach the venue: {exc}") from None
            except VenueProtocolError:
                self._failed()
                raise
            finally:
                self._in_flight -= 1
        if status < 500 and status != 429:
            self.breaker.success()  # the venue is up and answering, even if it refused
        return status, headers, payload

    async def _exchange(self, head: bytes, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        conn = self._checkout()
        if conn is None:
            conn = await self._connect()
        try:
            try:
                answer = await conn.request(head, body)
            except (_ConnectionLost, ConnectionResetError, BrokenPipeError):
                if not conn.used:
                    raise OSError("the venue closed a new connection without answering") from None
                # The server closed a kept-alive connection before reading this request:
                # nothing was processed, and a client order id makes a resend idempotent.
                conn.close()
                self.counters["stale_retries"] += 1
                conn = await self._connect()
                answer = await conn.request(head, body)
        except BaseException:
            conn.close()  # its state is unknown (half an answer may still arrive)
            raise
        if conn.reusable:
            self._idle.append(conn)
        return answer

    def _checkout(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        conn = await _Connection.open(self._host, self._port)
        self.counters["connections_opened"] += 1
        return conn


def _retry_after(header: bytes | None, details: dict[str, Any] | None) -> float:
    """Seconds to wait after a 429: ``details.retry_after_ms`` (finer) else ``Retry-After``."""
    if details is not None:
        ms = details.get("retry_after_ms")
        if isinstance(ms, int | float) and ms >= 0:
            return ms / 1000
    if header is not None:
        text = header.decode("latin-1").strip()
        if text.isdigit():
            return float(text)
        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, email.utils.parsedate_to_datetime(text).timestamp() - time.time())
    return _DEFAULT_RETRY_AFTER_S


# ---------------------------------------------------------------------- stream

OnEvent = Callable[[StreamEvent], None]
OnGap = Callable[[int, int | None], None]
"""``on_gap(expected, got)``: ``got`` is None when the venue no longer holds the missed events."""


class _StreamListener(WSListener):
    def __init__(self, owner: ExecutionStream) -> None:
        self.owner = owner
        self.close_code: int | None = None
        self.close_reason = ""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.owner._receive(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            self.close_reason = frame.get_close_message().decode(errors="replace")
            transport.disconnect()


class ExecutionStream:
    """The account's ``/v1/stream``: every event once, in ``seq`` order, across reconnects.

    ``since`` is the last ``seq`` already processed (from the engine's journal; 0 for a new
    account). With None the stream starts with the next live event, and events before the
    first one seen are never replayed.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        on_event: OnEvent,
        on_gap: OnGap | None = None,
        *,
        since: int | None = None,
    ) -> None:
        self.settings = settings
        self.on_event = on_event
        self.on_gap = on_gap
        self.last_seq = since
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "events",
                "connects",
                "disconnects",
                "gaps",
                "duplicates",
                "malformed",
                "callback_errors",
            ),
            0,
        )
        self._transport: WSTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._running = False
        self.error: VenueUnavailable | None = None  # why the stream stopped for good

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Connect; :class:`VenueUnavailable` if no connection opens within the timeout.

        A venue that accepts the socket and then refuses the key (close 1008) ends the
        stream with :attr:`error` set: retrying the same key cannot help.
        """
        if self._task is not None:
            raise RuntimeError("the stream is already started")
        self._running = True
        self._task = asyncio.create_task(self._run())
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait(
                {waiter, self._task},
                timeout=self.settings.request_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if not self.counters["connects"]:  # the first connection may already be gone again
            await self.stop()
            raise VenueUnavailable(f"cannot open the execution stream: {self.error or 'timed out'}")

    async def stop(self) -> None:
        self._running = False
        if self._transport is not None:
            self._transport.disconnect()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def _url(self) -> str:
        if self.last_seq is None:
            return self.settings.stream_url
        sep = "&" if "?" in self.settings.stream_url else "?"
        return f"{self.settings.stream_url}{sep}since={self.last_seq}"

    async def _run(self) -> None:
        backoff = 0.05
        while self._running:
            try:
                transport, listener = await ws_connect(
                    functools.partial(_StreamListener, self),
                    self._url(),
                    extra_headers={"X-API-Key": self.settings.api_key},
                    websocket_handshake_timeout=self.settings.request_timeout_s,
                )
            except Exception as exc:  # OSError, timeouts, and picows' own handshake errors
                log.warning("execution stream connect failed: %s", exc)
            else:
                assert isinstance(listener, _StreamListener)
                self._transport = transport
                self.counters["connects"] += 1
                connected_at = time.monotonic()
                self._connected.set()
                await transport.wait_disconnected()
                self._connected.clear()
                self._transport = None
                self.counters["disconnects"] += 1
                if listener.close_code == _CLOSE_POLICY:
                    self.error = VenueUnavailable(f"stream refused: {listener.close_reason}")
                    log.error("%s", self.error)
                    return
                if listener.close_code == _CLOSE_SINCE_REFUSED:
                    self._gap(self.last_seq + 1 if self.last_seq is not None else 1, None)
                    log.warning("stream refused since=%s: %s", self.last_seq, listener.close_reason)
                    self.last_seq = None  # the next connection starts a new baseline
                    continue
                if not self._running:
                    return
                log.warning("execution stream disconnected; resuming after seq %s", self.last_seq)
                if time.monotonic() - connected_at > 1.0:
                    backoff = 0.05
                    continue  # a healthy connection dropped: reconnect at once
                # else the venue keeps dropping us at once: back off rather than spin
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.stream_reconnect_max_s)

    def _receive(self, frame: bytes) -> None:
        try:
            event = decode_stream_event(frame)
        except msgspec.DecodeError as exc:
            self.counters["malformed"] += 1
            log.error("malformed execution event dropped: %s", exc)
            return
        last = self.last_seq
        if last is not None:
            if event.seq <= last:
                self.counters["duplicates"] += 1
                return
            if event.seq != last + 1:
                self._gap(last + 1, event.seq)
        self.last_seq = event.seq
        self.counters["events"] += 1
        try:
            self.on_event(event)
        except Exception:
            self.counters["callback_errors"] += 1
            log.exception("on_event failed for seq %d", event.seq)

    def _gap(self, expected: int, got: int | None) -> None:
        self.counters["gaps"] += 1
        log.warning("execution stream gap: expected seq %d, got %s", expected, got)
        if self.on_gap is not None:
            try:
                self.on_gap(expected, got)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("on_gap failed")
