"""The simulator's synthetic market flow: determinism, validity and the model's statistics.

Statistical checks run one long seeded flow and compare with the model's closed forms,
within 4 standard errors (or a stated tolerance where the error has no simple form).
"""

from __future__ import annotations

import itertools
import math
import random

import msgspec
import numpy as np
import pytest

from flashmm.venue.sim.synthetic import (
    BUY,
    SELL,
    CancelLimit,
    FlowAction,
    MarketOrder,
    PlaceLimit,
    SyntheticFlow,
    SyntheticParams,
    UnknownFlowId,
)

START_NS = 1_700_000_000_000_000_000
HOURS_2_S = 7200.0
NS = 1_000_000_000


def first_actions(params: SyntheticParams, n: int) -> list[FlowAction]:
    flow = SyntheticFlow(params, START_NS)
    return [flow.next_action() for _ in range(n)]


class Run(msgspec.Struct):
    """One flow read to the end of a horizon; ``fairs[i]`` is the fair after action i."""

    params: SyntheticParams
    duration_s: float
    actions: list[FlowAction]
    fairs: list[float]


@pytest.fixture(scope="module")
def two_hours() -> Run:
    """Default (thin Sei-like) parameters, no feedback, 2 simulated hours, action by action."""
    flow = SyntheticFlow(SyntheticParams(), START_NS)
    end_ns = START_NS + int(HOURS_2_S * NS)
    actions: list[FlowAction] = []
    fairs: list[float] = []
    while True:
        action = flow.next_action()
        if action.ts_ns > end_ns:
            break
        actions.append(action)
        fairs.append(flow.fair_price_ticks)
    return Run(SyntheticParams(), HOURS_2_S, actions, fairs)


def arrivals(run: Run) -> list[tuple[FlowAction, float]]:
    """Limit and market arrivals after the seeding, with the fair price at that moment."""
    n_seed = 2 * run.params.initial_levels_per_side
    return [
        (a, f)
        for a, f in zip(run.actions, run.fairs, strict=True)
        if isinstance(a, MarketOrder) or (isinstance(a, PlaceLimit) and a.flow_id >= n_seed)
    ]


# -- determinism ---------------------------------------------------------------------


def test_same_seed_same_actions_other_seed_other_actions() -> None:
    a = first_actions(SyntheticParams(seed=11), 10_000)
    b = first_actions(SyntheticParams(seed=11), 10_000)
    c = first_actions(SyntheticParams(seed=12), 10_000)
    assert a == b
    assert {type(x) for x in a} == {PlaceLimit, CancelLimit, MarketOrder}
    differing = sum(x != y for x, y in zip(a, c, strict=True))
    assert differing > 9_000  # only the seeding's timestamps and prices coincide


def test_reading_in_windows_gives_the_same_sequence() -> None:
    params = SyntheticParams(seed=3)
    reference = first_actions(params, 3_000)
    flow = SyntheticFlow(params, START_NS)
    got: list[FlowAction] = []
    windows = itertools.cycle([0, 1, 250_000_000, 0, 3 * NS, 17, 900_000_000])
    ts = START_NS
    while len(got) < len(reference):
        ts += next(windows)
        got.extend(flow.actions_until(ts))
        assert flow.actions_until(ts - 5 * NS) == []  # the past is already read
        if len(got) % 7 == 0:
            got.append(flow.next_action())  # the two readers share one sequence
    assert got[: len(reference)] == reference


