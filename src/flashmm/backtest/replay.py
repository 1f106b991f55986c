"""``flashmm replay``: run a recorded feed through codec, book, features, model and quoting.

Two recorded formats, one pipeline (:class:`~flashmm.engine.pipeline.MarketPipeline`):

- ``binance``: Binance captures (``<receive_ns> <raw JSON>``), several files in a row
  replaying as one continuous stream (a day rolled into the next);
- ``frames``: venue frames in the DESIGN wire format, one ``<receive_ns> <frame>`` per line.

One CSV row is written per book update the book applied (status OK). Lines that
cannot be read are reported with their file and line number, skipped and counted.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from flashmm._core.book import OK, BookStatus
from flashmm._core.model import OUT_CONFIDENCE, OUT_DIRECTION, OUT_MOVE_BPS, Model
from flashmm._core.quoting import QO_ASK, QO_ASK_SIZE, QO_BID, QO_BID_SIZE
from flashmm.data import binance, convert
from flashmm.data.convert import INFERENCE_LINES, InputFormat
from flashmm.data.frames import frame_notifications
from flashmm.data.increments import IncrementError, decimals_of, infer_increment
from flashmm.data.lines import read_lines
from flashmm.engine.pipeline import MarketPipeline
from flashmm.venue.protocol import BookUpdate, FrameDecoder, Notification, Trade

COLUMNS = (
    "recv_ns",
    "sequence",
    "bid_px",
    "bid_sz",
    "ask_px",
    "ask_sz",
    "mid",
    "direction",
    "confidence",
    "move_bps",
    "quote_bid",
    "quote_ask",
)

MAX_REPORTED_ERRORS = 20


class ReplayError(ValueError):
    """The replay cannot start or cannot go on (unknown format, no grid, no market)."""


FeedFormat = InputFormat  # the formats replay reads are those convert reads


@dataclass(frozen=True, slots=True)
class BookEvent:
    """A book frame in apply order; ``first_sequence`` -1 means it covers ``sequence`` only."""

    recv_ns: int
    is_snapshot: bool
    bids: np.ndarray
    asks: np.ndarray
    sequence: int
    first_sequence: int = -1


@dataclass(frozen=True, slots=True)
class TradeEvent:
    recv_ns: int
    size: float
    side: int


@dataclass(frozen=True, slots=True)
class BadLine:
    file: str
    line_no: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line_no}: {self.reason}"


FeedEvent = BookEvent | TradeEvent | BadLine


@dataclass
class ReplayReport:
    rows: int = 0
    trades: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    bad_lines: int = 0
    first_bad_lines: list[BadLine] = field(default_factory=list)
    other_markets: Counter[str] = field(default_factory=Counter)
    market: str = ""
    tick_size: float = math.nan
    lot_size: float = math.nan


def detect_format(path: Path) -> FeedFormat:
    """Tell the two formats apart by the first line's JSON."""
    try:
        return convert.detect_format(path)
    except convert.ConvertError as exc:
        raise ReplayError(str(exc)) from None


# ----------------------------------------------------------------- binance source


def binance_events(
    paths: list[Path], on_progress: Callable[[int], None] | None = None
) -> Iterator[FeedEvent]:
    def messages() -> Iterator[binance.Message | BadLine]:
        for path in paths:
            for msg in binance.iter_capture(path, on_progress):
                if isinstance(msg, binance.LineError):
                    yield BadLine(path.name, msg.line_no, msg.reason)
                else:
                    yield msg

    for msg in binance.in_sync_order(messages()):
        if isinstance(msg, binance.DepthSnapshot):
            yield BookEvent(msg.recv_ns, True, msg.bids, msg.asks, msg.last_update_id)
        elif isinstance(msg, binance.DepthUpdate):
            yield BookEvent(msg.recv_ns, False, msg.bids, msg.asks, msg.last_id, msg.first_sequence)
        elif isinstance(msg, binance.Trade):
            yield TradeEvent(msg.recv_ns, msg.qty, msg.side)
        elif isinstance(msg, BadLine):
            yield msg


def binance_increments(paths: list[Path]) -> tuple[float, float]:
    try:
        return binance.infer_increments(paths[0], INFERENCE_LINES)
    except binance.CaptureFormatError as exc:
        raise ReplayError(f"{exc}; pass --tick-size and --lot-size") from None


# ------------------------------------------------------------------ frames source


def _frame_notifications(
    path: Path, decoder: FrameDecoder, on_progress: Callable[[int], None] | None = None
) -> Iterator[tuple[int, int, Notification | BadLine]]:
    for line_no, recv_ns, msg in frame_notifications(read_lines(path, on_progress), decoder):
        if isinstance(msg, str):
            yield line_no, recv_ns, BadLine(path.name, line_no, msg)
        else:
            yield line_no, recv_ns, msg


