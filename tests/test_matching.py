"""The simulator's matching book: priority, time in force, self-trade prevention, cancels,
the queue-position model over outside liquidity, depth and its deltas, and invariants over
random sequences. Expected numbers are worked out by hand in the comments."""

from __future__ import annotations

from collections import defaultdict

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashmm.venue.sim.matching import (
    BUY,
    SELL,
    Accepted,
    Cancelled,
    CancelReason,
    DuplicateOrder,
    Event,
    Fill,
    InvalidMarketData,
    InvalidOrder,
    InvalidRequest,
    MarketHalted,
    MatchingBook,
    MatchingError,
    Order,
    OrderType,
    PublicTrade,
    STPMode,
    TimeInForce,
    UnknownOrder,
)

GTC, IOC, FOK, POST = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK, TimeInForce.POST_ONLY


def limit(
    oid: int, account: str, side: int, price: int, size: int, tif: TimeInForce = GTC
) -> Order:
    return Order(oid, account, f"c{oid}", side, price, size, OrderType.LIMIT, tif)


def market(oid: int, account: str, side: int, size: int, tif: TimeInForce = IOC) -> Order:
    return Order(oid, account, f"c{oid}", side, 0, size, OrderType.MARKET, tif)


def fills(events: list[Event]) -> list[tuple[int, str, int, int, int]]:
    """(order_id, liquidity, price, size, remaining) of each fill, in order."""
    return [
        (e.order_id, e.liquidity, e.price_ticks, e.size_lots, e.remaining_lots)
        for e in events
        if isinstance(e, Fill)
    ]


def trades(events: list[Event]) -> list[tuple[int, int, int]]:
    """(price, size, taker_side) of each public trade, in order."""
    return [
        (e.price_ticks, e.size_lots, e.taker_side) for e in events if isinstance(e, PublicTrade)
    ]


def cancels(events: list[Event]) -> list[tuple[int, int, CancelReason]]:
    return [(e.order_id, e.remaining_lots, e.reason) for e in events if isinstance(e, Cancelled)]


def snapshot(book: MatchingBook, accounts: tuple[str, ...] = ("a", "b", "c")) -> object:
    return (book.depth(1000), [book.open_orders(a) for a in accounts], book.next_trade_id)


# ------------------------------------------------------------------ priority and fills


def test_price_then_time_priority_and_trade_at_resting_price() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", SELL, 101, 4), ts=1)
    book.submit(limit(2, "b", SELL, 101, 4), ts=2)
    book.submit(limit(3, "c", SELL, 100, 3), ts=3)  # better price, later
    events = book.submit(limit(4, "d", BUY, 101, 9), ts=4)
    # 3 @100 from order 3, then 4 @101 from order 1 (older), then 2 @101 from order 2
    assert isinstance(events[0], Accepted)
    assert fills(events) == [
        (4, "taker", 100, 3, 6),
        (3, "maker", 100, 3, 0),
        (4, "taker", 101, 4, 2),
        (1, "maker", 101, 4, 0),
        (4, "taker", 101, 2, 0),
        (2, "maker", 101, 2, 2),
    ]
    assert trades(events) == [(100, 3, BUY), (101, 4, BUY), (101, 2, BUY)]
    assert [e.trade_id for e in events if isinstance(e, PublicTrade)] == [1, 2, 3]
    assert all(f.ts == 4 for f in events if isinstance(f, Fill))
    assert book.depth(5) == ([], [(101, 2)])
    assert book.open_orders("b")[0].remaining_lots == 2
    assert book.open_orders("b")[0].filled_lots == 2


def test_events_of_one_trade_come_taker_maker_public() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", BUY, 50, 2), ts=1)
    events = book.submit(limit(2, "b", SELL, 49, 2), ts=2)
    assert [type(e) for e in events] == [Accepted, Fill, Fill, PublicTrade]
    taker, maker, public = events[1], events[2], events[3]
    assert (taker.order_id, taker.liquidity, taker.side) == (2, "taker", SELL)
    assert (maker.order_id, maker.liquidity, maker.side) == (1, "maker", BUY)
    assert taker.trade_id == maker.trade_id == public.trade_id == 1
    assert (public.price_ticks, public.taker_side) == (50, SELL)


def test_partial_fill_rests_the_remainder_at_the_limit() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", SELL, 100, 5), ts=1)
    events = book.submit(limit(2, "b", BUY, 102, 8), ts=2)
    assert fills(events) == [(2, "taker", 100, 5, 3), (1, "maker", 100, 5, 0)]
    assert not cancels(events)
    assert book.depth(5) == ([(102, 3)], [])
    assert book.best_bid() == 102
    assert book.best_ask() is None
    assert book.order_id_for("b", "c2") == 2
    assert book.order_id_for("a", "c1") is None  # filled: no longer open


