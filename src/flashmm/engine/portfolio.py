"""The engine's book of account: positions, PnL, fees, equity and fill markouts.

:class:`Portfolio` turns fills (:class:`~flashmm.engine.records.Fill`) and mids into
positions and PnL per market and in total. Positions are integer lots; money is kept in
exact integer ``tick * lot`` accumulators (fees in exact decimals) and converted to the
market's quote currency only in reports.

Average price works as on a venue: a fill that adds to a position moves the average
price; one that reduces it realizes ``(exit - avg) * size * side`` and leaves the average
as it was; one that crosses zero realizes the closed part and opens the rest at the fill
price. The average is kept to 2**-30 tick; the rounding of an average goes into realized
PnL, so ``realized + unrealized`` is always exactly the cash-flow PnL. Realized PnL
excludes fees; ``net_pnl = realized + unrealized - fees``.

Markouts measure adverse selection: at each horizon after a fill, the move of the mid
from the fill price in the fill's favour, ``side * (mid - price)``, in ticks and in bps.
"""

from __future__ import annotations

import math
from bisect import insort
from collections import deque
from collections.abc import Sequence
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from typing import Final

import msgspec

from flashmm.engine.records import Fill

__all__ = [
    "DEFAULT_MARKOUT_HORIZONS_S",
    "InvalidFill",
    "InvalidPortfolioConfig",
    "MarketPosition",
    "Markout",
    "Portfolio",
    "PortfolioError",
    "PortfolioMarket",
    "PortfolioTotals",
    "UnknownMarket",
]

DEFAULT_MARKOUT_HORIZONS_S: Final = (1.0, 5.0, 30.0)

# The average price is kept as an integer number of 2**-30 ticks: exact averaging would
# need fractions whose denominators grow with every add-after-reduce (thousands of digits
# after a day of quoting). A power of two converts to float without rounding.
_AVG_SCALE: Final = 1 << 30
_NEVER: Final = 1 << 127  # "no markout due", later than any ns timestamp
# Fees are summed exactly; a fee that would need more digits is refused, not rounded.
_FEE_CONTEXT: Final = Context(prec=60, traps=[InvalidOperation, Overflow, Inexact, Rounded])
_NS_PER_S: Final = 1_000_000_000
_BPS: Final = 10_000.0


# ------------------------------------------------------------------------------ errors


class PortfolioError(Exception):
    """Base of every error of this module; the portfolio is unchanged after one."""


class UnknownMarket(PortfolioError, KeyError):
    """A market the portfolio was not set up with."""

    def __str__(self) -> str:
        # KeyError would quote the message.
        return str(self.args[0]) if self.args else ""


class InvalidFill(PortfolioError, ValueError):
    """A fill that cannot be booked (size, price, side or fee out of range)."""


class InvalidPortfolioConfig(PortfolioError, ValueError):
    """A market, horizon or capital the portfolio cannot be set up with."""


# ------------------------------------------------------------------------------ config and reports


class PortfolioMarket(msgspec.Struct, frozen=True, kw_only=True):
    """One market the portfolio books: its id and the size of one tick and one lot."""

    market_id: str
    tick_size: float
    """Quote currency per tick."""
    lot_size: float
    """Base units per lot."""


class Markout(msgspec.Struct, kw_only=True):
    """Markouts of the fills measured at one horizon; means are 0 while ``count`` is 0."""

    count: int
    mean_ticks: float
    mean_bps: float


class MarketPosition(msgspec.Struct, kw_only=True):
    """A snapshot of one market's position and PnL, in the quote currency."""

    market_id: str
    position_lots: int
    position: float
    """Base units, signed (negative: short)."""
    avg_price: float | None
    """Mean entry price of the open position; None when flat."""
    realized_pnl: float
    unrealized_pnl: float
    fees: float
    """Negative when rebates exceed fees."""
    net_pnl: float
    notional: float
    """``|position| * mark`` (at the average price until the market has a mark)."""
    mark_price: float | None
    """The last mid; None until the market has one."""
    fills: int
    volume: float
    """Traded quote notional."""
    markouts: dict[str, Markout]
    """Keyed by horizon: ``"1s"``, ``"5s"``, ``"30s"`` by default."""


class PortfolioTotals(msgspec.Struct, kw_only=True):
    """Sums over all markets, in the quote currency (the markets share it)."""

    realized_pnl: float
    unrealized_pnl: float
    fees: float
    net_pnl: float
    equity: float
    """``capital + net_pnl``."""
    gross_notional: float
    markouts: dict[str, Markout]


