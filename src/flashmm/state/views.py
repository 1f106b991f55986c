"""The live engine as the Structs of :mod:`flashmm.state.schema`.

Everything here runs in the publisher's flush, off the hot path: it reads the engine's
objects and arrays and builds new Structs, and never changes the engine. Ticks and lots
become prices and sizes here; order and fill prices and sizes become exact decimal
strings. The small accumulators (:class:`VolumeWindow`, :class:`PredictionScorer`,
:class:`PnlTracker`) keep what the engine itself does not.
"""

from __future__ import annotations

import functools
import math
import os
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

import msgspec

import flashmm
from flashmm._core.model import OUT_CONFIDENCE, OUT_DIRECTION, OUT_MOVE_BPS
from flashmm._core.quoting import (
    QO_ASK,
    QO_ASK_SIZE,
    QO_BID,
    QO_BID_SIZE,
    QO_FAIR,
    QO_HALF_SPREAD,
    QO_INVENTORY_RATIO,
    QO_RESERVATION,
    QO_SIGMA_TICKS,
    QO_SKEW_BPS,
)
from flashmm.engine.orders import MarketSpec, OrderManager
from flashmm.engine.records import Fill, Order, OrderState, Side
from flashmm.engine.risk import RiskInputError, RiskState
from flashmm.state.keys import Keys, LiveChannel
from flashmm.state.schema import (
    Counters,
    EngineState,
    Event,
    FillEvent,
    MarketDataEvent,
    MarketSnapshot,
    ModelInfo,
    OrderEvent,
    PortfolioView,
    PositionEvent,
    PredictionEvent,
    QuoteEvent,
    QuoteInputs,
    RiskView,
)
from flashmm.venue.feed import FeedState
from flashmm.venue.gateway import BreakerState

if TYPE_CHECKING:
    from flashmm.engine.engine import Engine, _Market

__all__ = [
    "NEUTRAL_BAND_BPS",
    "PREDICTION_CONFIDENCE_STEP",
    "PREDICTION_MOVE_STEP_BPS",
    "Collected",
    "EngineView",
    "PeriodicEvent",
    "PnlTracker",
    "PredictionScorer",
    "VolumeWindow",
    "decimal_text",
    "engine_state",
    "fill_event",
    "market_data_event",
    "market_snapshot",
    "order_event",
    "position_event",
    "prediction_event",
    "quote_event",
    "quote_inputs",
    "quote_status",
    "rate_budget_left",
]

NEUTRAL_BAND_BPS = 1.0
"""A neutral prediction is right when the mid moved by at most this much over the horizon."""
PREDICTION_CONFIDENCE_STEP = 0.05
"""A prediction with the same direction is republished once its confidence moved this much..."""
PREDICTION_MOVE_STEP_BPS = 0.5
"""... or its expected move moved this many bps."""

_NS_PER_S = 1_000_000_000
_NS_PER_MIN = 60 * _NS_PER_S
_MINUTES_PER_DAY = 24 * 60
_NS_PER_DAY = 24 * 3600 * _NS_PER_S
_LIVE_ORDER = (OrderState.OPEN, OrderState.PARTIALLY_FILLED)
_STOPPING_RISK = (RiskState.PAUSED, RiskState.HALTED, RiskState.FLATTENED)
# The venue has no separate post-only flag in the schema: a post-only quote rests like GTC.
_QUOTE_TIME_IN_FORCE: dict[str, Literal["GTC", "IOC", "FOK"]] = {
    "GTC": "GTC",
    "POST_ONLY": "GTC",
}

Direction = Literal["bearish", "neutral", "bullish"]


# ---------------------------------------------------------------------- conversions
def decimal_text(units: int, increment: Decimal) -> str:
    """``units`` ticks or lots as an exact decimal string, e.g. 4000 x 0.0001 -> "0.4000"."""
    return format(units * increment, "f")


def _price(ticks: float, tick: float) -> float | None:
    """``ticks * tick`` without binary noise (0.3999, not 0.39990000000000003)."""
    if not (ticks > 0 and math.isfinite(ticks)):
        return None
    # float(): the kernels' outputs are numpy scalars, which MessagePack does not encode.
    # Two digits past the tick's own keep half ticks (mids) and fair values exact enough.
    return round(float(ticks) * tick, _price_digits(tick))


@functools.cache
def _price_digits(tick: float) -> int:
    return max(0, -math.floor(math.log10(tick))) + 2


