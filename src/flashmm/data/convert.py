"""Convert recorded market data into the event-array format (:mod:`flashmm.data.events`).

Two inputs, several files of which make one continuous recording:

- ``binance``: Binance captures (``<receive_ns> <raw JSON>``, :mod:`flashmm.data.binance`),
  synchronised by Binance's documented procedure;
- ``frames``: the venue's own frames (``<receive_ns> <frame>``, DESIGN section 4), one
  market per output.

Depth updates are judged by an :class:`~flashmm._core.book.OrderBook`, as the engine
would: what the book already contains (older than its snapshot) is dropped and counted;
a break in the chain, a crossed book, a line that cannot be read or a price off the tick
grid stops the conversion with an error naming the file and line. Nothing is repaired.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import msgspec
import numpy as np

from flashmm._core.book import CROSSED, GAP, OK, STALE, UNSYNCED, OrderBook
from flashmm.data import binance
from flashmm.data.events import (
    EVENT_DTYPE,
    LAST_IN_BATCH,
    EventFile,
    EventHeader,
    EventKind,
)
from flashmm.data.frames import frame_notifications
from flashmm.data.increments import IncrementError, infer_increment
from flashmm.data.lines import read_lines
from flashmm.venue.protocol import BookUpdate, FrameDecoder, Notification, Trade

__all__ = [
    "INFERENCE_LINES",
    "Conversion",
    "ConvertError",
    "InputFormat",
    "OffGridError",
    "SequenceGapError",
    "UnreadableLineError",
    "convert",
    "detect_format",
]

INFERENCE_LINES = 2000
"""Lines of the first input read to infer the market, tick and lot size."""

# Same tolerance as the book: a value is on the grid within 1e-6 of a whole number of
# increments, plus a relative allowance for the rounding of large values.
_GRID_TOL_ABS = 1e-6
_GRID_TOL_REL = 1e-12
_MAX_UNITS = 4e18


class InputFormat(StrEnum):
    """What the input files are; ``auto`` tells by the first line."""

    AUTO = "auto"
    BINANCE = "binance"
    FRAMES = "frames"


class ConvertError(ValueError):
    """The input cannot be converted; no output is produced."""


class UnreadableLineError(ConvertError):
    """A line is not a message of the input format (``file:line: reason``)."""


class SequenceGapError(ConvertError):
    """The depth updates do not chain: an update is missing (``file:line`` and update id)."""


class OffGridError(ConvertError):
    """A price or size is not a whole number of ticks or lots."""


@dataclass(frozen=True, slots=True)
class Conversion:
    """The converted file and what was left out on purpose."""

    file: EventFile
    dropped_stale: int = 0
    """Depth updates the book already contained (older than the snapshot): dropped."""
    dropped_unsynced: int = 0
    """Depth updates before the first snapshot, that no book could apply: dropped."""
    other_markets: dict[str, int] = field(default_factory=dict)
    """Frames: book updates and trades of other markets, by market."""


def detect_format(path: Path) -> InputFormat:
    """``binance`` or ``frames``, told apart by the first line's JSON."""
    for _, line in _read(path):
        body = line.partition(b" ")[2].lstrip()
        if body.startswith((b'{"stream"', b'{"lastUpdateId"')):
            return InputFormat.BINANCE
        if b'"jsonrpc"' in body:
            return InputFormat.FRAMES
        raise ConvertError(
            f"{path}: the first line is neither a Binance capture message nor a venue frame; "
            "pass --format"
        )
    raise ConvertError(f"{path}: the file is empty")