def test_feedback_changes_cancels_and_taker_sides_only() -> None:
    """Fills and mids consume no randomness: the same seed meets every strategy with the
    same fair path, arrival times, limit prices and sizes."""
    params = SyntheticParams(seed=5, taker_bias_per_tick=2.0)
    plain = SyntheticFlow(params, START_NS)
    steered = SyntheticFlow(params, START_NS)
    pick = random.Random(1)
    live: list[int] = []
    arrivals_plain: list[tuple] = []
    arrivals_steered: list[tuple] = []
    filled = 0
    while len(arrivals_steered) < 5_000:
        action = steered.next_action()
        if isinstance(action, PlaceLimit):
            live.append(action.flow_id)
            arrivals_steered.append((action, steered.fair_price_ticks))
        elif isinstance(action, CancelLimit):
            live.remove(action.flow_id)
        else:
            arrivals_steered.append((action.ts_ns, action.size_lots, steered.fair_price_ticks))
            if live:
                steered.on_filled(live.pop(pick.randrange(len(live))))
                filled += 1
            steered.on_mid(steered.fair_price_ticks + pick.choice([-3.0, 3.0]))
    while len(arrivals_plain) < 5_000:
        action = plain.next_action()
        if isinstance(action, PlaceLimit):
            arrivals_plain.append((action, plain.fair_price_ticks))
        elif isinstance(action, MarketOrder):
            arrivals_plain.append((action.ts_ns, action.size_lots, plain.fair_price_ticks))
    assert filled > 500
    assert arrivals_steered == arrivals_plain


# -- validity of every action --------------------------------------------------------


def test_timestamps_never_decrease_and_seeding_comes_first(two_hours: Run) -> None:
    stamps = [a.ts_ns for a in two_hours.actions]
    assert stamps == sorted(stamps)
    n_seed = 2 * two_hours.params.initial_levels_per_side
    seeds = two_hours.actions[:n_seed]
    assert all(isinstance(a, PlaceLimit) and a.ts_ns == START_NS for a in seeds)
    # levels 1..n ticks on each side of the initial fair price (4000)
    assert sorted(a.price_ticks for a in seeds if a.side == BUY) == [3995, 3996, 3997, 3998, 3999]
    assert sorted(a.price_ticks for a in seeds if a.side == SELL) == [4001, 4002, 4003, 4004, 4005]
    assert stamps[n_seed] > START_NS


def test_prices_sizes_and_sides_are_valid(two_hours: Run) -> None:
    for action, fair in zip(two_hours.actions, two_hours.fairs, strict=True):
        if isinstance(action, PlaceLimit):
            assert action.side in (BUY, SELL)
            assert action.price_ticks >= 1
            assert action.size_lots >= 1
            # k >= 1 tick away, on the passive side of fair
            if action.side == BUY:
                assert action.price_ticks <= fair - 1
            else:
                assert action.price_ticks >= fair + 1
        elif isinstance(action, MarketOrder):
            assert action.side in (BUY, SELL)
            assert action.size_lots >= 1


def test_prices_stay_positive_near_zero() -> None:
    params = SyntheticParams(seed=2, initial_price_ticks=3, volatility_ticks_per_sqrt_s=4.0)
    flow = SyntheticFlow(params, START_NS)
    bids_at_floor = 0
    for _ in range(20_000):
        action = flow.next_action()
        assert flow.fair_price_ticks >= 1.0
        if isinstance(action, PlaceLimit):
            assert action.price_ticks >= 1
            bids_at_floor += action.side == BUY and action.price_ticks == 1
    assert bids_at_floor > 100  # the regime was actually exercised


def test_cancels_name_live_orders_only() -> None:
    """A driver that fills a random resting order after each market order."""
    flow = SyntheticFlow(SyntheticParams(seed=9), START_NS)
    pick = random.Random(4)
    placed: set[int] = set()
    live: list[int] = []
    gone: set[int] = set()
    cancels = fills = 0
    for _ in range(30_000):
        action = flow.next_action()
        if isinstance(action, PlaceLimit):
            assert action.flow_id not in placed
            placed.add(action.flow_id)
            live.append(action.flow_id)
        elif isinstance(action, CancelLimit):
            assert action.flow_id in placed
            assert action.flow_id not in gone
            live.remove(action.flow_id)
            gone.add(action.flow_id)
            cancels += 1
        elif live:
            filled = live.pop(pick.randrange(len(live)))
            flow.on_filled(filled)
            gone.add(filled)
            fills += 1
    assert cancels > 5_000
    assert fills > 2_000


