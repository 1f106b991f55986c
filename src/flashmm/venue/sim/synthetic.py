"""A synthetic thin market: the simulator's seeded, reproducible outside liquidity.

:class:`SyntheticFlow` emits :data:`FlowAction` values in time order. The simulator's
driver turns them into orders of a dedicated liquidity account; this module knows
nothing of the matching engine. Sides are ``+1`` buy (a bid) and ``-1`` sell (an ask);
a :class:`MarketOrder`'s side is the taker's. Prices are integer ticks, sizes integer
lots, timestamps integer ns.

The model (units in brackets; all fields of :class:`SyntheticParams`):

- **Fair price.** An arithmetic Brownian motion in ticks, started at
  ``initial_price_ticks`` [ticks], with ``volatility_ticks_per_sqrt_s``
  [ticks/sqrt(s)], reflected at 1 tick so it stays positive. It is sampled exactly
  (a Gaussian increment of variance ``sigma^2 * dt``) at every limit or market arrival.
- **Limit orders.** On each side, a Poisson process of ``limit_rate_per_s``
  [1/s]. An order is placed ``k >= 1`` ticks away from the fair price, with
  ``P(k) = (1 - q) * q^(k - 1)``, ``q = exp(-depth_decay)`` [1/tick], so the mean
  distance is ``1 / (1 - q)`` ticks: a bid at ``floor(fair - k)`` (at least 1 tick), an
  ask at ``ceil(fair + k)``. Its size is geometric on ``{1, 2, ...}`` with mean
  ``limit_size_mean_lots`` [lots].
- **Seeding.** At ``start_ns``, ``initial_levels_per_side`` orders per side are placed at
  ``k = 1, 2, ..., initial_levels_per_side``, so both sides are populated from the start.
- **Cancels.** Every resting synthetic order is cancelled after an exponential lifetime
  of mean ``limit_lifetime_mean_s`` [s], unless the driver reported it filled
  (:meth:`SyntheticFlow.on_filled`). When ``max_resting_orders`` orders rest, a new
  arrival first cancels the oldest one (same timestamp, cancel first).
- **Market orders.** A Hawkes process with intensity
  ``lambda(t) = mu + sum_i alpha * exp(-beta * (t - t_i))``: ``market_base_rate_per_s``
  (mu) [1/s], ``market_excitation_per_s`` (alpha) [1/s], ``market_decay_per_s`` (beta)
  [1/s]. ``alpha / beta < 1`` keeps it stationary, with mean rate
  ``mu / (1 - alpha / beta)``; ``alpha = 0`` is a Poisson process. It starts at its
  baseline (no excitation) and is simulated exactly (Dassios and Zhao, 2013), not by
  thinning. A taker buys with probability
  ``1 / (1 + exp(-taker_bias_per_tick * (fair - mid)))``, where ``mid`` is the last
  value given to :meth:`SyntheticFlow.on_mid` (50/50 before any, or after a NaN).
  Its size is geometric with mean ``market_size_mean_lots`` [lots].

Every random number comes from one ``numpy.random.Generator(PCG64(seed))``, drawn in
blocks. The numbers consumed depend only on the parameters, never on the feedback
calls: fills and mids change which cancels are emitted and which side a taker takes,
but the fair-price path, arrival times, limit prices and all sizes stay the same. Two
strategies run against one seed therefore meet the same market. The same parameters,
seed and feedback calls give the same action sequence, however it is read
(:meth:`~SyntheticFlow.next_action` or :meth:`~SyntheticFlow.actions_until`).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import TypeAlias

import msgspec
import numpy as np

__all__ = [
    "BUY",
    "SELL",
    "CancelLimit",
    "FlowAction",
    "MarketOrder",
    "PlaceLimit",
    "SyntheticFlow",
    "SyntheticParams",
    "UnknownFlowId",
]

BUY = 1
SELL = -1

# Random numbers are drawn this many at a time: one numpy call per scalar would cost
# more than everything else per action.
_BLOCK = 1024
_NS_PER_S = 1e9


def _check_number(name: str, value: object, *, low: float, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (v <= low if low_open else v < low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_int(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


class SyntheticParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The synthetic market's model; the defaults are a thin Sei-like pair.

    That is SEI/USDC at 0.4000 with a 0.0001 tick: spreads of several ticks, about 30
    orders resting per side, about 4.5 actions per second.
    """

    seed: int = 7
    """Seed of the PCG64 generator; >= 0."""
    initial_price_ticks: int = 4000
    """Fair price at the start, ticks; >= 1."""
    volatility_ticks_per_sqrt_s: float = 0.5
    """Fair-price volatility, ticks per sqrt(second) (0.5 ~ 3.7% a day at 4000); >= 0."""
    limit_rate_per_s: float = 1.0
    """Limit-order arrivals per second on each side; > 0."""
    depth_decay: float = 0.25
    """Decay of the placement distance per tick: mean distance 1/(1-e^-d) ticks; > 0."""
    limit_size_mean_lots: float = 20.0
    """Mean limit-order size, lots (geometric, >= 1 lot each); >= 1."""
    limit_lifetime_mean_s: float = 30.0
    """Mean time before a resting synthetic order is cancelled, seconds; > 0."""
    initial_levels_per_side: int = 5
    """Orders placed per side at the start, 1..n ticks from fair; >= 0."""
    max_resting_orders: int = 500
    """Most synthetic orders resting at once; >= 1 and >= 2 * initial_levels_per_side."""
    market_base_rate_per_s: float = 0.2
    """Hawkes baseline rate mu of market orders, per second; >= 0 (0: no taker flow)."""
    market_excitation_per_s: float = 0.6
    """Hawkes jump alpha of the intensity after each market order, per second; >= 0."""
    market_decay_per_s: float = 1.0
    """Hawkes decay rate beta of that excitation, per second; > alpha."""
    market_size_mean_lots: float = 10.0
    """Mean market-order size, lots (geometric, >= 1 lot each); >= 1."""
    taker_bias_per_tick: float = 0.5
    """Logistic slope of P(buy) in (fair - mid), per tick; >= 0 (0: always 50/50)."""

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, low=0)
        _check_int("initial_price_ticks", self.initial_price_ticks, low=1)
        for name in (
            "volatility_ticks_per_sqrt_s",
            "market_base_rate_per_s",
            "market_excitation_per_s",
            "taker_bias_per_tick",
        ):
            _check_number(name, getattr(self, name), low=0.0, low_open=False)
        for name in (
            "limit_rate_per_s",
            "depth_decay",
            "limit_lifetime_mean_s",
            "market_decay_per_s",
        ):
            _check_number(name, getattr(self, name), low=0.0, low_open=True)
        for name in ("limit_size_mean_lots", "market_size_mean_lots"):
            _check_number(name, getattr(self, name), low=1.0, low_open=False)
        _check_int("initial_levels_per_side", self.initial_levels_per_side, low=0)
        _check_int("max_resting_orders", self.max_resting_orders, low=1)
        if self.max_resting_orders < 2 * self.initial_levels_per_side:
            raise ValueError(
                f"max_resting_orders ({self.max_resting_orders}) must be >= 2 * "
                f"initial_levels_per_side ({self.initial_levels_per_side}): the seeding "
                "alone would exceed it"
            )
        if self.market_excitation_per_s >= self.market_decay_per_s:
            raise ValueError(
                f"market_excitation_per_s ({self.market_excitation_per_s}) must be < "
                f"market_decay_per_s ({self.market_decay_per_s}): the Hawkes process "
                "explodes otherwise"
            )