# ------------------------------------------------------------------ time in force


def test_ioc_cancels_the_remainder() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", SELL, 100, 2), ts=1)
    events = book.submit(limit(2, "b", BUY, 100, 5, IOC), ts=2)
    assert fills(events) == [(2, "taker", 100, 2, 3), (1, "maker", 100, 2, 0)]
    assert cancels(events) == [(2, 3, CancelReason.IOC_REMAINDER)]
    assert book.depth(5) == ([], [])


def test_market_order_walks_levels_and_cancels_what_is_left() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", BUY, 99, 2), ts=1)
    book.submit(limit(2, "a", BUY, 97, 3), ts=1)
    events = book.submit(market(3, "b", SELL, 7), ts=2)
    assert fills(events)[::2] == [(3, "taker", 99, 2, 5), (3, "taker", 97, 3, 2)]
    assert cancels(events) == [(3, 2, CancelReason.IOC_REMAINDER)]
    empty = book.submit(market(4, "b", BUY, 1), ts=3)
    assert [type(e) for e in empty] == [Accepted, Cancelled]
    assert cancels(empty) == [(4, 1, CancelReason.IOC_REMAINDER)]


def test_fok_fills_completely_or_not_at_all() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", SELL, 100, 3), ts=1)
    book.submit(limit(2, "a", SELL, 101, 3), ts=1)
    before = snapshot(book)
    events = book.submit(limit(3, "b", BUY, 101, 7, FOK), ts=2)  # only 6 up to 101
    assert [type(e) for e in events] == [Accepted, Cancelled]
    assert cancels(events) == [(3, 7, CancelReason.FOK_UNFILLABLE)]
    assert snapshot(book) == before
    events = book.submit(limit(4, "b", BUY, 101, 6, FOK), ts=3)
    assert fills(events)[::2] == [(4, "taker", 100, 3, 3), (4, "taker", 101, 3, 0)]
    assert not cancels(events)
    book.submit(limit(5, "a", SELL, 100, 2), ts=4)
    assert cancels(book.submit(market(6, "b", BUY, 3, FOK), ts=5)) == [
        (6, 3, CancelReason.FOK_UNFILLABLE)
    ]
    assert fills(book.submit(market(7, "b", BUY, 2, FOK), ts=6))[0] == (7, "taker", 100, 2, 0)


def test_fok_counts_outside_liquidity_and_respects_self_trade_stops() -> None:
    book = MatchingBook("M", stp_mode=STPMode.CANCEL_TAKING)
    book.set_outside_level(SELL, 100, 2, ts=1)
    book.submit(limit(1, "b", SELL, 100, 3), ts=1)  # behind the outside 2
    book.submit(limit(2, "b", SELL, 101, 5), ts=1)
    # account b's own order at 100 stops matching after the outside 2: FOK 3 is unfillable
    assert cancels(book.submit(limit(3, "b", BUY, 101, 3, FOK), ts=2)) == [
        (3, 3, CancelReason.FOK_UNFILLABLE)
    ]
    # for account a: outside 2 + order 1's 3 + order 2's 5 = 10 up to 101
    events = book.submit(limit(4, "a", BUY, 101, 10, FOK), ts=3)
    assert sum(f.size_lots for f in events if isinstance(f, Fill) and f.order_id == 4) == 10


def test_fok_skips_own_orders_that_self_trade_prevention_cancels() -> None:
    book = MatchingBook("M", stp_mode=STPMode.CANCEL_RESTING)
    book.set_outside_level(SELL, 100, 2, ts=1)
    book.submit(limit(1, "b", SELL, 100, 3), ts=1)  # b's own, behind the outside 2
    book.submit(limit(2, "a", SELL, 101, 5), ts=1)
    # outside 2 + order 2's 5 = 7: fillable, order 1 is cancelled on the way
    events = book.submit(limit(3, "b", BUY, 101, 7, FOK), ts=2)
    assert fills(events) == [
        (3, "taker", 100, 2, 5),  # the outside 2: no maker fill
        (3, "taker", 101, 5, 0),
        (2, "maker", 101, 5, 0),
    ]
    assert cancels(events) == [(1, 3, CancelReason.SELF_TRADE)]


