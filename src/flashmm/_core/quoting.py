"""Quote kernel: Avellaneda-Stoikov / GLFT-style bid and ask in ticks, sizes in lots.

Given the mid, the best prices, volatility, inventory and the model's prediction,
:func:`compute_quote` proposes one bid and one ask:

- fair value = mid shifted by a capped fraction of the predicted move;
- reservation price r = fair - q * gamma * sigma^2 * tau, with q the inventory as a
  fraction of the limit (clipped to [-1, 1]) and sigma in ticks per sqrt(second);
- half-spread d = gamma * sigma^2 * tau / 2 + ln(1 + gamma / kappa) / gamma, widened to
  at least ``min_spread_ticks / 2``;
- bid = floor(r - d), ask = ceil(r + d), then kept passive (post-only) against the book;
- sizes shrink linearly with inventory on the side that would add to it.

Because q is normalized, gamma is the risk aversion per tick at the full inventory limit.
The risk gate downstream still enforces hard limits; this kernel only proposes.
"""

from __future__ import annotations

import math

import msgspec
import numba
import numpy as np

# ``params`` array layout (see QuoteParams.to_array).
Q_GAMMA = 0
Q_KAPPA = 1
Q_HORIZON_S = 2
Q_MAX_INVENTORY_LOTS = 3
Q_BASE_SIZE_LOTS = 4
Q_MIN_SPREAD_TICKS = 5
Q_SKEW_WEIGHT = 6
Q_MAX_SKEW_BPS = 7
N_QUOTE_PARAMS = 8

# ``out`` layout: the proposal, then what explains it.
QO_BID = 0  # bid price, ticks (0 = no bid)
QO_ASK = 1  # ask price, ticks (0 = no ask)
QO_BID_SIZE = 2  # lots
QO_ASK_SIZE = 3  # lots
QO_RESERVATION = 4  # reservation price r, ticks
QO_FAIR = 5  # fair value (mid + prediction skew), ticks
QO_HALF_SPREAD = 6  # half-spread d after min-spread widening, ticks
QO_SKEW_BPS = 7  # prediction skew applied to fair value, bps
QO_INVENTORY_RATIO = 8  # q = inventory / max inventory, clipped to [-1, 1]
QO_SIGMA_TICKS = 9  # volatility, ticks per sqrt(second)
N_QUOTE_OUT = 10

# Float noise this small must not move a price or a size by a whole unit.
_EPS = 1e-9
# Beyond this a price does not fit int64 ticks: such a quote is nonsense, not a trade.
_MAX_TICKS = 4e18