def _finite(value: float) -> float:
    # NaN has no place in a published number (JSON readers reject it): it reads as 0
    return value if math.isfinite(value) else 0.0


def _spread_bps(bid_ticks: float, ask_ticks: float) -> float | None:
    if bid_ticks <= 0 or ask_ticks <= 0:
        return None
    return float(ask_ticks - bid_ticks) / (0.5 * (bid_ticks + ask_ticks)) * 1e4


def _direction(value: float) -> Direction:
    if value > 0:
        return "bullish"
    if value < 0:
        return "bearish"
    return "neutral"  # 0 or NaN


def order_event(order: Order, spec: MarketSpec, *, quote_time_in_force: str) -> OrderEvent:
    """An order as published; an order without a price is a market IOC (flattening).

    ``quote_time_in_force`` is ``[orders] time_in_force``, which every priced order has.
    """
    market = order.price_ticks == 0
    return OrderEvent(
        client_order_id=order.client_order_id,
        order_id=order.order_id,
        symbol=order.market_id,
        side=order.side.wire,
        price=decimal_text(order.price_ticks, spec.tick_size),
        size=decimal_text(order.size_lots, spec.lot_size),
        filled=decimal_text(order.filled_lots, spec.lot_size),
        status=order.state.value,
        order_type="market" if market else "limit",
        time_in_force="IOC" if market else _QUOTE_TIME_IN_FORCE.get(quote_time_in_force, "GTC"),
        reason=order.reason,
        created_ns=order.created_ns,
        ts_ns=order.updated_ns,
    )


def fill_event(fill: Fill, spec: MarketSpec) -> FillEvent:
    """A fill as published: exact decimal price, size and fee."""
    return FillEvent(
        fill_id=fill.trade_id,
        order_id=fill.order_id,
        client_order_id=fill.client_order_id,
        symbol=fill.market_id,
        side=fill.side.wire,
        price=decimal_text(fill.price_ticks, spec.tick_size),
        size=decimal_text(fill.size_lots, spec.lot_size),
        fee=format(fill.fee, "f"),
        liquidity=fill.liquidity,
        ts_ns=fill.ts_ns,
    )


# ---------------------------------------------------------------------- accumulators
class VolumeWindow:
    """Quote notional traded on the venue over the last 24 h, in one-minute buckets.

    :meth:`add` runs for every venue trade: O(1), it only adds to the current minute and
    folds that minute into its bucket when the minute changes.
    """

    __slots__ = ("_buckets", "_minute", "_minutes", "_sum", "last_price", "last_trade_ns", "trades")

    def __init__(self) -> None:
        self._buckets = [0.0] * _MINUTES_PER_DAY
        self._minutes = [-1] * _MINUTES_PER_DAY  # the minute each bucket holds
        self._minute = -1
        self._sum = 0.0
        self.last_price: float | None = None
        self.last_trade_ns: int | None = None
        self.trades = 0

    def add(self, ts_ns: int, price: float, size: float) -> None:
        """One trade of ``size`` base units at ``price``."""
        minute = ts_ns // _NS_PER_MIN
        if minute != self._minute:
            self._fold(minute)
        self._sum += price * size
        self.last_price = price
        self.last_trade_ns = ts_ns
        self.trades += 1

    def _fold(self, minute: int) -> None:
        if self._minute >= 0:
            i = self._minute % _MINUTES_PER_DAY
            if self._minutes[i] != self._minute:
                self._minutes[i] = self._minute
                self._buckets[i] = 0.0
            self._buckets[i] += self._sum
        self._minute = minute
        self._sum = 0.0

    def total(self, now_ns: int) -> float:
        """Notional of the trades of the 24 h (1440 whole minutes) up to ``now_ns``."""
        now_minute = now_ns // _NS_PER_MIN
        oldest = now_minute - _MINUTES_PER_DAY + 1
        total = self._sum if oldest <= self._minute <= now_minute else 0.0
        for minute, amount in zip(self._minutes, self._buckets, strict=True):
            if oldest <= minute <= now_minute and minute != self._minute:
                total += amount
        return total