@pytest.mark.parametrize(
    ("mode", "account", "size", "expected"),
    [
        (STPMode.CANCEL_RESTING, "a", 5, 101),  # 2 at 100, a's own 3 skipped, 3 at 101
        (STPMode.CANCEL_RESTING, "c", 5, 100),  # 2 + 3 at 100
        (STPMode.CANCEL_RESTING, "c", 20, 103),  # 2 + 3 + 4, then the outside 10 at 103
        (STPMode.CANCEL_TAKING, "a", 5, 100),  # stops at a's own order
        (STPMode.CANCEL_BOTH, "a", 1, 100),
    ],
)
def test_sweep_price_is_where_a_market_order_would_end(
    mode: STPMode, account: str, size: int, expected: int
) -> None:
    book = MatchingBook("M", stp_mode=mode)
    book.submit(limit(1, "b", SELL, 100, 2), ts=1)
    book.submit(limit(2, "a", SELL, 100, 3), ts=1)
    book.submit(limit(3, "b", SELL, 101, 4), ts=1)
    book.set_outside_level(SELL, 103, 10, ts=1)
    assert book.sweep_price(BUY, size, account) == expected
    assert book.sweep_price(SELL, size, account) is None  # no bids
    taken = fills(book.submit(market(9, account, BUY, size), ts=2))
    assert max(f[2] for f in taken if f[0] == 9) == expected


def test_post_only_rests_or_is_cancelled_without_matching() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", SELL, 100, 5), ts=1)
    assert book.would_cross(BUY, 100)
    assert not book.would_cross(BUY, 99)
    before = snapshot(book)
    events = book.submit(limit(2, "b", BUY, 100, 1, POST), ts=2)
    assert [type(e) for e in events] == [Accepted, Cancelled]
    assert cancels(events) == [(2, 1, CancelReason.POST_ONLY_WOULD_CROSS)]
    assert snapshot(book) == before
    assert book.submit(limit(3, "b", BUY, 99, 1, POST), ts=3) == [
        Accepted(limit(3, "b", BUY, 99, 1, POST))
    ]
    assert book.depth(5) == ([(99, 1)], [(100, 5)])
    book.set_outside_level(BUY, 98, 4, ts=4)
    assert book.would_cross(SELL, 98)  # outside liquidity counts
    assert not book.would_cross(SELL, 100)


# ------------------------------------------------------------------ self-trade prevention


def stp_book(mode: STPMode) -> MatchingBook:
    book = MatchingBook("M", stp_mode=mode)
    book.submit(limit(1, "b", SELL, 100, 2), ts=1)
    book.submit(limit(2, "a", SELL, 100, 3), ts=1)  # a's own order, second in queue
    book.submit(limit(3, "b", SELL, 101, 4), ts=1)
    return book


def test_stp_cancel_resting_cancels_the_own_order_and_goes_on() -> None:
    book = stp_book(STPMode.CANCEL_RESTING)
    events = book.submit(limit(4, "a", BUY, 101, 5), ts=2)
    # 2 from order 1, own order 2 cancelled (3 left), then 3 from order 3 at 101
    assert fills(events)[::2] == [(4, "taker", 100, 2, 3), (4, "taker", 101, 3, 0)]
    assert cancels(events) == [(2, 3, CancelReason.SELF_TRADE)]
    assert [type(e) for e in events][4] is Cancelled  # between the two trades
    assert book.depth(5) == ([], [(101, 1)])


def test_stp_cancel_taking_cancels_the_taker_and_keeps_the_resting() -> None:
    book = stp_book(STPMode.CANCEL_TAKING)
    events = book.submit(limit(4, "a", BUY, 101, 5), ts=2)
    assert fills(events)[::2] == [(4, "taker", 100, 2, 3)]
    assert cancels(events) == [(4, 3, CancelReason.SELF_TRADE)]
    assert book.depth(5) == ([], [(100, 3), (101, 4)])
    assert [s.order.order_id for s in book.open_orders("a")] == [2]


def test_stp_cancel_both_cancels_both() -> None:
    book = stp_book(STPMode.CANCEL_BOTH)
    events = book.submit(limit(4, "a", BUY, 101, 5), ts=2)
    assert fills(events)[::2] == [(4, "taker", 100, 2, 3)]
    assert cancels(events) == [(2, 3, CancelReason.SELF_TRADE), (4, 3, CancelReason.SELF_TRADE)]
    assert book.depth(5) == ([], [(101, 4)])
    assert book.open_orders("a") == []


# ------------------------------------------------------------------ cancels, errors, halts


