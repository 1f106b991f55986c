"""The event-array format: files, validation, and the converters into it."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest

from flashmm._core.book import OK, STALE, OrderBook
from flashmm.data import binance
from flashmm.data.convert import (
    ConvertError,
    InputFormat,
    OffGridError,
    SequenceGapError,
    UnreadableLineError,
    convert,
    detect_format,
)
from flashmm.data.events import (
    EVENT_DTYPE,
    LAST_IN_BATCH,
    EventFileError,
    EventHeader,
    EventKind,
    apply_depth_batch,
    batch_bounds,
    batch_levels,
    check_events,
    iter_batches,
    load_events,
    save_events,
)
from flashmm.data.frames import binance_to_frames
from flashmm.data.samples import DEFAULT_SAMPLE, list_samples, sample_path

SPOT = Path(__file__).parent / "data" / "binance" / "spot_btcusdt_20240808_head12k.gz"
HEADER = EventHeader("TEST/USD", 0.5, 0.1, "test")
T0 = 1_723_161_254_000_000_000  # 2024-08-08, ns
SNAP, DELTA, TRADE = EventKind.DEPTH_SNAPSHOT, EventKind.DEPTH_DELTA, EventKind.TRADE


def row(
    kind: EventKind,
    side: int,
    price: int,
    size: int,
    *,
    seq: int = 0,
    ts: int = T0,
    last: bool = True,
    trade_id: int = 0,
) -> tuple:
    flags = LAST_IN_BATCH if last else 0
    return (ts + 5, ts, price, size, seq, trade_id, kind, flags, side)


def valid_events() -> np.ndarray:
    """A two-level snapshot, a one-level delta and a trade."""
    return np.array(
        [
            row(SNAP, 1, 200, 30, seq=10, last=False),
            row(SNAP, -1, 204, 40, seq=10),
            row(DELTA, 1, 202, 20, seq=11, ts=T0 + 1000),
            row(TRADE, -1, 200, 7, ts=T0 + 2000, trade_id=99),
        ],
        dtype=EVENT_DTYPE,
    )


def write_raw(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """An archive written without save_events' checks."""
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def header_bytes(**changes: object) -> np.ndarray:
    data = msgspec.to_builtins(HEADER) | changes
    return np.frombuffer(json.dumps(data).encode(), dtype=np.uint8)


# ---------------------------------------------------------------------------- files


def test_round_trip_keeps_header_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "ev.npz"
    events = valid_events()
    save_events(path, HEADER, events)
    loaded = load_events(path)
    assert loaded.header == HEADER
    assert loaded.events.dtype == EVENT_DTYPE
    assert loaded.events.dtype.isalignedstruct  # what Numba sees
    assert np.array_equal(loaded.events, events)
    # permissions of any new file (not the private 0600 of a temp file)
    (tmp_path / "plain").write_bytes(b"")
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode
    # a plain npz: numpy alone reads it without pickles
    with np.load(path, allow_pickle=False) as raw:
        assert sorted(raw.files) == ["events", "header"]
        assert json.loads(raw["header"].tobytes())["market"] == "TEST/USD"


def test_same_data_same_bytes(tmp_path: Path) -> None:
    save_events(tmp_path / "a.npz", HEADER, valid_events())
    save_events(tmp_path / "b.npz", HEADER, valid_events())
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_an_empty_recording_is_valid(tmp_path: Path) -> None:
    save_events(tmp_path / "e.npz", HEADER, np.zeros(0, dtype=EVENT_DTYPE))
    assert len(load_events(tmp_path / "e.npz").events) == 0


def test_header_helpers() -> None:
    header = EventHeader("BTC/USDT", 0.01, 0.000001, "binance")
    assert (header.price_decimals, header.size_decimals) == (2, 6)
    assert header.to_price(6183763) == pytest.approx(61837.63)
    assert np.allclose(header.to_size(np.array([20000, 1])), [0.02, 0.000001])