def _check_number(name: str, value: object, *, low: float, low_open: bool, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    too_low = v <= low if low_open else v < low
    if not math.isfinite(v) or too_low or v > high:
        bound = f"> {low}" if low_open else f">= {low}"
        if high != math.inf:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_int(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


class QuoteParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Quoting parameters. Prices in ticks, sizes in lots, times in seconds."""

    gamma: float = 0.1
    """Risk aversion per tick (at full inventory); > 0."""
    kappa: float = 1.5
    """Decay of order-arrival intensity with distance from the mid, per tick; > 0."""
    horizon_s: float = 30.0
    """Inventory horizon tau in seconds; > 0."""
    max_inventory_lots: int = 1000
    """Inventory at which the quote stops adding to the position; >= 1."""
    base_size_lots: int = 100
    """Size of each side when flat; >= 1."""
    min_spread_ticks: int = 2
    """Narrowest ask - bid the kernel proposes; >= 1."""
    skew_weight: float = 0.5
    """Fraction of the confidence-weighted predicted move added to fair value; 0..1."""
    max_skew_bps: float = 5.0
    """Cap on that prediction skew, bps; >= 0."""

    def __post_init__(self) -> None:
        _check_number("gamma", self.gamma, low=0.0, low_open=True, high=math.inf)
        _check_number("kappa", self.kappa, low=0.0, low_open=True, high=math.inf)
        _check_number("horizon_s", self.horizon_s, low=0.0, low_open=True, high=math.inf)
        _check_int("max_inventory_lots", self.max_inventory_lots, low=1)
        _check_int("base_size_lots", self.base_size_lots, low=1)
        _check_int("min_spread_ticks", self.min_spread_ticks, low=1)
        _check_number("skew_weight", self.skew_weight, low=0.0, low_open=False, high=1.0)
        _check_number("max_skew_bps", self.max_skew_bps, low=0.0, low_open=False, high=math.inf)

    def to_array(self) -> np.ndarray:
        """The float64 ``params`` array for :func:`compute_quote` (``Q_*`` index order)."""
        arr = np.zeros(N_QUOTE_PARAMS, dtype=np.float64)
        arr[Q_GAMMA] = self.gamma
        arr[Q_KAPPA] = self.kappa
        arr[Q_HORIZON_S] = self.horizon_s
        arr[Q_MAX_INVENTORY_LOTS] = self.max_inventory_lots
        arr[Q_BASE_SIZE_LOTS] = self.base_size_lots
        arr[Q_MIN_SPREAD_TICKS] = self.min_spread_ticks
        arr[Q_SKEW_WEIGHT] = self.skew_weight
        arr[Q_MAX_SKEW_BPS] = self.max_skew_bps
        return arr


@numba.njit(cache=True)
def compute_quote(
    mid: float,
    best_bid: int,
    best_ask: int,
    sigma_bps: float,
    inventory_lots: float,
    direction: float,
    confidence: float,
    move_bps: float,
    params: np.ndarray,
    out: np.ndarray,
) -> None:
    """Write a two-sided proposal and its diagnostics into ``out`` (N_QUOTE_OUT,).

    ``best_bid`` / ``best_ask`` are the book's best prices in ticks, 0 for an empty side.
    ``sigma_bps`` is volatility in bps per sqrt(second) (the ``ewma_vol_bps`` feature).

    A side with size 0 also has price 0: that is the one encoding of "no order". No
    quote at all (everything 0) when the mid is NaN or not positive, or when volatility
    or inventory is not a finite number: without them the risk cannot be priced.

    The prediction skews fair value by skew_weight * confidence * move_bps (capped at
    max_skew_bps), the sign of move_bps giving the direction. ``direction`` only gates
    it: the skew applies when the classifier's direction has the same sign as move_bps
    and is zero otherwise, including a neutral direction, since then the two heads of
    the model disagree about whether the price moves. A NaN prediction gives no skew.
    """
    for k in range(N_QUOTE_OUT):
        out[k] = 0.0
    if not (math.isfinite(mid) and mid > 0.0):
        return
    if not (math.isfinite(sigma_bps) and sigma_bps >= 0.0 and math.isfinite(inventory_lots)):
        return

    gamma = params[Q_GAMMA]
    kappa = params[Q_KAPPA]
    horizon = params[Q_HORIZON_S]
    max_inv = params[Q_MAX_INVENTORY_LOTS]
    base = params[Q_BASE_SIZE_LOTS]
    min_spread = params[Q_MIN_SPREAD_TICKS]
    skew_weight = params[Q_SKEW_WEIGHT]
    max_skew = params[Q_MAX_SKEW_BPS]

    sigma = sigma_bps * mid * 1e-4
    risk = gamma * sigma * sigma * horizon
    q = inventory_lots / max_inv
    q = min(1.0, max(-1.0, q))

    skew = 0.0
    if (direction > 0.0 and move_bps > 0.0) or (direction < 0.0 and move_bps < 0.0):
        raw = skew_weight * confidence * move_bps
        if math.isfinite(raw):
            skew = min(max_skew, max(-max_skew, raw))
    fair = mid + skew * mid * 1e-4

    r = fair - q * risk
    d = 0.5 * risk + math.log1p(gamma / kappa) / gamma
    # ceil(r + d) - floor(r - d) >= 2d, so d >= min_spread / 2 enforces the minimum spread.
    if d < 0.5 * min_spread:
        d = 0.5 * min_spread
    # An absurd volatility (inf, or inf * 0 = NaN) must pull the quote, not wrap an int.
    if not (r - d > -_MAX_TICKS and r + d < _MAX_TICKS):
        return
    bid = math.floor(r - d + _EPS)
    ask = math.ceil(r + d - _EPS)

    # Post-only: never cross the opposite best. Clipping only lowers the bid and raises
    # the ask, so the pair stays uncrossed; the last check is a guard for that invariant.
    if best_ask > 0 and bid > best_ask - 1:
        bid = best_ask - 1
    if best_bid > 0 and ask < best_bid + 1:
        ask = best_bid + 1
    if bid >= ask:
        ask = bid + 1

    bid_size = math.floor(base * min(1.0, max(0.0, 1.0 - q)) + _EPS)
    ask_size = math.floor(base * min(1.0, max(0.0, 1.0 + q)) + _EPS)
    # A price below one tick cannot be sent; that side is off.
    if bid_size <= 0 or bid < 1:
        bid = 0
        bid_size = 0
    if ask_size <= 0 or ask < 1:
        ask = 0
        ask_size = 0

    out[QO_BID] = bid
    out[QO_ASK] = ask
    out[QO_BID_SIZE] = bid_size
    out[QO_ASK_SIZE] = ask_size
    out[QO_RESERVATION] = r
    out[QO_FAIR] = fair
    out[QO_HALF_SPREAD] = d
    out[QO_SKEW_BPS] = skew
    out[QO_INVENTORY_RATIO] = q
    out[QO_SIGMA_TICKS] = sigma