def test_cancel_and_cancel_all() -> None:
    book = MatchingBook("M")
    for oid, (account, price) in enumerate([("a", 99), ("b", 99), ("a", 98), ("a", 101)], 1):
        book.submit(limit(oid, account, BUY if price < 100 else SELL, price, oid), ts=oid)
    assert book.cancel(2) == [Cancelled(2, "b", "c2", 2, CancelReason.USER)]
    with pytest.raises(UnknownOrder):
        book.cancel(2)  # already gone
    with pytest.raises(UnknownOrder):
        book.cancel(1, account="b")  # not b's
    assert book.order_id_for("b", "c2") is None
    assert cancels(book.cancel_all("a")) == [
        (1, 1, CancelReason.USER),
        (3, 3, CancelReason.USER),
        (4, 4, CancelReason.USER),
    ]
    assert book.cancel_all("a") == []
    assert book.depth(5) == ([], [])


def test_cancel_everything_for_a_closed_market() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", BUY, 99, 1), ts=1)
    book.submit(limit(2, "b", SELL, 101, 2), ts=1)
    assert cancels(book.cancel_everything()) == [
        (1, 1, CancelReason.MARKET_CLOSED),
        (2, 2, CancelReason.MARKET_CLOSED),
    ]
    assert book.best_bid() is None
    assert book.best_ask() is None


@pytest.mark.parametrize(
    ("order", "message"),
    [
        (limit(9, "a", 0, 100, 1), "side"),
        (limit(9, "a", BUY, 100, 0), "size"),
        (limit(9, "a", BUY, 0, 1), "limit price"),
        (Order(9, "a", "c9", BUY, 100, 1, OrderType.MARKET, IOC), "no price"),
        (market(9, "a", BUY, 1, GTC), "IOC or FOK"),
        (market(9, "a", BUY, 1, POST), "IOC or FOK"),
        (limit(1, "b", BUY, 90, 1), "order id 1"),  # order 1 is open
        (Order(9, "a", "c1", BUY, 90, 1), "client order id 'c1'"),
    ],
)
def test_bad_orders_are_refused_and_change_nothing(order: Order, message: str) -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", SELL, 100, 5), ts=1)
    before = snapshot(book)
    with pytest.raises((InvalidOrder, DuplicateOrder), match=message):
        book.submit(order, ts=2)
    assert snapshot(book) == before


def test_client_order_id_is_per_account_and_reusable_once_closed() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", BUY, 90, 1), ts=1)
    book.submit(Order(2, "b", "c1", BUY, 90, 1), ts=1)  # same id, other account
    assert book.order_id_for("b", "c1") == 2
    book.cancel(1)
    book.submit(Order(3, "a", "c1", BUY, 90, 1), ts=2)
    assert book.order_id_for("a", "c1") == 3


def test_halt_refuses_orders_but_allows_cancels() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", BUY, 99, 1), ts=1)
    book.halt()
    assert book.halted
    with pytest.raises(MarketHalted, match="halted"):
        book.submit(limit(2, "b", SELL, 99, 1), ts=2)
    assert book.outside_trade(99, 5, SELL, ts=2) == []  # nothing trades while halted
    assert cancels(book.cancel(1)) == [(1, 1, CancelReason.USER)]
    book.resume(ts=3)
    assert not book.halted
    assert len(book.submit(limit(3, "b", SELL, 99, 1), ts=4)) == 1


def test_bad_market_data_is_refused() -> None:
    book = MatchingBook("M")
    with pytest.raises(InvalidMarketData):
        book.set_outside_level(BUY, 0, 1, ts=1)
    with pytest.raises(InvalidMarketData):
        book.set_outside_level(BUY, 10, -1, ts=1)
    with pytest.raises(InvalidMarketData):
        book.set_outside_level(2, 10, 1, ts=1)
    with pytest.raises(InvalidMarketData):
        book.outside_trade(10, 0, BUY, ts=1)
    book.set_outside_level(BUY, 10, 3, ts=1)
    with pytest.raises(InvalidMarketData, match="twice"):
        book.replace_outside([(9, 1), (9, 2)], [], ts=2)
    assert book.depth(5) == ([(10, 3)], [])
    with pytest.raises(InvalidRequest):
        book.depth(-1)


# ------------------------------------------------------------------ queue-position model


def test_client_order_joins_behind_displayed_outside_size() -> None:
    book = MatchingBook("M")
    book.set_outside_level(BUY, 100, 10, ts=1)
    book.submit(limit(1, "a", BUY, 100, 4), ts=2)
    assert book.open_orders("a")[0].queue_ahead == 10
    assert book.depth(5) == ([(100, 14)], [])


