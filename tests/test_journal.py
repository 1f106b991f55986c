"""The engine journal: what is written is what a restarted engine loads, even after SIGKILL."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

import flashmm
from flashmm.engine.journal import (
    ORDER_LOG_SUFFIX,
    Journal,
    JournalError,
    JournalRecordError,
    JournalState,
    RiskRecord,
)
from flashmm.engine.records import Fill, Order, OrderState, Side

S = 1_000_000_000  # ns per second


def _order(client_order_id: str = "c1", **changes: Any) -> Order:
    order = Order(
        client_order_id=client_order_id,
        market_id="SEI/USDC",
        side=Side.BUY,
        price_ticks=4000,
        size_lots=10,
        created_ns=1 * S,
        updated_ns=1 * S,
    )
    return msgspec.structs.replace(order, **changes)


def _fill(trade_id: str = "t1", client_order_id: str = "c1", **changes: Any) -> Fill:
    fill = Fill(
        trade_id=trade_id,
        order_id="v-1",
        client_order_id=client_order_id,
        market_id="SEI/USDC",
        side=Side.BUY,
        price_ticks=4000,
        size_lots=4,
        fee=Decimal("-0.00015"),
        liquidity="maker",
        ts_ns=2 * S,
        seq=3,
    )
    return msgspec.structs.replace(fill, **changes)


def _load(path: Path, **kwargs: Any) -> JournalState:
    with Journal(path) as journal:
        return journal.load(**kwargs)


def test_round_trip_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    bid = _order("c1", state=OrderState.PARTIALLY_FILLED, order_id="v-1", filled_lots=4)
    ask = _order(
        "c2",
        side=Side.SELL,
        price_ticks=4003,
        state=OrderState.PENDING_CANCEL,
        order_id="v-2",
        reason="requote",
        own_cancel=True,
    )
    fills = [
        _fill("t1", "c1"),
        _fill("t2", "c2", order_id="v-2", side=Side.SELL, fee=Decimal("1.50"), liquidity="taker"),
    ]
    risk = RiskRecord(state="paused", reason="operator", ts_ns=5 * S, until_ns=65 * S)
    with Journal(path) as journal:
        journal.record_order(ask, seq=7)
        assert journal.record_fill(fills[0], bid, seq=8)
        assert journal.record_fill(fills[1], ask)
        journal.record_risk(RiskRecord(state="normal", reason="start", ts_ns=4 * S))
        journal.record_risk(risk)

    state = _load(path, now_ns=10 * S)
    assert state.orders == {"c2": ask, "c1": bid}
    assert list(state.orders) == ["c2", "c1"]  # in the order first journaled
    assert state.fills == fills
    assert [str(f.fee) for f in state.fills] == ["-0.00015", "1.50"]  # exact, not just equal
    assert type(state.fills[0].side) is Side and type(state.orders["c1"].state) is OrderState
    assert state.stream_seq == 8
    assert state.risk == risk
    assert state.session == 2


def test_new_journal_loads_empty(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "journal.db"  # parent folders are created
    with Journal(path) as journal:
        assert journal.path == path
        assert journal.load() == JournalState(
            orders={}, fills=[], stream_seq=None, risk=None, session=1
        )


def test_in_memory_journal(tmp_path: Path) -> None:
    with Journal(":memory:") as journal:
        assert journal.path is None
        assert journal.record_fill(_fill(), _order(filled_lots=4), seq=1)
        assert journal.load().fills == [_fill()]
    assert list(tmp_path.iterdir()) == []


def test_duplicate_fill_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    first = _order(state=OrderState.PARTIALLY_FILLED, filled_lots=4)
    with Journal(path) as journal:
        assert journal.record_fill(_fill("t1"), first, seq=5)
        assert journal.fill_exists("t1", "c1")
        # The venue resends it: neither the fill, the order's state nor the seq may change.
        later = _order(state=OrderState.FILLED, filled_lots=8)
        assert not journal.record_fill(_fill("t1", size_lots=9), later, seq=9)
        # The same trade on another of our orders (a self-cross) is a different fill.
        assert not journal.fill_exists("t1", "c2")
        assert journal.record_fill(_fill("t1", "c2"), _order("c2", filled_lots=4))
    state = _load(path, now_ns=2 * S)
    assert state.fills == [_fill("t1"), _fill("t1", "c2")]
    assert state.orders["c1"] == first
    assert state.stream_seq == 5


def test_order_updated_through_its_states_keeps_only_the_last(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    order = _order()
    with Journal(path) as journal:
        journal.record_order(order)
        order.state, order.order_id, order.updated_ns = OrderState.OPEN, "v-1", 2 * S
        journal.record_order(order)
        order.state, order.filled_lots, order.updated_ns = OrderState.PARTIALLY_FILLED, 4, 3 * S
        journal.record_order(order)
        order.state, order.reason, order.own_cancel = OrderState.CANCELLED, "requote", True
        order.updated_ns = 4 * S
        journal.record_order(order)
    orders = _load(path, now_ns=5 * S).orders
    assert orders == {
        "c1": _order(
            state=OrderState.CANCELLED,
            order_id="v-1",
            filled_lots=4,
            updated_ns=4 * S,
            reason="requote",
            own_cancel=True,
        )
    }


def test_stream_seq_never_goes_backwards(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path) as journal:
        journal.record_stream_seq(10)
        journal.record_order(_order(), seq=7)
        journal.record_stream_seq(3)
        assert journal.record_fill(_fill(), _order(filled_lots=4), seq=2)
        assert journal.load().stream_seq == 10
        journal.record_stream_seq(11)
        assert journal.load().stream_seq == 11
    assert _load(path).stream_seq == 11


def test_old_terminal_orders_are_not_loaded_but_their_fills_are(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    now = 10_000 * S
    old_live = _order("live", state=OrderState.OPEN, updated_ns=0)
    old_filled = _order("old", state=OrderState.FILLED, filled_lots=10, updated_ns=now - 3601 * S)
    edge = _order("edge", state=OrderState.REJECTED, updated_ns=now - 3600 * S)
    recent = _order("recent", state=OrderState.CANCELLED, updated_ns=now - 3599 * S)
    with Journal(path) as journal:
        journal.record_order(old_live)
        assert journal.record_fill(_fill("t1", "old", size_lots=10), old_filled)
        journal.record_order(edge)
        journal.record_order(recent)

        state = journal.load(now_ns=now)  # default: terminal orders of the last hour
        assert list(state.orders) == ["live", "edge", "recent"]
        assert state.fills == [_fill("t1", "old", size_lots=10)]

        assert list(journal.load(keep_terminal_s=0, now_ns=now).orders) == ["live"]
        everything = journal.load(keep_terminal_s=math.inf, now_ns=now).orders
        assert list(everything) == ["live", "old", "edge", "recent"]
        with pytest.raises(ValueError, match="keep_terminal_s"):
            journal.load(keep_terminal_s=-1.0)


CHILD = """
import sys
from decimal import Decimal

