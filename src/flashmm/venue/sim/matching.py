"""The simulator's exchange core for one market: price-time matching over integer ticks and lots.

:class:`MatchingBook` holds the resting client orders of one market and, when a recorded
market is replayed, the recorded (*outside*) liquidity among them. It does no I/O and
reads no clock: every call that can trade takes the timestamp ``ts`` (ns) to stamp on
fills, and every mutating call returns the :data:`Event` values it caused, in the order
they happened. It is deterministic: the same calls give the same events.

Events, per accepted order:

- :class:`Accepted` first, exactly once;
- then any number of :class:`Fill` (one per side of a trade, the taker's first);
- and exactly one terminal state: a fill with ``remaining_lots == 0`` or a :class:`Cancelled`.

Each trade also yields one :class:`PublicTrade` for the market-data feed, after its fills.
Trade ids count up by one per book, from 1.

Outside liquidity (:meth:`~MatchingBook.set_outside_level`,
:meth:`~MatchingBook.outside_trade`) follows a queue-position model: a client order joins
behind the outside size displayed at its price when it comes to rest (``queue_ahead``);
recorded cancels are assumed to come from behind it (``queue_ahead`` only shrinks to the
new displayed size); recorded trades at its price consume the queue ahead first; recorded
trades through its price, and outside levels that cross it, fill it at its own price. The
synthetic flow places real orders through :meth:`~MatchingBook.submit`, so everything also
works with no outside liquidity at all.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from enum import StrEnum
from typing import Final, Literal, TypeAlias

import msgspec

__all__ = [
    "BUY",
    "DEFAULT_STP_MODE",
    "SELL",
    "Accepted",
    "CancelReason",
    "Cancelled",
    "DuplicateOrder",
    "Event",
    "Fill",
    "InvalidMarketData",
    "InvalidOrder",
    "InvalidRequest",
    "Level",
    "Liquidity",
    "MarketHalted",
    "MatchingBook",
    "MatchingError",
    "Order",
    "OrderState",
    "OrderType",
    "PublicTrade",
    "STPMode",
    "TimeInForce",
    "UnknownOrder",
]

BUY: Final = 1
SELL: Final = -1


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    """Values as on the wire (``flashmm.venue.order_entry``)."""

    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    POST_ONLY = "POST_ONLY"


class STPMode(StrEnum):
    """What happens when a taker would trade with a resting order of its own account."""

    CANCEL_RESTING = "cancel_resting"
    CANCEL_TAKING = "cancel_taking"
    CANCEL_BOTH = "cancel_both"


DEFAULT_STP_MODE: Final = STPMode.CANCEL_RESTING


class CancelReason(StrEnum):
    USER = "user"
    IOC_REMAINDER = "ioc_remainder"
    FOK_UNFILLABLE = "fok_unfillable"
    POST_ONLY_WOULD_CROSS = "post_only_would_cross"
    SELF_TRADE = "self_trade"
    MARKET_CLOSED = "market_closed"


# ------------------------------------------------------------------------------ errors


class MatchingError(Exception):
    """Base of every error the matching book raises; the book is unchanged after one."""


class InvalidRequest(MatchingError, ValueError):
    """An argument that is out of range or inconsistent."""


class InvalidOrder(InvalidRequest):
    """An order whose fields cannot go together (size, price, side, type and time in force)."""


class InvalidMarketData(InvalidRequest):
    """A recorded level or trade that cannot be applied (negative size, price <= 0, ...)."""


class DuplicateOrder(MatchingError):
    """The order id, or the account's client order id, belongs to an open order."""


class UnknownOrder(MatchingError, LookupError):
    """No open order has this id (never seen, already closed, or another account's)."""


class MarketHalted(MatchingError):
    """The market is halted: :meth:`MatchingBook.submit` accepts nothing until ``resume``."""


# ------------------------------------------------------------------------------ orders


class Order(msgspec.Struct, frozen=True, gc=False):
    """An order as submitted. ``side`` +1 buy, -1 sell; ``price_ticks`` 0 for MARKET."""

    order_id: int
    account: str
    client_order_id: str
    side: int
    price_ticks: int
    size_lots: int
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC


class OrderState(msgspec.Struct, gc=False):
    """A resting order. ``priority`` orders the book's resting orders by arrival time;
    ``queue_ahead`` is the outside (recorded) size still ahead of it at its price."""

    order: Order
    remaining_lots: int
    filled_lots: int = 0
    priority: int = 0
    queue_ahead: int = 0


# ------------------------------------------------------------------------------ events

Liquidity: TypeAlias = Literal["maker", "taker"]


class Accepted(msgspec.Struct, frozen=True, gc=False, tag="accepted"):
    """The order is live at the matcher; the first event of every accepted order."""

    order: Order


class Fill(msgspec.Struct, frozen=True, gc=False, tag="fill"):
    """One side of one trade, at ``price_ticks``; ``remaining_lots`` is left after it."""

    order_id: int
    account: str
    client_order_id: str
    side: int
    price_ticks: int
    size_lots: int
    remaining_lots: int
    liquidity: Liquidity
    trade_id: int
    ts: int


class Cancelled(msgspec.Struct, frozen=True, gc=False, tag="cancelled"):
    """The order is gone with ``remaining_lots`` unfilled."""

    order_id: int
    account: str
    client_order_id: str
    remaining_lots: int
    reason: CancelReason


class PublicTrade(msgspec.Struct, frozen=True, gc=False, tag="public_trade"):
    """A trade for the market-data feed; ``taker_side`` +1 buy, -1 sell."""

    price_ticks: int
    size_lots: int
    taker_side: int
    trade_id: int
    ts: int


Event: TypeAlias = Accepted | Fill | Cancelled | PublicTrade

Level: TypeAlias = tuple[int, int]
"""``(price_ticks, size_lots)``."""


# ------------------------------------------------------------------------- book sides


class _Level:
    """One price of one side: outside size first in the queue model, client orders in time
    order. ``queue_ahead`` never decreases along ``orders`` and never exceeds ``outside``."""

    __slots__ = ("client", "orders", "outside", "price")

    def __init__(self, price: int) -> None:
        self.price = price
        self.outside = 0
        self.client = 0  # sum of the remaining lots of ``orders``
        self.orders: list[OrderState] = []


class _Side:
    """The levels of one side. ``keys`` holds ``sign * price`` ascending, so the best level is
    always last: O(1) best price, and the busy end of the book is the cheap end of the list."""

    __slots__ = ("keys", "levels", "published", "sign", "touched")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.keys: list[int] = []
        self.levels: dict[int, _Level] = {}
        self.touched: set[int] = set()  # prices whose size may have changed since take_changes
        self.published: dict[int, int] = {}  # sizes as last reported by take_changes

    def level(self, price: int) -> _Level:
        level = self.levels.get(price)
        if level is None:
            level = self.levels[price] = _Level(price)
            insort(self.keys, self.sign * price)
        return level

    def discard_if_empty(self, level: _Level) -> None:
        if level.outside or level.orders:
            return
        del self.levels[level.price]
        key = self.sign * level.price
        if self.keys[-1] == key:
            self.keys.pop()
        else:
            del self.keys[bisect_left(self.keys, key)]

    def crossing(self, taker_price: int) -> list[_Level]:
        """The levels a taker limited to ``taker_price`` can reach, best first."""
        keys, limit, out = self.keys, self.sign * taker_price, []
        i = len(keys) - 1
        while i >= 0 and keys[i] >= limit:
            out.append(self.levels[self.sign * keys[i]])
            i -= 1
        return out

    def depth(self, n: int) -> list[Level]:
        levels, sign = self.levels, self.sign
        out = []
        for key in reversed(self.keys[-n:] if n else ()):
            level = levels[sign * key]
            out.append((level.price, level.outside + level.client))
        return out

    def take_changes(self) -> list[Level]:
        changes = []
        for price in self.touched:
            level = self.levels.get(price)
            size = level.outside + level.client if level is not None else 0
            if self.published.get(price, 0) != size:
                changes.append((price, size))
                if size:
                    self.published[price] = size
                else:
                    del self.published[price]
        self.touched.clear()
        changes.sort(key=lambda change: -self.sign * change[0])
        return changes


# ------------------------------------------------------------------------------- book


