"""Venue frame recordings (``<receive_ns> <frame>`` per line): reading them, converting into them.

This is the venue's own wire format (DESIGN section 4) with each frame's local receive
time in front, as the engine would record it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from flashmm._core.book import OK, OrderBook
from flashmm.data import binance
from flashmm.data.increments import decimals_of
from flashmm.venue.protocol import (
    BookUpdate,
    FrameDecoder,
    FrameError,
    Notification,
    Trade,
    encode_notification,
    format_query,
)


def frame_notifications(
    lines: Iterable[tuple[int, bytes]], decoder: FrameDecoder
) -> Iterator[tuple[int, int, Notification | str]]:
    """``(line_no, receive_ns, notification)`` per notification line; replies are skipped.

    An unreadable line gives ``(line_no, 0, reason)``: convert refuses the file, replay
    skips the line, so what to do with it is the caller's.
    """
    for line_no, line in lines:
        head, sep, frame = line.strip().partition(b" ")
        if not sep or not head.isdigit():
            yield line_no, 0, "expected '<receive_ns> <frame>'"
            continue
        try:
            msg = decoder.decode(frame)
        except FrameError as exc:
            yield line_no, 0, str(exc)
            continue
        if isinstance(msg, Notification):
            yield line_no, int(head), msg


def binance_to_frames(
    paths: list[Path], market_id: str, tick_size: float | None = None, lot_size: float | None = None
) -> Iterator[tuple[int, bytes]]:
    """A Binance capture as the frames the venue would have sent for it.

    The capture is replayed through a book first, so exactly what applied is emitted:
    the snapshot, then every depth event the book accepted, renumbered with the venue's
    per-market sequence (1, 2, 3, ...). Trades follow as ``Trade`` notifications.
    A capture whose chain breaks stops with :class:`binance.CaptureFormatError`.
    """
    if tick_size is None or lot_size is None:
        tick, lot = binance.infer_increments(paths[0])
        tick_size, lot_size = tick_size or tick, lot_size or lot
    px_dp, sz_dp = decimals_of(tick_size), decimals_of(lot_size)
    book = OrderBook(tick_size, lot_size)
    book_query = format_query("OrderBookUpdate", market_id)
    trade_query = format_query("Trade", market_id)
    sequence = 0

    def messages() -> Iterator[binance.Message | binance.LineError]:
        for path in paths:
            yield from binance.iter_capture(path)

    for msg in binance.in_sync_order(messages()):
        if isinstance(msg, binance.DepthSnapshot | binance.DepthUpdate):
            status = binance.apply_depth(book, msg)
            if status != OK:
                if book.is_valid:
                    continue  # STALE: already contained in the snapshot
                raise binance.CaptureFormatError(
                    f"depth chain broken at update id {getattr(msg, 'last_id', '?')}"
                )
            sequence += 1
            ts = msg.event_ms * 1_000_000 if isinstance(msg, binance.DepthUpdate) else msg.recv_ns
            event = BookUpdate(
                market_id,
                ts,
                sequence,
                isinstance(msg, binance.DepthSnapshot),
                msg.bids,
                msg.asks,
            )
            frame = encode_notification(
                None, book_query, [event], price_decimals=px_dp, size_decimals=sz_dp
            )
            yield msg.recv_ns, frame
        elif isinstance(msg, binance.Trade):
            event = Trade(
                market_id, msg.time_ms * 1_000_000, msg.price, msg.qty, msg.side, str(msg.trade_id)
            )
            frame = encode_notification(
                None, trade_query, [event], price_decimals=px_dp, size_decimals=sz_dp
            )
            yield msg.recv_ns, frame
