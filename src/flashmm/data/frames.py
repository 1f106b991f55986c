"""Venue frame recordings (``<receive_ns> <frame>`` per line) and conversion into them.

This is the venue's own wire format (DESIGN section 4) with each frame's local receive
time in front, as the engine would record it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from flashmm._core.book import OK, OrderBook
from flashmm.data import binance
from flashmm.data.increments import decimals_of
from flashmm.venue.protocol import BookUpdate, Trade, encode_notification, format_query


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
