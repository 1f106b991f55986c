"""Order book apply costs, side by side with a plain-Python book in the same run.

Targets (issue: compiled hot path): batch apply <= 60 ns per level; a single-level
Python call including the best bid/ask read <= 200 ns. Sub-microsecond cases run
``CALLS`` calls per round: divide their figures by 1000 (``extra_info`` says so).

    pytest benchmarks/bench_book.py --benchmark-enable --benchmark-only
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from flashmm._core.book import OrderBook
from flashmm.data.binance import (
    DepthSnapshot,
    DepthUpdate,
    apply_depth,
    in_sync_order,
    infer_increments,
    iter_capture,
)

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "binance"
TICK = 0.0001
N_FRAMES = 64


def _snapshot_rows(start: int, step: int, n: int) -> np.ndarray:
    return np.array([[(start + step * k) * TICK, 100.0 + k] for k in range(n)])


def _book() -> OrderBook:
    book = OrderBook(TICK, 1.0)
    book.apply_snapshot(_snapshot_rows(4500, -1, 200), _snapshot_rows(4502, 1, 200), 0)
    return book


def _frames() -> list[tuple[np.ndarray, np.ndarray]]:
    """5 levels per side near the top: size changes, and a level deleted then restored."""
    frames = []
    rng = np.random.default_rng(7)
    for k in range(N_FRAMES):
        bids = np.array([[(4500 - i) * TICK, float(rng.integers(1, 500))] for i in range(5)])
        asks = np.array([[(4502 + i) * TICK, float(rng.integers(1, 500))] for i in range(5)])
        if k % 2:
            bids[4, 1] = 0.0  # delete the 5th level; the next frame restores it
            asks[3, 1] = 0.0
        frames.append((bids, asks))
    return frames


def test_apply_delta_5x5_levels(benchmark) -> None:
    """One 10-level delta frame per call; divide the median by 10 for ns/level."""
    book = _book()
    frames = itertools.cycle(_frames())
    seq = itertools.count(1)

    def apply() -> int:
        bids, asks = next(frames)
        return book.apply_delta(bids, asks, next(seq))

    assert benchmark(apply) == 0
    benchmark.extra_info["levels_per_call"] = 10


CALLS = 1000  # per round: amortises pytest-benchmark's own per-call wrapping


def test_apply_level_and_read_best(benchmark) -> None:
    """The single-level Python call plus the best bid/ask read; median / CALLS per call."""
    book = _book()
    seq = itertools.count(1)
    apply_level = book.apply_level

    def calls() -> tuple[int, int]:
        best = (0, 0)
        for size in SIZES:
            apply_level(True, 0.4499, size, next(seq))
            best = book.best_bid, book.best_ask
        return best

    assert benchmark(calls) == (4500, 4502)
    benchmark.extra_info["calls_per_round"] = CALLS


def test_harness_only(benchmark) -> None:
    """The same loop without the book: subtract it from the case above."""
    seq = itertools.count(1)

    def calls() -> tuple[int, int]:
        best = (0, 0)
        for size in SIZES:
            next(seq)
            best = 4500, int(size)
        return best

    assert benchmark(calls)[0] == 4500
    benchmark.extra_info["calls_per_round"] = CALLS


SIZES = [10.0, 20.0, 0.0, 30.0] * (CALLS // 4)


class DictBook:
    """What a straightforward Python book costs: dicts plus max/min for the best."""

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def apply_level(self, is_bid: bool, price: float, size: float) -> None:
        side = self.bids if is_bid else self.asks
        ticks, lots = round(price / TICK), round(size)
        if lots:
            side[ticks] = lots
        else:
            side.pop(ticks, None)


def test_baseline_python_dict_book_level_and_best(benchmark) -> None:
    book = DictBook()
    for k in range(200):
        book.apply_level(True, (4500 - k) * TICK, 100.0)
        book.apply_level(False, (4502 + k) * TICK, 100.0)

    def calls() -> tuple[int, int]:
        best = (0, 0)
        for size in SIZES:
            book.apply_level(True, 0.4499, size)
            best = max(book.bids), min(book.asks)
        return best

    assert benchmark(calls) == (4500, 4502)
    benchmark.extra_info["calls_per_round"] = CALLS


@pytest.fixture(scope="module")
def usdm_depth() -> tuple[float, float, list[DepthSnapshot | DepthUpdate]]:
    path = DATA / "usdm_btcusdt_20240808_head10k.gz"
    tick, lot = infer_increments(path)
    msgs = [
        m for m in in_sync_order(iter_capture(path)) if isinstance(m, DepthSnapshot | DepthUpdate)
    ]
    return tick, lot, msgs


def test_apply_real_depth_stream(benchmark, usdm_depth) -> None:
    """All USDⓈ-M depth events of the test slice (levels anywhere in a 1000-level book)."""
    tick, lot, msgs = usdm_depth
    n_levels = sum(len(m.bids) + len(m.asks) for m in msgs if isinstance(m, DepthUpdate))

    def replay() -> int:
        book = OrderBook(tick, lot)
        return sum(apply_depth(book, msg) not in (0, 3) for msg in msgs)

    assert benchmark.pedantic(replay, rounds=5, iterations=1) == 0
    benchmark.extra_info["levels_per_call"] = n_levels
