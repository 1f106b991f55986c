"""Decoding one venue ``OrderBookUpdate`` frame (5 levels a side, specification form).

Side by side, each producing the same numbers (sequence, timestamp in ns, float
``[price, size]`` rows):

- ``stdlib``: ``json.loads`` of the frame and of each level string, ``float()`` per value;
- ``orjson``: the same with ``orjson.loads`` (a test dependency);
- ``FrameDecoder.decode``: the codec, by its one-pass reader of one-event frames
  (``bytes``, as off the socket) and by its general path (the same frame as ``str``:
  typed msgspec envelope, levels scanned into its arena);
- ``decode + OrderBook.apply_delta``: the feed's hot path, deltas with increasing sequences.

All use ``parse_rfc3339_ns`` for the timestamp, so the comparison is about JSON and levels.
Every benchmark checks its result, so ``--benchmark-disable`` (one call each) is a smoke test.

    python -m pytest benchmarks/bench_codec.py --benchmark-columns=min,median,mean,iqr,rounds
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from flashmm._core.book import OK, OrderBook
from flashmm._core.wire import parse_rfc3339_ns
from flashmm.venue.protocol import (
    BookUpdate,
    FrameDecoder,
    Notification,
    Trade,
    encode_notification,
    format_query,
)

MARKET = "SEI/USDC"
QUERY = format_query("OrderBookUpdate", MARKET)
T0_NS = 1_709_294_400_123_456_789  # 2024-03-01T12:00:00.123456789Z
DEPTH = 5


def _rows(best: float, step: float, sizes: list[float]) -> np.ndarray:
    return np.array([[round(best + k * step, 4), s] for k, s in enumerate(sizes)])


def _frame(sequence: int, is_snapshot: bool, shift: int) -> bytes:
    """One update: 5 bids below 0.4501 and 5 asks above 0.4502 (tick 0.0001, lot 1)."""
    bids = _rows(0.4501, -0.0001, [100.0 + shift + k for k in range(DEPTH)])
    asks = _rows(0.4502, 0.0001, [90.0 + shift + k for k in range(DEPTH)])
    update = BookUpdate(MARKET, T0_NS + sequence, sequence, is_snapshot, bids, asks)
    return encode_notification(1, QUERY, [update], price_decimals=4, size_decimals=0)


FRAME = _frame(42, False, 0)
SNAPSHOT = _frame(1, True, 0)
DELTAS = [_frame(seq, False, seq % 2) for seq in range(2, 2 + 1024)]  # alternating sizes
EXPECTED_BIDS = [[round(0.4501 - k * 0.0001, 4), 100.0 + k] for k in range(DEPTH)]


def _from_dicts(obj: dict[str, Any], loads: Callable[[Any], Any]) -> tuple:
    attrs = obj["result"]["events"][0]["attributes"]
    bids = [(float(p), float(s)) for p, s in loads(attrs["bids"])]
    asks = [(float(p), float(s)) for p, s in loads(attrs["asks"])]
    return int(attrs["sequence"]), parse_rfc3339_ns(attrs["timestamp"]), bids, asks


def _check(sequence: int, timestamp_ns: int, bids: Any, asks: Any) -> None:
    assert sequence == 42
    assert timestamp_ns == T0_NS + 42
    assert np.array_equal(np.asarray(bids), EXPECTED_BIDS)
    assert len(asks) == DEPTH


@pytest.mark.benchmark(group="decode-book-frame")
def test_stdlib_json(benchmark: Any) -> None:
    loads = json.loads

    def run() -> tuple:
        return _from_dicts(loads(FRAME), loads)

    _check(*benchmark(run))


@pytest.mark.benchmark(group="decode-book-frame")
def test_orjson(benchmark: Any) -> None:
    loads = orjson.loads

    def run() -> tuple:
        return _from_dicts(loads(FRAME), loads)

    _check(*benchmark(run))


@pytest.mark.benchmark(group="decode-book-frame")
@pytest.mark.parametrize("path", ["one-pass", "msgspec"])
def test_frame_decoder(benchmark: Any, path: str) -> None:
    """``bytes`` take the one-pass reader of the common book frame; the same frame as
    ``str`` takes the general path (typed msgspec envelope, then the level scanner)."""
    decode = FrameDecoder().decode
    msg = benchmark(decode, FRAME if path == "one-pass" else FRAME.decode())
    assert isinstance(msg, Notification)
    (update,) = msg.events
    _check(update.sequence, update.timestamp_ns, update.bids, update.asks)


TRADE_FRAME = encode_notification(
    1, format_query("Trade", MARKET), [Trade(MARKET, T0_NS, 0.4502, 12.5, -1, "5266583935")]
)


@pytest.mark.benchmark(group="decode-trade-frame")
@pytest.mark.parametrize("path", ["one-pass", "msgspec"])
def test_trade_frame_decoder(benchmark: Any, path: str) -> None:
    """A trade, the most frequent frame, by each path (``bytes`` / ``str``)."""
    decode = FrameDecoder().decode
    msg = benchmark(decode, TRADE_FRAME if path == "one-pass" else TRADE_FRAME.decode())
    assert msg.events == [Trade(MARKET, T0_NS, 0.4502, 12.5, -1, "5266583935")]


def _largest_real_frames() -> list[bytes]:
    """The USD-M replay's book frames of 250-350 levels: the ones that set its p99."""
    from flashmm.data.binance import infer_increments
    from flashmm.data.frames import binance_to_frames

    path = (
        Path(__file__).resolve().parent.parent
        / "tests/data/binance/usdm_btcusdt_20240808_head10k.gz"
    )
    tick, lot = infer_increments(path)
    frames = [f for _, f in binance_to_frames([path], "BTC/USDT", tick, lot)]
    return [f for f in frames if b"OrderBookUpdate" in f and 250 <= f.count(b"],[") < 350]


@pytest.mark.benchmark(group="decode-real-300-level-frames")
@pytest.mark.parametrize("path", ["one-pass", "msgspec"])
def test_frame_decoder_real_large_frames(benchmark: Any, path: str) -> None:
    """All of the replay's 250-350-level frames, one after another, per call."""
    frames = _largest_real_frames()
    if path == "msgspec":
        frames = [f.decode() for f in frames]
    decode = FrameDecoder().decode

    def decode_all() -> int:
        return sum(len(decode(f).events[0].bids) for f in frames)

    levels = benchmark(decode_all)
    benchmark.extra_info["frames"] = len(frames)
    assert len(frames) >= 10
    assert levels > 0


class _Feed:
    """Decode and apply delta after delta; a new book from the snapshot when they run out."""

    def __init__(self) -> None:
        self.decode = FrameDecoder().decode
        self.reset()

    def reset(self) -> None:
        self.book = OrderBook(tick_size=0.0001, lot_size=1.0)
        snap = self.decode(SNAPSHOT).events[0]
        assert self.book.apply_snapshot(snap.bids, snap.asks, snap.sequence) == OK
        self.next = 0

    def step(self) -> int:
        if self.next == len(DELTAS):
            self.reset()
        frame = DELTAS[self.next]
        self.next += 1
        update = self.decode(frame).events[0]
        return self.book.apply_delta(update.bids, update.asks, update.sequence)


@pytest.mark.benchmark(group="decode-book-frame")
def test_frame_decoder_and_apply_delta(benchmark: Any) -> None:
    feed = _Feed()
    assert benchmark(feed.step) == OK
    assert feed.book.is_valid
    assert feed.book.sequence == 1 + feed.next