class MatchingBook:
    """One market's matching engine. Not thread-safe: one caller, one thread."""

    def __init__(self, market_id: str, stp_mode: STPMode = DEFAULT_STP_MODE) -> None:
        self.market_id = market_id
        self.stp_mode = STPMode(stp_mode)
        self._bids = _Side(BUY)
        self._asks = _Side(SELL)
        self._open: dict[int, OrderState] = {}
        self._by_client_id: dict[tuple[str, str], int] = {}
        self._by_account: dict[str, dict[int, OrderState]] = {}
        self._next_trade_id = 1
        self._next_priority = 1
        self._halted = False

    # ------------------------------------------------------------------ order entry

    def submit(self, order: Order, ts: int) -> list[Event]:
        """Match ``order`` and rest what is left if its time in force allows.

        Raises :class:`InvalidOrder`, :class:`DuplicateOrder` or :class:`MarketHalted`
        (nothing happened); otherwise the order is accepted and ends in the events or rests.
        """
        self._check_order(order)
        events: list[Event] = [Accepted(order)]
        state = OrderState(order, order.size_lots)
        if order.tif is TimeInForce.POST_ONLY:
            if self.would_cross(order.side, order.price_ticks):
                events.append(_cancelled(state, CancelReason.POST_ONLY_WOULD_CROSS))
            else:
                self._rest(state)
            return events
        limit = None if order.order_type is OrderType.MARKET else order.price_ticks
        if (
            order.tif is TimeInForce.FOK
            and self._reach(order.side, order.account, order.size_lots, limit)[0] < order.size_lots
        ):
            events.append(_cancelled(state, CancelReason.FOK_UNFILLABLE))
            return events
        if not self._take(state, limit, ts, events) or not state.remaining_lots:
            return events
        if order.order_type is OrderType.LIMIT and order.tif is TimeInForce.GTC:
            self._rest(state)
        else:
            events.append(_cancelled(state, CancelReason.IOC_REMAINDER))
        return events

    def cancel(self, order_id: int, account: str | None = None) -> list[Event]:
        """Cancel an open order (reason ``user``); with ``account``, only if it owns it.

        :class:`UnknownOrder` if there is no such open order (of that account).
        """
        state = self._open.get(order_id)
        if state is None or (account is not None and state.order.account != account):
            raise UnknownOrder(f"no open order {order_id} in {self.market_id}")
        return [self._cancel_resting(state, CancelReason.USER)]

    def cancel_all(self, account: str) -> list[Event]:
        """Cancel every open order of ``account``, oldest first (none is not an error)."""
        states = list(self._by_account.get(account, {}).values())
        return [self._cancel_resting(s, CancelReason.USER) for s in states]

    def cancel_everything(self, reason: CancelReason = CancelReason.MARKET_CLOSED) -> list[Event]:
        """Cancel every open order of every account, oldest first (a closed market)."""
        return [self._cancel_resting(s, reason) for s in list(self._open.values())]

    def halt(self) -> None:
        """Stop trading: ``submit`` raises :class:`MarketHalted`, recorded trades are ignored
        and crossing outside levels wait for :meth:`resume`. Cancels still work."""
        self._halted = True

    def resume(self, ts: int) -> list[Event]:
        """Trade again; client orders crossed by outside levels set meanwhile are filled."""
        self._halted = False
        events: list[Event] = []
        self._uncross_all(ts, events)
        return events

    @property
    def halted(self) -> bool:
        return self._halted

    # ------------------------------------------------------------------ queries

    def would_cross(self, side: int, price_ticks: int) -> bool:
        """Whether a limit order at ``price_ticks`` would trade at once (POST_ONLY check)."""
        makers = self._asks if side == BUY else self._bids
        return bool(makers.keys) and makers.sign * price_ticks <= makers.keys[-1]

    def best_bid(self) -> int | None:
        return self._bids.sign * self._bids.keys[-1] if self._bids.keys else None

    def best_ask(self) -> int | None:
        return self._asks.sign * self._asks.keys[-1] if self._asks.keys else None

    def depth(self, n: int) -> tuple[list[Level], list[Level]]:
        """The best ``n`` levels per side, best first, resting and outside sizes together."""
        if n < 0:
            raise InvalidRequest(f"depth must be >= 0, got {n}")
        return self._bids.depth(n), self._asks.depth(n)

    def take_changes(self) -> tuple[list[Level], list[Level]]:
        """Levels whose size changed since the last call, best first, as
        ``(price_ticks, new_size)``; size 0 means the level is gone."""
        return self._bids.take_changes(), self._asks.take_changes()

    def open_orders(self, account: str) -> list[OrderState]:
        """Copies of the account's open orders, oldest first."""
        return [_copy(s) for s in self._by_account.get(account, {}).values()]

    def order_state(self, order_id: int) -> OrderState | None:
        """A copy of the open order ``order_id``, or None if it is not open."""
        state = self._open.get(order_id)
        return None if state is None else _copy(state)

    def order_id_for(self, account: str, client_order_id: str) -> int | None:
        """The id of the account's open order with this client order id, if any."""
        return self._by_client_id.get((account, client_order_id))

    def sweep_price(self, side: int, size_lots: int, account: str) -> int | None:
        """The worst price a market order of ``size_lots`` from ``account`` would trade at
        now (what a market buy must lock funds for), or None if it would not trade.

        It skips the account's own orders as self-trade prevention does, so it can lie
        deeper than the aggregated depth suggests.
        """
        _check_side(side, InvalidRequest)
        if size_lots <= 0:
            raise InvalidRequest(f"size must be at least 1 lot, got {size_lots}")
        return self._reach(side, account, size_lots, None)[1] or None

    def outside_size(self, side: int, price_ticks: int) -> int:
        """The outside size displayed at a level, after any client-taker depletion."""
        level = self._side(side).levels.get(price_ticks)
        return 0 if level is None else level.outside

    @property
    def next_trade_id(self) -> int:
        return self._next_trade_id

    # ------------------------------------------------------------------ outside liquidity

    def set_outside_level(
        self, side: int, price_ticks: int, size_lots: int, ts: int
    ) -> list[Event]:
        """Set the recorded size at a level (0 removes it); fills client orders it crosses."""
        return self.set_outside_levels([(side, price_ticks, size_lots)], ts)

    def set_outside_levels(self, levels: Iterable[tuple[int, int, int]], ts: int) -> list[Event]:
        """One recorded delta: :meth:`set_outside_level` for each ``(side, price, size)``,
        in order. The rows are checked first, so a bad row changes nothing."""
        rows = list(levels)
        for side, price_ticks, size_lots in rows:
            if (side != BUY and side != SELL) or price_ticks <= 0 or size_lots < 0:
                _check_side(side, InvalidMarketData)  # raise the specific error
                _check_level(price_ticks, size_lots)
        events: list[Event] = []
        for side, price_ticks, size_lots in rows:
            book_side = self._bids if side == BUY else self._asks
            if size_lots == 0 and price_ticks not in book_side.levels:
                continue
            level = book_side.level(price_ticks)
            self._set_outside(book_side, level, size_lots)
            if size_lots and self._open and not self._halted:
                self._cross_outside(book_side, level, ts, events)
        return events

    def clear_outside(self, side: int | None = None) -> None:
        """Remove all outside liquidity (of one side). Client orders keep their place in
        time but lose any queue ahead: prefer :meth:`replace_outside` for a new snapshot."""
        if side is not None:
            _check_side(side, InvalidMarketData)
        for book_side in (self._bids, self._asks) if side is None else (self._side(side),):
            for level in list(book_side.levels.values()):
                self._set_outside(book_side, level, 0)

    def replace_outside(self, bids: Iterable[Level], asks: Iterable[Level], ts: int) -> list[Event]:
        """Replace all outside liquidity with a recorded snapshot. Levels present before and
        after are updated in place, so client orders keep their queue position there."""
        new_sides = []
        for side, levels in ((self._bids, bids), (self._asks, asks)):
            new: dict[int, int] = {}
            for price, size in levels:
                _check_level(price, size)
                if price in new:
                    raise InvalidMarketData(f"snapshot lists price {price} twice on one side")
                new[price] = size
            new_sides.append((side, new))
        for side, new in new_sides:
            for level in list(side.levels.values()):
                if level.price not in new:
                    self._set_outside(side, level, 0)
            for price, size in new.items():
                if size or price in side.levels:
                    self._set_outside(side, side.level(price), size)
        events: list[Event] = []
        if not self._halted:
            self._uncross_all(ts, events)
        return events

    def outside_trade(
        self, price_ticks: int, size_lots: int, taker_side: int, ts: int
    ) -> list[Event]:
        """A recorded trade. It fills client orders priced through it first (at their own
        prices), then consumes the queue at its price in order, client orders getting what
        exceeds the outside size ahead of them. Outside sizes do not change (the next
        recorded update does that). Public trades add up to ``size_lots``; ignored while
        halted."""
        _check_side(taker_side, InvalidMarketData)
        if price_ticks <= 0 or size_lots <= 0:
            raise InvalidMarketData(
                f"a recorded trade needs price > 0 and size > 0, got {price_ticks} x {size_lots}"
            )
        events: list[Event] = []
        if self._halted:
            return events
        makers = self._side(-taker_side)
        left = size_lots
        for level in makers.crossing(price_ticks):
            if not left:
                break
            if not level.orders:
                continue
            if level.price == price_ticks:
                left = self._sweep_level(makers, level, None, left, taker_side, False, ts, events)
            else:
                left = self._fill_through(makers, level, left, taker_side, ts, events)
        if left:
            self._trade(price_ticks, left, taker_side, None, None, None, ts, events)
        return events

    # ------------------------------------------------------------------ internals

    def _side(self, side: int) -> _Side:
        return self._bids if side == BUY else self._asks

    def _check_order(self, order: Order) -> None:
        if self._halted:
            raise MarketHalted(f"{self.market_id} is halted: no new orders until it resumes")
        _check_side(order.side, InvalidOrder)
        if not isinstance(order.tif, TimeInForce):
            raise InvalidOrder(f"unknown time in force {order.tif!r}")
        if order.size_lots <= 0:
            raise InvalidOrder(f"size must be at least 1 lot, got {order.size_lots}")
        if order.order_type is OrderType.MARKET:
            if order.price_ticks != 0:
                raise InvalidOrder("a market order takes no price (price_ticks must be 0)")
            if order.tif not in (TimeInForce.IOC, TimeInForce.FOK):
                raise InvalidOrder(f"a market order is IOC or FOK, not {order.tif}")
        elif order.order_type is OrderType.LIMIT:
            if order.price_ticks <= 0:
                raise InvalidOrder(f"a limit price must be >= 1 tick, got {order.price_ticks}")
        else:
            raise InvalidOrder(f"unknown order type {order.order_type!r}")
        if order.order_id in self._open:
            raise DuplicateOrder(f"order id {order.order_id} is already open")
        if (order.account, order.client_order_id) in self._by_client_id:
            raise DuplicateOrder(
                f"client order id {order.client_order_id!r} is already used by open order "
                f"{self._by_client_id[order.account, order.client_order_id]}"
            )

    def _rest(self, state: OrderState) -> None:
        order = state.order
        side = self._side(order.side)
        level = side.level(order.price_ticks)
        state.queue_ahead = level.outside  # joins behind what is displayed now
        state.priority = self._next_priority
        self._next_priority += 1
        level.orders.append(state)
        level.client += state.remaining_lots
        side.touched.add(level.price)
        self._open[order.order_id] = state
        self._by_client_id[order.account, order.client_order_id] = order.order_id
        self._by_account.setdefault(order.account, {})[order.order_id] = state

    def _forget(self, state: OrderState) -> None:
        order = state.order
        del self._open[order.order_id]
        del self._by_client_id[order.account, order.client_order_id]
        account_orders = self._by_account[order.account]
        del account_orders[order.order_id]
        if not account_orders:
            del self._by_account[order.account]

    def _cancel_resting(self, state: OrderState, reason: CancelReason) -> Cancelled:
        side = self._side(state.order.side)
        level = side.levels[state.order.price_ticks]
        level.orders.remove(state)
        level.client -= state.remaining_lots
        side.touched.add(level.price)
        side.discard_if_empty(level)
        self._forget(state)
        return _cancelled(state, reason)

    def _reach(self, side: int, account: str, size_lots: int, limit: int | None) -> tuple[int, int]:
        """The lots a taker could fill now under the self-trade rule (at most ``size_lots``)
        and the worst price it would trade at (0: none)."""
        makers = self._side(-side)
        keys, sign = makers.keys, makers.sign
        limit_key = None if limit is None else sign * limit
        got, worst = 0, 0
        has_orders = account in self._by_account  # else no level needs a walk
        for i in range(len(keys) - 1, -1, -1):
            if limit_key is not None and keys[i] < limit_key:
                break
            level = makers.levels[sign * keys[i]]
            if not has_orders:
                got += level.outside + level.client
                worst = level.price
                if got >= size_lots:
                    break
                continue
            before, passed, stopped = got, 0, False
            for state in level.orders:
                got += state.queue_ahead - passed
                passed = state.queue_ahead
                if state.order.account == account:
                    if self.stp_mode is STPMode.CANCEL_RESTING:
                        continue  # cancelled, not traded: matching goes on behind it
                    stopped = True  # matching stops at the own order
                    break
                got += state.remaining_lots
            else:
                got += level.outside - passed
            if got > before:
                worst = level.price
            if got >= size_lots or stopped:
                break
        return min(got, size_lots), worst

    def _take(self, taker: OrderState, limit: int | None, ts: int, events: list[Event]) -> bool:
        """Match a client taker against the book; False if self-trade prevention cancelled it."""
        makers = self._side(-taker.order.side)
        limit_key = None if limit is None else makers.sign * limit
        while taker.remaining_lots and makers.keys:
            if limit_key is not None and limit_key > makers.keys[-1]:
                break
            level = makers.levels[makers.sign * makers.keys[-1]]
            left = self._sweep_level(
                makers, level, taker, taker.remaining_lots, taker.order.side, True, ts, events
            )
            if left < 0:
                return False
        return True

    def _sweep_level(
        self,
        makers: _Side,
        level: _Level,
        taker: OrderState | None,
        left: int,
        taker_side: int,
        deplete: bool,
        ts: int,
        events: list[Event],
    ) -> int:
        """Trade up to ``left`` lots at one level in queue order: the outside queue ahead of
        the first client order, that order, the outside between it and the next, ..., the
        outside behind all of them. ``taker`` None is a recorded trade; ``deplete`` takes
        the outside lots it trades off the displayed size. Returns the lots still to trade,
        or -1 if self-trade prevention cancelled the taker."""
        orders = level.orders
        price = level.price
        passed = 0  # the outside queue position reached
        taken_outside = 0
        done = 0  # orders[:done] are filled or cancelled
        stopped = False
        while done < len(orders) and left:
            maker = orders[done]
            gap = maker.queue_ahead - passed
            if gap > 0:
                qty = min(gap, left)
                self._trade(price, qty, taker_side, taker, None, None, ts, events)
                taken_outside += qty
                passed += qty
                left -= qty
                if qty < gap:
                    break
            if not left:
                break
            if taker is not None and maker.order.account == taker.order.account:
                if self.stp_mode is not STPMode.CANCEL_TAKING:
                    events.append(self._self_trade_cancel(level, maker))
                    done += 1
                if self.stp_mode is not STPMode.CANCEL_RESTING:
                    events.append(_cancelled(taker, CancelReason.SELF_TRADE))
                    stopped = True
                    break
                continue
            qty = min(maker.remaining_lots, left)
            self._trade(price, qty, taker_side, taker, maker, level, ts, events)
            left -= qty
            if maker.remaining_lots:
                break
            self._forget(maker)
            done += 1
        else:
            # the outside behind every client order; a recorded trade's caller publishes it
            behind = level.outside - passed
            if taker is not None and left and behind > 0:
                qty = min(behind, left)
                self._trade(price, qty, taker_side, taker, None, None, ts, events)
                taken_outside += qty
                left -= qty
        del orders[:done]
        if taken_outside:
            for state in orders:
                state.queue_ahead -= taken_outside
            if deplete:
                level.outside -= taken_outside
        makers.touched.add(price)
        makers.discard_if_empty(level)
        return -1 if stopped else left

    def _self_trade_cancel(self, level: _Level, maker: OrderState) -> Cancelled:
        # the caller removes it from level.orders with the prefix it has walked
        level.client -= maker.remaining_lots
        self._forget(maker)
        return _cancelled(maker, CancelReason.SELF_TRADE)

    def _fill_through(
        self,
        makers: _Side,
        level: _Level,
        left: int,
        taker_side: int,
        ts: int,
        events: list[Event],
    ) -> int:
        """Fill a level's client orders in time order from outside flow priced through them
        (the queue ahead is irrelevant: that flow would have reached them first)."""
        orders = level.orders
        done = 0
        while done < len(orders) and left:
            maker = orders[done]
            qty = min(maker.remaining_lots, left)
            self._trade(level.price, qty, taker_side, None, maker, level, ts, events)
            left -= qty
            if maker.remaining_lots:
                break
            self._forget(maker)
            done += 1
        del orders[:done]
        makers.touched.add(level.price)
        makers.discard_if_empty(level)
        return left

    def _trade(
        self,
        price: int,
        qty: int,
        taker_side: int,
        taker: OrderState | None,
        maker: OrderState | None,
        maker_level: _Level | None,
        ts: int,
        events: list[Event],
    ) -> None:
        """One trade: the taker's fill, the maker's fill (client sides only), the public trade."""
        trade_id = self._next_trade_id
        self._next_trade_id += 1
        if taker is not None:
            taker.remaining_lots -= qty
            taker.filled_lots += qty
            events.append(_fill(taker, price, qty, "taker", trade_id, ts))
        if maker is not None and maker_level is not None:
            maker.remaining_lots -= qty
            maker.filled_lots += qty
            maker_level.client -= qty
            events.append(_fill(maker, price, qty, "maker", trade_id, ts))
        events.append(PublicTrade(price, qty, taker_side, trade_id, ts))

    def _set_outside(self, side: _Side, level: _Level, size: int) -> None:
        if size < level.outside:
            # recorded cancels come from behind our orders unless they cannot
            for state in level.orders:
                if state.queue_ahead > size:
                    state.queue_ahead = size
        level.outside = size
        side.touched.add(level.price)
        side.discard_if_empty(level)

    def _cross_outside(
        self, outside_side: _Side, level: _Level, ts: int, events: list[Event]
    ) -> None:
        """Fill the client orders an outside level crosses, at their prices, best first; the
        outside size they consume is depleted until the level's next recorded update."""
        makers = self._bids if outside_side is self._asks else self._asks
        left = level.outside
        for maker_level in makers.crossing(level.price):
            if not left:
                break
            if maker_level.orders:
                left = self._fill_through(makers, maker_level, left, -makers.sign, ts, events)
        if left != level.outside:
            self._set_outside(outside_side, level, left)

    def _uncross_all(self, ts: int, events: list[Event]) -> None:
        for outside_side, makers in ((self._asks, self._bids), (self._bids, self._asks)):
            best_client = _best_client_price(makers)
            if best_client is None:
                continue
            for level in outside_side.crossing(best_client):
                if level.outside:
                    self._cross_outside(outside_side, level, ts, events)


