"""The simulator's ledger: locks, fees (maker rebate, rounding up), insufficient balances,
positions and average prices, Cosmos bank amounts, and no negative balance ever over random
order flow through the real matching book. Expected amounts are worked out by hand."""

from __future__ import annotations

from decimal import Context, Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashmm.venue.sim.accounts import (
    Account,
    Asset,
    DuplicateAccount,
    DuplicateLock,
    FeeSchedule,
    InsufficientBalance,
    InvalidSpec,
    Ledger,
    MarketSpec,
    SettlementError,
    UnknownAccount,
)
from flashmm.venue.sim.matching import (
    BUY,
    SELL,
    Cancelled,
    Fill,
    MatchingBook,
    Order,
    OrderType,
    TimeInForce,
)

D = Decimal
SEI = Asset("SEI", "usei", 6)
USDC = Asset("USDC", "uusdc", 6)
# a price of 4000 ticks is 0.4 USDC per SEI; one lot is 1 SEI
SEI_USDC = MarketSpec("SEI/USDC", SEI, USDC, tick_size=D("0.0001"), lot_size=D("1"))
FEES = FeeSchedule(maker_bps=D("-1"), taker_bps=D("5"))


def ledger(**balances: dict[str, str]) -> Ledger:
    book = Ledger([SEI, USDC], FEES)
    for name, amounts in balances.items():
        book.add_account(
            Account(name, f"{name}-key", f"sei1{name}", {s: D(v) for s, v in amounts.items()})
        )
    return book


def fill(
    order_id: int, account: str, side: int, price: int, size: int, remaining: int, liq: str
) -> Fill:
    return Fill(order_id, account, f"c{order_id}", side, price, size, remaining, liq, 1, 0)


def state(book: Ledger, *accounts: str) -> object:
    return [
        (book.balances(a), book.position(a, SEI_USDC), book.cosmos_balances(f"sei1{a}"))
        for a in accounts
    ]


# ------------------------------------------------------------------ specs


def test_specs_refuse_what_cannot_settle_exactly() -> None:
    with pytest.raises(InvalidSpec, match="finer than SEI"):
        MarketSpec("X", SEI, USDC, tick_size=D("0.01"), lot_size=D("0.0000001"))
    with pytest.raises(InvalidSpec, match="finer than USDC"):
        MarketSpec("X", SEI, USDC, tick_size=D("0.00001"), lot_size=D("0.01"))
    with pytest.raises(InvalidSpec, match="tick_size"):
        MarketSpec("X", SEI, USDC, tick_size=D("0"), lot_size=D("1"))
    with pytest.raises(InvalidSpec, match="decimals"):
        Asset("X", "ux", 19)
    with pytest.raises(InvalidSpec, match="taker_bps"):
        FeeSchedule(maker_bps=D("0"), taker_bps=D("-1"))
    with pytest.raises(InvalidSpec, match="maker_bps"):
        FeeSchedule(maker_bps=D("-10000"), taker_bps=D("1"))


def test_accounts_open_once_with_valid_balances() -> None:
    book = ledger(a={"SEI": "1.5"})
    with pytest.raises(DuplicateAccount):
        book.add_account(Account("a", "k2", "sei1z"))
    with pytest.raises(DuplicateAccount):
        book.add_account(Account("z", "k2", "sei1a"))
    with pytest.raises(InvalidSpec, match="6 decimals"):
        book.add_account(Account("z", "k2", "sei1z", {"SEI": D("0.0000001")}))
    with pytest.raises(UnknownAccount):
        book.balance("nobody", "SEI")
    assert book.balance("a", "SEI").total == D("1.5")
    book.deposit("a", "USDC", D("2.25"))
    assert book.balance("a", "USDC").available == D("2.25")


def test_account_repr_hides_the_api_key() -> None:
    assert "secret" not in repr(Account("a", "secret", "sei1a"))


# ------------------------------------------------------------------ locks