class PlaceLimit(msgspec.Struct, tag=True, frozen=True):
    """Rest a synthetic limit order; ``flow_id`` names it in later cancels and fills."""

    ts_ns: int
    flow_id: int
    side: int
    price_ticks: int
    size_lots: int


class CancelLimit(msgspec.Struct, tag=True, frozen=True):
    """Cancel the synthetic order ``flow_id`` (placed earlier, still resting)."""

    ts_ns: int
    flow_id: int


class MarketOrder(msgspec.Struct, tag=True, frozen=True):
    """Take liquidity: ``side`` is the taker's (+1 buys from the asks)."""

    ts_ns: int
    side: int
    size_lots: int


FlowAction: TypeAlias = PlaceLimit | CancelLimit | MarketOrder


class UnknownFlowId(ValueError):
    """A feedback call named a flow id this flow never placed."""


class SyntheticFlow:
    """The synthetic market of :class:`SyntheticParams`, starting at ``start_ns``."""

    def __init__(self, params: SyntheticParams, start_ns: int) -> None:
        if not isinstance(params, SyntheticParams):
            raise TypeError(f"params must be SyntheticParams, got {type(params).__name__}")
        _check_int("start_ns", start_ns, low=0)
        self._params = params
        self._start_ns = start_ns
        p = params
        self._rng = np.random.Generator(np.random.PCG64(p.seed))

        self._sigma = float(p.volatility_ticks_per_sqrt_s)
        self._fair = float(p.initial_price_ticks)
        self._t_fair = 0.0  # seconds since start_ns at which _fair was sampled
        self._mid = math.nan
        self._bias = float(p.taker_bias_per_tick)
        self._mu = float(p.market_base_rate_per_s)
        self._alpha = float(p.market_excitation_per_s)
        self._beta = float(p.market_decay_per_s)
        self._max_resting = p.max_resting_orders

        self._next_id = 0
        self._live: set[int] = set()
        # placement order of live ids, pruned lazily from the left: the oldest live id
        self._by_age: deque[int] = deque()
        self._cancels: list[tuple[float, int]] = []  # heap of (time s, flow_id)
        self._pending: tuple[float, int, int, int, float] | None = None

        # Seeding: (side, k) pairs with sizes and lifetimes drawn now, emitted at start_ns.
        n = p.initial_levels_per_side
        sizes = self._rng.geometric(1.0 / p.limit_size_mean_lots, 2 * n).tolist()
        lives = self._rng.exponential(p.limit_lifetime_mean_s, 2 * n).tolist()
        seeds = []
        for level in range(n):
            for j, side in enumerate((BUY, SELL)):
                m = 2 * level + j
                price = self._price(side, level + 1)
                seeds.append((0.0, side, price, sizes[m], lives[m]))
        self._seeds = deque(seeds)

        # Blocks of random numbers. A limit (market) record holds everything about one
        # arrival; _li (_mi) is the record of the next arrival, scheduled in advance.
        self._z: list[float] = []
        self._zi = 0
        self._l_gap: list[float] = []
        self._l_side: list[float] = []
        self._l_k: list[int] = []
        self._l_size: list[int] = []
        self._l_life: list[float] = []
        self._m_exp: list[float] = []
        self._m_u: list[float] = []
        self._m_side: list[float] = []
        self._m_size: list[int] = []
        self._refill_normals()
        self._refill_limit()
        self._refill_market()

        self._li = 0
        self._t_limit = self._l_gap[0]
        self._excess = 0.0  # Hawkes intensity above mu, just after the last market order
        self._t_market = 0.0
        self._mi = -1
        self._schedule_market(0.0)

    # -- public API ------------------------------------------------------------------

    @property
    def params(self) -> SyntheticParams:
        """The model this flow follows."""
        return self._params

    @property
    def fair_price_ticks(self) -> float:
        """Fair price at the latest limit or market arrival emitted (initially the start)."""
        return self._fair

    def next_action(self) -> FlowAction:
        """The next action in time order (``ts_ns`` never decreases)."""
        while True:
            action = self._step()
            if action is not None:
                return action

    def actions_until(self, ts_ns: int) -> list[FlowAction]:
        """Every action with ``ts_ns`` at or before ``ts_ns`` not yet returned, in order."""
        out: list[FlowAction] = []
        while self._peek_ns() <= ts_ns:
            action = self._step()
            if action is not None:
                out.append(action)
        return out

    def on_filled(self, flow_id: int) -> None:
        """The driver reports order ``flow_id`` fully filled: it will not be cancelled.

        An order already cancelled or reported is ignored; an id never placed raises
        :class:`UnknownFlowId`.
        """
        if isinstance(flow_id, bool) or not isinstance(flow_id, int):
            raise UnknownFlowId(f"flow_id must be an integer, got {flow_id!r}")
        if not 0 <= flow_id < self._next_id:
            raise UnknownFlowId(
                f"flow_id {flow_id} was never placed by this flow (ids so far: "
                f"0..{self._next_id - 1})"
            )
        self._live.discard(flow_id)

    def on_mid(self, mid_ticks: float) -> None:
        """The driver reports the book's mid, in ticks; NaN (a side empty) means unknown."""
        if isinstance(mid_ticks, bool) or not isinstance(mid_ticks, int | float):
            raise ValueError(f"mid_ticks must be a number, got {mid_ticks!r}")
        mid = float(mid_ticks)
        if not (math.isnan(mid) or (math.isfinite(mid) and mid > 0.0)):
            raise ValueError(f"mid_ticks must be > 0 and finite, or NaN, got {mid_ticks!r}")
        self._mid = mid

    # -- event loop ------------------------------------------------------------------

    def _ns(self, t: float) -> int:
        return self._start_ns + int(t * _NS_PER_S)

    def _peek_ns(self) -> int:
        if self._pending is not None:
            return self._ns(self._pending[0])
        if self._seeds:
            return self._start_ns
        t = self._t_limit if self._t_limit < self._t_market else self._t_market
        if self._cancels and self._cancels[0][0] <= t:
            t = self._cancels[0][0]
        return self._ns(t)

    def _step(self) -> FlowAction | None:
        """Emit the next event's action, or None for a cancel of an order already gone."""
        if self._pending is not None:
            place, self._pending = self._pending, None
            return self._place(*place)
        if self._seeds:
            return self._place(*self._seeds.popleft())
        t_limit = self._t_limit
        t_market = self._t_market
        cancels = self._cancels
        if cancels and cancels[0][0] <= t_limit and cancels[0][0] <= t_market:
            t, flow_id = heapq.heappop(cancels)
            if flow_id not in self._live:
                return None  # filled, or cancelled early to respect max_resting_orders
            self._live.remove(flow_id)
            return CancelLimit(self._ns(t), flow_id)
        if t_limit <= t_market:
            return self._limit_arrival(t_limit)
        return self._market_arrival(t_market)

    def _limit_arrival(self, t: float) -> FlowAction:
        self._advance_fair(t)
        i = self._li
        side = BUY if self._l_side[i] < 0.5 else SELL
        place = (t, side, self._price(side, self._l_k[i]), self._l_size[i], self._l_life[i])
        j = i + 1
        if j == _BLOCK:
            self._refill_limit()
            j = 0
        self._li = j
        self._t_limit = t + self._l_gap[j]
        if len(self._live) < self._max_resting:
            return self._place(*place)
        # At the cap the oldest order makes room: cancel first, place right after.
        by_age = self._by_age
        while by_age[0] not in self._live:
            by_age.popleft()
        oldest = by_age.popleft()
        self._live.remove(oldest)
        self._pending = place
        return CancelLimit(self._ns(t), oldest)

    def _market_arrival(self, t: float) -> MarketOrder:
        self._advance_fair(t)
        i = self._mi
        side_u, size = self._m_side[i], self._m_size[i]
        self._schedule_market(t)
        mid = self._mid
        if mid == mid and self._bias > 0.0:  # mid is not NaN
            x = self._bias * (self._fair - mid)
            # the logistic, written so that exp never overflows
            p_buy = 1.0 / (1.0 + math.exp(-x)) if x >= 0.0 else 1.0 - 1.0 / (1.0 + math.exp(x))
        else:
            p_buy = 0.5
        return MarketOrder(self._ns(t), BUY if side_u < p_buy else SELL, size)

    def _place(self, t: float, side: int, price: int, size: int, life: float) -> PlaceLimit:
        flow_id = self._next_id
        self._next_id = flow_id + 1
        self._live.add(flow_id)
        by_age = self._by_age
        while by_age and by_age[0] not in self._live:
            by_age.popleft()
        by_age.append(flow_id)
        heapq.heappush(self._cancels, (t + life, flow_id))
        return PlaceLimit(self._ns(t), flow_id, side, price, size)

    def _price(self, side: int, k: int) -> int:
        if side == BUY:
            return max(1, math.floor(self._fair - k))
        return math.ceil(self._fair + k)

    def _advance_fair(self, t: float) -> None:
        zi = self._zi
        if zi == _BLOCK:
            self._refill_normals()
            zi = 0
        self._zi = zi + 1
        dt = t - self._t_fair
        if dt > 0.0:
            fair = self._fair + self._sigma * math.sqrt(dt) * self._z[zi]
            self._fair = fair if fair >= 1.0 else 2.0 - fair  # reflected at 1 tick
            self._t_fair = t

    def _schedule_market(self, t: float) -> None:
        """Draw the next market order (time, side, size) after one at ``t``."""
        i = self._mi + 1
        if i == _BLOCK:
            self._refill_market()
            i = 0
        self._mi = i
        wait = self._m_exp[i] / self._mu if self._mu > 0.0 else math.inf
        excess = self._excess
        if excess > 0.0:
            # Dassios-Zhao: the first event of the decaying excitation, if it ever comes
            d = 1.0 + self._beta * math.log(self._m_u[i]) / excess
            if d > 0.0:
                wait = min(wait, -math.log(d) / self._beta)
        if wait == math.inf:
            self._t_market = math.inf  # mu = 0 and no excitation left: no more takers
            return
        self._excess = excess * math.exp(-self._beta * wait) + self._alpha
        self._t_market = t + wait

    # -- random blocks ---------------------------------------------------------------

    def _refill_normals(self) -> None:
        self._z = self._rng.standard_normal(_BLOCK).tolist()
        self._zi = 0

    def _refill_limit(self) -> None:
        p = self._params
        rng = self._rng
        self._l_gap = rng.exponential(0.5 / p.limit_rate_per_s, _BLOCK).tolist()
        self._l_side = rng.random(_BLOCK).tolist()
        self._l_k = rng.geometric(-math.expm1(-p.depth_decay), _BLOCK).tolist()
        self._l_size = rng.geometric(1.0 / p.limit_size_mean_lots, _BLOCK).tolist()
        self._l_life = rng.exponential(p.limit_lifetime_mean_s, _BLOCK).tolist()

    def _refill_market(self) -> None:
        p = self._params
        rng = self._rng
        self._m_exp = rng.standard_exponential(_BLOCK).tolist()
        self._m_u = (1.0 - rng.random(_BLOCK)).tolist()  # in (0, 1]: log-safe
        self._m_side = rng.random(_BLOCK).tolist()
        self._m_size = rng.geometric(1.0 / p.market_size_mean_lots, _BLOCK).tolist()