def test_recorded_trade_consumes_queue_ahead_then_fills() -> None:
    book = MatchingBook("M")
    book.set_outside_level(BUY, 100, 10, ts=1)
    book.submit(limit(1, "a", BUY, 100, 4), ts=2)
    events = book.outside_trade(100, 12, SELL, ts=3)
    # 10 outside ahead, then 2 of our 4
    assert trades(events) == [(100, 10, SELL), (100, 2, SELL)]
    assert fills(events) == [(1, "maker", 100, 2, 2)]
    state = book.open_orders("a")[0]
    assert (state.remaining_lots, state.queue_ahead) == (2, 0)
    assert book.outside_size(BUY, 100) == 10  # the next recorded update changes it
    # a smaller trade only moves us up the queue
    book2 = MatchingBook("M")
    book2.set_outside_level(BUY, 100, 10, ts=1)
    book2.submit(limit(1, "a", BUY, 100, 4), ts=2)
    assert fills(book2.outside_trade(100, 7, SELL, ts=3)) == []
    assert book2.open_orders("a")[0].queue_ahead == 3


def test_recorded_trade_walks_the_queue_in_time_order() -> None:
    book = MatchingBook("M")
    book.set_outside_level(SELL, 200, 10, ts=1)
    book.submit(limit(1, "a", SELL, 200, 3), ts=2)  # queue ahead 10
    book.set_outside_level(SELL, 200, 15, ts=3)  # 5 more, behind order 1
    book.submit(limit(2, "b", SELL, 200, 4), ts=4)  # queue ahead 15
    events = book.outside_trade(200, 20, BUY, ts=5)
    # 10 outside, order 1's 3, the 5 between, then 2 of order 2's 4
    assert trades(events) == [(200, 10, BUY), (200, 3, BUY), (200, 5, BUY), (200, 2, BUY)]
    assert fills(events) == [(1, "maker", 200, 3, 0), (2, "maker", 200, 2, 2)]
    assert book.open_orders("b")[0].queue_ahead == 0
    assert book.depth(5) == ([], [(200, 17)])  # 15 outside + 2 of order 2


def test_recorded_trade_beyond_our_orders_is_one_trade() -> None:
    book = MatchingBook("M")
    book.set_outside_level(BUY, 100, 10, ts=1)
    book.submit(limit(1, "a", BUY, 100, 4), ts=2)  # queue ahead 10
    book.set_outside_level(BUY, 100, 15, ts=3)  # 5 behind us
    events = book.outside_trade(100, 20, SELL, ts=4)
    # 10 ahead, our 4, and the other 6 as one trade (behind us and beyond)
    assert trades(events) == [(100, 10, SELL), (100, 4, SELL), (100, 6, SELL)]
    assert book.depth(5) == ([(100, 15)], [])


def test_recorded_trade_through_our_price_fills_at_our_price() -> None:
    book = MatchingBook("M")
    book.set_outside_level(BUY, 100, 10, ts=1)
    book.submit(limit(1, "a", BUY, 101, 5), ts=2)
    book.submit(limit(2, "a", BUY, 100, 5), ts=2)  # behind 10 outside
    events = book.outside_trade(99, 3, SELL, ts=3)
    assert fills(events) == [(1, "maker", 101, 3, 2)]
    assert trades(events) == [(101, 3, SELL)]
    # 8 at 99: 2 more at 101, then order 2 at 100 (also priced through), rest at 99
    events = book.outside_trade(99, 8, SELL, ts=4)
    assert fills(events) == [(1, "maker", 101, 2, 0), (2, "maker", 100, 5, 0)]
    assert trades(events) == [(101, 2, SELL), (100, 5, SELL), (99, 1, SELL)]


def test_recorded_trade_on_the_other_side_or_beyond_touches_nothing() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", BUY, 100, 5), ts=1)
    assert fills(book.outside_trade(101, 3, SELL, ts=2)) == []  # a sell above our bid
    assert fills(book.outside_trade(100, 3, BUY, ts=3)) == []  # a buy: it lifts asks
    assert trades(book.outside_trade(101, 3, SELL, ts=4)) == [(101, 3, SELL)]


def test_outside_shrink_clamps_queue_ahead_and_growth_goes_behind() -> None:
    book = MatchingBook("M")
    book.set_outside_level(BUY, 100, 10, ts=1)
    book.submit(limit(1, "a", BUY, 100, 4), ts=2)
    book.set_outside_level(BUY, 100, 12, ts=3)
    assert book.open_orders("a")[0].queue_ahead == 10  # growth is behind us
    book.set_outside_level(BUY, 100, 6, ts=4)
    assert book.open_orders("a")[0].queue_ahead == 6  # cancels from behind, then ahead
    book.set_outside_level(BUY, 100, 20, ts=5)
    assert book.open_orders("a")[0].queue_ahead == 6
    book.set_outside_level(BUY, 100, 0, ts=6)
    assert book.open_orders("a")[0].queue_ahead == 0
    assert book.depth(5) == ([(100, 4)], [])


