"""The event-array format: one flat numpy array of market and own-order events.

Recording, replay, the venue simulator and the backtester all read and write this
format. A file is a compressed ``.npz`` with two arrays:

- ``events``: rows of :data:`EVENT_DTYPE` in arrival (``local_ts``) order;
- ``header``: the JSON of an :class:`EventHeader` as a ``uint8`` array.

Rows are grouped into *batches*, one per venue update: every row of a depth update
carries that update's ``seq`` and timestamps, and its last row has
:data:`LAST_IN_BATCH`. Every other row (a trade, an own-order event) is a batch of its
own. Prices are integer ticks and sizes integer lots of the header's ``tick_size`` and
``lot_size``.

:func:`load_events` checks everything (vectorised, so millions of rows load in well
under a second) and raises :class:`EventFileError` naming the file and the first bad
row; :func:`save_events` applies the same checks before it writes anything.
:func:`batch_bounds`, :func:`iter_batches` and :func:`apply_depth_batch` walk the batches.
"""

from __future__ import annotations

import os
import secrets
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, BinaryIO, overload

import msgspec
import numpy as np
from numpy.lib.npyio import NpzFile

from flashmm import __version__
from flashmm._core.book import OrderBook
from flashmm.data.increments import decimals_of

__all__ = [
    "EVENT_DTYPE",
    "FORMAT_VERSION",
    "LAST_IN_BATCH",
    "EventFile",
    "EventFileError",
    "EventHeader",
    "EventKind",
    "apply_depth_batch",
    "batch_bounds",
    "batch_levels",
    "check_events",
    "iter_batches",
    "load_events",
    "save_events",
]

EVENT_DTYPE = np.dtype(
    [
        ("exch_ts", "<i8"),  # exchange timestamp, ns since epoch
        ("local_ts", "<i8"),  # local receive timestamp, ns since epoch
        ("price", "<i8"),  # integer ticks (0 where not applicable)
        ("size", "<i8"),  # integer lots; 0 in a DEPTH_DELTA deletes the level
        ("seq", "<i8"),  # venue sequence / update id of the batch (depth rows), 0 otherwise
        ("id", "<i8"),  # trade id or order id, 0 otherwise
        ("kind", "u1"),  # EventKind
        ("flags", "u1"),  # bit 0 (LAST_IN_BATCH): last row of one venue update
        ("side", "i1"),  # +1 bid/buy, -1 ask/sell (TRADE: the taker's side), 0 = none
    ],
    align=True,
)  # 56 bytes, aligned for Numba
"""One event row."""


class EventKind(IntEnum):
    """What a row is."""

    DEPTH_SNAPSHOT = 1
    """The rows of one batch replace the book; an empty book is one row with side 0, size 0."""
    DEPTH_DELTA = 2
    """Absolute size at (side, price); size 0 deletes the level."""
    TRADE = 3
    """A public trade; ``side`` is the taker's."""
    ORDER_ACK = 4
    ORDER_FILL = 5
    ORDER_CANCEL = 6
    ORDER_REJECT = 7


LAST_IN_BATCH = 1
"""``flags`` bit set on the last row of a batch."""

FORMAT_VERSION = 1
"""The version :func:`save_events` writes and the only one :func:`load_events` reads."""

# Timestamps must be ns since the epoch between these dates: a value in ms or us
# lands decades before 2000 and is reported instead of being replayed in 1970.
_MIN_TS = 946_684_800 * 10**9  # 2000-01-01
_MAX_TS = 4_102_444_800 * 10**9  # 2100-01-01
_KINDS = np.array([int(k) for k in EventKind], dtype=np.uint8)


class EventFileError(ValueError):
    """An event file (or an array about to be saved as one) is not valid."""