def test_at_the_cap_the_oldest_order_makes_room() -> None:
    params = SyntheticParams(
        seed=1, max_resting_orders=10, initial_levels_per_side=5, limit_lifetime_mean_s=600.0
    )
    flow = SyntheticFlow(params, START_NS)
    actions = [flow.next_action() for _ in range(5_000)]
    live: list[int] = []  # placement order
    cap_cancels = 0
    for action, after in itertools.pairwise(actions):
        if isinstance(action, PlaceLimit):
            live.append(action.flow_id)
        elif isinstance(action, CancelLimit):
            at_cap = len(live) == params.max_resting_orders
            if at_cap and isinstance(after, PlaceLimit) and after.ts_ns == action.ts_ns:
                assert action.flow_id == live[0]
                cap_cancels += 1
            live.remove(action.flow_id)
        assert len(live) <= params.max_resting_orders
    assert cap_cancels > 1_000


# -- statistics of the model ---------------------------------------------------------


def test_limit_arrival_rate(two_hours: Run) -> None:
    p = two_hours.params
    n = sum(isinstance(a, PlaceLimit) for a, _ in arrivals(two_hours))
    expected = 2 * p.limit_rate_per_s * two_hours.duration_s  # two sides
    assert abs(n - expected) < 4 * math.sqrt(expected)  # Poisson count


def test_depth_is_geometric_from_fair(two_hours: Run) -> None:
    p = two_hours.params
    ks = []
    for action, fair in arrivals(two_hours):
        if isinstance(action, PlaceLimit):
            # bid = floor(fair - k) = floor(fair) - k; ask = ceil(fair) + k
            ks.append(
                math.floor(fair) - action.price_ticks
                if action.side == BUY
                else action.price_ticks - math.ceil(fair)
            )
    k = np.array(ks)
    assert k.min() >= 1
    q = math.exp(-p.depth_decay)
    mean, var = 1 / (1 - q), q / (1 - q) ** 2  # geometric on {1, 2, ...}
    assert abs(k.mean() - mean) < 4 * math.sqrt(var / k.size)
    p1 = 1 - q
    assert abs(np.mean(k == 1) - p1) < 4 * math.sqrt(p1 * (1 - p1) / k.size)
    # mean distance |price - fair| adds the fractional part: mean k + ~0.5
    dist = [abs(a.price_ticks - f) for a, f in arrivals(two_hours) if isinstance(a, PlaceLimit)]
    assert abs(np.mean(dist) - (mean + 0.5)) < 0.1


def test_sizes_are_geometric(two_hours: Run) -> None:
    p = two_hours.params
    for kind, m in ((PlaceLimit, p.limit_size_mean_lots), (MarketOrder, p.market_size_mean_lots)):
        sizes = np.array([a.size_lots for a, _ in arrivals(two_hours) if isinstance(a, kind)])
        sd = math.sqrt(m * (m - 1))  # geometric with mean m: variance (1 - 1/m) m^2
        assert abs(sizes.mean() - m) < 4 * sd / math.sqrt(sizes.size)


def test_fair_price_volatility(two_hours: Run) -> None:
    sigma = two_hours.params.volatility_ticks_per_sqrt_s
    points = [(a.ts_ns, f) for a, f in arrivals(two_hours)]
    d_fair = np.diff([f for _, f in points])
    d_t = np.diff([t for t, _ in points]) / NS
    realised = np.sum(d_fair**2) / np.sum(d_t)
    # sum of squared Gaussian increments: relative standard error about sqrt(2 / n)
    assert abs(realised / sigma**2 - 1) < 4 * math.sqrt(2 / d_fair.size)


def test_lifetimes_are_exponential(two_hours: Run) -> None:
    p = two_hours.params
    placed_at = {a.flow_id: a.ts_ns for a in two_hours.actions if isinstance(a, PlaceLimit)}
    # orders placed early enough that their cancel is inside the run (P(missed) = e^-20)
    horizon = START_NS + int((two_hours.duration_s - 20 * p.limit_lifetime_mean_s) * NS)
    lives = np.array(
        [
            (a.ts_ns - placed_at[a.flow_id]) / NS
            for a in two_hours.actions
            if isinstance(a, CancelLimit) and placed_at[a.flow_id] <= horizon
        ]
    )
    n_placed = sum(t <= horizon for t in placed_at.values())
    assert lives.size == n_placed  # no fills, cap not reached: every order is cancelled
    m = p.limit_lifetime_mean_s
    assert abs(lives.mean() - m) < 4 * m / math.sqrt(lives.size)


