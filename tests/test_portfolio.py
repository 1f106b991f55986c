"""Portfolio: positions, average price, PnL, fees, equity and markouts, hand-computed."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashmm.engine.portfolio import (
    InvalidFill,
    InvalidPortfolioConfig,
    Markout,
    Portfolio,
    PortfolioError,
    PortfolioMarket,
    UnknownMarket,
)
from flashmm.engine.records import Fill, Side

ETH = PortfolioMarket(market_id="ETH/USDC", tick_size=0.01, lot_size=0.001)
SEI = PortfolioMarket(market_id="SEI/USDC", tick_size=0.0001, lot_size=1.0)
UNIT = PortfolioMarket(market_id="U", tick_size=1.0, lot_size=1.0)
ETH_QUOTE = 0.01 * 0.001  # quote currency per tick * lot
SEI_QUOTE = 0.0001 * 1.0
S = 1_000_000_000  # ns per second

_trade_ids = itertools.count()


def fill(
    side: Side,
    price: int,
    size: int,
    *,
    market: str = "ETH/USDC",
    fee: str = "0",
    ts_ns: int = 0,
) -> Fill:
    n = next(_trade_ids)
    return Fill(
        trade_id=f"t{n}",
        order_id=f"o{n}",
        client_order_id=f"c{n}",
        market_id=market,
        side=side,
        price_ticks=price,
        size_lots=size,
        fee=Decimal(fee),
        liquidity="maker",
        ts_ns=ts_ns,
    )


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------------------ positions and PnL


def test_reducing_realizes_against_the_average_price() -> None:
    p = Portfolio([ETH])
    p.apply_fill(fill(Side.BUY, 100, 10))
    p.apply_fill(fill(Side.SELL, 103, 4))
    pos = p.position("ETH/USDC")
    assert pos.position_lots == 6
    assert pos.position == approx(6 * 0.001)
    assert pos.avg_price == approx(100 * 0.01)  # reducing leaves the average as it was
    assert pos.realized_pnl == approx((103 - 100) * 4 * ETH_QUOTE)  # 12 ticks*lots
    assert pos.fills == 2
    assert pos.volume == approx((100 * 10 + 103 * 4) * ETH_QUOTE)


def test_adding_averages_the_entry_price_and_realizes_nothing() -> None:
    p = Portfolio([ETH])
    p.apply_fill(fill(Side.BUY, 100, 10))
    p.apply_fill(fill(Side.BUY, 106, 5))
    pos = p.position("ETH/USDC")
    assert pos.avg_price == approx((100 * 10 + 106 * 5) / 15 * 0.01)  # 102 ticks
    assert pos.realized_pnl == 0.0
    p.apply_fill(fill(Side.BUY, 101, 2))  # 1732 / 17 ticks: not a whole number
    pos = p.position("ETH/USDC")
    # The average is kept to 2**-30 tick; rounding it puts the dust into realized PnL.
    assert pos.avg_price == pytest.approx(1732 / 17 * 0.01, rel=0, abs=2**-31 * 0.01)
    assert pos.realized_pnl == pytest.approx(0.0, abs=17 * 2**-31 * ETH_QUOTE)


def test_short_positions_average_and_realize_with_their_sign() -> None:
    p = Portfolio([ETH])
    p.apply_fill(fill(Side.SELL, 200, 3))
    p.apply_fill(fill(Side.SELL, 206, 3))
    p.apply_fill(fill(Side.BUY, 199, 2))
    pos = p.position("ETH/USDC")
    assert pos.position_lots == -4
    assert pos.avg_price == approx(203 * 0.01)
    assert pos.realized_pnl == approx((203 - 199) * 2 * ETH_QUOTE)


def test_crossing_zero_realizes_the_closed_part_and_opens_the_rest_at_the_fill() -> None:
    p = Portfolio([ETH])
    p.apply_fill(fill(Side.BUY, 100, 10))
    p.apply_fill(fill(Side.SELL, 103, 4))  # long 6 @ 100, realized 12
    p.apply_fill(fill(Side.SELL, 105, 10))  # closes 6 (+30), opens short 4 @ 105
    pos = p.position("ETH/USDC")
    assert pos.position_lots == -4
    assert pos.avg_price == approx(105 * 0.01)
    assert pos.realized_pnl == approx((12 + 6 * 5) * ETH_QUOTE)
    p.apply_fill(fill(Side.BUY, 101, 4))  # closes the short: +(105 - 101) * 4
    pos = p.position("ETH/USDC")
    assert pos.position_lots == 0
    assert pos.avg_price is None
    assert pos.realized_pnl == approx((12 + 30 + 16) * ETH_QUOTE)
    assert pos.unrealized_pnl == 0.0


def test_fees_and_rebates_are_summed_exactly_and_excluded_from_realized() -> None:
    p = Portfolio([SEI])
    p.apply_fill(fill(Side.BUY, 5000, 100, market="SEI/USDC", fee="-0.000050"))  # rebate
    p.apply_fill(fill(Side.SELL, 5010, 100, market="SEI/USDC", fee="0.000251"))
    p.apply_fill(fill(Side.BUY, 5005, 30, market="SEI/USDC", fee="-0.000015"))
    pos = p.position("SEI/USDC")
    realized = 10 * 100 * SEI_QUOTE
    assert pos.realized_pnl == approx(realized)
    assert pos.fees == float(Decimal("0.000186"))  # -0.000050 + 0.000251 - 0.000015
    assert pos.net_pnl == approx(realized - 0.000186)
    assert p.totals().fees == float(Decimal("0.000186"))


def test_a_net_rebate_makes_fees_negative() -> None:
    p = Portfolio([SEI])
    p.apply_fill(fill(Side.BUY, 5000, 10, market="SEI/USDC", fee="-0.0002"))
    p.apply_fill(fill(Side.SELL, 5000, 10, market="SEI/USDC", fee="-0.0002"))
    assert p.position("SEI/USDC").fees == -0.0004
    assert p.net_pnl() == approx(0.0004)


def test_unrealized_pnl_and_notional_at_the_mark() -> None:
    p = Portfolio([ETH])
    p.apply_fill(fill(Side.BUY, 100, 10, fee="0.001"))
    p.apply_fill(fill(Side.SELL, 103, 4))  # long 6 @ 100
    p.mark("ETH/USDC", 110.5, 1)
    pos = p.position("ETH/USDC")
    assert p.mark_ticks("ETH/USDC") == 110.5
    assert pos.mark_price == approx(110.5 * 0.01)
    assert pos.unrealized_pnl == approx(6 * (110.5 - 100) * ETH_QUOTE)
    assert pos.notional == approx(6 * 110.5 * ETH_QUOTE)
    assert pos.net_pnl == approx((12 + 63) * ETH_QUOTE - 0.001)


def test_a_short_gains_when_the_mark_falls() -> None:
    p = Portfolio([ETH])
    p.apply_fill(fill(Side.SELL, 105, 4))
    p.mark("ETH/USDC", 101.0, 1)
    pos = p.position("ETH/USDC")
    assert pos.unrealized_pnl == approx((105 - 101) * 4 * ETH_QUOTE)
    assert pos.notional == approx(4 * 101 * ETH_QUOTE)


def test_before_any_mark_a_position_is_valued_at_its_average_price() -> None:
    p = Portfolio([ETH])
    p.apply_fill(fill(Side.BUY, 100, 10))
    pos = p.position("ETH/USDC")
    assert math.isnan(p.mark_ticks("ETH/USDC"))
    assert pos.mark_price is None
    assert pos.unrealized_pnl == 0.0
    assert pos.notional == approx(10 * 100 * ETH_QUOTE)


def test_equity_and_totals_add_up_over_markets() -> None:
    p = Portfolio([ETH, SEI], capital=1000.0)
    p.apply_fill(fill(Side.BUY, 100, 10, fee="0.002"))
    p.apply_fill(fill(Side.SELL, 103, 4))
    p.apply_fill(fill(Side.SELL, 5000, 200, market="SEI/USDC", fee="-0.0005"))
    p.mark("ETH/USDC", 101.0, 1)
    p.mark("SEI/USDC", 4990.0, 1)
    realized = 12 * ETH_QUOTE
    unrealized = 6 * 1 * ETH_QUOTE + 200 * 10 * SEI_QUOTE
    fees = 0.002 - 0.0005
    totals = p.totals()
    assert totals.realized_pnl == approx(realized)
    assert totals.unrealized_pnl == approx(unrealized)
    assert totals.fees == approx(fees)
    assert totals.net_pnl == approx(realized + unrealized - fees)
    assert totals.net_pnl == p.net_pnl()
    assert totals.equity == approx(1000.0 + realized + unrealized - fees)
    assert p.equity() == totals.equity
    assert totals.gross_notional == approx(6 * 101 * ETH_QUOTE + 200 * 4990 * SEI_QUOTE)
    assert [pos.market_id for pos in p.positions()] == ["ETH/USDC", "SEI/USDC"]
    assert sum(pos.net_pnl for pos in p.positions()) == approx(totals.net_pnl)


# ------------------------------------------------------------------------------ markouts


def test_markouts_at_each_horizon() -> None:
    p = Portfolio([ETH])
    p.mark("ETH/USDC", 1000.0, 0)
    p.apply_fill(fill(Side.BUY, 1000, 2, ts_ns=0))  # A
    p.mark("ETH/USDC", 1001.0, S // 2)
    p.mark("ETH/USDC", 1003.0, 1 * S)  # A at 1 s: the mid marked exactly then, +3
    assert p.position("ETH/USDC").markouts["1s"] == Markout(
        count=1, mean_ticks=3.0, mean_bps=approx(3 / 1000 * 1e4)
    )
    assert p.position("ETH/USDC").markouts["5s"].count == 0
    p.apply_fill(fill(Side.SELL, 1001, 1, ts_ns=2 * S))  # B
    p.mark("ETH/USDC", 998.0, 4 * S)  # B at 3 s: mid 1003 in force, -(1003 - 1001) = -2
    p.mark("ETH/USDC", 1010.0, 6 * S)  # A at 5 s: mid 998 in force, 998 - 1000 = -2
    p.mark("ETH/USDC", 1004.0, 7 * S + S // 2)  # B at 7 s: mid 1010, -(1010 - 1001) = -9
    p.mark("ETH/USDC", 990.0, 31 * S)  # A at 30 s: mid 1004, +4
    p.mark("ETH/USDC", 985.0, 33 * S)  # B at 32 s: mid 990, -(990 - 1001) = +11
    markouts = p.position("ETH/USDC").markouts
    assert list(markouts) == ["1s", "5s", "30s"]
    assert markouts["1s"].count == 2
    assert markouts["1s"].mean_ticks == approx((3 - 2) / 2)
    assert markouts["1s"].mean_bps == approx((3 / 1000 - 2 / 1001) * 1e4 / 2)
    assert markouts["5s"].count == 2
    assert markouts["5s"].mean_ticks == approx((-2 - 9) / 2)
    assert markouts["5s"].mean_bps == approx((-2 / 1000 - 9 / 1001) * 1e4 / 2)
    assert markouts["30s"].count == 2
    assert markouts["30s"].mean_ticks == approx((4 + 11) / 2)
    assert markouts["30s"].mean_bps == approx((4 / 1000 + 11 / 1001) * 1e4 / 2)
    assert p.totals().markouts == markouts


def test_a_markout_waits_for_a_late_mark() -> None:
    p = Portfolio([ETH])
    p.apply_fill(fill(Side.BUY, 500, 1, ts_ns=0))
    p.mark("ETH/USDC", 505.0, 10 * S)  # no mid was known at 1 s or 5 s
    markouts = p.position("ETH/USDC").markouts
    assert markouts["1s"] == Markout(count=1, mean_ticks=5.0, mean_bps=approx(5 / 500 * 1e4))
    assert markouts["5s"] == Markout(count=1, mean_ticks=5.0, mean_bps=approx(5 / 500 * 1e4))
    assert markouts["30s"].count == 0
    p.mark("ETH/USDC", 490.0, 40 * S)  # at 30 s the mid of 10 s was in force
    assert p.position("ETH/USDC").markouts["30s"].mean_ticks == 5.0


def test_a_mark_without_a_mid_is_ignored() -> None:
    p = Portfolio([ETH])
    p.mark("ETH/USDC", 100.0, 0)
    p.apply_fill(fill(Side.BUY, 100, 1, ts_ns=0))
    for bad in (math.nan, math.inf, 0.0, -5.0):
        p.mark("ETH/USDC", bad, S + S // 2)
    assert p.mark_ticks("ETH/USDC") == 100.0
    assert p.position("ETH/USDC").markouts["1s"].count == 0
    p.mark("ETH/USDC", 102.0, 2 * S)  # at 1 s the mid 100 was in force
    assert p.position("ETH/USDC").markouts["1s"] == Markout(count=1, mean_ticks=0.0, mean_bps=0.0)


def test_a_fill_booked_after_its_horizon_passed_is_not_measured_there() -> None:
    p = Portfolio([ETH])
    p.mark("ETH/USDC", 100.0, 0)
    p.mark("ETH/USDC", 101.0, 2 * S)
    p.apply_fill(fill(Side.BUY, 100, 1, ts_ns=0))  # its 1 s horizon is already gone
    p.mark("ETH/USDC", 104.0, 6 * S)
    markouts = p.position("ETH/USDC").markouts
    assert markouts["1s"].count == 0
    assert markouts["5s"] == Markout(count=1, mean_ticks=1.0, mean_bps=approx(1 / 100 * 1e4))


def test_fills_out_of_time_order_are_measured_at_their_own_horizons() -> None:
    p = Portfolio([ETH], markout_horizons_s=[1.0])
    p.mark("ETH/USDC", 100.0, 0)
    p.apply_fill(fill(Side.BUY, 100, 1, ts_ns=2 * S))
    p.apply_fill(fill(Side.BUY, 100, 1, ts_ns=1 * S))
    p.mark("ETH/USDC", 102.0, 2 * S + S // 2)  # the second fill at 2 s: mid 100, 0
    p.mark("ETH/USDC", 103.0, 3 * S + S // 2)  # the first at 3 s: mid 102, +2
    assert p.position("ETH/USDC").markouts["1s"] == Markout(
        count=2, mean_ticks=1.0, mean_bps=approx((0 + 2 / 100) * 1e4 / 2)
    )


def test_horizons_are_configurable_and_totals_combine_markets() -> None:
    p = Portfolio([ETH, SEI], markout_horizons_s=[2, 0.5])
    p.apply_fill(fill(Side.BUY, 100, 1, ts_ns=0))
    p.apply_fill(fill(Side.SELL, 5000, 1, market="SEI/USDC", ts_ns=0))
    p.mark("ETH/USDC", 101.0, S)
    p.mark("SEI/USDC", 4990.0, S)
    assert list(p.position("ETH/USDC").markouts) == ["0.5s", "2s"]
    total = p.totals().markouts["0.5s"]
    assert total.count == 2
    assert total.mean_ticks == approx((1 + 10) / 2)
    assert total.mean_bps == approx((1 / 100 + 10 / 5000) * 1e4 / 2)
    assert p.totals().markouts["2s"] == Markout(count=0, mean_ticks=0.0, mean_bps=0.0)


# ------------------------------------------------------------------------------ bad input


def test_an_unknown_market_is_a_key_error_naming_the_known_ones() -> None:
    p = Portfolio([ETH])
    with pytest.raises(UnknownMarket, match=r"'BTC/USDC'.*\['ETH/USDC'\]") as err:
        p.apply_fill(fill(Side.BUY, 100, 1, market="BTC/USDC"))
    assert isinstance(err.value, KeyError)
    assert isinstance(err.value, PortfolioError)
    for query in (p.position, p.position_lots, p.mark_ticks):
        with pytest.raises(UnknownMarket):
            query("BTC/USDC")
    with pytest.raises(UnknownMarket):
        p.mark("BTC/USDC", 100.0, 0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"size_lots": 0}, "size must be"),
        ({"size_lots": -3}, "size must be"),
        ({"price_ticks": 0}, "price must be"),
        ({"side": 0}, "side must be"),
        ({"fee": Decimal("NaN")}, "fee must be a finite Decimal"),
        ({"fee": 0.001}, "fee must be a finite Decimal"),
        ({"fee": Decimal("1E-70")}, "more digits"),
    ],
)
def test_a_bad_fill_is_refused_and_changes_nothing(changes: dict, message: str) -> None:
    p = Portfolio([ETH], capital=10.0)
    p.apply_fill(fill(Side.BUY, 100, 10, fee="0.5", ts_ns=0))
    p.mark("ETH/USDC", 101.0, 0)
    before = (p.positions(), p.totals())
    good = fill(Side.SELL, 102, 3, ts_ns=S // 2)
    bad = Fill(**{**{f: getattr(good, f) for f in good.__struct_fields__}, **changes})
    with pytest.raises(InvalidFill, match=message):
        p.apply_fill(bad)
    assert (p.positions(), p.totals()) == before
    p.mark("ETH/USDC", 101.0, 2 * S)  # the refused fill left no markout behind
    assert p.position("ETH/USDC").markouts["1s"].count == 1


@pytest.mark.parametrize(
    ("markets", "kwargs", "message"),
    [
        ([ETH, ETH], {}, "listed twice"),
        ([PortfolioMarket(market_id="", tick_size=1.0, lot_size=1.0)], {}, "non-empty"),
        ([PortfolioMarket(market_id="X", tick_size=0.0, lot_size=1.0)], {}, "tick_size"),
        ([PortfolioMarket(market_id="X", tick_size=1.0, lot_size=math.nan)], {}, "lot_size"),
        ([ETH], {"capital": math.inf}, "capital"),
        ([ETH], {"capital": -1.0}, "capital"),
        ([ETH], {"markout_horizons_s": [1.0, 0.0]}, "horizons must be"),
        ([ETH], {"markout_horizons_s": [1.0, 1.0]}, "must differ"),
        ([ETH], {"markout_horizons_s": [1e-12]}, "shorter than 1 ns"),
    ],
)
def test_a_bad_setup_is_refused(markets: list, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidPortfolioConfig, match=message):
        Portfolio(markets, **kwargs)


# ------------------------------------------------------------------------------ property

fills_strategy = st.lists(
    st.tuples(
        st.sampled_from([Side.BUY, Side.SELL]),
        st.integers(1, 1000),  # price, ticks
        st.integers(1, 50),  # size, lots
        st.integers(-500, 500),  # fee, millionths
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(fills=fills_strategy, mark=st.integers(1, 1000))
def test_realized_plus_unrealized_is_the_cash_flow_pnl(
    fills: list[tuple[Side, int, int, int]], mark: int
) -> None:
    # With tick = lot = 1 and these bounds every amount fits a float's 53 bits exactly.
    p = Portfolio([UNIT])
    cash = lots = 0
    ref_avg = Fraction(0)  # the exact average-cost model
    ref_realized = Fraction(0)
    avg_tol = 0.0  # each adding fill rounds the average by at most 2**-31 tick
    fees = Decimal(0)
    for side, price, size, fee_millionths in fills:
        fee = Decimal(fee_millionths).scaleb(-6)
        p.apply_fill(fill(side, price, size, market="U", fee=str(fee)))
        signed = side * size
        if lots == 0 or (lots > 0) == (signed > 0):
            ref_avg = (ref_avg * abs(lots) + price * size) / (abs(lots) + size)
            avg_tol += 2**-31
        else:
            closed = min(size, abs(lots))
            ref_realized += (price - ref_avg) * closed * (1 if lots > 0 else -1)
            if size > abs(lots):
                ref_avg, avg_tol = Fraction(price), 0.0
        cash -= signed * price
        lots += signed
        fees += fee
    p.mark("U", float(mark), 1)
    pos = p.position("U")
    assert pos.position_lots == lots
    assert pos.realized_pnl + pos.unrealized_pnl == cash + lots * mark
    if lots:
        assert pos.avg_price == pytest.approx(float(ref_avg), rel=0, abs=avg_tol + 1e-12)
        # Both realize cash + lots * avg, so they differ by at most avg_tol per lot held.
        assert pos.realized_pnl == pytest.approx(
            float(ref_realized), rel=0, abs=abs(lots) * avg_tol + 1e-9
        )
    else:
        assert pos.avg_price is None
        assert pos.realized_pnl == cash == ref_realized
    assert pos.fees == float(fees)
    assert pos.net_pnl == pos.realized_pnl + pos.unrealized_pnl - pos.fees
    assert p.net_pnl() == pos.net_pnl