# ------------------------------------------------------------------------------ portfolio


class _MarketBook:
    """Mutable state of one market; every money field is exact."""

    __slots__ = (
        "avg_scaled",
        "avg_ticks",
        "cash",
        "clock_ns",
        "fees",
        "fees_q",
        "fills",
        "lot_size",
        "lots",
        "market_id",
        "markout_bps",
        "markout_count",
        "markout_ticks",
        "mid",
        "next_due_ns",
        "pending",
        "quote_per_tick_lot",
        "realized_q",
        "tick_size",
        "volume",
    )

    def __init__(self, market: PortfolioMarket, horizons: int) -> None:
        self.market_id = market.market_id
        self.tick_size = market.tick_size
        self.lot_size = market.lot_size
        # Via decimals so that e.g. 0.01 * 0.1 gives 0.001, not 0.0010000000000000002.
        self.quote_per_tick_lot = float(
            Decimal(repr(market.tick_size)) * Decimal(repr(market.lot_size))
        )
        self.lots = 0
        self.avg_scaled = 0  # average entry price in ticks * _AVG_SCALE
        self.avg_ticks = 0.0
        self.cash = 0  # sum of -side * price * size, ticks * lots
        self.realized_q = 0.0
        self.fees = Decimal(0)
        self.fees_q = 0.0
        self.fills = 0
        self.volume = 0  # ticks * lots
        self.mid = math.nan
        self.clock_ns = -_NEVER  # the latest mark's time
        # One deque of (due_ns, price_ticks, side) per horizon, in due order.
        self.pending: list[deque[tuple[int, int, int]]] = [deque() for _ in range(horizons)]
        self.next_due_ns = _NEVER
        self.markout_count = [0] * horizons
        self.markout_ticks = [0.0] * horizons
        self.markout_bps = [0.0] * horizons

    def realized_scaled(self) -> int:
        # Cash flow plus the open position at its average price: the identity
        # realized + unrealized == cash flow + position * mark then holds exactly.
        return self.cash * _AVG_SCALE + self.lots * self.avg_scaled

    def unrealized_q(self) -> float:
        if self.lots == 0 or math.isnan(self.mid):
            return 0.0
        return self.lots * (self.mid - self.avg_ticks) * self.quote_per_tick_lot