from flashmm.engine.journal import Journal
from flashmm.engine.records import Fill, Order, OrderState, Side

journal = Journal(sys.argv[1])
order = Order(client_order_id="c1", market_id="SEI/USDC", side=Side.BUY, price_ticks=4000,
              size_lots=10**9, state=OrderState.OPEN)
n = 0
while True:
    n += 1
    order.filled_lots = n
    fill = Fill(trade_id=f"t{n}", order_id="v-1", client_order_id="c1", market_id="SEI/USDC",
                side=Side.BUY, price_ticks=4000, size_lots=1, fee=Decimal(n).scaleb(-4),
                liquidity="maker", ts_ns=n, seq=n)
    journal.record_fill(fill, order, seq=n)
    print(n, flush=True)
"""


def test_sigkill_keeps_every_committed_fill(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    # The child imports the same flashmm as this test, installed or not.
    env = os.environ | {"PYTHONPATH": str(Path(flashmm.__file__).resolve().parent.parent)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    reported = 0
    try:
        while reported < 300:
            line = child.stdout.readline()
            assert line, f"the child stopped: {child.stderr.read() if child.stderr else ''}"
            reported = int(line)
        os.kill(child.pid, signal.SIGKILL)  # while it keeps writing
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL

    state = _load(path)
    n = len(state.fills)
    assert n >= reported
    assert [f.trade_id for f in state.fills] == [f"t{k}" for k in range(1, n + 1)]
    assert state.fills[n - 1].fee == Decimal(n) / 10_000
    # Each fill's transaction carried its order and seq: none is half there.
    assert state.orders["c1"].filled_lots == n
    assert state.stream_seq == n
    assert state.session == 2


def test_session_counts_every_open(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    assert [_load(path).session for _ in range(3)] == [1, 2, 3]


def test_garbage_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    garbage = b"this is not a database\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(JournalError, match="not an SQLite database") as caught:
        Journal(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == garbage
    assert list(tmp_path.iterdir()) == [path]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    with pytest.raises(JournalError, match="newer FlashMM") as caught:
        Journal(path)
    assert str(path) in str(caught.value)


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.close()
    with pytest.raises(JournalError, match="not a FlashMM journal") as caught:
        Journal(path)
    assert str(path) in str(caught.value)


def test_journal_in_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path):
        with pytest.raises(JournalError, match="another process") as caught:
            Journal(path)
        assert str(path) in str(caught.value)
    assert _load(path).session == 2  # the refused open did not count


def test_path_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "journal.db"
    with pytest.raises(JournalError, match="cannot create its folder") as caught:
        Journal(path)
    assert str(path) in str(caught.value)


def test_disk_full_rolls_the_fill_back(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    before = _order(filled_lots=4)
    with Journal(path) as journal:
        assert journal.record_fill(_fill("t1"), before, seq=1)
        # A real SQLITE_FULL: the file may not grow by a page (the test's only look inside).
        pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
        journal._conn.execute(f"PRAGMA max_page_count = {pages}")
        big = _fill("t2" * 5000)
        with pytest.raises(JournalError, match="disk is full: free space") as caught:
            journal.record_fill(big, _order(filled_lots=8), seq=2)
        assert str(path) in str(caught.value)
        assert not journal.fill_exists(big.trade_id, "c1")
        journal._conn.execute(f"PRAGMA max_page_count = {pages * 100}")
        assert journal.record_fill(_fill("t3"), _order(filled_lots=8), seq=3)
    state = _load(path)
    assert state.fills == [_fill("t1"), _fill("t3")]
    assert state.stream_seq == 3


BAD_FILLS = {
    "float-fee": (_fill(fee=0.5), "finite Decimal"),
    "nan-fee": (_fill(fee=Decimal("NaN")), "finite Decimal"),
    "other-order": (_fill(client_order_id="c2"), "not 'c1'"),
    "float-price": (_fill(price_ticks=4000.5), "REAL"),
    "liquidity": (_fill(liquidity="both"), "CHECK"),
}
BAD_ORDERS = {
    "float-size": (_order(size_lots=1.5), "REAL"),
    "side": (_order(side=0), "CHECK"),
    "no-market": (_order(market_id=None), "NOT NULL"),
    "overflow": (_order(price_ticks=2**63), "too large"),
    "list": (_order(market_id=["SEI/USDC"]), "not supported"),
}


def _journal_with_one_order(path: Path) -> Journal:
    journal = Journal(path)
    journal.record_order(_order(), seq=1)
    return journal


def _assert_unchanged(journal: Journal) -> None:
    assert journal.load(now_ns=2 * S) == JournalState(
        orders={"c1": _order()}, fills=[], stream_seq=1, risk=None, session=1
    )
    journal.record_stream_seq(3)  # and it is still usable
    assert journal.load().stream_seq == 3


@pytest.mark.parametrize(("fill", "match"), BAD_FILLS.values(), ids=BAD_FILLS.keys())
def test_bad_fill_is_refused_and_writes_nothing(tmp_path: Path, fill: Fill, match: str) -> None:
    with _journal_with_one_order(tmp_path / "journal.db") as journal:
        with pytest.raises(JournalRecordError, match=match):
            journal.record_fill(fill, _order(filled_lots=4), seq=2)
        _assert_unchanged(journal)


@pytest.mark.parametrize(("order", "match"), BAD_ORDERS.values(), ids=BAD_ORDERS.keys())
def test_bad_order_is_refused_and_writes_nothing(tmp_path: Path, order: Order, match: str) -> None:
    with _journal_with_one_order(tmp_path / "journal.db") as journal:
        with pytest.raises(JournalRecordError, match=match):
            journal.record_order(order, seq=2)
        with pytest.raises(JournalRecordError, match=match):
            journal.record_fill(_fill(), order, seq=2)
        _assert_unchanged(journal)


def test_close_is_idempotent_and_later_calls_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path)
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed") as caught:
        journal.record_order(_order())
    assert str(path) in str(caught.value)
    with pytest.raises(JournalError, match="closed"):
        journal.load()
    assert _load(path).orders == {}


def test_batch_commits_once_and_a_failure_rolls_all_of_it_back(tmp_path: Path) -> None:
    path = tmp_path / "batch.sqlite3"
    first, second = _order("b1"), _order("b2")
    with Journal(path) as journal:
        with journal.batch():
            journal.record_order(first)
            journal.record_order(second, seq=7)

        def failing_decision() -> None:
            with journal.batch():
                journal.record_order(_order("lost"))
                raise RuntimeError("the decision failed")

        with pytest.raises(RuntimeError, match="the decision failed"):
            failing_decision()
        # a duplicate fill inside a batch undoes only itself
        fill = _fill("t1", "b1")
        with journal.batch():
            assert journal.record_fill(fill, first)
            assert not journal.record_fill(fill, first)
            journal.record_order(_order("b3"))
    with Journal(path) as journal:
        state = journal.load()
    assert set(state.orders) == {"b1", "b2", "b3"}
    assert state.stream_seq == 7
    assert [f.trade_id for f in state.fills] == ["t1"]


# ------------------------------------------------------------------ the order log

# A process that journals one decision's orders in a batch, as the engine does right before
# sending them, and dies at once (no close, no flush): what SIGKILL leaves behind.
_CRASH_AFTER_BATCH = """
import os, sys
from flashmm.engine.journal import Journal
from flashmm.engine.records import Order, OrderState, Side
journal = Journal(sys.argv[1])
journal.record_order(Order(client_order_id="old", market_id="SEI/USDC", side=Side.BUY,
    price_ticks=3999, size_lots=10, state=OrderState.OPEN, order_id="v-0",
    created_ns=1, updated_ns=1), seq=5)