# Each case breaks one rule of valid_events(); the message must name the row and the rule.
ROW_CASES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "unknown kind": (lambda e: _set(e, 2, kind=9), "row 2: unknown kind 9"),
    "unknown flags": (lambda e: _set(e, 3, flags=3), "row 3: unknown flag bits 0x03"),
    "side out of range": (lambda e: _set(e, 0, side=2), "row 0: side must be -1, 0 or +1, got 2"),
    "side 0 on a level": (lambda e: _set(e, 2, side=0), "row 2: side 0 on a level or trade row"),
    "negative size": (lambda e: _set(e, 2, size=-1), "row 2: negative size -1"),
    "zero price": (lambda e: _set(e, 1, price=0), "row 1: price must be > 0"),
    "zero trade size": (lambda e: _set(e, 3, size=0), "row 3: trade size must be > 0"),
    "zero snapshot size": (lambda e: _set(e, 0, size=0), "row 0: snapshot level with size 0"),
    "seq on a trade": (lambda e: _set(e, 3, seq=5), "row 3: seq must be 0"),
    "trade inside a batch": (
        lambda e: _set(e, 3, flags=0),
        "row 3: a TRADE row is a batch of its own",
    ),
    "batch not terminated": (
        lambda e: _set(e, 1, flags=0),
        "row 1: depth batch not terminated: the next row has another kind, seq or time",
    ),
    "file ends inside a batch": (
        lambda e: _set(e[:3], 2, flags=0),
        "row 2: depth batch not terminated: the last row lacks LAST_IN_BATCH",
    ),
    "time in milliseconds": (
        lambda e: _set(e, 2, local_ts=T0 // 1_000_000),
        f"row 2: local_ts {T0 // 1_000_000} is not ns since the epoch",
    ),
    "exchange time in microseconds": (
        lambda e: _set(e, 3, exch_ts=T0 // 1000),
        f"row 3: exch_ts {T0 // 1000} is not ns since the epoch",
    ),
    "time goes back": (
        lambda e: _set(e, 3, local_ts=T0 + 999),
        f"row 3: local_ts goes back in time ({T0 + 999} < {T0 + 1000} before it)",
    ),
    "repeated snapshot level": (
        lambda e: _set(e, 1, side=1, price=200),
        "row 1: price repeated on one side of a snapshot",
    ),
    "empty book row inside a batch": (
        lambda e: _set(e, 1, side=0, price=0, size=0),
        "row 1: an empty snapshot (side 0) must be a batch of one row",
    ),
}


def _set(events: np.ndarray, i: int, **fields: int) -> np.ndarray:
    events = events.copy()
    for name, value in fields.items():
        events[name][i] = value
    return events


@pytest.mark.parametrize("case", ROW_CASES)
def test_load_names_the_first_bad_row(tmp_path: Path, case: str) -> None:
    mutate, message = ROW_CASES[case]
    path = write_raw(
        tmp_path / "bad.npz", {"header": header_bytes(), "events": mutate(valid_events())}
    )
    with pytest.raises(EventFileError) as err:
        load_events(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


@pytest.mark.parametrize("case", ROW_CASES)
def test_save_refuses_bad_rows_and_writes_nothing(tmp_path: Path, case: str) -> None:
    mutate, message = ROW_CASES[case]
    path = tmp_path / "out.npz"
    path.write_bytes(b"previous")
    with pytest.raises(EventFileError, match="not written") as err:
        save_events(path, HEADER, mutate(valid_events()))
    assert message in str(err.value)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]  # no temp file left


def test_an_empty_snapshot_is_one_row_of_side_zero(tmp_path: Path) -> None:
    events = np.array(
        [row(SNAP, 0, 0, 0, seq=3), row(DELTA, 1, 202, 20, seq=4, ts=T0 + 1)], dtype=EVENT_DTYPE
    )
    save_events(tmp_path / "e.npz", HEADER, events)
    book = OrderBook(HEADER.tick_size, HEADER.lot_size)
    batches = list(iter_batches(load_events(tmp_path / "e.npz").events))
    assert apply_depth_batch(book, HEADER, batches[0]) == OK
    assert (book.n_bids, book.n_asks, book.sequence) == (0, 0, 3)
    assert apply_depth_batch(book, HEADER, batches[1]) == OK
    assert (book.best_bid, book.best_bid_size) == (202, 20)


def _bad_header_file(tmp_path: Path, header: np.ndarray) -> Path:
    return write_raw(tmp_path / "bad.npz", {"header": header, "events": valid_events()})


FILE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda d: d / "nope.npz", "no such file"),
    "directory": (lambda d: d, "is a directory"),
    "text": (lambda d: _text(d / "t.npz"), "not an .npz event file"),
    "empty": (lambda d: _bytes(d / "e.npz", b""), "not an .npz event file (not a zip archive)"),
    "damaged": (lambda d: _bytes(d / "z.npz", b"PK\x03\x04" + bytes(60)), "damaged archive"),
    "npy": (lambda d: _npy(d / "a.npy"), "a single .npy array"),
    "no events": (
        lambda d: write_raw(d / "x.npz", {"header": header_bytes()}),
        "no 'events' array",
    ),
    "no header": (
        lambda d: write_raw(d / "x.npz", {"events": valid_events()}),
        "no 'header' array",
    ),
    "wrong dtype": (
        lambda d: write_raw(d / "x.npz", {"header": header_bytes(), "events": np.zeros(3)}),
        "the 'events' array has dtype float64, expected EVENT_DTYPE",
    ),
    "header not json": (
        lambda d: _bad_header_file(d, np.frombuffer(b"{oops", dtype=np.uint8)),
        "invalid header",
    ),
    "newer version": (
        lambda d: _bad_header_file(d, header_bytes(version=2)),
        "unknown format version 2; this flashmm reads version 1 (written by a newer flashmm",
    ),
    "bad tick size": (
        lambda d: _bad_header_file(d, header_bytes(tick_size=0)),
        "invalid header: Expected `float` > 0.0 - at `$.tick_size`",
    ),
    "no market": (
        lambda d: _bad_header_file(d, header_bytes(market="")),
        "invalid header",
    ),
}


