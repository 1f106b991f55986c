"""Journal write costs on a real file (WAL, ``synchronous=NORMAL``), one committed call per op.

Target (engine journal): a few tens of µs per call on the event-loop thread. The medians
are the steady cost; the max includes SQLite's automatic WAL checkpoints (about every 1000
pages written, one fsync of the WAL and one of the database file). The in-memory case is
the same SQL without file I/O: subtract it to see what the disk costs.

    pytest benchmarks/bench_journal.py --benchmark-enable --benchmark-only
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from flashmm.engine.journal import Journal
from flashmm.engine.records import Fill, Order, OrderState, Side

ROUNDS = 5000  # fill cases: each round needs a new trade id, built untimed in setup


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.db") as journal:
        yield journal


def _order() -> Order:
    return Order(
        client_order_id="c1",
        market_id="SEI/USDC",
        side=Side.BUY,
        price_ticks=4000,
        size_lots=1_000_000,
        state=OrderState.OPEN,
        order_id="v-1",
    )


def _fills() -> Iterator[tuple[tuple[Fill, Order], dict[str, int]]]:
    """Setup for one round: a new fill, its order's new state and the next stream seq."""
    order = _order()
    for n in itertools.count(1):
        order.filled_lots = n
        fill = Fill(
            trade_id=f"t{n}",
            order_id="v-1",
            client_order_id="c1",
            market_id="SEI/USDC",
            side=Side.BUY,
            price_ticks=4000,
            size_lots=1,
            fee=Decimal("0.0004"),
            liquidity="maker",
            ts_ns=n,
            seq=n,
        )
        yield (fill, order), {"seq": n}


def test_record_order(benchmark, journal: Journal) -> None:
    """Upsert of one order's full state (its own single-statement transaction)."""
    order = _order()
    updated = itertools.count(1)

    def record() -> None:
        order.updated_ns = next(updated)
        journal.record_order(order)

    benchmark(record)
    assert journal.load(keep_terminal_s=0.0).orders["c1"] == order


def test_record_order_with_seq(benchmark, journal: Journal) -> None:
    """Upsert plus the stream seq: BEGIN, two statements, COMMIT."""
    order = _order()
    seq = itertools.count(1)

    def record() -> None:
        journal.record_order(order, seq=next(seq))

    benchmark(record)
    assert journal.load().stream_seq == next(seq) - 1


def _bench_fills(benchmark, journal: Journal) -> None:
    fills = _fills()
    result = benchmark.pedantic(
        journal.record_fill, setup=lambda: next(fills), rounds=ROUNDS, iterations=1
    )
    assert result is True
    state = journal.load()
    assert len(state.fills) == state.stream_seq == state.orders["c1"].filled_lots


def test_record_fill(benchmark, journal: Journal) -> None:
    """Insert fill + upsert order + stream seq in one transaction."""
    _bench_fills(benchmark, journal)


def test_record_fill_in_memory(benchmark) -> None:
    """The same SQL on ``:memory:``: the baseline without file I/O."""
    with Journal(":memory:") as journal:
        _bench_fills(benchmark, journal)


def test_record_fill_duplicate(benchmark, journal: Journal) -> None:
    """A resent fill: found by its unique key and rolled back, nothing written."""
    (fill, order), kwargs = next(_fills())
    assert journal.record_fill(fill, order, **kwargs)
    assert benchmark(journal.record_fill, fill, order, **kwargs) is False
    assert len(journal.load().fills) == 1
