"""OrderBook storage: chunk splits and merges over deep, dense and sparse books.

``test_book.py`` checks the rules on small books; here books of thousands of levels are
churned anywhere in their depth, and after every frame the book must equal a plain dict
model and pass its own storage audit (chunks ordered, counted and indexed right).
"""

from __future__ import annotations

import numpy as np
import pytest

from flashmm._core.book import BookStatus, OrderBook


class DictSide:
    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.levels: dict[int, int] = {}

    def apply(self, rows: np.ndarray) -> None:
        for price, size in rows.astype(np.int64).tolist():
            if size:
                self.levels[price] = size
            else:
                self.levels.pop(price, None)

    def best_first(self) -> list[tuple[int, int]]:
        return sorted(self.levels.items(), key=lambda lv: -self.sign * lv[0])


def assert_same(book: OrderBook, bids: DictSide, asks: DictSide) -> None:
    book._audit()
    for side, ref, row in ((book.bids(), bids, 0), (book.asks(), asks, 2)):
        want = ref.best_first()
        assert list(zip(side[0].tolist(), side[1].tolist(), strict=True)) == want
        top = want[: book.depth] + [(0, 0)] * (book.depth - len(want[: book.depth]))
        assert book.top[row].tolist() == [p for p, _ in top]
        assert book.top[row + 1].tolist() == [s for _, s in top]
    assert (book.n_bids, book.n_asks) == (len(bids.levels), len(asks.levels))


def side_rows(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.column_stack([prices, sizes]), dtype=np.float64)


@pytest.mark.parametrize("spacing", [1, 2, 100_000], ids=["dense", "gappy", "sparse"])
@pytest.mark.parametrize("order", ["best_first", "worst_first", "shuffled"])
def test_deep_churn_matches_dict_model(spacing: int, order: str) -> None:
    rng = np.random.default_rng(spacing + len(order))
    n, mid = 1500, 10**10
    book = OrderBook(1.0, 1.0, depth=7, capacity=16)
    bids, asks = DictSide(1), DictSide(-1)
    # a snapshot with holes, so that later inserts land between levels
    snap_b = side_rows(mid - spacing * rng.permutation(3 * n)[:n] - spacing, rng.integers(1, 9, n))
    snap_a = side_rows(mid + spacing * rng.permutation(3 * n)[:n] + spacing, rng.integers(1, 9, n))
    assert book.apply_snapshot(snap_b, snap_a, 1) == BookStatus.OK
    bids.apply(snap_b)
    asks.apply(snap_a)
    assert_same(book, bids, asks)
    seq = 1
    for frame in range(120):
        rows = []
        for sign in (1, -1):
            k = int(rng.integers(0, 300 if frame % 10 == 0 else 40))
            # mostly within the book, some past either end, many deletes, some repeats
            offsets = rng.integers(1, 3 * n + 200, k)
            offsets[: k // 4] = rng.integers(1, 12, k // 4)
            prices = mid - sign * spacing * offsets
            sizes = rng.integers(0, 4, k) * (rng.random(k) < 0.6)
            if order == "best_first":
                keep = np.argsort(-sign * prices, kind="stable")
            elif order == "worst_first":
                keep = np.argsort(sign * prices, kind="stable")
            else:
                keep = rng.permutation(k)
            rows.append(side_rows(prices[keep], sizes[keep]))
        seq += 1
        assert book.apply_delta(rows[0], rows[1], seq) == BookStatus.OK
        bids.apply(rows[0])
        asks.apply(rows[1])
        assert_same(book, bids, asks)


def test_splits_and_merges_at_both_ends_one_level_at_a_time() -> None:
    book = OrderBook(1.0, 1.0, depth=3, capacity=8)
    bids, asks = DictSide(1), DictSide(-1)
    snap_b = side_rows(np.arange(1000, 1200), np.ones(200))
    snap_a = side_rows(np.arange(5000, 5200), np.ones(200))
    assert book.apply_snapshot(snap_b, snap_a, 0) == BookStatus.OK
    bids.apply(snap_b)
    asks.apply(snap_a)
    # new best levels one by one (every split at the top), new worst ones likewise,
    # then all of them deleted again, best first and worst first
    steps = [(True, p, 2.0) for p in range(1200, 1500)]
    steps += [(True, p, 3.0) for p in range(999, 700, -1)]
    steps += [(False, p, 2.0) for p in range(4999, 4700, -1)]
    steps += [(True, p, 0.0) for p in range(1499, 1199, -1)]
    steps += [(True, p, 0.0) for p in range(701, 1000)]
    steps += [(False, p, 0.0) for p in range(4701, 5100)]
    for seq, (is_bid, price, size) in enumerate(steps, start=1):
        assert book.apply_level(is_bid, float(price), size, seq) == BookStatus.OK
        (bids if is_bid else asks).apply(np.array([[price, size]]))
        assert_same(book, bids, asks)
    assert (book.best_bid, book.best_ask) == (1199, 5100)


def test_insert_past_the_end_of_a_full_chunk_is_not_confused_with_a_size() -> None:
    # one full chunk (64 levels) whose sizes all equal the next price to insert
    book = OrderBook(1.0, 1.0, depth=2, capacity=8)
    assert book.apply_snapshot(side_rows([1], [500]), side_rows([1000], [1]), 0) == 0
    for price in range(2, 65):
        assert book.apply_level(True, float(price), 500.0, price) == BookStatus.OK
    assert book.apply_level(True, 500.0, 7.0, 65) == BookStatus.OK
    book._audit()
    assert (book.n_bids, book.best_bid, book.best_bid_size) == (65, 500, 7)
    assert book.bids(2)[0].tolist() == [500, 64]


def test_side_emptied_and_refilled_by_deltas() -> None:
    book = OrderBook(0.5, 0.1, depth=2)
    assert book.apply_snapshot(side_rows([10.0], [0.3]), side_rows([11.0], [0.2]), 5) == 0
    empty = np.empty((0, 2))
    assert book.apply_delta(side_rows([10.0], [0.0]), empty, 6) == BookStatus.OK
    assert book.n_bids == 0 and book.best_bid == 0 and book.top[0].tolist() == [0, 0]
    assert book.apply_delta(side_rows([9.5, 10.5], [0.1, 0.2]), empty, 7) == BookStatus.OK
    book._audit()
    assert (book.best_bid, book.best_bid_size, book.best_ask) == (21, 2, 22)


def test_level_arrays_are_copies_the_book_does_not_read() -> None:
    book = OrderBook(1.0, 1.0)
    assert book.apply_snapshot(side_rows([10, 9], [1, 2]), side_rows([12], [3]), 1) == 0
    prices, sizes = book.bids()
    prices[0] = 99
    sizes[:] = 0
    assert book.bids()[0].tolist() == [10, 9]
    assert book.best_bid_size == 1