def convert(
    paths: list[Path],
    *,
    fmt: InputFormat = InputFormat.AUTO,
    market: str | None = None,
    tick_size: float | None = None,
    lot_size: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Conversion:
    """Convert ``paths`` (one continuous recording, in order) into events.

    ``tick_size``/``lot_size`` default to the grid the first input's levels sit on.
    ``on_progress`` receives the bytes read of the current file. Raises
    :class:`ConvertError` (or a subclass) for anything that stops the conversion.
    """
    if not paths:
        raise ConvertError("no input files")
    for name, value in (("tick size", tick_size), ("lot size", lot_size)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConvertError(f"the {name} must be a positive number, got {value}")
    if fmt is InputFormat.AUTO:
        found = {path: detect_format(path) for path in paths}
        fmt = found[paths[0]]
        mixed = [f"{p} is {f}" for p, f in found.items() if f is not fmt]
        if mixed:
            raise ConvertError(f"the inputs mix formats: {paths[0]} is {fmt}, {mixed[0]}")
    try:
        if fmt is InputFormat.BINANCE:
            return _from_binance(paths, market, tick_size, lot_size, on_progress)
        return _from_frames(paths, market, tick_size, lot_size, on_progress)
    except (OSError, EOFError) as exc:  # a file this module reads through the Binance reader
        raise ConvertError(f"cannot read the input: {exc}") from None


def _read(
    path: Path, on_progress: Callable[[int], None] | None = None
) -> Iterator[tuple[int, bytes]]:
    """:func:`read_lines`, with a damaged or unreadable file as a :class:`ConvertError`."""
    try:
        yield from read_lines(path, on_progress)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ConvertError(f"{path}: cannot read: {exc}") from None


# ---------------------------------------------------------------------------- building


class _Rows:
    """A growable event array, written a batch at a time."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._buf = np.zeros(capacity, dtype=EVENT_DTYPE)
        self._n = 0

    def _take(self, k: int) -> np.ndarray:
        if self._n + k > len(self._buf):
            grown = np.zeros(max(2 * len(self._buf), self._n + k), dtype=EVENT_DTYPE)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        out = self._buf[self._n : self._n + k]
        self._n += k
        return out

    def depth(
        self,
        kind: EventKind,
        seq: int,
        exch_ts: int,
        local_ts: int,
        bids: np.ndarray,
        asks: np.ndarray,
    ) -> None:
        """One depth batch from ``(n, 2)`` int64 ``[ticks, lots]`` bids and asks."""
        if kind is EventKind.DEPTH_SNAPSHOT:
            # A snapshot lists the levels present; a zero size is no level.
            bids, asks = bids[bids[:, 1] > 0], asks[asks[:, 1] > 0]
        nb, na = len(bids), len(asks)
        if nb + na == 0 and kind is EventKind.DEPTH_DELTA:
            return  # changes nothing; the book has already moved its sequence on
        out = self._take(max(nb + na, 1))
        out["exch_ts"] = exch_ts
        out["local_ts"] = local_ts
        out["seq"] = seq
        out["kind"] = kind
        out["price"][:nb] = bids[:, 0]
        out["size"][:nb] = bids[:, 1]
        out["side"][:nb] = 1
        out["price"][nb : nb + na] = asks[:, 0]
        out["size"][nb : nb + na] = asks[:, 1]
        out["side"][nb : nb + na] = -1
        out["flags"][-1] = LAST_IN_BATCH  # an empty snapshot is the one row of side 0

    def trade(
        self, exch_ts: int, local_ts: int, price: int, size: int, side: int, trade_id: int
    ) -> None:
        row = self._take(1)
        row["exch_ts"] = exch_ts
        row["local_ts"] = local_ts
        row["price"] = price
        row["size"] = size
        row["side"] = side
        row["id"] = trade_id
        row["kind"] = EventKind.TRADE
        row["flags"] = LAST_IN_BATCH

    def array(self) -> np.ndarray:
        return self._buf[: self._n].copy()


class _Grid:
    """Prices and sizes into whole ticks and lots, or an error naming the line."""

    def __init__(self, tick_size: float, lot_size: float) -> None:
        self.tick_size = tick_size
        self.lot_size = lot_size

    def levels(self, rows: np.ndarray, where: str) -> np.ndarray:
        """``(n, 2)`` float ``[price, size]`` rows as int64 ``[ticks, lots]``."""
        out = np.empty(rows.shape, dtype=np.int64)
        out[:, 0] = self._units(rows[:, 0], self.tick_size, "price", where, positive=True)
        out[:, 1] = self._units(rows[:, 1], self.lot_size, "size", where, positive=False)
        return out

    def price(self, value: float, where: str) -> int:
        return int(self._units(np.array([value]), self.tick_size, "price", where, positive=True)[0])

    def size(self, value: float, where: str) -> int:
        return int(self._units(np.array([value]), self.lot_size, "size", where, positive=True)[0])

    @staticmethod
    def _units(
        values: np.ndarray, step: float, what: str, where: str, *, positive: bool
    ) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            x = values / step
            units = np.rint(x)
            invalid = ~np.isfinite(x) | (x <= 0 if positive else x < 0) | (x >= _MAX_UNITS)
            off = np.abs(x - units) > _GRID_TOL_ABS + _GRID_TOL_REL * np.abs(x)
        if invalid.any():
            bad = float(values[int(invalid.argmax())])
            need = "> 0" if positive else ">= 0"
            raise ConvertError(f"{where}: {what} {bad!r} is not a finite number {need}")
        if off.any():
            bad = float(values[int(off.argmax())])
            option = "--tick-size" if what == "price" else "--lot-size"
            raise OffGridError(
                f"{where}: {what} {bad!r} is not a multiple of {step:g}; "
                f"pass the market's real increment with {option}"
            )
        return units.astype(np.int64)


class _Sync:
    """The book's verdict on each depth update: keep it, drop it, or stop."""

    def __init__(self, tick_size: float, lot_size: float) -> None:
        self.book = OrderBook(tick_size, lot_size)
        self.stale = 0
        self.unsynced = 0

    def keep(self, status: int, where: str, gap: str) -> bool:
        """True to keep the update; ``gap`` says what is missing if the chain broke."""
        if status == OK:
            return True
        if status == STALE:
            self.stale += 1
            return False
        if status == UNSYNCED:
            self.unsynced += 1
            return False
        if status == GAP:
            raise SequenceGapError(f"{where}: {gap}")
        if status == CROSSED:
            raise ConvertError(
                f"{where}: the book is crossed after update {self.book.sequence} "
                "(best bid >= best ask); the recording is inconsistent"
            )
        raise ConvertError(
            f"{where}: the book rejected the update (a price repeated in a snapshot?)"
        )


class _Arrival:
    """Receive times as ``local_ts``: the order of the lines is the order of arrival.

    A receive time earlier than the latest so far (a Binance update held back until its
    snapshot, a clock stepped back) is raised to it, so rows never go back in time. An
    input must start no earlier than the inputs before it end: they are one recording.
    """

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths
        self._read_until = 0  # latest receive time read from the inputs before this one
        self._read = 0
        self._index = -1
        self.latest = 0

    def read(self, index: int, recv_ns: int, line_no: int) -> None:
        """Line ``line_no`` of input ``index`` was read (in file order)."""
        if index != self._index:
            self._index, self._read_until = index, self._read
            if recv_ns < self._read_until:
                path = self._paths[index]
                raise ConvertError(
                    f"{path}:{line_no}: this input starts before {self._paths[index - 1]} "
                    "ends; give the inputs in recording order"
                )
        self._read = max(self._read, recv_ns)

    def stamp(self, recv_ns: int) -> int:
        """``local_ts`` of a row emitted now."""
        self.latest = max(self.latest, recv_ns)
        return self.latest


# ---------------------------------------------------------------------------- binance


class _Stream(msgspec.Struct):
    stream: str


def _binance_symbol(path: Path) -> str:
    """The symbol of the first stream in the capture (``btcusdt@trade`` -> ``BTCUSDT``)."""
    decode = msgspec.json.Decoder(_Stream).decode
    for line_no, line in _read(path):
        if line_no > INFERENCE_LINES:
            break
        body = line.partition(b" ")[2]
        if body.lstrip().startswith(b'{"stream"'):
            try:
                return decode(body).stream.partition("@")[0].upper()
            except msgspec.DecodeError:
                continue
    raise ConvertError(
        f"{path}: no stream name in the first {INFERENCE_LINES} lines; pass --market"
    )


def _raise_first_unreadable(path: Path) -> None:
    """Unreadable lines explain a failed inference better than the inference does."""
    for k, msg in enumerate(binance.iter_capture(path)):
        if k >= INFERENCE_LINES:
            return
        if isinstance(msg, binance.LineError):
            raise UnreadableLineError(f"{path}:{msg.line_no}: {msg.reason}")


def _from_binance(
    paths: list[Path],
    market: str | None,
    tick_size: float | None,
    lot_size: float | None,
    on_progress: Callable[[int], None] | None,
) -> Conversion:
    if tick_size is None or lot_size is None:
        try:
            tick, lot = binance.infer_increments(paths[0], INFERENCE_LINES)
        except binance.CaptureFormatError as exc:
            _raise_first_unreadable(paths[0])
            raise ConvertError(f"{exc}; pass --tick-size and --lot-size") from None
        tick_size, lot_size = tick_size or tick, lot_size or lot
    market = market or _binance_symbol(paths[0])
    grid, sync, rows = _Grid(tick_size, lot_size), _Sync(tick_size, lot_size), _Rows()
    arrival = _Arrival(paths)

    # in_sync_order reorders messages; their (file index, line) travel in this map,
    # keyed by the identity of the live message object and removed once it is used.
    position: dict[int, tuple[int, int]] = {}
    decoder = binance.CaptureDecoder()

    def messages() -> Iterator[binance.Message]:
        for index, path in enumerate(paths):
            for line_no, line in _read(path, on_progress):
                try:
                    msg = decoder.decode_line(line)
                except binance.CaptureFormatError as exc:
                    raise UnreadableLineError(f"{path}:{line_no}: {exc}") from None
                if msg is None or isinstance(msg, binance.BookTicker):
                    continue
                arrival.read(index, msg.recv_ns, line_no)
                position[id(msg)] = (index, line_no)
                yield msg

    snapshot_seen = False
    for msg in binance.in_sync_order(messages()):
        at = position.pop(id(msg))
        where = f"{paths[at[0]]}:{at[1]}"
        if isinstance(msg, binance.Trade):
            price, size = grid.price(msg.price, where), grid.size(msg.qty, where)
            local_ns = arrival.stamp(msg.recv_ns)
            rows.trade(msg.time_ms * 1_000_000, local_ns, price, size, msg.side, msg.trade_id)
            continue
        if not isinstance(msg, binance.DepthSnapshot | binance.DepthUpdate):
            continue
        bids, asks = grid.levels(msg.bids, where), grid.levels(msg.asks, where)
        prev = sync.book.sequence
        status = binance.apply_depth(sync.book, msg)
        if isinstance(msg, binance.DepthSnapshot):
            snapshot_seen = True
            if sync.keep(status, where, "invalid snapshot"):
                local_ns = arrival.stamp(msg.recv_ns)
                # The REST snapshot carries no exchange time: its receive time stands in.
                rows.depth(
                    EventKind.DEPTH_SNAPSHOT, msg.last_update_id, local_ns, local_ns, bids, asks
                )
            continue
        gap = (
            f"depth chain broken: update {msg.first_id}..{msg.last_id} does not continue "
            f"the book at update id {prev} (a depth message is missing)"
        )
        if sync.keep(status, where, gap):
            # An update held back until the snapshot is stamped with the snapshot's time.
            local_ns = arrival.stamp(msg.recv_ns)
            exch_ns = msg.event_ms * 1_000_000
            rows.depth(EventKind.DEPTH_DELTA, msg.last_id, exch_ns, local_ns, bids, asks)
    if not snapshot_seen:
        raise ConvertError(
            f"{paths[0]}: no depth snapshot (a REST line with lastUpdateId) in the input; "
            "a book cannot be built without one (convert the capture that starts the "
            "recording first)"
        )
    header = EventHeader(
        market, tick_size, lot_size, InputFormat.BINANCE.value, inputs=_names(paths)
    )
    return Conversion(EventFile(header, rows.array()), sync.stale, sync.unsynced)


def _names(paths: list[Path]) -> tuple[str, ...]:
    return tuple(path.name for path in paths)


# ---------------------------------------------------------------------------- frames


def _frame_lines(
    path: Path, decoder: FrameDecoder, on_progress: Callable[[int], None] | None = None
) -> Iterator[tuple[int, int, Notification]]:
    """``(line_no, receive_ns, notification)`` per notification line; replies are skipped."""
    for line_no, recv_ns, msg in frame_notifications(_read(path, on_progress), decoder):
        if isinstance(msg, str):
            raise UnreadableLineError(f"{path}:{line_no}: {msg}")
        yield line_no, recv_ns, msg


def _frames_market_and_increments(
    path: Path, market: str | None, tick_size: float | None, lot_size: float | None
) -> tuple[str, float, float]:
    """The market (first seen by default) and its increments, from the first lines."""
    decoder = FrameDecoder()
    prices: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    for line_no, _, msg in _frame_lines(path, decoder):
        if line_no > INFERENCE_LINES:
            break
        for ev in msg.events:
            if not isinstance(ev, BookUpdate | Trade):
                continue
            market = market or ev.market_id
            if ev.market_id != market:
                continue
            if isinstance(ev, Trade):
                prices.append(np.array([ev.price]))
                sizes.append(np.array([ev.size]))
            else:
                for side in (ev.bids, ev.asks):
                    prices.append(side[:, 0].copy())
                    sizes.append(side[:, 1].copy())
    if market is None:
        raise ConvertError(f"{path}: no book update or trade in the first {INFERENCE_LINES} lines")
    try:
        if tick_size is None:
            tick_size = infer_increment(np.concatenate(prices or [np.empty(0)]), "prices")
        if lot_size is None:
            lot_size = infer_increment(np.concatenate(sizes or [np.empty(0)]), "sizes")
    except IncrementError as exc:
        raise ConvertError(
            f"{path}: market {market}: {exc}; pass --tick-size and --lot-size"
        ) from None
    return market, tick_size, lot_size


def _trade_id(text: str, where: str) -> int:
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    raise ConvertError(
        f"{where}: trade id {text[:40]!r} is not a non-negative integer; "
        "the event format stores integer ids"
    )


def _from_frames(
    paths: list[Path],
    market: str | None,
    tick_size: float | None,
    lot_size: float | None,
    on_progress: Callable[[int], None] | None,
) -> Conversion:
    market, tick_size, lot_size = _frames_market_and_increments(
        paths[0], market, tick_size, lot_size
    )
    grid, sync, rows = _Grid(tick_size, lot_size), _Sync(tick_size, lot_size), _Rows()
    others: Counter[str] = Counter()
    decoder = FrameDecoder()
    arrival = _Arrival(paths)
    for index, path in enumerate(paths):
        for line_no, recv_ns, msg in _frame_lines(path, decoder, on_progress):
            where = f"{path}:{line_no}"
            arrival.read(index, recv_ns, line_no)
            local_ns = arrival.stamp(recv_ns)
            for ev in msg.events:
                if not isinstance(ev, BookUpdate | Trade):
                    continue  # MarketStatus has no row kind
                if ev.market_id != market:
                    others[ev.market_id] += 1
                    continue
                if isinstance(ev, Trade):
                    price, size = grid.price(ev.price, where), grid.size(ev.size, where)
                    trade_id = _trade_id(ev.trade_id, where)
                    rows.trade(ev.timestamp_ns, local_ns, price, size, ev.side, trade_id)
                    continue
                bids, asks = grid.levels(ev.bids, where), grid.levels(ev.asks, where)
                prev = sync.book.sequence
                if ev.is_snapshot:
                    status = sync.book.apply_snapshot(ev.bids, ev.asks, ev.sequence)
                else:
                    status = sync.book.apply_delta(ev.bids, ev.asks, ev.sequence)
                gap = (
                    f"sequence gap: update {ev.sequence} of {market} follows {prev} "
                    f"(updates {prev + 1}..{ev.sequence - 1} are missing)"
                )
                if sync.keep(status, where, gap):
                    kind = EventKind.DEPTH_SNAPSHOT if ev.is_snapshot else EventKind.DEPTH_DELTA
                    rows.depth(kind, ev.sequence, ev.timestamp_ns, local_ns, bids, asks)
    events = rows.array()
    if len(events) == 0:
        seen = ", ".join(sorted(others)) or "no market"
        raise ConvertError(f"{paths[0]}: no events of market {market}; the input has {seen}")
    if sync.unsynced and sync.book.sequence < 0:  # no snapshot ever applied
        raise ConvertError(
            f"{paths[0]}: no book snapshot of market {market}; its depth updates cannot be "
            "applied without one"
        )
    header = EventHeader(
        market, tick_size, lot_size, InputFormat.FRAMES.value, inputs=_names(paths)
    )
    return Conversion(EventFile(header, events), sync.stale, sync.unsynced, dict(others))