class PredictionScorer:
    """Scores each sampled prediction once its horizon has passed.

    A bullish prediction is right when the mid rose, a bearish one when it fell, a
    neutral one when it moved by at most ``band_bps``. Samples come from the publisher's
    flushes, so the mid is read at the first flush after the horizon (up to one flush
    interval late); at most ``max_pending`` samples per market wait.
    """

    def __init__(
        self, horizon_ms: int, *, band_bps: float = NEUTRAL_BAND_BPS, max_pending: int = 1024
    ) -> None:
        if horizon_ms <= 0:
            raise ValueError(f"horizon_ms must be > 0, got {horizon_ms!r}")
        if not (math.isfinite(band_bps) and band_bps >= 0):
            raise ValueError(f"band_bps must be a number >= 0, got {band_bps!r}")
        self.horizon_ns = horizon_ms * 1_000_000
        self.band_bps = band_bps
        self.max_pending = max_pending
        self.scored = 0
        self.correct = 0
        self._pending: dict[str, deque[tuple[int, float, float]]] = {}

    @property
    def accuracy(self) -> float | None:
        """Share of scored predictions that were right; None before the first."""
        return self.correct / self.scored if self.scored else None

    def sample(self, market_id: str, ts_ns: int, mid: float, direction: float) -> None:
        """A prediction made at ``ts_ns`` with the mid then (any unit, > 0)."""
        if not (math.isfinite(mid) and mid > 0 and math.isfinite(direction)):
            return  # nothing to score against
        pending = self._pending.get(market_id)
        if pending is None:
            pending = self._pending[market_id] = deque(maxlen=self.max_pending)
        pending.append((ts_ns, mid, direction))

    def score(self, market_id: str, now_ns: int, mid: float) -> int:
        """Score the samples whose horizon ended by ``now_ns`` against ``mid``; returns how many."""
        pending = self._pending.get(market_id)
        if not pending or not (math.isfinite(mid) and mid > 0):
            return 0
        done = 0
        while pending and pending[0][0] + self.horizon_ns <= now_ns:
            _, then, direction = pending.popleft()
            move_bps = (mid / then - 1.0) * 1e4
            if direction > 0:
                right = move_bps > 0
            elif direction < 0:
                right = move_bps < 0
            else:
                right = abs(move_bps) <= self.band_bps
            self.correct += right
            done += 1
        self.scored += done
        return done


class PnlTracker:
    """Daily PnL (since the UTC day began, or since the start if later), peak equity and
    drawdown, from the portfolio totals seen at each flush."""

    def __init__(self) -> None:
        self._day: int | None = None
        self._base_total = 0.0
        self._base: dict[str, float] = {}
        self.peak_equity = -math.inf

    def update(self, now_ns: int, net_pnl: float, equity: float, markets: dict[str, float]) -> None:
        """``markets``: each market's net PnL now."""
        day = now_ns // _NS_PER_DAY
        if day != self._day:
            self._day = day
            self._base_total = net_pnl
            self._base = dict(markets)
        for market_id, pnl in markets.items():
            self._base.setdefault(market_id, pnl)
        self.peak_equity = max(self.peak_equity, equity)

    def daily(self, net_pnl: float) -> float:
        return net_pnl - self._base_total

    def market_daily(self, market_id: str, net_pnl: float) -> float:
        return net_pnl - self._base.get(market_id, net_pnl)

    def drawdown(self, equity: float) -> float:
        return max(self.peak_equity - equity, 0.0) if math.isfinite(self.peak_equity) else 0.0


# ---------------------------------------------------------------------- market views
def rate_budget_left(orders: OrderManager, market_id: str, now_ns: int) -> int:
    """New orders the market's rate budget allows right now."""
    return max(orders.budget_left(market_id, now_ns), 0)


def quote_inputs(m: _Market, now_ns: int) -> QuoteInputs:
    """What the market's last decision saw and proposed, in prices and base units."""
    q, p = m.pipe.quote, m.pipe.prediction
    tick, lot = m.tick, m.lot
    mid = m.pipe.mid
    return QuoteInputs(
        ts_ns=m.last_decide_ns or now_ns,
        mid=_price(mid, tick),
        fair_value=_price(q[QO_FAIR], tick),
        reservation_price=_price(q[QO_RESERVATION], tick),
        half_spread=_price(q[QO_HALF_SPREAD], tick),
        skew_bps=float(q[QO_SKEW_BPS]),
        inventory_ratio=float(q[QO_INVENTORY_RATIO]),
        volatility=float(q[QO_SIGMA_TICKS]),
        bid_price=_price(q[QO_BID], tick),
        ask_price=_price(q[QO_ASK], tick),
        bid_size=float(q[QO_BID_SIZE]) * lot,
        ask_size=float(q[QO_ASK_SIZE]) * lot,
        direction=_direction(p[OUT_DIRECTION]),
        confidence=_finite(float(p[OUT_CONFIDENCE])),
        price_change_bps=_finite(float(p[OUT_MOVE_BPS])),
    )