def test_crossing_outside_update_fills_our_order_as_maker() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", BUY, 100, 5), ts=1)
    events = book.set_outside_level(SELL, 99, 3, ts=2)
    assert fills(events) == [(1, "maker", 100, 3, 2)]
    assert trades(events) == [(100, 3, SELL)]
    assert book.outside_size(SELL, 99) == 0  # consumed by our order
    assert book.depth(5) == ([(100, 2)], [])
    events = book.set_outside_level(SELL, 100, 10, ts=3)
    assert fills(events) == [(1, "maker", 100, 2, 0)]
    assert book.depth(5) == ([], [(100, 8)])


def test_client_taker_takes_and_depletes_outside_liquidity() -> None:
    book = MatchingBook("M")
    book.set_outside_level(SELL, 101, 10, ts=1)
    events = book.submit(limit(1, "a", BUY, 101, 4), ts=2)
    assert fills(events) == [(1, "taker", 101, 4, 0)]  # no maker fill
    assert trades(events) == [(101, 4, BUY)]
    assert book.outside_size(SELL, 101) == 6
    assert book.depth(5) == ([], [(101, 6)])
    book.set_outside_level(SELL, 101, 10, ts=3)  # the recording knows nothing of us
    assert book.outside_size(SELL, 101) == 10


def test_client_taker_walks_outside_and_client_orders_in_queue_order() -> None:
    book = MatchingBook("M")
    book.set_outside_level(SELL, 101, 5, ts=1)
    book.submit(limit(1, "x", SELL, 101, 3), ts=2)  # 5 outside ahead
    book.set_outside_level(SELL, 101, 8, ts=3)  # 3 more behind order 1
    events = book.submit(limit(2, "a", BUY, 101, 7), ts=4)
    # the 5 outside ahead, then 2 of order 1
    assert fills(events) == [
        (2, "taker", 101, 5, 2),
        (2, "taker", 101, 2, 0),
        (1, "maker", 101, 2, 1),
    ]
    assert book.outside_size(SELL, 101) == 3
    assert book.open_orders("x")[0].queue_ahead == 0
    events = book.submit(limit(3, "a", BUY, 101, 10), ts=5)
    # order 1's last lot, the 3 outside behind it, 6 rest as a bid at 101
    assert fills(events) == [
        (3, "taker", 101, 1, 9),
        (1, "maker", 101, 1, 0),
        (3, "taker", 101, 3, 6),
    ]
    assert book.depth(5) == ([(101, 6)], [])


def test_crossing_outside_update_waits_for_resume_while_halted() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", BUY, 100, 5), ts=1)
    book.halt()
    assert book.set_outside_level(SELL, 100, 2, ts=2) == []
    events = book.resume(ts=3)
    assert fills(events) == [(1, "maker", 100, 2, 3)]
    assert book.depth(5) == ([(100, 3)], [])


def test_replace_outside_keeps_queue_position_where_a_level_persists() -> None:
    book = MatchingBook("M")
    book.replace_outside([(100, 10), (99, 4)], [(102, 5)], ts=1)
    book.submit(limit(1, "a", BUY, 100, 2), ts=2)
    book.replace_outside([(100, 12), (98, 1)], [(103, 5)], ts=3)
    assert book.open_orders("a")[0].queue_ahead == 10
    assert book.depth(5) == ([(100, 14), (98, 1)], [(103, 5)])
    book.clear_outside(SELL)
    assert book.depth(5) == ([(100, 14), (98, 1)], [])
    book.clear_outside()
    assert book.open_orders("a")[0].queue_ahead == 0
    assert book.depth(5) == ([(100, 2)], [])
    events = book.replace_outside([], [(99, 1), (100, 3)], ts=4)  # crosses our bid at 100
    assert fills(events) == [(1, "maker", 100, 1, 1), (1, "maker", 100, 1, 0)]
    assert book.depth(5) == ([], [(100, 2)])


# ------------------------------------------------------------------ depth and deltas


def test_take_changes_reports_net_changes_only() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", BUY, 100, 2), ts=1)
    book.submit(limit(2, "a", BUY, 101, 2), ts=1)
    book.set_outside_level(SELL, 103, 4, ts=1)
    assert book.take_changes() == ([(101, 2), (100, 2)], [(103, 4)])
    assert book.take_changes() == ([], [])
    book.submit(limit(3, "b", BUY, 100, 1), ts=2)
    book.cancel(3)  # back to where it was: not a change
    book.cancel(2)
    book.set_outside_level(SELL, 103, 5, ts=3)
    assert book.take_changes() == ([(101, 0)], [(103, 5)])


