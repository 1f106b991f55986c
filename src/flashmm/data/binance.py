"""Read Binance market-data captures and keep a book in sync with them.

A capture is text (optionally gzip), one message per line:
``<local_receive_ns> <raw JSON as received>``. Streams are multiplexed as
``{"stream": ..., "data": ...}``; the REST depth snapshot is the bare response body.
This is the format of the hftbacktest sample data (spot, USDⓈ-M and COIN-M).

:class:`BinanceBookSync` follows Binance's documented order-book procedure: buffer
depth events until the snapshot, drop the ones it already contains, require the
first applied event to straddle it, then require an unbroken chain
(spot ``U == prev_u + 1``, futures ``pu == prev_u``). A broken chain is reported by
the book as GAP and is never patched.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec
import numpy as np

from flashmm._core.book import GAP, UNSYNCED, OrderBook
from flashmm._core.wire import LevelsFormatError, max_levels, parse_levels


class CaptureFormatError(ValueError):
    """A capture line is not a Binance message this reader understands."""


class DepthUpdate(msgspec.Struct, gc=False):
    """``depthUpdate``: absolute sizes for update ids ``first_id..last_id``."""

    recv_ns: int
    event_ms: int
    first_id: int
    last_id: int
    prev_last_id: int  # futures ``pu``; -1 on spot
    bids: np.ndarray
    asks: np.ndarray


class DepthSnapshot(msgspec.Struct, gc=False):
    """REST ``/depth`` response: the book as of ``last_update_id``."""

    recv_ns: int
    last_update_id: int
    bids: np.ndarray
    asks: np.ndarray


class BookTicker(msgspec.Struct, gc=False):
    """``bookTicker``: best bid/ask as of update id ``update_id``."""

    recv_ns: int
    update_id: int
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float


class Trade(msgspec.Struct, gc=False):
    """``trade``; ``side`` is the aggressor: +1 buy, -1 sell (``m`` = buyer is maker)."""

    recv_ns: int
    trade_id: int
    time_ms: int
    price: float
    qty: float
    side: int


Message = DepthUpdate | DepthSnapshot | BookTicker | Trade


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that could not be read; ``line_no`` counts from 1."""

    line_no: int
    reason: str


class _Envelope(msgspec.Struct):
    stream: str
    data: msgspec.Raw


class _Depth(msgspec.Struct):
    E: int
    U: int
    u: int
    b: msgspec.Raw
    a: msgspec.Raw
    pu: int = -1


class _Snapshot(msgspec.Struct):
    lastUpdateId: int
    bids: msgspec.Raw
    asks: msgspec.Raw


class _Ticker(msgspec.Struct):
    u: int
    b: float
    B: float
    a: float
    A: float


class _Trade(msgspec.Struct):
    t: int
    T: int
    p: float
    q: float
    m: bool


def _levels(raw: msgspec.Raw) -> np.ndarray:
    text = bytes(raw).decode()
    out = np.empty((max_levels(text), 2), dtype=np.float64)
    return out[: parse_levels(text, out)]


class CaptureDecoder:
    """Decode capture lines into :data:`Message` objects; decoders are built once."""

    def __init__(self) -> None:
        self._envelope = msgspec.json.Decoder(_Envelope)
        self._snapshot = msgspec.json.Decoder(_Snapshot)
        self._depth = msgspec.json.Decoder(_Depth)
        # Binance sends numbers as strings; lax mode turns them into floats in C.
        self._ticker = msgspec.json.Decoder(_Ticker, strict=False)
        self._trade = msgspec.json.Decoder(_Trade, strict=False)

    def decode_line(self, line: bytes) -> Message | None:
        """One capture line; ``None`` for a stream this reader ignores.

        Raises :class:`CaptureFormatError` with the reason on anything unreadable.
        """
        head, sep, body = line.strip().partition(b" ")
        if not sep or not head.isdigit():
            raise CaptureFormatError("expected '<receive_ns> <json>'")
        recv_ns = int(head)
        try:
            if body.startswith(b'{"lastUpdateId"'):
                snap = self._snapshot.decode(body)
                return DepthSnapshot(
                    recv_ns, snap.lastUpdateId, _levels(snap.bids), _levels(snap.asks)
                )
            env = self._envelope.decode(body)
            kind = env.stream.rpartition("@")[2] if "@depth" not in env.stream else "depth"
            if kind == "depth":
                d = self._depth.decode(env.data)
                return DepthUpdate(recv_ns, d.E, d.U, d.u, d.pu, _levels(d.b), _levels(d.a))
            if kind == "bookTicker":
                t = self._ticker.decode(env.data)
                return BookTicker(recv_ns, t.u, t.b, t.B, t.a, t.A)
            if kind == "trade":
                tr = self._trade.decode(env.data)
                return Trade(recv_ns, tr.t, tr.T, tr.p, tr.q, -1 if tr.m else 1)
            return None
        except (msgspec.DecodeError, LevelsFormatError, UnicodeDecodeError) as exc:
            raise CaptureFormatError(str(exc)) from None