def test_buy_locks_price_times_size_plus_taker_fee_and_sell_locks_base() -> None:
    book = ledger(a={"SEI": "100", "USDC": "100"})
    # 10 lots at 0.4: 0.4 * 1.0005 = 0.4002 per lot, 4.002 in all
    assert book.check_order("a", SEI_USDC, BUY, 4000, 10) == D("4.002")
    assert book.balance("a", "USDC").available == D("100")  # a check locks nothing
    assert book.lock("a", SEI_USDC, 1, BUY, 4000, 10) == D("4.002")
    usdc = book.balance("a", "USDC")
    assert (usdc.total, usdc.locked, usdc.available) == (D("100"), D("4.002"), D("95.998"))
    assert book.lock("a", SEI_USDC, 2, SELL, 4100, 30) == D("30")
    assert book.balance("a", "SEI").available == D("70")
    with pytest.raises(DuplicateLock):
        book.lock("a", SEI_USDC, 2, SELL, 4100, 1)
    # a cancel releases what is left
    assert book.release(SEI_USDC, 1) == D("4.002")
    assert book.release(SEI_USDC, 1) == D("0")
    assert book.balance("a", "USDC").available == D("100")


def test_lock_per_lot_is_rounded_up_to_the_quote_decimals() -> None:
    book = ledger(a={"USDC": "1"})
    # 1 tick = 0.0001; with the fee 0.00010005 per lot, rounded up to 0.000101
    assert book.check_order("a", SEI_USDC, BUY, 1, 3) == D("0.000303")


def test_market_buy_locks_at_the_worst_price_given() -> None:
    book = ledger(a={"SEI": "10", "USDC": "100"})
    # 5 lots at 0.5 worst: 0.5 * 1.0005 = 0.50025 per lot
    assert book.check_order("a", SEI_USDC, BUY, 0, 5, True, 5000) == D("2.50125")
    with pytest.raises(InvalidSpec, match="worst_price_ticks"):
        book.check_order("a", SEI_USDC, BUY, 0, 5, is_market=True)
    assert book.check_order("a", SEI_USDC, SELL, 0, 5, is_market=True) == D("5")


def test_insufficient_balance_names_asset_required_and_available() -> None:
    book = ledger(a={"SEI": "3", "USDC": "10"})
    book.lock("a", SEI_USDC, 1, BUY, 4000, 20)  # 8.004 locked: 1.996 available
    before = state(book, "a")
    with pytest.raises(InsufficientBalance) as err:
        book.lock("a", SEI_USDC, 2, BUY, 4000, 5)  # needs 2.001
    assert err.value.details == {"asset": "USDC", "required": "2.001", "available": "1.996"}
    assert "2.001 USDC" in str(err.value)
    with pytest.raises(InsufficientBalance) as err:
        book.check_order("a", SEI_USDC, SELL, 4000, 4)
    assert err.value.details == {"asset": "SEI", "required": "4", "available": "3"}
    assert state(book, "a") == before


# ------------------------------------------------------------------ fills and fees


def test_taker_buy_fill_moves_assets_charges_fee_and_releases_its_lock() -> None:
    book = ledger(a={"SEI": "0", "USDC": "100"})
    book.lock("a", SEI_USDC, 1, BUY, 4000, 10)
    fee = book.settle(fill(1, "a", BUY, 3999, 4, 6, "taker"), SEI_USDC)
    # notional 4 * 0.3999 = 1.5996; fee 1.5996 * 5 bps = 0.0007998, rounded up to 0.0008
    assert fee == D("0.0008")
    usdc = book.balance("a", "USDC")
    assert usdc.total == D("100") - D("1.5996") - D("0.0008") == D("98.3996")
    assert usdc.locked == 6 * D("0.4002") == D("2.4012")
    assert book.balance("a", "SEI").total == D("4")
    assert book.fees_collected["USDC"] == D("0.0008")
    book.settle(fill(1, "a", BUY, 4000, 6, 0, "taker"), SEI_USDC)
    assert book.balance("a", "USDC").locked == 0  # filled: nothing stays locked
    assert book.locked_for(SEI_USDC, 1) == 0