def _live_quote(engine: Engine, market_id: str, side: Side) -> Order | None:
    order = engine.orders.slots[market_id, side].order
    return order if order is not None and order.state in _LIVE_ORDER else None


def quote_event(engine: Engine, market_id: str, now_ns: int) -> QuoteEvent:
    """The engine's quote as it rests at the venue (a missing side has no price, size 0)."""
    m = engine.markets[market_id]
    bid = _live_quote(engine, market_id, Side.BUY)
    ask = _live_quote(engine, market_id, Side.SELL)
    bid_ticks = bid.price_ticks if bid is not None else 0
    ask_ticks = ask.price_ticks if ask is not None else 0
    return QuoteEvent(
        symbol=market_id,
        ts_ns=now_ns,
        bid_price=_price(bid_ticks, m.tick),
        bid_size=bid.remaining_lots * m.lot if bid is not None else 0.0,
        ask_price=_price(ask_ticks, m.tick),
        ask_size=ask.remaining_lots * m.lot if ask is not None else 0.0,
        spread_bps=_spread_bps(bid_ticks, ask_ticks),
    )


def _risk_reason(engine: Engine) -> str:
    ladder = engine.ladder
    reason = ladder.history[-1].reason if ladder.history else "restored at start"
    text = f"risk state {ladder.state.value}: {reason}"
    if ladder.until_ns is not None:
        until = datetime.fromtimestamp(ladder.until_ns / 1e9, UTC).strftime("%H:%M:%S")
        text += f" (resumes by itself at {until} UTC)"
    return text


def _market_reason(engine: Engine, market_id: str) -> str | None:
    """Why neither side of the market can be quoted, or None."""
    m = engine.markets[market_id]
    if not engine.ready:
        return "the engine is not running (starting up or stopped)"
    if engine.ladder.state in _STOPPING_RISK:
        return _risk_reason(engine)
    feed = engine.feed.state(market_id)
    if feed is not FeedState.LIVE:
        return f"feed {feed.value}: {m.feed_reason}"
    if not m.book.is_valid:
        return "book invalid: a resync is under way"
    stale_s = engine.feed.staleness_s(market_id)
    if stale_s > engine.config.feed.stale_after_s:
        return f"book stale: no update for {stale_s:.1f} s"
    if not math.isfinite(m.pipe.mid):
        return "no mid yet: a side of the book is empty"
    breaker = engine.gateway.breaker.state
    if breaker is not BreakerState.CLOSED:
        return (
            f"venue circuit breaker {breaker.value}: order entry failed "
            f"{engine.gateway.breaker.consecutive_failures} times in a row"
        )
    return None


def _side_reason(engine: Engine, market_id: str, side: Side, now_ns: int) -> tuple[str, bool]:
    """Why one side is not live, and whether that is the engine's choice (gate or model)."""
    m = engine.markets[market_id]
    name = "bid" if side is Side.BUY else "ask"
    q = m.pipe.quote
    price = int(q[QO_BID] if side is Side.BUY else q[QO_ASK])
    size = int(q[QO_BID_SIZE] if side is Side.BUY else q[QO_ASK_SIZE])
    if size <= 0 or price <= 0:
        if abs(q[QO_INVENTORY_RATIO]) >= 1.0:
            return f"{name}: the quote model proposes none (inventory at its limit)", True
        return f"{name}: the quote model proposes none", True
    position = engine.portfolio.position_lots(market_id)
    working = engine.orders.working_lots(market_id, side)
    slot = engine.orders.slots[market_id, side].order
    if slot is not None and slot.is_live and slot.state is not OrderState.PENDING_CANCEL:
        working -= slot.remaining_lots * side  # as the engine counts a replacement
    try:
        allowed, why = engine.gate.check(
            side=side,
            size_lots=size,
            price=price * m.tick,
            lot_size=m.lot,
            position_lots=position,
            working_lots=working,
            equity=engine.portfolio.equity(),
        )
    except RiskInputError as exc:
        return f"{name}: risk gate cannot size it: {exc}", False
    if allowed == 0:
        return f"{name}: risk gate sized it to 0 ({why or 'blocked'})", True
    if rate_budget_left(engine.orders, market_id, now_ns) == 0:
        limit = engine.config.orders.orders_per_second
        return f"{name}: order-rate budget exhausted ({limit} new orders/s)", False
    if engine.gateway.in_flight >= engine.config.orders.max_in_flight:
        return f"{name}: {engine.gateway.in_flight} venue requests unanswered", False
    if slot is not None and slot.state is OrderState.PENDING_NEW:
        return f"{name}: order sent, waiting for the venue's ack", False
    return f"{name}: waiting for the next decision", False