def open_capture(path: str | Path) -> IO[bytes]:
    """Open a capture for binary reading, transparently un-gzipping ``.gz`` files."""
    path = Path(path)
    with path.open("rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")


def iter_capture(path: str | Path) -> Iterator[Message | LineError]:
    """Messages of a capture in arrival order; unreadable lines come as :class:`LineError`."""
    decoder = CaptureDecoder()
    with open_capture(path) as stream:
        for line_no, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                msg = decoder.decode_line(line)
            except CaptureFormatError as exc:
                yield LineError(line_no, str(exc))
                continue
            if msg is not None:
                yield msg


_DECIMALS = re.compile(rb'"\d+\.(\d*?)0*"')


def infer_increments(path: str | Path, max_lines: int = 2000) -> tuple[float, float]:
    """Tick and lot size implied by the most decimals seen in level prices and sizes.

    Reads depth messages (snapshot first if the capture has one) among the first
    ``max_lines`` lines; raises :class:`CaptureFormatError` if there are none.
    """
    price_dp = size_dp = -1
    decoder = CaptureDecoder()
    with open_capture(path) as stream:
        for k, line in enumerate(stream):
            if k >= max_lines:
                break
            try:
                msg = decoder.decode_line(line)
            except CaptureFormatError:
                continue
            if not isinstance(msg, DepthUpdate | DepthSnapshot):
                continue
            body = line.partition(b" ")[2]
            for pair in re.finditer(rb'\["([0-9.]+)","([0-9.]+)"\]', body):
                price_dp = max(price_dp, _decimals(pair.group(1)))
                size_dp = max(size_dp, _decimals(pair.group(2)))
    if price_dp < 0:
        raise CaptureFormatError(f"{path}: no depth levels in the first {max_lines} lines")
    return 10.0**-price_dp, 10.0**-size_dp


def _decimals(number: bytes) -> int:
    _, _, frac = number.partition(b".")
    return len(frac.rstrip(b"0"))


class BinanceBookSync:
    """Drive an :class:`OrderBook` from a capture's depth messages, by Binance's rules.

    Feed it every message in arrival order. Until the first snapshot, depth events
    are buffered; afterwards each is applied and its book status returned.
    """

    def __init__(self, book: OrderBook, *, futures: bool | None = None) -> None:
        self.book = book
        self.futures = futures  # decided from the first depth event when None
        self._pending: list[DepthUpdate] = []
        self.synced = False
        self.gaps = 0

    def on_snapshot(self, snap: DepthSnapshot) -> list[tuple[DepthUpdate, int]]:
        """Apply the snapshot, then the buffered events it does not already contain."""
        self.book.apply_snapshot(snap.bids, snap.asks, snap.last_update_id)
        self.synced = True
        pending, self._pending = self._pending, []
        return [(ev, self.on_depth(ev)) for ev in pending]

    def on_depth(self, ev: DepthUpdate) -> int:
        """Apply one depth event; returns a :class:`~flashmm._core.book.BookStatus`.

        Before the first snapshot the event is buffered and UNSYNCED is returned.
        """
        if self.futures is None:
            self.futures = ev.prev_last_id >= 0
        if not self.synced:
            self._pending.append(ev)
            return UNSYNCED
        first = ev.prev_last_id + 1 if self.futures else ev.first_id
        status = self.book.apply_delta(ev.bids, ev.asks, ev.last_id, first)
        if status == GAP:
            self.gaps += 1
        return status