def test_maker_rebate_is_rounded_up_towards_the_venue() -> None:
    book = ledger(b={"SEI": "10", "USDC": "0"})
    book.lock("b", SEI_USDC, 7, SELL, 3999, 4)
    fee = book.settle(fill(7, "b", SELL, 3999, 4, 0, "maker"), SEI_USDC)
    # 1.5996 * -1 bp = -0.00015996, rounded up (towards +inf) to -0.000159
    assert fee == D("-0.000159")
    assert book.balance("b", "USDC").total == D("1.5996") + D("0.000159") == D("1.599759")
    sei = book.balance("b", "SEI")
    assert (sei.total, sei.locked) == (D("6"), D("0"))
    assert book.fees_collected["USDC"] == D("-0.000159")


def test_tiny_fee_rounds_up_to_one_unit() -> None:
    book = ledger(a={"USDC": "1"})
    # 1 lot at 1 tick: 0.0001 * 5 bps = 0.00000005, rounded up to 0.000001
    assert book.settle(fill(1, "a", BUY, 1, 1, 0, "taker"), SEI_USDC) == D("0.000001")


def test_settlement_is_exact_whatever_the_callers_decimal_context() -> None:
    book = ledger(a={"SEI": "0", "USDC": "123456789.123456"})
    book.lock("a", SEI_USDC, 1, BUY, 4000, 10)
    with localcontext(Context(prec=5)):
        book.settle(fill(1, "a", BUY, 3999, 4, 6, "taker"), SEI_USDC)
    assert book.balance("a", "USDC").total == D("123456789.123456") - D("1.6004")


def test_a_fill_that_does_not_match_its_lock_is_refused() -> None:
    book = ledger(a={"SEI": "0", "USDC": "100"}, b={"SEI": "1"})
    book.lock("a", SEI_USDC, 1, BUY, 4000, 10)
    before = state(book, "a", "b")
    with pytest.raises(SettlementError, match="10 lots are locked"):
        book.settle(fill(1, "a", BUY, 4000, 4, 7, "taker"), SEI_USDC)
    with pytest.raises(SettlementError, match="does not match"):
        book.settle(fill(1, "a", SELL, 4000, 4, 6, "taker"), SEI_USDC)
    with pytest.raises(SettlementError, match="available"):
        book.settle(fill(9, "b", SELL, 4000, 2, 0, "taker"), SEI_USDC)  # b has 1 SEI
    assert state(book, "a", "b") == before


# ------------------------------------------------------------------ positions


def test_position_and_average_entry_price() -> None:
    book = ledger(a={"SEI": "10", "USDC": "100"})  # spot: a short needs SEI to sell
    book.settle(fill(1, "a", BUY, 3999, 4, 0, "maker"), SEI_USDC)
    book.settle(fill(2, "a", BUY, 4010, 6, 0, "maker"), SEI_USDC)
    pos = book.position("a", SEI_USDC)
    # (4 * 0.3999 + 6 * 0.4010) / 10 = (1.5996 + 2.406) / 10
    assert (pos.size, pos.avg_entry_price) == (D("10"), D("0.40056"))
    book.settle(fill(3, "a", SELL, 4020, 5, 0, "maker"), SEI_USDC)
    pos = book.position("a", SEI_USDC)
    # 5 * (0.4020 - 0.40056) realized, average unchanged
    assert (pos.size, pos.avg_entry_price, pos.realized_pnl) == (D(5), D("0.40056"), D("0.0072"))
    book.settle(fill(4, "a", SELL, 4000, 8, 0, "maker"), SEI_USDC)
    pos = book.position("a", SEI_USDC)
    # closes 5 at 5 * (0.4000 - 0.40056) = -0.0028, then 3 short from 0.4000
    assert (pos.size, pos.avg_entry_price) == (D(-3), D("0.4"))
    assert pos.realized_pnl == D("0.0072") - D("0.0028")
    assert pos.fees_paid < 0  # four maker rebates
    book.settle(fill(5, "a", BUY, 4100, 3, 0, "maker"), SEI_USDC)
    pos = book.position("a", SEI_USDC)
    assert (pos.size, pos.avg_entry_price) == (D(0), D(0))
    assert pos.realized_pnl == D("0.0044") - 3 * D("0.01")


# ------------------------------------------------------------------ cosmos