def test_both_sides_stay_populated(two_hours: Run) -> None:
    p = two_hours.params
    side_of = {a.flow_id: a.side for a in two_hours.actions if isinstance(a, PlaceLimit)}
    resting = {BUY: 0, SELL: 0}
    samples = []
    for a in two_hours.actions:
        if isinstance(a, PlaceLimit):
            resting[a.side] += 1
        elif isinstance(a, CancelLimit):
            resting[side_of[a.flow_id]] -= 1
        if a.ts_ns > START_NS:
            assert resting[BUY] >= 1
            assert resting[SELL] >= 1
            samples.append(resting[BUY])
    # an M/M/inf queue: rate x mean lifetime orders rest on each side on average
    expected = p.limit_rate_per_s * p.limit_lifetime_mean_s
    assert abs(np.mean(samples) - expected) < 0.1 * expected


@pytest.mark.parametrize("alpha", [0.6, 0.0], ids=["hawkes", "poisson"])
def test_market_orders_follow_the_hawkes_model(alpha: float) -> None:
    mu, beta, duration = 0.2, 1.0, HOURS_2_S
    params = SyntheticParams(
        seed=21, market_base_rate_per_s=mu, market_excitation_per_s=alpha, market_decay_per_s=beta
    )
    flow = SyntheticFlow(params, START_NS)
    actions = flow.actions_until(START_NS + int(duration * NS))
    times = np.array([a.ts_ns - START_NS for a in actions if isinstance(a, MarketOrder)]) / NS
    n = alpha / beta  # branching ratio
    # mean rate mu / (1 - n); Var N(T) / T -> mu / (1 - n)^3 for a long window
    rate = mu / (1 - n)
    assert abs(times.size / duration - rate) < 4 * math.sqrt(mu / (1 - n) ** 3 / duration)
    # clustering: Fano factor of counts in w-second windows (Hawkes 1971, exponential kernel)
    # F(w) = 1 + (1/(1-n)^2 - 1) (1 - (1 - e^-gw) / (gw)), g = beta (1 - n); 1 for Poisson
    w = 10.0
    g = beta * (1 - n)
    fano = 1 + (1 / (1 - n) ** 2 - 1) * (1 - (1 - math.exp(-g * w)) / (g * w))
    counts = np.bincount((times // w).astype(int), minlength=int(duration / w))
    counts = counts[: int(duration / w)]
    assert abs(counts.var(ddof=1) / counts.mean() / fano - 1) < 0.25


def test_no_taker_flow_when_the_base_rate_is_zero() -> None:
    params = SyntheticParams(market_base_rate_per_s=0.0)
    actions = SyntheticFlow(params, START_NS).actions_until(START_NS + 600 * NS)
    assert len(actions) > 1000
    assert not any(isinstance(a, MarketOrder) for a in actions)


@pytest.mark.parametrize(
    ("mid_offset", "slope"),
    [(None, 0.5), (-4.0, 0.5), (3.0, 0.5), (math.nan, 0.5), (-4.0, 0.0)],
    ids=["no-mid", "mid-below-fair", "mid-above-fair", "nan-mid", "bias-off"],
)
def test_taker_side_leans_toward_fair(mid_offset: float | None, slope: float) -> None:
    # a constant fair price (no volatility) makes P(buy) exact
    params = SyntheticParams(
        seed=8,
        volatility_ticks_per_sqrt_s=0.0,
        market_base_rate_per_s=2.0,
        market_excitation_per_s=0.0,
        taker_bias_per_tick=slope,
    )
    flow = SyntheticFlow(params, START_NS)
    if mid_offset is not None:
        flow.on_mid(params.initial_price_ticks + mid_offset)
    orders = [a for a in flow.actions_until(START_NS + 1800 * NS) if isinstance(a, MarketOrder)]
    if mid_offset is None or math.isnan(mid_offset):
        p_buy = 0.5
    else:
        p_buy = 1 / (1 + math.exp(-slope * (0.0 - mid_offset)))  # fair - mid = -offset
    buys = sum(a.side == BUY for a in orders) / len(orders)
    assert abs(buys - p_buy) < 4 * math.sqrt(p_buy * (1 - p_buy) / len(orders))


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("seed", 1.5),
        ("initial_price_ticks", 0),
        ("initial_price_ticks", True),
        ("volatility_ticks_per_sqrt_s", -0.1),
        ("volatility_ticks_per_sqrt_s", math.inf),
        ("limit_rate_per_s", 0.0),
        ("limit_rate_per_s", math.nan),
        ("depth_decay", 0.0),
        ("limit_size_mean_lots", 0.5),
        ("limit_lifetime_mean_s", 0.0),
        ("initial_levels_per_side", -1),
        ("max_resting_orders", 0),
        ("market_base_rate_per_s", -1.0),
        ("market_excitation_per_s", -0.5),
        ("market_decay_per_s", 0.0),
        ("market_size_mean_lots", 0.0),
        ("taker_bias_per_tick", -1.0),
        ("taker_bias_per_tick", "0.5"),
    ],
)
def test_bad_parameter_names_its_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticParams(**{field: value})