# ------------------------------------------------------------------ random sequences

ACCOUNTS = ("a", "b", "c")
prices = st.integers(95, 105)
sizes = st.integers(1, 8)
sides = st.sampled_from([BUY, SELL])
submit_op = st.tuples(
    st.just("submit"),
    st.sampled_from(ACCOUNTS),
    sides,
    st.sampled_from([OrderType.LIMIT, OrderType.LIMIT, OrderType.MARKET]),
    st.sampled_from([GTC, GTC, IOC, FOK, POST]),
    prices,
    sizes,
    st.integers(0, 30),  # client order id, sometimes reused
)
ops = st.lists(
    st.one_of(
        submit_op,
        submit_op,
        st.tuples(st.just("cancel"), st.integers(0, 40)),
        st.tuples(st.just("cancel_all"), st.sampled_from(ACCOUNTS)),
        st.tuples(st.just("outside"), sides, prices, st.integers(0, 12)),
        st.tuples(st.just("trade"), sides, prices, st.integers(1, 15)),
        st.tuples(st.just("halt"), st.booleans()),
    ),
    max_size=60,
)


def brute_depth(book: MatchingBook, outside: dict[int, dict[int, int]]) -> object:
    """Both sides aggregated from scratch: open orders plus the test's own outside mirror."""
    levels: dict[int, dict[int, int]] = {BUY: defaultdict(int), SELL: defaultdict(int)}
    for account in ACCOUNTS:
        for state in book.open_orders(account):
            levels[state.order.side][state.order.price_ticks] += state.remaining_lots
    for side in (BUY, SELL):
        for price, size in outside[side].items():
            levels[side][price] += size
    bids = sorted(((p, s) for p, s in levels[BUY].items() if s), reverse=True)
    asks = sorted((p, s) for p, s in levels[SELL].items() if s)
    return bids, asks