def quote_status(engine: Engine, market_id: str, now_ns: int) -> tuple[bool, list[str]]:
    """(quoting, why not): quoting when every side the engine wants is live at the venue."""
    live = [_live_quote(engine, market_id, side) is not None for side in Side]
    shared = _market_reason(engine, market_id)
    if shared is not None and not all(live):
        return False, [shared]
    reasons: list[str] = []
    chosen = True
    for side, is_live in zip(Side, live, strict=True):
        if not is_live:
            reason, by_choice = _side_reason(engine, market_id, side, now_ns)
            reasons.append(reason)
            chosen = chosen and by_choice
    if any(live) and chosen:
        return True, []
    return not reasons, reasons


def _outside_spread_bps(engine: Engine, market_id: str) -> float | None:
    """The venue's spread with this engine's own resting orders taken out of the book."""
    m = engine.markets[market_id]
    own: dict[tuple[int, int], int] = {}
    for order in engine.orders.working[market_id].values():
        key = (int(order.side), order.price_ticks)
        own[key] = own.get(key, 0) + order.remaining_lots
    top = m.book.top
    best = []
    for row, side in ((0, 1), (2, -1)):
        price = 0
        for i in range(top.shape[1]):
            level = int(top[row, i])
            if level and int(top[row + 1, i]) - own.get((side, level), 0) > 0:
                price = level
                break
        best.append(price)
    return _spread_bps(best[0], best[1])


def position_event(engine: Engine, market_id: str, now_ns: int) -> PositionEvent:
    """One market's position and PnL; percentages are of the equity."""
    pos = engine.portfolio.position(market_id)
    equity = engine.portfolio.equity()
    usdc = pos.position * pos.mark_price if pos.mark_price is not None else 0.0
    return PositionEvent(
        symbol=market_id,
        ts_ns=now_ns,
        position=pos.position,
        avg_price=pos.avg_price,
        mark_price=pos.mark_price,
        position_usdc=usdc,
        position_percent=100.0 * usdc / equity if equity > 0 else 0.0,
        limit_percent=100.0 * engine.config.risk.position_limit_fraction,
        realized_pnl=pos.realized_pnl,
        unrealized_pnl=pos.unrealized_pnl,
        fees=pos.fees,
        pnl_usdc=pos.net_pnl,
        volume_usdc=pos.volume,
        fills=pos.fills,
        markouts_bps={k: v.mean_bps for k, v in pos.markouts.items() if v.count},
    )


def prediction_event(engine: Engine, market_id: str) -> PredictionEvent | None:
    """The market's latest prediction; None before its first decision."""
    m = engine.markets[market_id]
    if not m.last_decide_ns:
        return None
    p, model = m.pipe.prediction, m.pipe.model
    return PredictionEvent(
        symbol=market_id,
        ts_ns=m.last_decide_ns,
        direction=_direction(p[OUT_DIRECTION]),
        confidence=_finite(float(p[OUT_CONFIDENCE])),
        price_change_bps=_finite(float(p[OUT_MOVE_BPS])),
        horizon_ms=model.horizon_ms,
        model_version=model.model_version,
    )


def market_data_event(engine: Engine, market_id: str, now_ns: int) -> MarketDataEvent:
    """Top of book and the venue's last trade."""
    m = engine.markets[market_id]
    bid, ask = m.book.best_bid, m.book.best_ask
    mid = m.book.mid
    return MarketDataEvent(
        symbol=market_id,
        ts_ns=now_ns,
        bid=_price(bid, m.tick),
        ask=_price(ask, m.tick),
        mid=_price(mid, m.tick),
        spread_bps=_spread_bps(bid, ask),
        last_trade_price=m.volume.last_price,
        volume_24h=m.volume.total(now_ns),
    )


