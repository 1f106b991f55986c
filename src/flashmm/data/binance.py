"""Read Binance market-data captures and keep a book in sync with them.

A capture is text (optionally gzip), one message per line:
``<local_receive_ns> <raw JSON as received>``. Streams are multiplexed as
``{"stream": ..., "data": ...}``; the REST depth snapshot is the bare response body.
This is the format of the hftbacktest sample data (spot, USDⓈ-M and COIN-M).

Binance's documented order-book procedure is split in two: :func:`in_sync_order`
holds depth events back until the snapshot, and the book's own sequencing rules do
the rest (drop what the snapshot contains, require the first event to straddle it,
then an unbroken chain: spot ``U == prev_u + 1``, futures ``pu == prev_u``; see
:func:`apply_depth`). A broken chain is reported by the book as GAP, never patched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from flashmm._core.book import OrderBook
from flashmm._core.wire import LevelsFormatError, max_levels, parse_levels
from flashmm.data.increments import IncrementError, infer_increment
from flashmm.data.lines import read_lines


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

    @property
    def first_sequence(self) -> int:
        """The id that must follow the book's: spot chains ``U == prev_u + 1``, futures
        ``pu == prev_u``."""
        return self.prev_last_id + 1 if self.prev_last_id >= 0 else self.first_id


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


def iter_capture(
    path: str | Path, on_progress: Callable[[int], None] | None = None
) -> Iterator[Message | LineError]:
    """Messages of a capture in arrival order; unreadable lines come as :class:`LineError`."""
    decoder = CaptureDecoder()
    for line_no, line in read_lines(path, on_progress):
        try:
            msg = decoder.decode_line(line)
        except CaptureFormatError as exc:
            yield LineError(line_no, str(exc))
            continue
        if msg is not None:
            yield msg


def infer_increments(path: str | Path, max_lines: int = 2000) -> tuple[float, float]:
    """Tick and lot size implied by the depth levels among the first ``max_lines`` lines.

    Raises :class:`CaptureFormatError` when those lines hold no depth levels.
    """
    prices: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    for k, msg in enumerate(iter_capture(path)):
        if k >= max_lines:
            break
        if isinstance(msg, DepthUpdate | DepthSnapshot):
            for side in (msg.bids, msg.asks):
                prices.append(side[:, 0])
                sizes.append(side[:, 1])
    try:
        return (
            infer_increment(np.concatenate(prices or [np.empty(0)]), "prices"),
            infer_increment(np.concatenate(sizes or [np.empty(0)]), "sizes"),
        )
    except IncrementError as exc:
        raise CaptureFormatError(f"{path}: {exc} in the first {max_lines} lines") from None


def in_sync_order(messages: Iterable[Message | LineError]) -> Iterator[Message | LineError]:
    """Messages in the order a book must apply them.

    Depth events that arrive before the first snapshot are held back and released
    right after it; the book then drops those the snapshot already contains (STALE)
    and checks the first one straddles it. If no snapshot ever comes, the held events
    are never released.
    """
    held: list[DepthUpdate] | None = []
    for msg in messages:
        if held is not None:
            if isinstance(msg, DepthUpdate):
                held.append(msg)
                continue
            if isinstance(msg, DepthSnapshot):
                yield msg
                yield from held
                held = None
                continue
        yield msg


def apply_depth(book: OrderBook, msg: DepthSnapshot | DepthUpdate) -> int:
    """Apply a snapshot or depth event by Binance's chaining rule; returns the book status."""
    if isinstance(msg, DepthSnapshot):
        return book.apply_snapshot(msg.bids, msg.asks, msg.last_update_id)
    return book.apply_delta(msg.bids, msg.asks, msg.last_id, msg.first_sequence)