@settings(max_examples=150, deadline=None)
@given(ops, st.sampled_from(list(STPMode)))
def test_random_sequences_keep_every_invariant(ops_: list[tuple], mode: STPMode) -> None:
    book = MatchingBook("M", stp_mode=mode)
    outside: dict[int, dict[int, int]] = {BUY: {}, SELL: {}}
    mirror: dict[int, dict[int, int]] = {BUY: {}, SELL: {}}  # rebuilt from take_changes
    orders: dict[int, Order] = {}
    history: dict[int, list[Event]] = defaultdict(list)
    public: list[PublicTrade] = []
    trade_fills: dict[int, list[Fill]] = defaultdict(list)
    next_id = 1
    for ts, op in enumerate(ops_, 1):
        before = snapshot(book)
        try:
            if op[0] == "submit":
                _, account, side, otype, tif, price, size, coid = op
                if otype is OrderType.MARKET:
                    price, tif = 0, (FOK if tif is FOK else IOC)
                order = Order(next_id, account, f"k{coid}", side, price, size, otype, tif)
                next_id += 1
                sweep = None if book.halted else book.sweep_price(side, size, account)
                events = book.submit(order, ts)
                orders[order.order_id] = order
                taken = [
                    e.price_ticks
                    for e in events
                    if isinstance(e, Fill)
                    and e.order_id == order.order_id
                    and e.liquidity == "taker"
                ]
                if otype is OrderType.MARKET and tif is IOC:
                    # a market buy locks funds at this price: it must be exactly where it ends
                    assert sweep == (
                        None if not taken else max(taken) if side == BUY else min(taken)
                    )
            elif op[0] == "cancel":
                events = book.cancel(op[1])
            elif op[0] == "cancel_all":
                events = book.cancel_all(op[1])
            elif op[0] == "outside":
                _, side, price, size = op
                events = book.set_outside_level(side, price, size, ts)
                if size:
                    outside[side][price] = size
                else:
                    outside[side].pop(price, None)
            elif op[0] == "trade":
                _, side, price, size = op
                events = book.outside_trade(price, size, side, ts)
                if not book.halted:
                    assert sum(e.size_lots for e in events if isinstance(e, PublicTrade)) == size
            elif op[1]:
                book.halt()
                events = []
            else:
                events = book.resume(ts)
        except (MarketHalted, DuplicateOrder, UnknownOrder):
            assert snapshot(book) == before
            continue

        for e in events:
            if isinstance(e, Accepted):
                history[e.order.order_id].append(e)
            elif isinstance(e, Fill | Cancelled):
                history[e.order_id].append(e)
            if isinstance(e, Fill):
                trade_fills[e.trade_id].append(e)
            if isinstance(e, PublicTrade):
                public.append(e)
                # a trade that no client maker took part in consumed outside liquidity,
                # unless it was a recorded trade (which leaves displayed sizes alone)
                makers = [f for f in trade_fills[e.trade_id] if f.liquidity == "maker"]
                takers = [f for f in trade_fills[e.trade_id] if f.liquidity == "taker"]
                if op[0] == "submit" and not makers:
                    _deplete(outside, -e.taker_side, e.price_ticks, e.size_lots)
                if op[0] == "outside" and makers:
                    _deplete(outside, op[1], op[2], e.size_lots)  # the crossing level
                if op[0] == "halt" and makers:  # resume: the best crossing outside level
                    _deplete_crossing(outside, -makers[0].side, makers[0], e.size_lots)
                assert len(makers) <= 1
                assert len(takers) <= 1
                assert trade_fills[e.trade_id] == takers + makers  # the taker's fill first
                for f in makers + takers:
                    assert (f.price_ticks, f.size_lots) == (e.price_ticks, e.size_lots)
                    assert f.side == (e.taker_side if f.liquidity == "taker" else -e.taker_side)

        # depth against a brute-force aggregation; deltas rebuild the same book
        assert book.depth(1000) == brute_depth(book, outside)
        bid_changes, ask_changes = book.take_changes()
        for side, changes in ((BUY, bid_changes), (SELL, ask_changes)):
            for price, size in changes:
                assert mirror[side].get(price, 0) != size
                if size:
                    mirror[side][price] = size
                else:
                    del mirror[side][price]
        bids, asks = book.depth(1000)
        assert sorted(mirror[BUY].items(), reverse=True) == bids
        assert sorted(mirror[SELL].items()) == asks
        # no client order rests crossing the other side
        if not book.halted:
            for account in ACCOUNTS:
                for s in book.open_orders(account):
                    assert not book.would_cross(s.order.side, s.order.price_ticks)

    # trade ids count up by one
    assert [t.trade_id for t in public] == list(range(1, len(public) + 1))
    # every accepted order: Accepted first, then fills, one terminal state or still open
    open_ids = {s.order.order_id for a in ACCOUNTS for s in book.open_orders(a)}
    for oid, evs in history.items():
        order = orders[oid]
        assert isinstance(evs[0], Accepted)
        assert sum(isinstance(e, Accepted) for e in evs) == 1
        filled = 0
        terminal = 0
        for e in evs[1:]:
            assert terminal == 0, "an event after the terminal state"
            if isinstance(e, Fill):
                filled += e.size_lots
                assert e.remaining_lots == order.size_lots - filled >= 0
                terminal += e.remaining_lots == 0
            else:
                assert e.remaining_lots == order.size_lots - filled > 0
                terminal += 1
        assert terminal + (oid in open_ids) == 1
        if oid in open_ids:
            state = book.order_state(oid)
            assert state is not None
            assert (state.filled_lots, state.remaining_lots) == (filled, order.size_lots - filled)
            assert book.order_id_for(order.account, order.client_order_id) == oid


def _deplete(outside: dict[int, dict[int, int]], side: int, price: int, size: int) -> None:
    left = outside[side][price] - size
    assert left >= 0
    if left:
        outside[side][price] = left
    else:
        del outside[side][price]


def _deplete_crossing(
    outside: dict[int, dict[int, int]], outside_side: int, maker: Fill, size: int
) -> None:
    # the crossing outside level is the best one on its side that crosses the maker's price
    candidates = [
        p
        for p in outside[outside_side]
        if (p <= maker.price_ticks if outside_side == SELL else p >= maker.price_ticks)
    ]
    price = min(candidates) if outside_side == SELL else max(candidates)
    _deplete(outside, outside_side, price, size)


def test_events_are_tagged_msgspec_structs() -> None:
    book = MatchingBook("M")
    book.submit(limit(1, "a", SELL, 100, 1), ts=1)
    events = book.submit(limit(2, "b", BUY, 100, 1), ts=2)
    encoded = msgspec.json.encode(events)
    assert msgspec.json.decode(encoded, type=list[Event]) == events
    assert [e["type"] for e in msgspec.json.decode(encoded)] == [
        "accepted",
        "fill",
        "fill",
        "public_trade",
    ]


def test_errors_share_one_base() -> None:
    assert issubclass(UnknownOrder, MatchingError)
    assert issubclass(InvalidOrder, ValueError)