class Portfolio:
    """Positions, PnL, fees and markouts of the engine's markets.

    All markets are assumed to share one quote currency, so totals add up. Fill times
    (``Fill.ts_ns``) and mark times must be on the same clock.
    """

    def __init__(
        self,
        markets: Sequence[PortfolioMarket],
        *,
        capital: float = 0.0,
        markout_horizons_s: Sequence[float] = DEFAULT_MARKOUT_HORIZONS_S,
    ) -> None:
        if not (math.isfinite(capital) and capital >= 0.0):
            raise InvalidPortfolioConfig(f"capital must be a finite amount >= 0, got {capital!r}")
        horizons = sorted(_check_horizon(h) for h in markout_horizons_s)
        keys = [_horizon_key(h) for h in horizons]
        if len(set(keys)) != len(keys):
            raise InvalidPortfolioConfig(
                f"markout horizons must differ, got {list(markout_horizons_s)!r}"
            )
        books: dict[str, _MarketBook] = {}
        for market in markets:
            _check_market(market)
            if market.market_id in books:
                raise InvalidPortfolioConfig(f"market {market.market_id!r} is listed twice")
            books[market.market_id] = _MarketBook(market, len(horizons))
        self.capital = float(capital)
        """Account value at start, in the quote currency."""
        self._books = books
        self._book_list = list(books.values())
        self._horizon_keys = keys
        self._horizon_ns = [round(h * _NS_PER_S) for h in horizons]
        self._fees = Decimal(0)
        self._fees_q = 0.0

    # -------------------------------------------------------------------------- updates

    def apply_fill(self, fill: Fill) -> None:
        """Book one fill. Does not dedupe: the journal hands each fill over once.

        Raises :class:`UnknownMarket` or :class:`InvalidFill` and changes nothing when the
        fill cannot be booked.
        """
        book = self._book(fill.market_id)
        side, price, size, fee = fill.side, fill.price_ticks, fill.size_lots, fill.fee
        where = f"fill {fill.trade_id!r} in {fill.market_id!r}"
        if side not in (1, -1):
            raise InvalidFill(f"{where}: side must be 1 (buy) or -1 (sell), got {side!r}")
        if not _is_int(size) or size <= 0:
            raise InvalidFill(f"{where}: size must be a whole number of lots > 0, got {size!r}")
        if not _is_int(price) or price <= 0:
            raise InvalidFill(f"{where}: price must be a whole number of ticks > 0, got {price!r}")
        if not _is_int(fill.ts_ns):
            raise InvalidFill(f"{where}: ts_ns must be an integer, got {fill.ts_ns!r}")
        if not isinstance(fee, Decimal) or not fee.is_finite():
            raise InvalidFill(f"{where}: fee must be a finite Decimal, got {fee!r}")
        try:
            market_fees = _FEE_CONTEXT.add(book.fees, fee)
            total_fees = _FEE_CONTEXT.add(self._fees, fee)
        except (Inexact, Rounded, Overflow) as exc:
            raise InvalidFill(
                f"{where}: fee {fee} has more digits than the fees can be summed exactly with "
                f"({_FEE_CONTEXT.prec} significant digits)"
            ) from exc

        # Work out the new state in locals first, so nothing is half-updated.
        signed = int(side) * size
        lots = book.lots
        if lots == 0 or (lots > 0) == (signed > 0):
            # Adding: the average moves; its rounding (at most 2**-31 tick per lot held) lands in
            # realized PnL, which keeps the cash-flow identity exact.
            new_lots = lots + signed
            cost = abs(lots) * book.avg_scaled + size * price * _AVG_SCALE
            held = abs(new_lots)
            new_avg = (2 * cost + held) // (2 * held)
        elif size <= abs(lots):
            new_lots = lots + signed
            new_avg = book.avg_scaled if new_lots else 0
        else:
            new_lots = lots + signed  # crossed zero: the rest opens at the fill price
            new_avg = price * _AVG_SCALE

        book.lots = new_lots
        book.avg_scaled = new_avg
        book.avg_ticks = new_avg / _AVG_SCALE
        book.cash -= signed * price
        book.realized_q = book.realized_scaled() / _AVG_SCALE * book.quote_per_tick_lot
        book.fees = market_fees
        book.fees_q = float(market_fees)
        book.fills += 1
        book.volume += size * price
        self._fees = total_fees
        self._fees_q = float(total_fees)
        self._schedule_markouts(book, fill.ts_ns, price, int(side))

    def mark(self, market_id: str, mid_ticks: float, now_ns: int) -> None:
        """Set a market's mid (called on every book update). A mid that is NaN, infinite
        or <= 0 (an empty book side) is ignored: the last mid stays in force."""
        book = self._books.get(market_id)
        if book is None:
            raise UnknownMarket(f"unknown market {market_id!r}")
        if not 0.0 < mid_ticks < math.inf:
            return
        if now_ns >= book.next_due_ns:
            self._settle_markouts(book, mid_ticks, now_ns)
        book.mid = mid_ticks
        if now_ns > book.clock_ns:
            book.clock_ns = now_ns

    # -------------------------------------------------------------------------- queries

    def position_lots(self, market_id: str) -> int:
        """Signed position in lots."""
        return self._book(market_id).lots

    def mark_ticks(self, market_id: str) -> float:
        """The last mid in ticks; NaN until the market has one."""
        return self._book(market_id).mid

    def net_pnl(self) -> float:
        """Total net PnL in the quote currency; O(markets), for the risk monitor."""
        realized = unrealized = 0.0
        for book in self._book_list:
            realized += book.realized_q
            unrealized += book.unrealized_q()
        return realized + unrealized - self._fees_q

    def equity(self) -> float:
        """``capital + net_pnl()``."""
        return self.capital + self.net_pnl()

    def position(self, market_id: str) -> MarketPosition:
        """A snapshot of one market."""
        return self._snapshot(self._book(market_id))

    def positions(self) -> list[MarketPosition]:
        """Snapshots of every market, in the order the markets were given."""
        return [self._snapshot(book) for book in self._book_list]

    def totals(self) -> PortfolioTotals:
        """Sums over every market; ``net_pnl`` equals :meth:`net_pnl`."""
        realized = unrealized = gross = 0.0
        for book in self._book_list:
            realized += book.realized_q
            unrealized += book.unrealized_q()
            gross += _notional(book)
        net = realized + unrealized - self._fees_q
        markouts: dict[str, Markout] = {}
        for i, key in enumerate(self._horizon_keys):
            count = sum(book.markout_count[i] for book in self._book_list)
            ticks = sum(book.markout_ticks[i] for book in self._book_list)
            bps = sum(book.markout_bps[i] for book in self._book_list)
            markouts[key] = _markout(count, ticks, bps)
        return PortfolioTotals(
            realized_pnl=realized,
            unrealized_pnl=unrealized,
            fees=self._fees_q,
            net_pnl=net,
            equity=self.capital + net,
            gross_notional=gross,
            markouts=markouts,
        )

    # -------------------------------------------------------------------------- internals

    def _book(self, market_id: str) -> _MarketBook:
        try:
            return self._books[market_id]
        except KeyError:
            raise UnknownMarket(
                f"unknown market {market_id!r}; the portfolio books {sorted(self._books)!r}"
            ) from None

    def _snapshot(self, book: _MarketBook) -> MarketPosition:
        unrealized = book.unrealized_q()
        has_mark = not math.isnan(book.mid)
        return MarketPosition(
            market_id=book.market_id,
            position_lots=book.lots,
            position=book.lots * book.lot_size,
            avg_price=book.avg_ticks * book.tick_size if book.lots else None,
            realized_pnl=book.realized_q,
            unrealized_pnl=unrealized,
            fees=book.fees_q,
            net_pnl=book.realized_q + unrealized - book.fees_q,
            notional=_notional(book),
            mark_price=book.mid * book.tick_size if has_mark else None,
            fills=book.fills,
            volume=book.volume * book.quote_per_tick_lot,
            markouts={
                key: _markout(book.markout_count[i], book.markout_ticks[i], book.markout_bps[i])
                for i, key in enumerate(self._horizon_keys)
            },
        )

    def _schedule_markouts(self, book: _MarketBook, ts_ns: int, price: int, side: int) -> None:
        for pending, horizon_ns in zip(book.pending, self._horizon_ns, strict=True):
            due = ts_ns + horizon_ns
            if due < book.clock_ns:
                continue  # a late fill: the mid at this horizon is already gone
            entry = (due, price, side)
            if not pending or due >= pending[-1][0]:
                pending.append(entry)
            else:
                insort(pending, entry)
            if due < book.next_due_ns:
                book.next_due_ns = due

    def _settle_markouts(self, book: _MarketBook, mid: float, now_ns: int) -> None:
        # The mid in force at a horizon is the last one marked at or before it: the
        # previous mid for horizons before now, this one for a horizon exactly now. With
        # no previous mid the markout has waited for this mark.
        previous = book.mid
        next_due = _NEVER
        for i, pending in enumerate(book.pending):
            while pending and pending[0][0] <= now_ns:
                due, price, side = pending.popleft()
                at = previous if due < now_ns and not math.isnan(previous) else mid
                ticks = side * (at - price)
                book.markout_count[i] += 1
                book.markout_ticks[i] += ticks
                book.markout_bps[i] += ticks / price * _BPS
            if pending and pending[0][0] < next_due:
                next_due = pending[0][0]
        book.next_due_ns = next_due


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_market(market: PortfolioMarket) -> None:
    if not isinstance(market.market_id, str) or not market.market_id:
        raise InvalidPortfolioConfig(f"market_id must be a non-empty string: {market!r}")
    for name in ("tick_size", "lot_size"):
        value = getattr(market, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise InvalidPortfolioConfig(
                f"market {market.market_id!r}: {name} must be a finite number > 0, got {value!r}"
            )


def _check_horizon(seconds: float) -> float:
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise InvalidPortfolioConfig(
            f"markout horizons must be finite numbers of seconds > 0, got {seconds!r}"
        )
    if round(seconds * _NS_PER_S) < 1:
        raise InvalidPortfolioConfig(f"markout horizon {seconds!r} s is shorter than 1 ns")
    return float(seconds)


def _horizon_key(seconds: float) -> str:
    return f"{seconds:g}s"  # 1.0 -> "1s", 0.5 -> "0.5s"


def _notional(book: _MarketBook) -> float:
    price = book.avg_ticks if math.isnan(book.mid) else book.mid
    return abs(book.lots) * price * book.quote_per_tick_lot


def _markout(count: int, ticks: float, bps: float) -> Markout:
    if count == 0:
        return Markout(count=0, mean_ticks=0.0, mean_bps=0.0)
    return Markout(count=count, mean_ticks=ticks / count, mean_bps=bps / count)