class EventHeader(msgspec.Struct, frozen=True):
    """What the rows mean: the market, its increments and where the data came from."""

    market: Annotated[str, msgspec.Meta(min_length=1)]
    tick_size: Annotated[float, msgspec.Meta(gt=0)]
    """Price of one tick; ``price`` columns count ticks."""
    lot_size: Annotated[float, msgspec.Meta(gt=0)]
    """Size of one lot; ``size`` columns count lots."""
    source: Annotated[str, msgspec.Meta(min_length=1)]
    """The input format converted (``binance``, ``frames``) or the producer (``sim``, ...)."""
    version: int = FORMAT_VERSION
    inputs: tuple[str, ...] = ()
    """Names of the input files, in the order they were read."""
    created_by: str = f"flashmm {__version__}"

    @property
    def price_decimals(self) -> int:
        """Digits after the point that write any price exactly (tick 0.01 -> 2)."""
        return decimals_of(self.tick_size)

    @property
    def size_decimals(self) -> int:
        """Digits after the point that write any size exactly."""
        return decimals_of(self.lot_size)

    @overload
    def to_price(self, ticks: int) -> float: ...
    @overload
    def to_price(self, ticks: np.ndarray) -> np.ndarray: ...
    def to_price(self, ticks: int | np.ndarray) -> float | np.ndarray:
        """Ticks as prices (float64)."""
        return np.multiply(ticks, self.tick_size, dtype=np.float64)

    @overload
    def to_size(self, lots: int) -> float: ...
    @overload
    def to_size(self, lots: np.ndarray) -> np.ndarray: ...
    def to_size(self, lots: int | np.ndarray) -> float | np.ndarray:
        """Lots as sizes (float64)."""
        return np.multiply(lots, self.lot_size, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class EventFile:
    """A loaded (and validated) event file."""

    header: EventHeader
    events: np.ndarray


class _Version(msgspec.Struct):
    version: int


_encode_header = msgspec.json.Encoder().encode
_decode_header = msgspec.json.Decoder(EventHeader).decode
_decode_version = msgspec.json.Decoder(_Version).decode


# ---------------------------------------------------------------------------- checks


def _checked_header(header: EventHeader) -> bytes:
    """The header's JSON, after the same validation a load applies."""
    if not isinstance(header, EventHeader):
        raise EventFileError(f"header must be an EventHeader, got {type(header).__name__}")
    if header.version != FORMAT_VERSION:
        raise EventFileError(f"header version must be {FORMAT_VERSION}, got {header.version}")
    data = _encode_header(header)
    try:
        _decode_header(data)
    except msgspec.ValidationError as exc:
        raise EventFileError(f"invalid header: {exc}") from None
    return data


def _first_bad_row(events: np.ndarray) -> tuple[int, str] | None:
    """The first row that breaks a rule, with the rule; ``None`` if all rows are valid."""
    n = len(events)
    if n == 0:
        return None
    kind, side, flags = events["kind"], events["side"], events["flags"]
    price, size, seq = events["price"], events["size"], events["seq"]
    local, exch = events["local_ts"], events["exch_ts"]
    last = (flags & LAST_IN_BATCH) != 0
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    starts[1:] = last[:-1]
    snapshot = kind == EventKind.DEPTH_SNAPSHOT
    depth = snapshot | (kind == EventKind.DEPTH_DELTA)
    empty_book = snapshot & (side == 0)
    level = depth & ~empty_book
    trade = kind == EventKind.TRADE
    market_data = depth | trade
    order = np.isin(kind, _KINDS) & ~market_data

    # A batch continues into the next row only with the same kind, seq and timestamps.
    cont = np.zeros(n, dtype=bool)
    cont[:-1] = ~last[:-1] & (
        (kind[1:] != kind[:-1])
        | (seq[1:] != seq[:-1])
        | (local[1:] != local[:-1])
        | (exch[1:] != exch[:-1])
    )
    back = np.zeros(n, dtype=bool)
    back[1:] = local[1:] < local[:-1]
    ends_open = np.zeros(n, dtype=bool)
    ends_open[-1] = not last[-1]

    def out_of_range(ts: np.ndarray) -> np.ndarray:
        return (ts < _MIN_TS) | (ts >= _MAX_TS)

    checks: list[tuple[np.ndarray, Callable[[int], str]]] = [
        (~np.isin(kind, _KINDS), lambda i: f"unknown kind {kind[i]}"),
        ((flags & ~np.uint8(LAST_IN_BATCH)) != 0, lambda i: f"unknown flag bits {flags[i]:#04x}"),
        ((side < -1) | (side > 1), lambda i: f"side must be -1, 0 or +1, got {side[i]}"),
        ((level | trade) & (side == 0), lambda i: "side 0 on a level or trade row"),
        (size < 0, lambda i: f"negative size {size[i]}"),
        (price < 0, lambda i: f"negative price {price[i]}"),
        ((level | trade) & (price <= 0), lambda i: "price must be > 0 on a level or trade row"),
        (trade & (size == 0), lambda i: "trade size must be > 0"),
        (level & snapshot & (size == 0), lambda i: "snapshot level with size 0"),
        (
            empty_book & ((price != 0) | (size != 0) | ~starts | ~last),
            lambda i: "an empty snapshot (side 0) must be a batch of one row with price 0, size 0",
        ),
        (seq < 0, lambda i: f"negative seq {seq[i]}"),
        (~depth & (seq != 0), lambda i: "seq must be 0 on rows other than depth rows"),
        (events["id"] < 0, lambda i: f"negative id {events['id'][i]}"),
        (
            (trade | order) & ~last,
            lambda i: f"a {EventKind(kind[i]).name} row is a batch of its own: set LAST_IN_BATCH",
        ),
        (cont, lambda i: "depth batch not terminated: the next row has another kind, seq or time"),
        (ends_open, lambda i: "depth batch not terminated: the last row lacks LAST_IN_BATCH"),
        (
            out_of_range(local),
            lambda i: f"local_ts {local[i]} is not ns since the epoch in 2000-2099",
        ),
        (
            (market_data & out_of_range(exch)) | (order & (exch != 0) & out_of_range(exch)),
            lambda i: f"exch_ts {exch[i]} is not ns since the epoch in 2000-2099",
        ),
        (back, lambda i: f"local_ts goes back in time ({local[i]} < {local[i - 1]} before it)"),
    ]
    first: tuple[int, str] | None = None
    for mask, problem in checks:
        i = int(mask.argmax())
        if mask[i] and (first is None or i < first[0]):
            first = (i, problem(i))
    dup = _first_repeated_snapshot_level(events, snapshot & level, starts)
    if dup is not None and (first is None or dup < first[0]):
        first = (dup, "price repeated on one side of a snapshot")
    return first


def _first_repeated_snapshot_level(
    events: np.ndarray, rows: np.ndarray, starts: np.ndarray
) -> int | None:
    idx = np.flatnonzero(rows)
    if idx.size < 2:
        return None
    batch = np.cumsum(starts)[idx]
    side, price = events["side"][idx], events["price"][idx]
    order = np.lexsort((idx, price, side, batch))
    same = (
        (batch[order][1:] == batch[order][:-1])
        & (side[order][1:] == side[order][:-1])
        & (price[order][1:] == price[order][:-1])
    )
    if not same.any():
        return None
    return int(idx[order][1:][same].min())


def check_events(events: np.ndarray) -> None:
    """Raise :class:`EventFileError` naming the first row that breaks the format's rules."""
    if not isinstance(events, np.ndarray) or events.dtype != EVENT_DTYPE:
        got = events.dtype if isinstance(events, np.ndarray) else type(events).__name__
        raise EventFileError(f"events must have EVENT_DTYPE, got {got}")
    if events.ndim != 1:
        raise EventFileError(f"events must be one-dimensional, got shape {events.shape}")
    bad = _first_bad_row(events)
    if bad is not None:
        row, problem = bad
        raise EventFileError(f"row {row}: {problem}")


# ---------------------------------------------------------------------------- files


def save_events(path: str | Path, header: EventHeader, events: np.ndarray) -> None:
    """Validate and write ``events`` under ``header``; the file appears whole or not at all.

    The bytes depend only on the header and the rows (no timestamps inside the archive),
    so the same data always gives the same file. Raises :class:`EventFileError` for an
    invalid header or row (nothing is written) and ``OSError`` if the disk refuses.
    """
    path = Path(path)
    header_json = _checked_header(header)
    try:
        check_events(events)
    except EventFileError as exc:
        raise EventFileError(f"{path}: not written: {exc}") from None
    arrays = {
        "header": np.frombuffer(header_json, dtype=np.uint8),
        "events": np.ascontiguousarray(events),
    }
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 gives the permissions of any new file (umask); mkstemp gives 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    # What np.savez_compressed writes, minus the wall-clock time it stamps on each member.
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def load_events(path: str | Path) -> EventFile:
    """Read and validate an event file; :class:`EventFileError` names what is wrong."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise EventFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EventFileError(f"{path}: is a directory, not an event file") from None
    except OSError as exc:
        raise EventFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    # Told apart before numpy, whose complaint for other files is about pickles.
    if magic.startswith(b"\x93NUM"):
        raise EventFileError(f"{path}: a single .npy array, not an .npz event file")
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise EventFileError(f"{path}: not an .npz event file (not a zip archive)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise EventFileError(f"{path}: damaged archive ({exc})") from None
    if not isinstance(archive, NpzFile):  # cannot happen after the zip magic; narrows the type
        raise EventFileError(f"{path}: not an .npz event file")
    with archive:
        missing = [name for name in ("header", "events") if name not in archive.files]
        if missing:
            raise EventFileError(
                f"{path}: no {' and no '.join(repr(m) for m in missing)} array; "
                "not an event file (write one with `flashmm data convert`)"
            )
        try:
            raw_header = archive["header"]
            events = archive["events"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise EventFileError(f"{path}: damaged archive ({exc})") from None
    header = _read_header(path, raw_header)
    if events.dtype != EVENT_DTYPE:
        raise EventFileError(
            f"{path}: the 'events' array has dtype {events.dtype}, expected EVENT_DTYPE"
        )
    # Restores numpy's aligned-struct flag, which .npy does not keep (Numba types on it).
    events = events.view(EVENT_DTYPE)
    try:
        check_events(events)
    except EventFileError as exc:
        raise EventFileError(f"{path}: {exc}") from None
    return EventFile(header, events)


def _read_header(path: Path, raw: np.ndarray) -> EventHeader:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise EventFileError(f"{path}: the 'header' array must be 1-D uint8 JSON, got {raw.dtype}")
    data = raw.tobytes()
    try:
        version = _decode_version(data).version
    except msgspec.DecodeError as exc:
        raise EventFileError(f"{path}: invalid header: {exc}") from None
    if version != FORMAT_VERSION:
        newer = " (written by a newer flashmm: upgrade)" if version > FORMAT_VERSION else ""
        raise EventFileError(
            f"{path}: unknown format version {version}; this flashmm reads version "
            f"{FORMAT_VERSION}{newer}"
        )
    try:
        return _decode_header(data)
    except msgspec.DecodeError as exc:
        raise EventFileError(f"{path}: invalid header: {exc}") from None


# ---------------------------------------------------------------------------- batches


def batch_bounds(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)``: batch ``k`` is ``events[starts[k]:ends[k]]`` (int64 indices)."""
    ends = np.flatnonzero(events["flags"] & LAST_IN_BATCH).astype(np.int64) + 1
    starts = np.zeros_like(ends)
    starts[1:] = ends[:-1]
    return starts, ends


def iter_batches(events: np.ndarray) -> Iterator[np.ndarray]:
    """Each batch as a view of ``events``, in order."""
    starts, ends = batch_bounds(events)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        yield events[start:end]


def batch_levels(header: EventHeader, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A depth batch as the ``(n, 2)`` float64 ``[price, size]`` bids and asks that
    :class:`~flashmm._core.book.OrderBook` applies (an empty snapshot gives two empty sides).
    """
    out = []
    for side in (1, -1):
        rows = batch[batch["side"] == side]
        levels = np.empty((len(rows), 2), dtype=np.float64)
        levels[:, 0] = header.to_price(rows["price"])
        levels[:, 1] = header.to_size(rows["size"])
        out.append(levels)
    return out[0], out[1]


def apply_depth_batch(book: OrderBook, header: EventHeader, batch: np.ndarray) -> int:
    """Apply one depth batch to ``book``; returns the book status.

    A file's depth batches are in sync by construction (the converters check the chain,
    and ``seq`` need not be consecutive: Binance update ids), so a delta is applied as
    following the book's last update; one at or below it is STALE.
    """
    bids, asks = batch_levels(header, batch)
    seq = int(batch["seq"][0])
    if batch["kind"][0] == EventKind.DEPTH_SNAPSHOT:
        return book.apply_snapshot(bids, asks, seq)
    return book.apply_delta(bids, asks, seq, book.sequence + 1)
