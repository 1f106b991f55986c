"""Quote kernel: hand-checked Avellaneda-Stoikov quotes, clipping and edge cases."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from flashmm._core import book as book_module
from flashmm._core.features import F_EWMA_VOL_BPS, FeatureState
from flashmm._core.model import OUT_CONFIDENCE, OUT_DIRECTION, OUT_MOVE_BPS, Model
from flashmm._core.quoting import (
    N_QUOTE_OUT,
    N_QUOTE_PARAMS,
    Q_BASE_SIZE_LOTS,
    Q_GAMMA,
    Q_HORIZON_S,
    Q_KAPPA,
    Q_MAX_INVENTORY_LOTS,
    Q_MAX_SKEW_BPS,
    Q_MIN_SPREAD_TICKS,
    Q_SKEW_WEIGHT,
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
    QuoteParams,
    compute_quote,
)

# gamma * sigma^2 * tau = 0.1 * 1 * 20 = 2 ticks^2 at sigma = 1 tick/sqrt(s) (1 bp of 10000).
P = QuoteParams(
    gamma=0.1,
    kappa=1.0,
    horizon_s=20.0,
    max_inventory_lots=1000,
    base_size_lots=100,
    min_spread_ticks=2,
    skew_weight=0.5,
    max_skew_bps=5.0,
)
AS_TERM = math.log(1 + 0.1 / 1.0) / 0.1  # 0.9531 ticks


def quote(
    mid: float = 10_000.0,
    best_bid: int = 9_999,
    best_ask: int = 10_001,
    sigma_bps: float = 1.0,
    inventory: float = 0,
    direction: float = 0.0,
    confidence: float = 0.0,
    move_bps: float = 0.0,
    params: QuoteParams = P,
) -> np.ndarray:
    out = np.full(N_QUOTE_OUT, np.nan)
    compute_quote(
        mid,
        best_bid,
        best_ask,
        sigma_bps,
        inventory,
        direction,
        confidence,
        move_bps,
        params.to_array(),
        out,
    )
    return out


def side(out: np.ndarray) -> tuple[float, float, float, float]:
    return out[QO_BID], out[QO_ASK], out[QO_BID_SIZE], out[QO_ASK_SIZE]


# ----------------------------------------------------------------------------- params


def test_params_array_order() -> None:
    a = P.to_array()
    assert a.shape == (N_QUOTE_PARAMS,)
    assert a.dtype == np.float64
    assert a[Q_GAMMA] == 0.1
    assert a[Q_KAPPA] == 1.0
    assert a[Q_HORIZON_S] == 20.0
    assert a[Q_MAX_INVENTORY_LOTS] == 1000
    assert a[Q_BASE_SIZE_LOTS] == 100
    assert a[Q_MIN_SPREAD_TICKS] == 2
    assert a[Q_SKEW_WEIGHT] == 0.5
    assert a[Q_MAX_SKEW_BPS] == 5.0


def test_params_defaults_are_valid_and_frozen() -> None:
    p = QuoteParams()
    assert p.min_spread_ticks >= 1
    with pytest.raises(AttributeError):
        p.gamma = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gamma", 0.0),
        ("gamma", -0.1),
        ("gamma", math.nan),
        ("gamma", "high"),
        ("kappa", 0.0),
        ("kappa", math.inf),
        ("horizon_s", 0.0),
        ("max_inventory_lots", 0),
        ("max_inventory_lots", 10.5),
        ("max_inventory_lots", True),
        ("base_size_lots", 0),
        ("min_spread_ticks", 0),
        ("skew_weight", 1.5),
        ("skew_weight", -0.1),
        ("max_skew_bps", -1.0),
    ],
)
def test_params_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        QuoteParams(**{field: value})


def test_params_from_json() -> None:
    p = msgspec.json.decode(b'{"gamma": 0.2, "min_spread_ticks": 3}', type=QuoteParams)
    assert p.gamma == 0.2
    assert p.min_spread_ticks == 3
    with pytest.raises(msgspec.ValidationError, match="kappa"):
        msgspec.json.decode(b'{"kappa": -1}', type=QuoteParams)
    with pytest.raises(msgspec.ValidationError, match="gama"):
        msgspec.json.decode(b'{"gama": 0.2}', type=QuoteParams)


# ----------------------------------------------------------------------------- maths


def test_flat_inventory_hand_checked() -> None:
    out = quote()
    d = 0.5 * 2.0 + AS_TERM  # 1.9531
    assert out[QO_SIGMA_TICKS] == pytest.approx(1.0)
    assert out[QO_HALF_SPREAD] == pytest.approx(d)
    assert out[QO_RESERVATION] == pytest.approx(10_000.0)
    assert out[QO_FAIR] == 10_000.0
    assert out[QO_INVENTORY_RATIO] == 0.0
    assert out[QO_SKEW_BPS] == 0.0
    assert side(out) == (math.floor(10_000 - d), math.ceil(10_000 + d), 100, 100)
    assert side(out) == (9_998, 10_002, 100, 100)


def test_long_inventory_moves_reservation_down_and_shrinks_bid() -> None:
    out = quote(inventory=500)  # q = 0.5: r = 10000 - 0.5 * 2 = 9999
    assert out[QO_INVENTORY_RATIO] == 0.5
    assert out[QO_RESERVATION] == pytest.approx(9_999.0)
    assert side(out) == (9_997, 10_001, 50, 100)


def test_short_inventory_moves_reservation_up_and_shrinks_ask() -> None:
    out = quote(inventory=-250)  # q = -0.25: r = 10000.5
    assert out[QO_RESERVATION] == pytest.approx(10_000.5)
    # bid = floor(10000.5 - 1.9531) = 9998, ask = ceil(10000.5 + 1.9531) = 10003
    assert side(out) == (9_998, 10_003, 100, 75)


def test_volatility_scales_with_mid() -> None:
    # 2 bps at mid 5000 ticks = 1 tick/sqrt(s): the same quote as 1 bp at 10000, halved.
    out = quote(mid=5_000.0, best_bid=4_999, best_ask=5_001, sigma_bps=2.0)
    assert out[QO_SIGMA_TICKS] == pytest.approx(1.0)
    assert out[QO_HALF_SPREAD] == pytest.approx(1.0 + AS_TERM)
    assert side(out) == (4_998, 5_002, 100, 100)


@pytest.mark.parametrize(
    ("inventory", "bid_size", "ask_size", "q"),
    [
        (1000, 0, 100, 1.0),  # at +max: no bid
        (2500, 0, 100, 1.0),  # beyond: clipped to the limit
        (-1000, 100, 0, -1.0),  # at -max: no ask
        (-7000, 100, 0, -1.0),
        (300, 70, 100, 0.3),  # 100 * 0.7 is 70, not 69 after float rounding
        (999, 0, 100, 0.999),  # floor(0.1 lot) = 0
    ],
)
def test_inventory_limits_and_sizes(inventory: int, bid_size: int, ask_size: int, q: float) -> None:
    out = quote(inventory=inventory)
    assert out[QO_BID_SIZE] == bid_size
    assert out[QO_ASK_SIZE] == ask_size
    assert out[QO_INVENTORY_RATIO] == pytest.approx(q)
    # A side with no size has no price either.
    assert (out[QO_BID] == 0) == (bid_size == 0)
    assert (out[QO_ASK] == 0) == (ask_size == 0)


def test_inventory_at_limit_reservation_is_clipped() -> None:
    at = quote(inventory=1000)
    beyond = quote(inventory=5000)
    assert at[QO_RESERVATION] == beyond[QO_RESERVATION] == pytest.approx(9_998.0)
    assert at[QO_ASK] == beyond[QO_ASK] == math.ceil(9_998 + 1.0 + AS_TERM)


def test_prediction_skew_hand_checked() -> None:
    # 0.5 * 0.8 * 5 bps = 2 bps of 10000 ticks = 2 ticks.
    out = quote(direction=1.0, confidence=0.8, move_bps=5.0, best_ask=10_010)
    assert out[QO_SKEW_BPS] == pytest.approx(2.0)
    assert out[QO_FAIR] == pytest.approx(10_002.0)
    assert out[QO_RESERVATION] == pytest.approx(10_002.0)
    assert side(out)[:2] == (10_000, 10_004)


@pytest.mark.parametrize(("direction", "move", "skew"), [(1.0, 50.0, 5.0), (-1.0, -50.0, -5.0)])
def test_prediction_skew_is_capped(direction: float, move: float, skew: float) -> None:
    out = quote(direction=direction, confidence=0.8, move_bps=move, best_bid=0, best_ask=0)
    assert out[QO_SKEW_BPS] == skew
    assert out[QO_FAIR] == pytest.approx(10_000 + skew)


@pytest.mark.parametrize(
    ("direction", "confidence", "move"),
    [
        (-1.0, 0.9, 5.0),  # heads disagree
        (1.0, 0.9, -5.0),
        (0.0, 0.9, 5.0),  # neutral class: no view on direction
        (1.0, 0.9, 0.0),
        (1.0, math.nan, 5.0),
        (math.nan, 0.9, 5.0),
        (1.0, 0.9, math.nan),
    ],
)
def test_no_skew_without_an_agreeing_prediction(
    direction: float, confidence: float, move: float
) -> None:
    out = quote(direction=direction, confidence=confidence, move_bps=move)
    assert out[QO_SKEW_BPS] == 0.0
    assert out[QO_FAIR] == 10_000.0
    assert side(out) == (9_998, 10_002, 100, 100)


def test_zero_volatility_uses_the_intensity_term_and_min_spread() -> None:
    out = quote(sigma_bps=0.0, inventory=800)
    # No risk term: inventory does not move r, and d = max(0.9531, 2 / 2) = 1.
    assert out[QO_SIGMA_TICKS] == 0.0
    assert out[QO_RESERVATION] == 10_000.0
    assert out[QO_HALF_SPREAD] == 1.0
    assert side(out) == (9_999, 10_001, 20, 100)
    p1 = msgspec.structs.replace(P, min_spread_ticks=1)
    out = quote(sigma_bps=0.0, params=p1)
    assert out[QO_HALF_SPREAD] == pytest.approx(AS_TERM)
    assert side(out)[:2] == (9_999, 10_001)


def test_min_spread_enforced_exactly_on_tick_boundaries() -> None:
    # d collapses to ~0 and is widened to 0.5: r +- d lands exactly on integers.
    p = QuoteParams(gamma=1.0, kappa=1e9, min_spread_ticks=1)
    out = quote(mid=10_000.5, best_bid=0, best_ask=0, sigma_bps=0.0, params=p)
    assert out[QO_HALF_SPREAD] == 0.5
    assert side(out)[:2] == (10_000, 10_001)
    p = QuoteParams(gamma=1.0, kappa=1e9, min_spread_ticks=10)
    out = quote(mid=10_000.0, best_bid=0, best_ask=0, sigma_bps=0.0, params=p)
    assert side(out)[:2] == (9_995, 10_005)


def test_min_spread_holds_everywhere_on_a_grid() -> None:
    p = QuoteParams(gamma=0.5, kappa=50.0, horizon_s=1.0, min_spread_ticks=3)
    for frac in np.linspace(0.0, 1.0, 41):
        for inv in (-1200, -999, -300, 0, 1, 450, 1000):
            for sigma in (0.0, 0.3, 1.7):
                out = quote(
                    mid=10_000.0 + frac,
                    best_bid=0,
                    best_ask=0,
                    sigma_bps=sigma,
                    inventory=inv,
                    params=p,
                )
                if out[QO_BID_SIZE] and out[QO_ASK_SIZE]:
                    assert out[QO_ASK] - out[QO_BID] >= 3
                    r, d = out[QO_RESERVATION], out[QO_HALF_SPREAD]
                    assert out[QO_BID] == math.floor(r - d + 1e-9)
                    assert out[QO_ASK] == math.ceil(r + d - 1e-9)


# ----------------------------------------------------------------------------- post-only


def test_post_only_clipping_against_a_one_tick_spread() -> None:
    # Strong bullish skew puts fair value above the ask: the bid joins the best bid,
    # it never crosses.
    p = msgspec.structs.replace(P, skew_weight=1.0, max_skew_bps=20.0, min_spread_ticks=1)
    out = quote(
        mid=9_999.5,
        best_bid=9_999,
        best_ask=10_000,
        direction=1.0,
        confidence=1.0,
        move_bps=20.0,
        params=p,
    )
    assert out[QO_BID] == 9_999  # best_ask - 1
    assert out[QO_ASK] >= 10_000
    # Bearish: fair value below the bid, the ask is lifted to best_bid + 1.
    out = quote(
        mid=9_999.5,
        best_bid=9_999,
        best_ask=10_000,
        direction=-1.0,
        confidence=1.0,
        move_bps=-20.0,
        params=p,
    )
    assert out[QO_ASK] == 10_000
    assert out[QO_BID] <= 9_999


def test_post_only_clipping_from_inventory() -> None:
    # Short 90% with a big risk term: reservation far above the ask.
    p = msgspec.structs.replace(P, gamma=1.0, horizon_s=100.0)
    out = quote(mid=9_999.5, best_bid=9_999, best_ask=10_000, inventory=-900, params=p)
    assert out[QO_RESERVATION] > 10_050
    assert out[QO_BID] == 9_999
    assert out[QO_ASK] > out[QO_BID]
    out = quote(mid=9_999.5, best_bid=9_999, best_ask=10_000, inventory=900, params=p)
    assert out[QO_ASK] == 10_000
    assert out[QO_BID] < out[QO_ASK]


def test_crossed_book_still_gives_an_uncrossed_quote() -> None:
    out = quote(mid=10_000.5, best_bid=10_001, best_ask=10_000, sigma_bps=0.0)
    assert out[QO_BID] <= 9_999
    assert out[QO_ASK] >= 10_002
    assert out[QO_BID] < out[QO_ASK]


def test_empty_opposite_side_does_not_clip() -> None:
    p = msgspec.structs.replace(P, gamma=1.0, horizon_s=100.0)
    # No asks (best_ask 0): the bid is not capped at -1 and keeps the model's price.
    out = quote(mid=9_999.5, best_bid=9_999, best_ask=0, inventory=-900, params=p)
    assert out[QO_BID] == math.floor(out[QO_RESERVATION] - out[QO_HALF_SPREAD] + 1e-9)
    assert out[QO_BID] > 10_000
    # No bids (best_bid 0): the ask is not lifted.
    out = quote(mid=9_999.5, best_bid=0, best_ask=10_000, inventory=900, params=p)
    assert out[QO_ASK] == math.ceil(out[QO_RESERVATION] + out[QO_HALF_SPREAD] - 1e-9)
    assert out[QO_ASK] < 9_999


# ----------------------------------------------------------------------------- no quote


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mid": math.nan},
        {"mid": 0.0},
        {"mid": -5.0},
        {"mid": math.inf},
        {"sigma_bps": math.nan},
        {"sigma_bps": -1.0},
        {"sigma_bps": math.inf},
        {"sigma_bps": 1e200},  # risk term overflows to inf
        {"inventory": math.nan},
    ],
)
def test_no_quote_when_risk_cannot_be_priced(kwargs: dict) -> None:
    out = quote(**kwargs)
    assert out.tolist() == [0.0] * N_QUOTE_OUT


def test_price_below_one_tick_is_not_quoted() -> None:
    p = msgspec.structs.replace(P, min_spread_ticks=4)
    out = quote(mid=1.0, best_bid=0, best_ask=0, sigma_bps=0.0, params=p)
    assert side(out) == (0, 3, 0, 100)


# ----------------------------------------------------------------------------- one tick


def test_one_tick_from_book_to_quote() -> None:
    """The three kernels chained on a real book, as the engine wires them."""
    book = book_module.OrderBook(0.0001, 1.0, depth=10)
    book.apply_snapshot(
        np.array([[0.4999, 300.0], [0.4998, 500.0]]), np.array([[0.5001, 100.0]]), 1
    )
    fs = FeatureState(vol_halflife_s=5.0)
    for i, m in enumerate([5_000.0, 5_001.0, 4_999.0, 5_000.0]):
        fs.update_mid(i * 250_000_000, m)
    fs.update_trade(900_000_000, 40.0)
    x = fs.compute(1_000_000_000, book.top)
    assert fs.mid == 5_000.0
    pred = Model.zeros().predict(x)
    out = np.zeros(N_QUOTE_OUT)
    compute_quote(
        fs.mid,
        book.top[0, 0],
        book.top[2, 0],
        x[F_EWMA_VOL_BPS],
        np.int64(0),
        pred[OUT_DIRECTION],
        pred[OUT_CONFIDENCE],
        pred[OUT_MOVE_BPS],
        QuoteParams().to_array(),
        out,
    )
    assert 0 < out[QO_BID] <= 4_999
    assert out[QO_ASK] >= 5_001
    assert out[QO_BID_SIZE] == out[QO_ASK_SIZE] == 100