def test_cosmos_balances_are_integer_smallest_units_of_the_available_balance() -> None:
    book = ledger(a={"SEI": "1.5", "USDC": "0"})
    book.lock("a", SEI_USDC, 1, SELL, 4000, 1)
    # 0.5 SEI available = 500000 usei; zero USDC is left out; sorted by denom
    assert book.cosmos_balances("sei1a") == [{"denom": "usei", "amount": "500000"}]
    book.deposit("a", "USDC", D("0.000001"))
    assert book.cosmos_balances("sei1a") == [
        {"denom": "usei", "amount": "500000"},
        {"denom": "uusdc", "amount": "1"},
    ]
    assert book.cosmos_balances("sei1unknown") == []


# ------------------------------------------------------------------ random order flow

ACCOUNTS = ("a", "b", "c")
START = {"SEI": D("40"), "USDC": D("16")}  # 40 lots at 0.4, before fees
orders = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(ACCOUNTS),
            st.sampled_from([BUY, SELL]),
            st.sampled_from([OrderType.LIMIT, OrderType.LIMIT, OrderType.MARKET]),
            st.sampled_from(list(TimeInForce)),
            st.one_of(st.just(4000), st.integers(3990, 4010)),
            st.one_of(st.integers(1, 25), st.none()),  # None: all the account can afford
        ),
        st.integers(1, 60),  # cancel this order id
    ),
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(orders)
def test_balances_never_go_negative_and_assets_are_conserved(flow: list) -> None:
    book = MatchingBook("SEI/USDC")
    led = Ledger([SEI, USDC], FEES)
    for name in ACCOUNTS:
        led.add_account(Account(name, f"{name}-key", f"sei1{name}", START))
    for oid, op in enumerate(flow, 1):
        if isinstance(op, int):
            if book.order_state(op) is None:
                continue
            events = book.cancel(op)
        else:
            account, side, otype, tif, price, size = op
            is_market = otype is OrderType.MARKET
            if is_market:
                price, tif = 0, (TimeInForce.FOK if tif is TimeInForce.FOK else TimeInForce.IOC)
            if size is None:
                # all in: the locks leave (next to) nothing available, so a lock that
                # did not cover every fee would drive the balance negative
                asset = "USDC" if side == BUY else "SEI"
                asks = book.depth(1000)[1]
                highest = asks[-1][0] if asks else 1  # no market buy goes beyond it
                try:
                    per_lot = led.check_order(account, SEI_USDC, side, price, 1, is_market, highest)
                except InsufficientBalance:
                    continue
                size = int(led.balance(account, asset).available // per_lot)
            # a market buy locks at the price where it will end, and no more
            worst = book.sweep_price(side, size, account) or 1
            try:
                led.lock(account, SEI_USDC, oid, side, price, size, is_market, worst)
            except InsufficientBalance:
                continue
            events = book.submit(Order(oid, account, f"c{oid}", side, price, size, otype, tif), oid)
        for e in events:
            if isinstance(e, Fill):
                led.settle(e, SEI_USDC)
            elif isinstance(e, Cancelled):
                led.release(SEI_USDC, e.order_id)
        for name in ACCOUNTS:
            for symbol in START:
                bal = led.balance(name, symbol)
                assert bal.total >= 0
                assert bal.available >= 0
            # what is locked is exactly what the account's open orders still hold
            held = {"SEI": D(0), "USDC": D(0)}
            for s in book.open_orders(name):
                held["USDC" if s.order.side == BUY else "SEI"] += led.locked_for(
                    SEI_USDC, s.order.order_id
                )
            assert {k: led.balance(name, k).locked for k in held} == held
    # trades only move assets between the accounts; the venue keeps the fees
    assert sum(led.balance(n, "SEI").total for n in ACCOUNTS) == 3 * START["SEI"]
    usdc = sum(led.balance(n, "USDC").total for n in ACCOUNTS) + led.fees_collected["USDC"]
    assert usdc == 3 * START["USDC"]
    positions = [led.position(n, SEI_USDC).size for n in ACCOUNTS]
    assert sum(positions) == 0
    for name, pos in zip(ACCOUNTS, positions, strict=True):
        assert pos == led.balance(name, "SEI").total - START["SEI"]