def market_snapshot(
    engine: Engine,
    market_id: str,
    now_ns: int,
    *,
    daily_pnl: float = 0.0,
    orders_placed: int = 0,
    top: MarketDataEvent | None = None,
    quote: QuoteEvent | None = None,
    position: PositionEvent | None = None,
) -> MarketSnapshot:
    """One market's latest state, with the reasons it is not quoting.

    ``top``, ``quote`` and ``position``: the market's events at ``now_ns``, when the
    caller has built them already (built here otherwise). The snapshot holds ``quote``
    and ``position`` themselves, not copies.
    """
    m = engine.markets[market_id]
    if top is None:
        top = market_data_event(engine, market_id, now_ns)
    if quote is None:
        quote = quote_event(engine, market_id, now_ns)
    if position is None:
        position = position_event(engine, market_id, now_ns)
    quoting, not_quoting = quote_status(engine, market_id, now_ns)
    stale_s = engine.feed.staleness_s(market_id)
    last_quote = max(
        (o.created_ns for o in engine.orders.working[market_id].values() if o.price_ticks),
        default=None,
    )
    return MarketSnapshot(
        symbol=market_id,
        ts_ns=now_ns,
        feed=engine.feed.state(market_id).value,
        book_valid=m.book.is_valid,
        staleness_s=stale_s if math.isfinite(stale_s) else None,
        sequence=m.book.sequence,
        best_bid=top.bid,
        best_ask=top.ask,
        mid=top.mid,
        spread_bps=top.spread_bps,
        outside_spread_bps=_outside_spread_bps(engine, market_id),
        last_trade_price=top.last_trade_price,
        volume_24h=top.volume_24h,
        quote=quote if quote.bid_price is not None or quote.ask_price is not None else None,
        inputs=quote_inputs(m, now_ns) if m.last_decide_ns else None,
        quoting=quoting,
        not_quoting=not_quoting,
        rate_budget_left=float(rate_budget_left(engine.orders, market_id, now_ns)),
        position=position,
        open_orders=len(engine.orders.working[market_id]),
        orders_placed=orders_placed,
        fills=engine.portfolio.position(market_id).fills,
        daily_pnl=daily_pnl,
        last_quote_ns=last_quote,
    )


# ---------------------------------------------------------------------- engine view
class PeriodicEvent(msgspec.Struct, kw_only=True):
    """An event made from the latest state at a flush, published only when it changed."""

    key: tuple[str, str]
    """(kind, symbol): the event it replaces."""
    live: LiveChannel | None
    """Its live channel (history and ``seq``), or None for ``quotes``."""
    channel: str
    """Its pub/sub channel."""
    event: Event


class Collected(msgspec.Struct, kw_only=True):
    """Everything one flush writes that is made from the latest state."""

    state: EngineState
    snapshots: list[MarketSnapshot]
    changes: list[PeriodicEvent]


def _prediction_moved(old: PredictionEvent, new: PredictionEvent) -> bool:
    return (
        old.direction != new.direction
        or abs(old.confidence - new.confidence) >= PREDICTION_CONFIDENCE_STEP
        or abs(old.price_change_bps - new.price_change_bps) >= PREDICTION_MOVE_STEP_BPS
    )


def _same_but_time(old: Event, new: Event) -> bool:
    # every field but the time and the sequence number
    return msgspec.structs.replace(old, ts_ns=new.ts_ns, seq=new.seq) == new