# ------------------------------------------------------------------------------ helpers


def _best_client_price(side: _Side) -> int | None:
    for key in reversed(side.keys):
        level = side.levels[side.sign * key]
        if level.orders:
            return level.price
    return None


def _check_side(side: int, error: type[InvalidRequest]) -> None:
    if side != BUY and side != SELL:
        raise error(f"side must be +1 (buy) or -1 (sell), got {side!r}")


def _check_level(price_ticks: int, size_lots: int) -> None:
    if price_ticks <= 0 or size_lots < 0:
        raise InvalidMarketData(
            f"a recorded level needs price > 0 and size >= 0, got {price_ticks} x {size_lots}"
        )


def _cancelled(state: OrderState, reason: CancelReason) -> Cancelled:
    order = state.order
    return Cancelled(
        order.order_id, order.account, order.client_order_id, state.remaining_lots, reason
    )


def _fill(
    state: OrderState, price: int, qty: int, liquidity: Liquidity, trade_id: int, ts: int
) -> Fill:
    order = state.order
    return Fill(
        order.order_id,
        order.account,
        order.client_order_id,
        order.side,
        price,
        qty,
        state.remaining_lots,
        liquidity,
        trade_id,
        ts,
    )


def _copy(state: OrderState) -> OrderState:
    return msgspec.structs.replace(state)