def frame_events(
    paths: list[Path],
    market: str,
    report: ReplayReport,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[FeedEvent]:
    decoder = FrameDecoder()
    for path in paths:
        for _, recv_ns, msg in _frame_notifications(path, decoder, on_progress):
            if isinstance(msg, BadLine):
                yield msg
                continue
            for ev in msg.events:
                if ev.market_id != market:
                    if isinstance(ev, BookUpdate | Trade):
                        report.other_markets[ev.market_id] += 1
                    continue
                if isinstance(ev, BookUpdate):
                    yield BookEvent(recv_ns, ev.is_snapshot, ev.bids, ev.asks, ev.sequence)
                elif isinstance(ev, Trade):
                    yield TradeEvent(recv_ns, ev.size, ev.side)


def frames_market_and_increments(
    path: Path, market: str | None, tick: float | None, lot: float | None
) -> tuple[str, float, float]:
    """The market to replay (the first one seen by default) and its tick and lot size.

    Unlike ``flashmm data convert``, which refuses a file with an unreadable line, replay
    skips such lines here too: it infers from what it can read.
    """
    decoder = FrameDecoder()
    prices: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    for line_no, _, msg in _frame_notifications(path, decoder):
        if line_no > INFERENCE_LINES:
            break
        if isinstance(msg, BadLine):
            continue
        for ev in msg.events:
            if not isinstance(ev, BookUpdate):
                continue
            market = market or ev.market_id
            if ev.market_id == market:
                for side in (ev.bids, ev.asks):
                    prices.append(side[:, 0].copy())
                    sizes.append(side[:, 1].copy())
    if market is None:
        raise ReplayError(f"{path}: no OrderBookUpdate in the first {INFERENCE_LINES} lines")
    try:
        if tick is None:
            tick = infer_increment(np.concatenate(prices or [np.empty(0)]), "prices")
        if lot is None:
            lot = infer_increment(np.concatenate(sizes or [np.empty(0)]), "sizes")
    except IncrementError as exc:
        raise ReplayError(f"{path}: market {market}: {exc}; pass --tick-size/--lot-size") from None
    return market, tick, lot


# ------------------------------------------------------------------------ replay


def replay(
    paths: list[Path],
    out: TextIO,
    *,
    fmt: FeedFormat = FeedFormat.AUTO,
    tick_size: float | None = None,
    lot_size: float | None = None,
    market: str | None = None,
    model: Model | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay ``paths`` (one continuous feed) and write CSV rows to ``out``."""
    if not paths:
        raise ReplayError("no input files")
    if fmt is FeedFormat.AUTO:
        fmt = detect_format(paths[0])
    report = ReplayReport()
    if fmt is FeedFormat.BINANCE:
        if tick_size is None or lot_size is None:
            tick, lot = binance_increments(paths)
            tick_size = tick_size or tick
            lot_size = lot_size or lot
        report.market = market or paths[0].name
        events = binance_events(paths, on_progress)
    else:
        report.market, tick_size, lot_size = frames_market_and_increments(
            paths[0], market, tick_size, lot_size
        )
        events = frame_events(paths, report.market, report, on_progress)
    report.tick_size, report.lot_size = tick_size, lot_size

    pipe = MarketPipeline(tick_size, lot_size, model=model)
    book, pred, quote = pipe.book, pipe.prediction, pipe.quote
    px_dp, sz_dp = decimals_of(tick_size), decimals_of(lot_size)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    names = {int(s): s.name for s in BookStatus}

    for ev in events:
        if isinstance(ev, BookEvent):
            status = pipe.apply_book_update(
                ev.recv_ns, ev.is_snapshot, ev.bids, ev.asks, ev.sequence, ev.first_sequence
            )
            report.statuses[names[status]] += 1
            if status != OK:
                continue
            report.rows += 1
            writer.writerow(
                (
                    ev.recv_ns,
                    ev.sequence,
                    f"{book.best_bid * tick_size:.{px_dp}f}" if book.best_bid_size else "",
                    f"{book.best_bid_size * lot_size:.{sz_dp}f}",
                    f"{book.best_ask * tick_size:.{px_dp}f}" if book.best_ask_size else "",
                    f"{book.best_ask_size * lot_size:.{sz_dp}f}",
                    f"{pipe.mid * tick_size:.{px_dp + 1}f}" if pipe.mid == pipe.mid else "",
                    int(pred[OUT_DIRECTION]),
                    f"{pred[OUT_CONFIDENCE]:.4f}",
                    f"{pred[OUT_MOVE_BPS]:.4f}",
                    f"{quote[QO_BID] * tick_size:.{px_dp}f}" if quote[QO_BID_SIZE] > 0 else "",
                    f"{quote[QO_ASK] * tick_size:.{px_dp}f}" if quote[QO_ASK_SIZE] > 0 else "",
                )
            )
        elif isinstance(ev, TradeEvent):
            pipe.on_trade(ev.recv_ns, ev.size, ev.side)
            report.trades += 1
        else:
            report.bad_lines += 1
            if len(report.first_bad_lines) < MAX_REPORTED_ERRORS:
                report.first_bad_lines.append(ev)
    return report