class EngineView:
    """The engine as the publisher sees it: what to write at a flush, and its events.

    Keeps what the engine does not (prediction scores, daily PnL baseline, peak equity,
    per-market order counts) and remembers the last *published* periodic events, so that
    after a Redis outage the newest state goes out once, not every change missed.
    """

    def __init__(self, engine: Engine, *, started_ns: int) -> None:
        self.engine = engine
        self.started_ns = started_ns
        model = next(iter(engine.markets.values())).pipe.model
        self.scorer = PredictionScorer(model.horizon_ms)
        self.pnl = PnlTracker()
        self.orders_placed: dict[str, int] = dict.fromkeys(engine.markets, 0)
        self.orders_filled = 0
        self.last_order_ns: int | None = None
        self.last_fill_ns: int | None = None
        self._sampled: dict[str, int] = dict.fromkeys(engine.markets, 0)
        self._rate_anchor: tuple[int, int] = (started_ns, self._decisions())
        self._rate = 0.0
        self._published: dict[tuple[str, str], Event] = {}

    # -- events, called synchronously by the engine's hooks: O(1) -----------------------
    def note_order(self, order: Order, *, new: bool) -> None:
        if new:
            if order.market_id in self.orders_placed:
                self.orders_placed[order.market_id] += 1
            self.last_order_ns = order.created_ns
        elif order.state is OrderState.FILLED:
            self.orders_filled += 1

    def note_fill(self, fill: Fill) -> None:
        self.last_fill_ns = fill.ts_ns

    def order_event(self, order: Order) -> OrderEvent:
        spec = self.engine.markets[order.market_id].spec
        tif = self.engine.config.orders.time_in_force
        return order_event(order, spec, quote_time_in_force=tif)

    def fill_event(self, fill: Fill) -> FillEvent:
        return fill_event(fill, self.engine.markets[fill.market_id].spec)

    # -- the latest state, at each flush ---------------------------------------------------
    def collect(
        self, now_ns: int, *, keys: Keys, dropped: dict[str, int], stopping: bool
    ) -> Collected:
        self._observe(now_ns)
        state = self.engine_state(now_ns, dropped=dropped, stopping=stopping)
        snapshots: list[MarketSnapshot] = []
        changes: list[PeriodicEvent] = []
        for market_id in self.engine.markets:
            # Built once for both the snapshot and the events (the 24 h volume is a loop).
            top = market_data_event(self.engine, market_id, now_ns)
            quote = quote_event(self.engine, market_id, now_ns)
            position = position_event(self.engine, market_id, now_ns)
            snapshots.append(
                self.snapshot(market_id, now_ns, top=top, quote=quote, position=position)
            )
            # The publisher numbers a published position event (its seq) before it encodes
            # the snapshots, which hold theirs unnumbered: the event gets its own copy.
            # The snapshot copies top's fields, and quotes are never numbered: both shared.
            changes += self._changes(market_id, keys, top, quote, msgspec.structs.replace(position))
        return Collected(state=state, snapshots=snapshots, changes=changes)

    def commit(self, changes: list[PeriodicEvent]) -> None:
        """``changes`` reached Redis: later ones are compared with them."""
        for change in changes:
            self._published[change.key] = change.event

    def engine_state(self, now_ns: int, *, dropped: dict[str, int], stopping: bool) -> EngineState:
        return engine_state(
            self.engine,
            now_ns,
            started_ns=self.started_ns,
            status=self._status(stopping),
            pnl=self.pnl,
            scorer=self.scorer,
            predictions_per_second=self._rate,
            counters=Counters(
                orders_placed=self.engine.orders.counters["submitted"],
                orders_filled=self.orders_filled,
                fills=self.engine.orders.counters["fills"],
                cancels=self.engine.orders.counters["own_cancels"]
                + self.engine.orders.counters["venue_cancels"],
                rejects=self.engine.orders.counters["rejected"],
                predictions=self._decisions(),
                last_order_ns=self.last_order_ns,
                last_fill_ns=self.last_fill_ns,
            ),
            dropped=dropped,
        )

    def snapshot(
        self,
        market_id: str,
        now_ns: int,
        *,
        top: MarketDataEvent | None = None,
        quote: QuoteEvent | None = None,
        position: PositionEvent | None = None,
    ) -> MarketSnapshot:
        pos = self.engine.portfolio.position(market_id)
        return market_snapshot(
            self.engine,
            market_id,
            now_ns,
            daily_pnl=self.pnl.market_daily(market_id, pos.net_pnl),
            orders_placed=self.orders_placed.get(market_id, 0),
            top=top,
            quote=quote,
            position=position,
        )

    def _status(self, stopping: bool) -> str:
        if stopping:
            return "stopped"
        if not self.engine.ready:
            return "starting"
        return self.engine.ladder.state.value

    def _decisions(self) -> int:
        return sum(m.decisions for m in self.engine.markets.values())

    def _observe(self, now_ns: int) -> None:
        engine = self.engine
        portfolio = engine.portfolio
        self.pnl.update(
            now_ns,
            portfolio.net_pnl(),
            portfolio.equity(),
            {m: portfolio.position(m).net_pnl for m in engine.markets},
        )
        for market_id, m in engine.markets.items():
            mid = m.pipe.mid
            if m.last_decide_ns != self._sampled[market_id]:
                self._sampled[market_id] = m.last_decide_ns
                self.scorer.sample(
                    market_id, m.last_decide_ns, mid, m.pipe.prediction[OUT_DIRECTION]
                )
            self.scorer.score(market_id, now_ns, mid)
        since, count = self._rate_anchor
        if now_ns - since >= _NS_PER_S:  # a rate over at least a second
            decisions = self._decisions()
            self._rate = (decisions - count) * _NS_PER_S / (now_ns - since)
            self._rate_anchor = (now_ns, decisions)

    def _changes(
        self,
        market_id: str,
        keys: Keys,
        top: MarketDataEvent,
        quote: QuoteEvent,
        position: PositionEvent,
    ) -> list[PeriodicEvent]:
        """The market's periodic events that changed since they were last published."""
        out: list[PeriodicEvent] = []
        candidates: list[tuple[str, LiveChannel | None, str, Event | None]] = [
            ("trading", "trading", keys.channel("market_data", market_id), top),
            ("positions", "positions", keys.channel("positions", market_id), position),
            ("predictions", "predictions", keys.channel("predictions", market_id),
             prediction_event(self.engine, market_id)),
            ("quotes", None, keys.channel("quotes", market_id), quote),
        ]  # fmt: skip
        for kind, live, channel, event in candidates:
            if event is None:
                continue
            key = (kind, market_id)
            old = self._published.get(key)
            if old is not None:
                if isinstance(old, PredictionEvent) and isinstance(event, PredictionEvent):
                    if not _prediction_moved(old, event):
                        continue
                elif _same_but_time(old, event):
                    continue
            out.append(PeriodicEvent(key=key, live=live, channel=channel, event=event))
        return out