def _text(path: Path) -> Path:
    path.write_text("not an archive\n")
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy(path: Path) -> Path:
    np.save(path, valid_events())
    return path


@pytest.mark.parametrize("case", FILE_CASES)
def test_load_rejects_what_is_not_an_event_file(tmp_path: Path, case: str) -> None:
    make, message = FILE_CASES[case]
    path = make(tmp_path)
    with pytest.raises(EventFileError) as err:
        load_events(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_save_refuses_a_bad_header(tmp_path: Path) -> None:
    with pytest.raises(EventFileError, match="tick_size"):
        save_events(tmp_path / "x.npz", EventHeader("M", -1.0, 1.0, "test"), valid_events())
    with pytest.raises(EventFileError, match="events must have EVENT_DTYPE"):
        save_events(tmp_path / "x.npz", HEADER, np.zeros(3))
    assert list(tmp_path.iterdir()) == []


def test_batches() -> None:
    events = valid_events()
    starts, ends = batch_bounds(events)
    assert starts.tolist() == [0, 2, 3]
    assert ends.tolist() == [2, 3, 4]
    sizes = [len(b) for b in iter_batches(events)]
    assert sizes == [2, 1, 1]
    bids, asks = batch_levels(HEADER, events[0:2])
    assert bids.tolist() == [[100.0, 3.0]]  # 200 ticks of 0.5, 30 lots of 0.1
    assert asks.tolist() == [[102.0, 4.0]]


# ---------------------------------------------------------------------------- binance


@pytest.fixture(scope="module")
def spot() -> tuple[EventHeader, np.ndarray, int]:
    result = convert([SPOT], market="BTC/USDT")
    check_events(result.file.events)
    return result.file.header, result.file.events, result.dropped_stale


def raw_lines() -> list[bytes]:
    return gzip.decompress(SPOT.read_bytes()).splitlines()


def test_binance_header_and_detection(spot: tuple[EventHeader, np.ndarray, int]) -> None:
    header, _, _ = spot
    assert detect_format(SPOT) is InputFormat.BINANCE
    assert (header.market, header.source, header.inputs) == ("BTC/USDT", "binance", (SPOT.name,))
    assert header.tick_size == 0.01
    assert header.lot_size == pytest.approx(1e-6)


def test_binance_rows_hand_checked(spot: tuple[EventHeader, np.ndarray, int]) -> None:
    _, events, stale = spot
    # Line 4 is the first trade: p 61837.63, q 0.02, m true (seller took), t 3735683259.
    first = events[0]
    assert first["kind"] == TRADE
    assert (first["price"], first["size"], first["side"]) == (6183763, 20000, -1)
    assert (first["id"], first["seq"]) == (3735683259, 0)
    assert (first["exch_ts"], first["local_ts"]) == (1723161255342000000, 1723161254087896568)
    # Line 8 is the REST snapshot (lastUpdateId 50093239218, 1000 levels a side), received
    # at 1723161254206652067; it has no exchange time.
    snap = events[(events["kind"] == SNAP)]
    assert len(snap) == 2000
    assert set(snap["seq"].tolist()) == {50093239218}
    assert set(snap["local_ts"].tolist()) == set(snap["exch_ts"].tolist()) == {1723161254206652067}
    assert (snap[0]["side"], snap[0]["price"], snap[0]["size"]) == (1, 6183763, 3788260)
    # Lines 1 and 2 (u 50093239202 and 50093239207) are inside the snapshot: dropped.
    assert stale == 2
    # Line 6 (U 50093239208, u 50093239224, E 1723161255408) straddles it: applied next,
    # stamped with the snapshot's arrival since it could not be applied before.
    delta = events[2001]
    assert (delta["kind"], delta["seq"]) == (DELTA, 50093239224)
    assert (delta["exch_ts"], delta["local_ts"]) == (1723161255408000000, 1723161254206652067)


def test_binance_trades_are_all_there(spot: tuple[EventHeader, np.ndarray, int]) -> None:
    _, events, _ = spot
    trades = [
        json.loads(line.split(b" ", 1)[1])["data"] for line in raw_lines() if b"@trade" in line
    ]
    rows = events[events["kind"] == TRADE]
    assert rows["id"].tolist() == [t["t"] for t in trades]
    assert rows["side"].tolist() == [-1 if t["m"] else 1 for t in trades]
    assert rows["exch_ts"].tolist() == [t["T"] * 1_000_000 for t in trades]


def test_binance_events_rebuild_the_same_book(spot: tuple[EventHeader, np.ndarray, int]) -> None:
    header, events, stale = spot
    # Reference: the capture straight through the reader and Binance's chaining rule.
    reference = OrderBook(header.tick_size, header.lot_size)
    expected, ref_stale = [], 0
    for msg in binance.in_sync_order(binance.iter_capture(SPOT)):
        if isinstance(msg, binance.DepthSnapshot | binance.DepthUpdate):
            status = binance.apply_depth(reference, msg)
            ref_stale += status == STALE
            if status == OK:
                expected.append(reference.top.copy())
    replayed = OrderBook(header.tick_size, header.lot_size)
    got = []
    for batch in iter_batches(events):
        if batch["kind"][0] in (SNAP, DELTA):
            assert apply_depth_batch(replayed, header, batch) == OK
            got.append(replayed.top.copy())
    assert len(got) == len(expected) > 1000
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert stale == ref_stale


def _without_line(tmp_path: Path, index: int, replacement: bytes | None = None) -> Path:
    lines = raw_lines()
    if replacement is None:
        del lines[index]
    else:
        lines[index] = replacement
    path = tmp_path / "edited.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


def test_a_missing_depth_line_breaks_the_chain(tmp_path: Path) -> None:
    lines = raw_lines()
    depth = [i for i, line in enumerate(lines) if b"@depth" in line and i > 7]
    path = _without_line(tmp_path, depth[3])
    after = json.loads(lines[depth[4]].split(b" ", 1)[1])["data"]
    before = json.loads(lines[depth[2]].split(b" ", 1)[1])["data"]
    # the next depth line moved up by one: 0-based index depth[4] is now line depth[4]
    with pytest.raises(SequenceGapError) as err:
        convert([path])
    assert str(err.value) == (
        f"{path}:{depth[4]}: depth chain broken: update {after['U']}..{after['u']} does not "
        f"continue the book at update id {before['u']} (a depth message is missing)"
    )


def test_an_unreadable_line_is_an_error(tmp_path: Path) -> None:
    path = _without_line(tmp_path, 99, b'1723161254206652999 {"stream":"btcusdt@trade","da')
    with pytest.raises(UnreadableLineError, match=f"^{path}:100: "):
        convert([path])


def test_prices_off_the_given_grid_are_an_error() -> None:
    with pytest.raises(
        OffGridError, match=r"price 61837\.63 is not a multiple of 0\.1; .*--tick-size"
    ):
        convert([SPOT], tick_size=0.1)


def test_no_snapshot_no_book(tmp_path: Path) -> None:
    path = tmp_path / "head.gz"
    path.write_bytes(gzip.compress(b"\n".join(raw_lines()[:7]) + b"\n"))
    with pytest.raises(ConvertError, match="no depth snapshot"):
        convert([path])


def test_inputs_in_recording_order(tmp_path: Path) -> None:
    lines = raw_lines()
    first, second = tmp_path / "a.gz", tmp_path / "b.gz"
    first.write_bytes(gzip.compress(b"\n".join(lines[:6000]) + b"\n"))
    second.write_bytes(gzip.compress(b"\n".join(lines[6000:]) + b"\n"))
    with pytest.raises(ConvertError, match=f"^{first}:1: this input starts before {second} ends"):
        convert([second, first])


# ---------------------------------------------------------------------------- frames


@pytest.fixture(scope="module")
def frames_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("frames") / "spot_frames.txt"
    with path.open("wb") as f:
        for recv_ns, frame in binance_to_frames([SPOT], "BTC/USDT"):
            f.write(b"%d %s\n" % (recv_ns, frame))
    return path


def test_frames_give_the_same_events(
    frames_path: Path, spot: tuple[EventHeader, np.ndarray, int]
) -> None:
    _, events, _ = spot
    assert detect_format(frames_path) is InputFormat.FRAMES
    result = convert([frames_path])
    got = result.file
    assert (got.header.market, got.header.source) == ("BTC/USDT", "frames")
    assert (got.header.tick_size, got.header.lot_size) == (0.01, pytest.approx(1e-6))
    for column in ("kind", "side", "price", "size", "flags", "exch_ts", "local_ts", "id"):
        assert np.array_equal(got.events[column], events[column]), column
    # the venue renumbers the depth updates 1, 2, 3...
    depth = got.events[got.events["kind"] != TRADE]
    starts, _ = batch_bounds(depth)
    assert depth["seq"][starts].tolist() == list(range(1, len(starts) + 1))


def test_frames_sequence_gap_is_an_error(tmp_path: Path, frames_path: Path) -> None:
    lines = frames_path.read_bytes().splitlines()
    books = [i for i, line in enumerate(lines) if b"OrderBookUpdate" in line]
    del lines[books[5]]  # sequence 6
    path = tmp_path / "gap.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(SequenceGapError) as err:
        convert([path])
    assert str(err.value) == (
        f"{path}:{books[6]}: sequence gap: update 7 of BTC/USDT follows 5 "
        "(updates 6..6 are missing)"
    )


def test_frames_without_a_snapshot_are_an_error(tmp_path: Path, frames_path: Path) -> None:
    lines = frames_path.read_bytes().splitlines()
    first_book = next(i for i, line in enumerate(lines) if b"OrderBookUpdate" in line)
    del lines[first_book]
    path = tmp_path / "nosnap.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ConvertError, match="no book snapshot of market BTC/USDT"):
        convert([path])


def test_an_unreadable_frame_is_an_error(tmp_path: Path, frames_path: Path) -> None:
    lines = frames_path.read_bytes().splitlines()
    lines[20] = lines[20][:60]
    path = tmp_path / "cut.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UnreadableLineError, match=f"^{path}:21: invalid JSON"):
        convert([path])


def test_inputs_of_two_formats_are_an_error(frames_path: Path) -> None:
    with pytest.raises(ConvertError, match=f"the inputs mix formats: {SPOT} is binance"):
        convert([SPOT, frames_path])


def test_frames_of_another_market_are_left_out(frames_path: Path) -> None:
    with pytest.raises(ConvertError, match="no events of market ETH/USDT; the input has BTC/USDT"):
        convert([frames_path], market="ETH/USDT", tick_size=0.01, lot_size=1e-6)


# ---------------------------------------------------------------------------- sample


def test_the_packaged_sample_loads_and_validates() -> None:
    assert DEFAULT_SAMPLE in list_samples()
    sample = load_events(sample_path())
    assert sample.header.market == "BTC/USDT"
    assert sample.header.tick_size == 0.01
    kinds = np.bincount(sample.events["kind"], minlength=4)
    assert kinds[SNAP] > 0 and kinds[DELTA] > 0 and kinds[TRADE] > 0
    minutes = (int(sample.events["local_ts"][-1]) - int(sample.events["local_ts"][0])) / 60e9
    assert minutes > 5
    assert sample_path().stat().st_size < 2_500_000


def test_unknown_sample_names_the_samples() -> None:
    with pytest.raises(LookupError, match=f"no sample 'nope'; the samples are: .*{DEFAULT_SAMPLE}"):
        sample_path("nope")