with journal.batch():
    for coid, side, price in (("bid", Side.BUY, 4000), ("ask", Side.SELL, 4010)):
        journal.record_order(Order(client_order_id=coid, market_id="SEI/USDC", side=side,
            price_ticks=price, size_lots=10, created_ns=2, updated_ns=2))
    journal.record_order(Order(client_order_id="old", market_id="SEI/USDC", side=Side.BUY,
        price_ticks=3999, size_lots=10, state=OrderState.PENDING_CANCEL, order_id="v-0",
        created_ns=1, updated_ns=2, reason="replaced", own_cancel=True))
assert journal.unflushed == 3
os._exit(0)
"""


def _crash_after_batch(path: Path) -> None:
    subprocess.run([sys.executable, "-c", _CRASH_AFTER_BATCH, str(path)], check=True)


def _log_of(path: Path) -> Path:
    return Path(str(path) + ORDER_LOG_SUFFIX)


def test_a_batch_is_one_log_frame_that_survives_the_process(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    _crash_after_batch(path)
    assert _log_of(path).stat().st_size > 0  # the batch is in the order log ...
    state = _load(path, now_ns=3)  # ... and a restart takes it into the database
    assert state.orders["bid"].state is OrderState.PENDING_NEW
    assert state.orders["ask"].side is Side.SELL and state.orders["ask"].price_ticks == 4010
    old = state.orders["old"]
    assert (old.state, old.reason, old.own_cancel) == (OrderState.PENDING_CANCEL, "replaced", True)
    assert state.stream_seq == 5
    assert _log_of(path).stat().st_size == 0  # emptied once the database holds it


def test_flush_moves_the_log_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path) as journal:
        with journal.batch():
            journal.record_order(_order("b1"))
            journal.record_order(_order("b2"))
        assert journal.unflushed == 2
        assert _log_of(path).stat().st_size > 0
        journal.flush()
        assert journal.unflushed == 0
        assert _log_of(path).stat().st_size == 0
        assert set(journal.load().orders) == {"b1", "b2"}


def test_a_later_write_never_loses_to_an_older_logged_record(tmp_path: Path) -> None:
    """A fill journaled while the order's new state is still only in the log: the log goes
    to the database first, so the fill's newer order state is the one that stays."""
    path = tmp_path / "journal.db"
    with Journal(path) as journal:
        with journal.batch():
            journal.record_order(_order("c1"))  # pending-new, in the log
        filled = _order("c1", state=OrderState.FILLED, order_id="v-1", filled_lots=10)
        assert journal.record_fill(_fill(size_lots=10), filled, seq=3)
        assert journal.unflushed == 0
    state = _load(path, now_ns=2 * S)
    assert state.orders["c1"].state is OrderState.FILLED
    assert state.stream_seq == 3