def engine_state(
    engine: Engine,
    now_ns: int,
    *,
    started_ns: int,
    status: str,
    pnl: PnlTracker,
    scorer: PredictionScorer,
    predictions_per_second: float,
    counters: Counters,
    dropped: dict[str, int],
) -> EngineState:
    """``{prefix}:engine``: the engine's status, risk, portfolio, counters and model."""
    portfolio = engine.portfolio
    totals = portfolio.totals()
    long_notional = short_notional = volume = 0.0
    for pos in portfolio.positions():
        volume += pos.volume
        if pos.position > 0:
            long_notional += pos.notional
        elif pos.position < 0:
            short_notional += pos.notional
    ladder = engine.ladder
    last = ladder.history[-1] if ladder.history else None
    model = next(iter(engine.markets.values())).pipe.model
    last_prediction = max((m.last_decide_ns for m in engine.markets.values()), default=0)
    metrics_url = (
        f"http://{engine.config.engine.metrics_host}:{engine.metrics_port}/metrics"
        if engine.metrics_port
        else None
    )
    latency_ms = engine.metrics.recent_latency_ms()
    return EngineState(
        version=flashmm.__version__,
        pid=os.getpid(),
        started_ns=started_ns,
        heartbeat_ns=now_ns,
        ready=engine.ready,
        status=status,  # type: ignore[arg-type]
        risk=RiskView(
            state=ladder.state.value,
            reason=last.reason if last is not None else "",
            source=last.source if last is not None else "startup",
            since_ns=ladder.since_ns,
            until_ns=ladder.until_ns,
        ),
        markets=list(engine.markets),
        portfolio=PortfolioView(
            capital=portfolio.capital,
            equity=totals.equity,
            realized_pnl=totals.realized_pnl,
            unrealized_pnl=totals.unrealized_pnl,
            fees=totals.fees,
            net_pnl=totals.net_pnl,
            daily_pnl=pnl.daily(totals.net_pnl),
            peak_equity=max(pnl.peak_equity, totals.equity),
            drawdown=pnl.drawdown(totals.equity),
            gross_notional=totals.gross_notional,
            long_notional=long_notional,
            short_notional=short_notional,
            volume=volume,
        ),
        counters=counters,
        model=ModelInfo(
            version=model.model_version,
            horizon_ms=model.horizon_ms,
            last_prediction_ns=last_prediction or None,
            predictions_per_second=predictions_per_second,
            inference_time_ms=latency_ms.get("decided_p50"),
            accuracy=scorer.accuracy,
            scored=scorer.scored,
        ),
        latency_ms=latency_ms,
        venue_breaker=engine.gateway.breaker.state.value,
        alerts=list(engine.alerts[-10:]),
        dropped=dict(dropped),
        metrics_url=metrics_url,
    )