def test_unstable_hawkes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"market_excitation_per_s .* market_decay_per_s"):
        SyntheticParams(market_excitation_per_s=1.0, market_decay_per_s=1.0)


def test_cap_below_the_seeding_is_refused() -> None:
    with pytest.raises(ValueError, match=r"max_resting_orders .* initial_levels_per_side"):
        SyntheticParams(max_resting_orders=9, initial_levels_per_side=5)


def test_params_from_a_config_mapping() -> None:
    params = msgspec.convert({"seed": 3, "depth_decay": 0.5}, SyntheticParams)
    assert (params.seed, params.depth_decay) == (3, 0.5)
    with pytest.raises(msgspec.ValidationError, match="depth_decay"):
        msgspec.convert({"depth_decay": -1.0}, SyntheticParams)
    with pytest.raises(msgspec.ValidationError, match="depth_dekay"):
        msgspec.convert({"depth_dekay": 0.5}, SyntheticParams)


def test_bad_flow_arguments() -> None:
    with pytest.raises(ValueError, match="start_ns"):
        SyntheticFlow(SyntheticParams(), -1)
    with pytest.raises(TypeError, match="SyntheticParams"):
        SyntheticFlow({"seed": 1}, 0)  # type: ignore[arg-type]


def test_bad_feedback_is_refused_and_changes_nothing() -> None:
    params = SyntheticParams(seed=4)
    reference = SyntheticFlow(params, START_NS)
    flow = SyntheticFlow(params, START_NS)
    for f in (reference, flow):
        f.on_mid(4001.0)
    expected = [reference.next_action() for _ in range(200)]
    got = [flow.next_action() for _ in range(100)]
    placed = max(a.flow_id for a in got if isinstance(a, PlaceLimit))
    for bad in (placed + 1, -1, "3"):
        with pytest.raises(UnknownFlowId, match="flow_id"):
            flow.on_filled(bad)  # type: ignore[arg-type]
    for bad_mid in (math.inf, 0.0, -5.0, "4000"):
        with pytest.raises(ValueError, match="mid_ticks"):
            flow.on_mid(bad_mid)  # type: ignore[arg-type]
    got += [flow.next_action() for _ in range(100)]
    assert got == expected


def test_a_second_fill_report_is_ignored() -> None:
    flow = SyntheticFlow(SyntheticParams(seed=6), START_NS)
    first = flow.next_action()
    assert isinstance(first, PlaceLimit)
    flow.on_filled(first.flow_id)
    flow.on_filled(first.flow_id)
    later = [flow.next_action() for _ in range(2_000)]
    assert all(a.flow_id != first.flow_id for a in later if isinstance(a, CancelLimit))