def test_a_log_replayed_twice_leaves_the_database_as_it_is(tmp_path: Path) -> None:
    """A crash between copying the log into the database and emptying it: the next start
    replays records the database already has, which changes nothing."""
    path = tmp_path / "journal.db"
    _crash_after_batch(path)
    left_behind = _log_of(path).read_bytes()
    first = _load(path, now_ns=3)
    _log_of(path).write_bytes(left_behind)
    second = _load(path, now_ns=3)
    assert second.orders == first.orders
    assert second.session == first.session + 1


def test_a_torn_last_frame_is_ignored_and_the_whole_ones_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "journal.db"
    _crash_after_batch(path)
    whole = _log_of(path).read_bytes()
    # a second frame cut short, as an OS crash in the middle of its write leaves it
    _log_of(path).write_bytes(whole + whole[: len(whole) // 2])
    with caplog.at_level("WARNING", logger="flashmm.journal"):
        state = _load(path, now_ns=3)
    assert {"bid", "ask"} <= set(state.orders)
    assert f"last {len(whole) // 2} bytes of its order log are incomplete" in caplog.text
    # a frame whose bytes changed fails its check and ends the log the same way
    _crash_after_batch(tmp_path / "other.db")
    damaged = bytearray(_log_of(tmp_path / "other.db").read_bytes())
    damaged[-1] ^= 0xFF
    _log_of(tmp_path / "other.db").write_bytes(bytes(damaged))
    assert set(_load(tmp_path / "other.db", now_ns=3).orders) == {"old"}


def test_a_failed_or_refused_batch_leaves_no_trace_in_the_log(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"

    def decision(*orders: Order, fail: bool = False) -> None:
        with journal.batch():
            for order in orders:
                journal.record_order(order)
            if fail:
                raise RuntimeError("decision failed")

    with Journal(path) as journal:
        with pytest.raises(RuntimeError, match="decision failed"):
            decision(_order("lost"), fail=True)
        with pytest.raises(JournalRecordError, match="side must be 1 or -1"):
            decision(_order("fine"), _order("bad", side=0))
        with pytest.raises(JournalRecordError, match="int64"):
            decision(_order("huge", price_ticks=2**63))
        assert journal.unflushed == 0
        assert _log_of(path).stat().st_size == 0
        assert journal.load().orders == {}
