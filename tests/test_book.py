"""OrderBook: hand-checked rules, a reference-model property test, and real-data replay."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashmm._core.book import BookStatus, OrderBook
from flashmm.data.binance import (
    BookTicker,
    DepthSnapshot,
    DepthUpdate,
    LineError,
    apply_depth,
    in_sync_order,
    infer_increments,
    iter_capture,
)

DATA = Path(__file__).parent / "data" / "binance"
TICK = 0.01
LOT = 0.5


def rows(*levels: tuple[float, float]) -> np.ndarray:
    return np.array(levels, dtype=np.float64).reshape(-1, 2)


EMPTY = rows()


def levels(book: OrderBook) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    bp, bs = book.bids()
    ap, as_ = book.asks()
    return list(zip(bp.tolist(), bs.tolist(), strict=True)), list(
        zip(ap.tolist(), as_.tolist(), strict=True)
    )


@pytest.fixture
def book() -> OrderBook:
    b = OrderBook(TICK, LOT, depth=3, capacity=8)
    status = b.apply_snapshot(
        rows((100.00, 2.0), (99.98, 1.0), (99.99, 3.0)),  # unsorted on purpose
        rows((100.02, 1.5), (100.05, 0.5)),
        10,
    )
    assert status == BookStatus.OK
    return b


# --------------------------------------------------------------------------- rules


def test_snapshot_sorts_and_converts_to_ticks_and_lots(book: OrderBook) -> None:
    assert levels(book) == ([(10000, 4), (9999, 6), (9998, 2)], [(10002, 3), (10005, 1)])
    assert (book.best_bid, book.best_ask) == (10000, 10002)
    assert (book.best_bid_size, book.best_ask_size) == (4, 3)
    assert book.sequence == 10
    assert book.is_valid
    assert book.mid == 10001.0
    assert book.spread == 2.0
    # microprice = (bid * ask_size + ask * bid_size) / (bid_size + ask_size)
    assert book.microprice == pytest.approx((10000 * 3 + 10002 * 4) / 7)
    assert book.top.tolist() == [
        [10000, 9999, 9998],
        [4, 6, 2],
        [10002, 10005, 0],
        [3, 1, 0],
    ]


def test_delta_sets_absolute_sizes_and_zero_deletes(book: OrderBook) -> None:
    status = book.apply_delta(rows((100.00, 0.0), (100.01, 1.0)), rows((100.03, 2.0)), 11)
    assert status == BookStatus.OK
    assert levels(book) == (
        [(10001, 2), (9999, 6), (9998, 2)],
        [(10002, 3), (10003, 4), (10005, 1)],
    )
    # deleting a level that is not there changes nothing
    assert book.apply_delta(rows((50.0, 0.0)), EMPTY, 12) == BookStatus.OK
    assert levels(book)[0] == [(10001, 2), (9999, 6), (9998, 2)]


def test_stale_frame_is_ignored_and_book_stays_valid(book: OrderBook) -> None:
    before = levels(book)
    assert book.apply_delta(rows((100.01, 9.0)), EMPTY, 10) == BookStatus.STALE
    assert book.apply_delta(rows((100.01, 9.0)), EMPTY, 3) == BookStatus.STALE
    assert book.apply_snapshot(rows((1.0, 1.0)), EMPTY, 9) == BookStatus.STALE
    assert levels(book) == before
    assert book.is_valid
    assert book.sequence == 10


def test_gap_invalidates_until_next_snapshot(book: OrderBook) -> None:
    before = levels(book)
    assert book.apply_delta(rows((100.01, 1.0)), EMPTY, 12) == BookStatus.GAP
    assert not book.is_valid
    assert levels(book) == before  # the gapped frame was not applied
    assert book.apply_delta(rows((100.01, 1.0)), EMPTY, 13) == BookStatus.UNSYNCED
    assert book.apply_level(True, 100.01, 1.0, 14) == BookStatus.UNSYNCED
    assert book.apply_snapshot(rows((99.0, 1.0)), rows((99.5, 1.0)), 20) == BookStatus.OK
    assert book.is_valid
    assert book.apply_delta(EMPTY, rows((99.4, 1.0)), 21) == BookStatus.OK


def test_crossed_delta_is_applied_and_invalidates(book: OrderBook) -> None:
    assert book.apply_delta(rows((100.02, 1.0)), EMPTY, 11) == BookStatus.CROSSED
    assert not book.is_valid
    assert book.best_bid == book.best_ask == 10002
    assert book.apply_delta(EMPTY, EMPTY, 12) == BookStatus.UNSYNCED


def test_crossed_snapshot_is_reported() -> None:
    b = OrderBook(TICK, LOT)
    assert b.apply_snapshot(rows((1.0, 1.0)), rows((0.99, 1.0)), 1) == BookStatus.CROSSED
    assert not b.is_valid


@pytest.mark.parametrize(
    "bad",
    [
        (100.015, 1.0),  # price off the tick grid
        (100.01, 0.7),  # size off the lot grid
        (100.01, -0.5),  # negative size
        (float("nan"), 1.0),
        (100.01, float("nan")),
        (float("inf"), 1.0),
        (0.0, 1.0),  # non-positive price
        (-100.0, 1.0),
    ],
)
def test_bad_level_rejects_whole_frame_and_changes_nothing(
    book: OrderBook, bad: tuple[float, float]
) -> None:
    before = levels(book)
    top = book.top.copy()
    status = book.apply_delta(rows((100.01, 1.0), bad), rows((100.03, 1.0)), 11)
    assert status == BookStatus.REJECTED
    assert levels(book) == before
    assert np.array_equal(book.top, top)
    assert book.sequence == 10
    assert not book.is_valid  # a sequenced update was lost: the book needs a snapshot


def test_snapshot_with_duplicate_price_is_rejected_unchanged(book: OrderBook) -> None:
    before = levels(book)
    status = book.apply_snapshot(rows((99.0, 1.0), (98.0, 1.0), (99.0, 2.0)), EMPTY, 11)
    assert status == BookStatus.REJECTED
    assert levels(book) == before


def test_first_delta_after_snapshot_may_straddle_it(book: OrderBook) -> None:
    # Binance: the first event covers U..u with U <= snapshot+1 <= u
    assert book.apply_delta(rows((100.01, 1.0)), EMPTY, 15, first_sequence=8) == BookStatus.OK
    # afterwards the chain must be unbroken
    assert book.apply_delta(EMPTY, EMPTY, 20, first_sequence=16) == BookStatus.OK
    assert book.apply_delta(EMPTY, EMPTY, 25, first_sequence=22) == BookStatus.GAP


def test_first_delta_that_starts_after_snapshot_is_a_gap(book: OrderBook) -> None:
    assert book.apply_delta(EMPTY, EMPTY, 15, first_sequence=12) == BookStatus.GAP


def test_apply_level_matches_one_level_delta(book: OrderBook) -> None:
    assert book.apply_level(False, 100.01, 2.0, 11) == BookStatus.OK
    assert (book.best_ask, book.best_ask_size) == (10001, 4)
    assert book.apply_level(True, 100.00, 0.0, 12) == BookStatus.OK
    assert book.best_bid == 9999
    assert book.apply_level(True, 100.005, 1.0, 13) == BookStatus.REJECTED


def test_empty_sides_give_nan_derived_prices() -> None:
    b = OrderBook(TICK, LOT)
    assert b.apply_snapshot(rows((1.0, 1.0)), EMPTY, 1) == BookStatus.OK
    assert (b.best_ask, b.best_ask_size) == (0, 0)
    assert math.isnan(b.mid) and math.isnan(b.spread) and math.isnan(b.microprice)
    assert b.top[2].tolist() == [0] * b.depth


def test_level_arrays_are_best_first_and_detached(book: OrderBook) -> None:
    prices, sizes = book.bids(2)
    assert prices.tolist() == [10000, 9999]
    assert sizes.tolist() == [4, 6]
    prices[0] = 1  # a copy in a book-owned buffer: writing to it cannot corrupt the book
    assert book.best_bid == 10000
    assert book.asks(0)[0].size == 0
    assert book.asks(99)[0].tolist() == [10002, 10005]


def test_far_levels_survive_and_storage_grows() -> None:
    b = OrderBook(1.0, 1.0, depth=5, capacity=8)
    bids = rows(*[(float(p), 1.0) for p in range(1000, 4000)])
    asks = rows(*[(float(p), 2.0) for p in range(4001, 7001)])
    assert b.apply_snapshot(bids, asks, 1) == BookStatus.OK
    assert (b.n_bids, b.n_asks) == (3000, 3000)
    # churn near the top, then touch the far end of both sides
    seq = 2
    for k in range(200):
        assert b.apply_level(True, 3999.0, float(k % 3), seq) == BookStatus.OK
        seq += 1
    assert b.apply_delta(rows((1000.0, 0.0), (10.0, 7.0)), rows((9000.0, 3.0)), seq) == 0
    bp, bs = b.bids()
    ap, _ = b.asks()
    assert bp[-1] == 10 and bs[-1] == 7
    assert 1000 not in bp.tolist()
    assert ap[-1] == 9000
    assert np.all(np.diff(bp) < 0) and np.all(np.diff(ap) > 0)


def test_constructor_and_argument_validation() -> None:
    with pytest.raises(ValueError, match="tick_size"):
        OrderBook(0.0, 1.0)
    with pytest.raises(ValueError, match="lot_size"):
        OrderBook(1.0, float("nan"))
    b = OrderBook(1.0, 1.0)
    with pytest.raises(TypeError, match="float64"):
        b.apply_snapshot(np.zeros((2, 2), dtype=np.int64), EMPTY, 1)
    with pytest.raises(TypeError, match="shape"):
        b.apply_delta(np.zeros((2, 3)), EMPTY, 1)
    with pytest.raises(TypeError):
        b.apply_delta(np.zeros((4, 2))[::2], EMPTY, 1)  # not contiguous


# ------------------------------------------------------------ reference model


class ReferenceBook:
    """The book's rules over plain dicts: slow, obviously right."""

    def __init__(self, tick: float, lot: float) -> None:
        self.tick, self.lot = tick, lot
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.seq = -1
        self.valid = False
        self.fresh = False

    def _units(self, levels: list[tuple[float, float]]) -> list[tuple[int, int]] | None:
        out = []
        for px, sz in levels:
            if not (math.isfinite(px) and math.isfinite(sz)) or px <= 0 or sz < 0:
                return None
            t, lo = px / self.tick, sz / self.lot
            if abs(t - round(t)) > 1e-6 or abs(lo - round(lo)) > 1e-6 or round(t) <= 0:
                return None
            out.append((round(t), round(lo)))
        return out

    def _finish(self) -> int:
        if self.bids and self.asks and max(self.bids) >= min(self.asks):
            self.valid = False
            return BookStatus.CROSSED
        return BookStatus.OK

    def snapshot(self, bids: list, asks: list, seq: int) -> int:
        if self.valid and seq < self.seq:
            return BookStatus.STALE
        ub, ua = self._units(bids), self._units(asks)
        if (
            ub is None
            or ua is None
            or len({p for p, _ in ub}) != len(ub)
            or len({p for p, _ in ua}) != len(ua)
        ):
            self.valid = False
            return BookStatus.REJECTED
        self.bids = {p: s for p, s in ub if s > 0}
        self.asks = {p: s for p, s in ua if s > 0}
        self.seq, self.valid, self.fresh = seq, True, True
        return self._finish()

    def delta(self, bids: list, asks: list, seq: int, first: int = -1) -> int:
        if not self.valid:
            return BookStatus.UNSYNCED
        if seq <= self.seq:
            return BookStatus.STALE
        first = seq if first < 0 else first
        if first > self.seq + 1 or (not self.fresh and first != self.seq + 1):
            self.valid = False
            return BookStatus.GAP
        ub, ua = self._units(bids), self._units(asks)
        if ub is None or ua is None:
            self.valid = False
            return BookStatus.REJECTED
        for side, updates in ((self.bids, ub), (self.asks, ua)):
            for p, s in updates:
                if s == 0:
                    side.pop(p, None)
                else:
                    side[p] = s
        self.seq, self.fresh = seq, False
        return self._finish()

    def levels(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


# Mostly valid levels on a narrow grid so updates collide; bids and asks overlap a
# little so that crossed books happen; rarely a bad level.
_BAD_PRICES = (0.005, 0.123, -0.01)
_BAD_SIZES = (0.3, float("nan"))


def _side(lo: int, hi: int, *, unique: bool) -> st.SearchStrategy[list[tuple[float, float]]]:
    # Hypothesis favours the ends of a range, so the rare bad values sit in the middle.
    prices = [(lo + k % (hi - lo)) * TICK for k in range(300)]
    sizes = [(k % 5) * LOT for k in range(200)]
    price = st.sampled_from(prices[:150] + list(_BAD_PRICES) + prices[150:])
    size = st.sampled_from(sizes[:100] + list(_BAD_SIZES) + sizes[100:])
    if unique:
        return st.lists(st.tuples(price, size), max_size=8, unique_by=lambda lv: lv[0])
    return st.lists(st.tuples(price, size), max_size=6)


_snap_bids, _snap_asks = _side(1, 22, unique=True), _side(20, 41, unique=True)
_bids, _asks = _side(1, 22, unique=False), _side(20, 41, unique=False)
_op = st.one_of(
    st.tuples(st.just("snapshot"), _snap_bids, _snap_asks, st.integers(-2, 3)),
    st.tuples(st.just("snapshot"), _bids, _asks, st.integers(0, 2)),  # may repeat a price
    st.tuples(st.just("delta"), _bids, _asks, st.sampled_from([1, 1, 1, 1, 1, 1, 0, 2, -1])),
    st.tuples(st.just("delta"), _bids, _asks, st.just(1)),
    st.tuples(st.just("straddle"), _bids, _asks, st.integers(0, 3)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, min_size=1, max_size=40))
def test_book_matches_reference_on_random_streams(ops: list) -> None:
    book = OrderBook(TICK, LOT, depth=4, capacity=8)
    ref = ReferenceBook(TICK, LOT)
    seq = 0
    for kind, bids, asks, step in ops:
        if kind == "snapshot":
            seq = max(seq + step, 0)
            got = book.apply_snapshot(rows(*bids), rows(*asks), seq)
            want = ref.snapshot(bids, asks, seq)
        elif kind == "delta":
            seq = max(seq + step, 0)
            got = book.apply_delta(rows(*bids), rows(*asks), seq)
            want = ref.delta(bids, asks, seq)
        else:  # a frame covering several update ids
            first = max(seq - step + 1, 0)
            seq += 3
            got = book.apply_delta(rows(*bids), rows(*asks), seq, first_sequence=first)
            want = ref.delta(bids, asks, seq, first)
        assert got == want, (kind, bids, asks)
        assert bool(book.is_valid) == ref.valid
        if ref.valid:
            assert book.sequence == ref.seq
        assert levels(book) == ref.levels()
        rb, ra = ref.levels()
        for row, side, col in ((0, rb, 0), (1, rb, 1), (2, ra, 0), (3, ra, 1)):
            want_top = [lv[col] for lv in side[: book.depth]]
            want_top += [0] * (book.depth - len(want_top))
            assert book.top[row].tolist() == want_top


# ------------------------------------------------------------------ real data


def replay(path: Path) -> tuple[OrderBook, list[int], int, int]:
    tick, lot = infer_increments(path)
    book = OrderBook(tick, lot)
    statuses: list[int] = []
    matched = mismatched = 0
    for msg in in_sync_order(iter_capture(path)):
        assert not isinstance(msg, LineError), msg
        if isinstance(msg, DepthSnapshot | DepthUpdate):
            statuses.append(apply_depth(book, msg))
        elif isinstance(msg, BookTicker) and book.is_valid and msg.update_id == book.sequence:
            expected = (
                round(msg.bid / tick),
                round(msg.bid_qty / lot),
                round(msg.ask / tick),
                round(msg.ask_qty / lot),
            )
            actual = (book.best_bid, book.best_bid_size, book.best_ask, book.best_ask_size)
            if actual == expected:
                matched += 1
            else:
                mismatched += 1
    return book, statuses, matched, mismatched


def test_usdm_replay_top_of_book_matches_book_ticker() -> None:
    book, statuses, matched, mismatched = replay(DATA / "usdm_btcusdt_20240808_head10k.gz")
    assert mismatched == 0
    assert matched >= 25  # every bookTicker that names an applied update id
    assert set(statuses) <= {BookStatus.OK, BookStatus.STALE, BookStatus.UNSYNCED}
    assert statuses.count(BookStatus.OK) > 600
    assert book.is_valid
    # the 1000-level REST snapshot plus updates: far levels are still there
    assert book.n_bids > 900 and book.n_asks > 900


def test_spot_replay_keeps_an_unbroken_uncrossed_book() -> None:
    book, statuses, _, mismatched = replay(DATA / "spot_btcusdt_20240808_head12k.gz")
    assert mismatched == 0
    assert set(statuses) <= {BookStatus.OK, BookStatus.STALE, BookStatus.UNSYNCED}
    assert statuses.count(BookStatus.OK) > 900
    assert book.is_valid
    assert book.best_bid < book.best_ask
    assert (book.tick_size, book.lot_size) == (0.01, pytest.approx(1e-6))


def test_broken_chain_is_a_gap_not_patched(tmp_path: Path) -> None:
    src = DATA / "spot_btcusdt_20240808_head12k.gz"
    lines = gzip.decompress(src.read_bytes()).splitlines()[:400]
    depth_lines = [i for i, line in enumerate(lines) if b"@depth" in line]
    del lines[depth_lines[10]]  # lose one depth event after the snapshot
    path = tmp_path / "broken.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    book, statuses, _, _ = replay(path)
    assert BookStatus.GAP in statuses
    assert not book.is_valid
