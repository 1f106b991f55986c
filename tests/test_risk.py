"""The risk ladder, the automatic triggers and the pre-trade gate (flashmm.engine.risk)."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashmm.engine.records import Side
from flashmm.engine.risk import (
    RiskGate,
    RiskInputError,
    RiskLadder,
    RiskMonitor,
    RiskSettings,
    RiskSettingsError,
    RiskState,
    RiskTransitionError,
    Transition,
)

S = 1_000_000_000  # ns per second
MS = 1_000_000
DAY = 86_400 * S
T0 = 1_700_000_000 * S  # 2023-11-14 22:13:20 UTC
ACTIVE, REDUCING, PAUSED, HALTED, FLATTENED = RiskState

CLIMBABLE = [ACTIVE, REDUCING, PAUSED, HALTED]  # every state escalate() can reach


def monitor(state: RiskState = ACTIVE, **changes: object) -> tuple[RiskMonitor, RiskLadder]:
    ladder = RiskLadder(state=state)
    return RiskMonitor(RiskSettings(**changes), ladder), ladder  # type: ignore[arg-type]


def evaluate(
    mon: RiskMonitor,
    now_ns: int,
    *,
    net_pnl: float = 0.0,
    capital: float = 10_000.0,
    inventory: dict[str, float] | None = None,
) -> list[Transition]:
    return mon.evaluate(now_ns, net_pnl=net_pnl, capital=capital, inventory_ratio=inventory or {})


# -- settings ---------------------------------------------------------------------------------


def test_settings_defaults_are_valid_and_decode_from_toml_like_input() -> None:
    decoded = msgspec.convert({"max_drawdown": 0.1, "latency_window": 5}, RiskSettings)
    assert decoded == RiskSettings(max_drawdown=0.1, latency_window=5)
    with pytest.raises(msgspec.ValidationError, match="max_drawdonw"):
        msgspec.convert({"max_drawdonw": 0.1}, RiskSettings)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("position_limit_fraction", 0.0, "> 0"),
        ("position_limit_fraction", float("inf"), "> 0"),
        ("max_notional", -1.0, ">= 0"),
        ("max_drawdown", 0.0, "> 0 and <= 1"),
        ("max_drawdown", 1.5, "> 0 and <= 1"),
        ("max_daily_drawdown", float("nan"), "> 0 and <= 1"),
        ("reduce_clear_fraction", 1.01, "> 0 and <= 1"),
        ("stale_pause_s", -2.0, "> 0"),
        ("reject_rate_limit", 0.0, "> 0 and <= 1"),
        ("reject_window_s", 0, "> 0"),
        ("reject_min_orders", 0, "integer >= 1"),
        ("latency_limit_ms", "250", "> 0"),
        ("latency_window", 2.5, "integer >= 1"),
        ("cooldown_s", True, "> 0"),
    ],
)
def test_settings_reject_out_of_range_values_naming_field_and_range(
    field: str, value: object, allowed: str
) -> None:
    with pytest.raises(RiskSettingsError, match=f"{field} must be .*{allowed}"):
        RiskSettings(**{field: value})  # type: ignore[arg-type]


def test_severity_follows_the_ladder_order() -> None:
    assert [s.severity for s in RiskState] == [0, 1, 2, 3, 4]
    assert list(RiskState) == [ACTIVE, REDUCING, PAUSED, HALTED, FLATTENED]


# -- ladder: transitions ----------------------------------------------------------------------


@pytest.mark.parametrize(("start", "to"), [(a, b) for a, b in itertools.combinations(CLIMBABLE, 2)])
def test_escalate_climbs_every_edge_once(start: RiskState, to: RiskState) -> None:
    ladder = RiskLadder(state=start, since_ns=5)
    t = ladder.escalate(to, "why", T0, source="operator")
    assert t == Transition(from_state=start, to_state=to, reason="why", ts_ns=T0, source="operator")
    assert (ladder.state, ladder.since_ns, ladder.until_ns) == (to, T0, None)
    assert ladder.history == [t]
    # Asking again is an idempotent no-op.
    assert ladder.escalate(to, "again", T0 + S) is None
    assert (ladder.state, ladder.since_ns, ladder.history) == (to, T0, [t])


@pytest.mark.parametrize(
    ("start", "to"),
    [(a, b) for a in RiskState for b in CLIMBABLE if b.severity <= a.severity],
)
def test_escalate_to_a_state_at_or_below_is_a_no_op(start: RiskState, to: RiskState) -> None:
    ladder = RiskLadder(state=start, since_ns=5)
    assert ladder.escalate(to, "why", T0) is None
    assert (ladder.state, ladder.since_ns, ladder.history) == (start, 5, [])


@pytest.mark.parametrize("start", [HALTED, FLATTENED])
def test_a_pause_below_halted_is_a_no_op_even_timed(start: RiskState) -> None:
    ladder = RiskLadder(state=start)
    assert ladder.escalate(PAUSED, "why", T0, duration_s=30) is None
    assert ladder.escalate(PAUSED, "why", T0) is None
    assert (ladder.state, ladder.until_ns, ladder.history) == (start, None, [])


def test_bad_requests_raise_and_change_nothing() -> None:
    ladder = RiskLadder(state=REDUCING, since_ns=5)
    with pytest.raises(RiskTransitionError, match="only through flattened"):
        ladder.escalate(FLATTENED, "why", T0)
    with pytest.raises(RiskTransitionError, match="duration_s applies only to paused"):
        ladder.escalate(HALTED, "why", T0, duration_s=5)
    with pytest.raises(RiskTransitionError, match="duration_s must be a number > 0"):
        ladder.escalate(PAUSED, "why", T0, duration_s=0)
    with pytest.raises(RiskTransitionError, match="unknown risk state 'panic'"):
        ladder.escalate("panic", "why", T0)  # type: ignore[arg-type]
    assert (ladder.state, ladder.since_ns, ladder.history) == (REDUCING, 5, [])


@pytest.mark.parametrize("start", [REDUCING, PAUSED, HALTED, FLATTENED])
def test_resume_goes_to_active_from_any_state(start: RiskState) -> None:
    ladder = RiskLadder(state=start)
    t = ladder.resume("checked", T0)
    assert t == Transition(
        from_state=start, to_state=ACTIVE, reason="checked", ts_ns=T0, source="operator"
    )
    assert (ladder.state, ladder.since_ns) == (ACTIVE, T0)
    assert ladder.resume("again", T0 + S) is None
    assert ladder.history == [t]


def test_flattened_only_from_halted() -> None:
    ladder = RiskLadder(state=HALTED)
    t = ladder.flattened("inventory closed", T0)
    assert t is not None and (t.from_state, t.to_state) == (HALTED, FLATTENED)
    assert ladder.flattened("again", T0 + S) is None
    assert ladder.state is FLATTENED
    for start in (ACTIVE, REDUCING, PAUSED):
        other = RiskLadder(state=start)
        with pytest.raises(RiskTransitionError, match=f"from halted; the risk state is {start}"):
            other.flattened("inventory closed", T0)
        assert (other.state, other.history) == (start, [])


@pytest.mark.parametrize(
    ("state", "reducing_ok", "other_ok"),
    [
        (ACTIVE, True, True),
        (REDUCING, True, False),
        (PAUSED, False, False),
        (HALTED, False, False),
        (FLATTENED, False, False),
    ],
)
def test_allows(state: RiskState, reducing_ok: bool, other_ok: bool) -> None:
    ladder = RiskLadder(state=state)
    assert (ladder.allows(True), ladder.allows(False)) == (reducing_ok, other_ok)


# -- ladder: pauses ---------------------------------------------------------------------------


def test_timed_pause_resumes_itself_when_its_time_is_over() -> None:
    ladder = RiskLadder()
    t = ladder.escalate(PAUSED, "cooldown", T0, duration_s=30)
    assert t is not None and t.until_ns == T0 + 30 * S == ladder.until_ns
    assert ladder.tick(T0 + 30 * S - 1) is None
    assert ladder.state is PAUSED
    back = ladder.tick(T0 + 30 * S)
    assert back is not None and (back.from_state, back.to_state) == (PAUSED, ACTIVE)
    assert (ladder.state, ladder.until_ns, ladder.since_ns) == (ACTIVE, None, T0 + 30 * S)


def test_a_later_pause_extends_and_an_earlier_one_does_not() -> None:
    ladder = RiskLadder()
    ladder.escalate(PAUSED, "first", T0, duration_s=30)
    assert ladder.escalate(PAUSED, "shorter", T0 + 5 * S, duration_s=10) is None
    assert ladder.until_ns == T0 + 30 * S
    t = ladder.escalate(PAUSED, "longer", T0 + 5 * S, duration_s=60)
    assert t is not None and (t.from_state, t.to_state, t.until_ns) == (
        PAUSED,
        PAUSED,
        T0 + 65 * S,
    )
    assert (ladder.until_ns, ladder.since_ns) == (T0 + 65 * S, T0)  # still paused since T0
    assert ladder.tick(T0 + 30 * S) is None
    # An untimed pause outlasts any timed one; a timed one then changes nothing.
    t = ladder.escalate(PAUSED, "until I say so", T0 + 6 * S)
    assert t is not None and t.until_ns is None
    assert ladder.escalate(PAUSED, "timed", T0 + 7 * S, duration_s=600) is None
    assert ladder.tick(T0 + 10_000 * S) is None
    assert ladder.state is PAUSED


def test_a_pause_returns_to_an_explicit_reducing() -> None:
    ladder = RiskLadder()
    ladder.escalate(REDUCING, "operator: reduce only", T0, source="operator")
    ladder.escalate(PAUSED, "cooldown", T0 + S, duration_s=10)
    back = ladder.tick(T0 + 11 * S)
    assert back is not None and back.to_state is REDUCING
    # REDUCING asked during a pause is not a transition, but the pause ends in it.
    ladder = RiskLadder()
    ladder.escalate(PAUSED, "cooldown", T0, duration_s=10)
    assert ladder.escalate(REDUCING, "operator: reduce only", T0 + S) is None
    back = ladder.tick(T0 + 10 * S)
    assert back is not None and back.to_state is REDUCING


def test_restored_timed_pause_ends_on_tick_and_bad_restores_raise() -> None:
    ladder = RiskLadder(state=PAUSED, since_ns=T0, until_ns=T0 + 5 * S)
    assert ladder.tick(T0 + 4 * S) is None
    back = ladder.tick(T0 + 5 * S)
    assert back is not None and ladder.state is ACTIVE
    assert RiskLadder(state="halted").state is HALTED  # type: ignore[arg-type]
    with pytest.raises(RiskTransitionError, match="until_ns is only for a paused state"):
        RiskLadder(state=HALTED, until_ns=T0)
    with pytest.raises(RiskTransitionError, match="unknown risk state 'panic'"):
        RiskLadder(state="panic")  # type: ignore[arg-type]


def test_history_keeps_the_last_1000_transitions() -> None:
    ladder = RiskLadder()
    for i in range(600):
        ladder.escalate(HALTED, f"halt {i}", i)
        ladder.resume(f"resume {i}", i)
    assert len(ladder.history) == 1000
    assert ladder.history[0].reason == "halt 100"
    assert ladder.history[-1].reason == "resume 599"


# -- monitor: inventory -----------------------------------------------------------------------


def test_inventory_breach_reduces_with_hysteresis() -> None:
    mon, ladder = monitor()
    assert evaluate(mon, T0, inventory={"SEI/USDC": 0.999, "ETH/USDC": 0.2}) == []
    [t] = evaluate(mon, T0 + S, inventory={"SEI/USDC": 1.04, "ETH/USDC": 0.2})
    assert (t.from_state, t.to_state, t.source) == (ACTIVE, REDUCING, "auto")
    assert "inventory of SEI/USDC at 104% of its position limit" in t.reason
    # Under the limit but not under 80% of it everywhere: still reducing.
    assert evaluate(mon, T0 + 2 * S, inventory={"SEI/USDC": 0.5, "ETH/USDC": 0.8}) == []
    assert ladder.state is REDUCING
    [t] = evaluate(mon, T0 + 3 * S, inventory={"SEI/USDC": 0.5, "ETH/USDC": 0.79})
    assert (t.from_state, t.to_state) == (REDUCING, ACTIVE)
    assert "under 80% of the position limit in every market" in t.reason
    # Back in the band without a new breach: stays active.
    assert evaluate(mon, T0 + 4 * S, inventory={"SEI/USDC": 0.95}) == []


def test_inventory_does_not_clear_a_reducing_the_operator_asked_for() -> None:
    mon, ladder = monitor()
    ladder.escalate(REDUCING, "operator: reduce only", T0, source="operator")
    evaluate(mon, T0 + S, inventory={"SEI/USDC": 1.2})
    assert evaluate(mon, T0 + 2 * S, inventory={"SEI/USDC": 0.1}) == []
    assert ladder.state is REDUCING


def test_inventory_reducing_survives_a_pause_and_clears_during_it() -> None:
    mon, ladder = monitor()
    evaluate(mon, T0, inventory={"SEI/USDC": 1.0})
    ladder.escalate(PAUSED, "cooldown", T0 + S, duration_s=10)
    assert ladder.tick(T0 + 11 * S) is not None
    assert ladder.state is REDUCING  # the breach is still on
    ladder.escalate(PAUSED, "cooldown", T0 + 12 * S, duration_s=10)
    assert evaluate(mon, T0 + 13 * S, inventory={"SEI/USDC": 0.1}) == []  # cleared while paused
    [t] = evaluate(mon, T0 + 22 * S, inventory={"SEI/USDC": 0.1})
    assert (t.from_state, t.to_state) == (PAUSED, ACTIVE)


# -- monitor: feeds, rejects, latency ---------------------------------------------------------


def test_stale_feed_pauses_until_every_feed_is_live() -> None:
    mon, _ = monitor()
    mon.observe_feed("SEI/USDC", True, T0)
    mon.observe_feed("SEI/USDC", False, T0)
    mon.observe_feed("SEI/USDC", False, T0 + 5 * S)  # still down: the clock keeps T0
    assert evaluate(mon, T0 + 10 * S - 1) == []
    [t] = evaluate(mon, T0 + 10 * S)
    assert (t.to_state, t.until_ns) == (PAUSED, None)
    assert "market data for SEI/USDC not live for 10.0 s (limit 10 s)" in t.reason
    mon.observe_feed("ETH/USDC", False, T0 + 11 * S)
    mon.observe_feed("SEI/USDC", True, T0 + 12 * S)
    assert evaluate(mon, T0 + 12 * S) == []  # ETH/USDC is not live yet
    mon.observe_feed("ETH/USDC", True, T0 + 13 * S)
    [t] = evaluate(mon, T0 + 13 * S)
    assert (t.from_state, t.to_state) == (PAUSED, ACTIVE)


def test_feed_recovery_does_not_cut_a_cooldown_short() -> None:
    mon, ladder = monitor()
    mon.observe_feed("SEI/USDC", False, T0)
    evaluate(mon, T0 + 10 * S)
    ladder.escalate(PAUSED, "cooldown", T0 + 11 * S, duration_s=30)  # covered by the stale pause
    assert ladder.until_ns is None
    mon.observe_feed("SEI/USDC", True, T0 + 12 * S)
    [t] = evaluate(mon, T0 + 12 * S)
    assert (t.to_state, t.until_ns) == (PAUSED, T0 + 41 * S)
    [t] = evaluate(mon, T0 + 41 * S)
    assert (t.from_state, t.to_state) == (PAUSED, ACTIVE)


def test_stale_feed_does_not_clear_an_operator_pause() -> None:
    mon, ladder = monitor()
    ladder.escalate(PAUSED, "operator pause", T0, source="operator")
    mon.observe_feed("SEI/USDC", False, T0)
    evaluate(mon, T0 + 10 * S)
    mon.observe_feed("SEI/USDC", True, T0 + 11 * S)
    assert evaluate(mon, T0 + 11 * S) == []
    assert ladder.state is PAUSED


def test_reject_rate_pauses_for_the_cooldown() -> None:
    mon, _ = monitor()
    for i in range(10):
        mon.observe_order(T0 + i * S)
    for i in range(4):
        mon.observe_reject(T0 + i * S)
    assert evaluate(mon, T0 + 10 * S) == []  # 4 / 10 < 50%
    mon.observe_reject(T0 + 10 * S)
    [t] = evaluate(mon, T0 + 10 * S)  # 5 / 10 = 50%
    assert (t.to_state, t.until_ns) == (PAUSED, T0 + 40 * S)
    assert "reject rate 50% (5 of 10 orders in the last 60 s) >= limit 50%" in t.reason
    [t] = evaluate(mon, T0 + 40 * S)  # the cooldown ends and the spent rejects do not re-fire
    assert (t.from_state, t.to_state) == (PAUSED, ACTIVE)


def test_reject_rate_needs_min_orders_inside_the_window() -> None:
    mon, ladder = monitor()
    for i in range(9):
        mon.observe_order(T0 + i * S)
        mon.observe_reject(T0 + i * S)
    assert evaluate(mon, T0 + 9 * S) == []  # 9 orders < reject_min_orders
    mon.observe_order(T0 + 60 * S)
    mon.observe_reject(T0 + 60 * S)
    # The first order (at T0) is 60 s old: out of the window, so still 9 orders.
    assert evaluate(mon, T0 + 60 * S) == []
    assert ladder.state is ACTIVE


def test_latency_median_above_limit_pauses() -> None:
    mon, _ = monitor()
    for _ in range(10):
        mon.observe_ack_latency(200 * MS)
    for _ in range(9):
        mon.observe_ack_latency(400 * MS)
    assert evaluate(mon, T0) == []  # 19 acks: the window is not full
    mon.observe_ack_latency(300 * MS)
    assert evaluate(mon, T0) == []  # median (200 + 300) / 2 = 250 ms, not above 250
    mon.observe_ack_latency(301 * MS)  # drops the oldest 200: median (300 + 301) / 2
    [t] = evaluate(mon, T0 + S)
    assert (t.to_state, t.until_ns) == (PAUSED, T0 + 31 * S)
    assert "median order->ack latency 300.5 ms over the last 20 acks > limit 250 ms" in t.reason
    [t] = evaluate(mon, T0 + 31 * S)  # the acks that fired it are spent
    assert t.to_state is ACTIVE


# -- monitor: drawdowns -----------------------------------------------------------------------


def test_total_drawdown_halts_at_the_limit() -> None:
    mon, _ = monitor(max_daily_drawdown=1.0)
    evaluate(mon, T0, net_pnl=0.0)
    evaluate(mon, T0 + S, net_pnl=120.0)
    assert evaluate(mon, T0 + 2 * S, net_pnl=-379.0) == []  # 499 < 5% of 10 000
    [t] = evaluate(mon, T0 + 3 * S, net_pnl=-380.0)  # 500
    assert t.to_state is HALTED
    assert t.reason == (
        "total drawdown 5.0% of capital >= limit 5.0% (peak net PnL 120.00, now -380.00)"
    )


def test_daily_drawdown_peak_resets_at_utc_midnight() -> None:
    mon, _ = monitor()
    midnight = (T0 // DAY + 1) * DAY
    evaluate(mon, midnight - 60 * S, net_pnl=300.0)
    assert evaluate(mon, midnight - S, net_pnl=150.0) == []  # 150 < 2% of 10 000
    # 201 below yesterday's peak, but today's peak starts at 99.
    assert evaluate(mon, midnight, net_pnl=99.0) == []
    assert evaluate(mon, midnight + S, net_pnl=-100.0) == []  # 199 under today's peak
    [t] = evaluate(mon, midnight + 2 * S, net_pnl=-101.0)  # 200
    assert t.to_state is HALTED
    assert t.reason.startswith("daily drawdown 2.0% of capital >= limit 2.0%")
    assert "(peak net PnL since 00:00 UTC 99.00, now -101.00)" in t.reason


def test_halted_is_sticky_and_a_resume_accepts_the_drawdown() -> None:
    mon, ladder = monitor(max_daily_drawdown=1.0)
    evaluate(mon, T0, net_pnl=0.0)
    evaluate(mon, T0 + S, net_pnl=-600.0)
    assert ladder.state is HALTED
    mon.observe_feed("SEI/USDC", False, T0)
    assert evaluate(mon, T0 + 100 * S, net_pnl=0.0) == []  # recovered: still halted
    assert ladder.tick(T0 + 10 * DAY) is None
    assert ladder.state is HALTED
    mon.observe_feed("SEI/USDC", True, T0 + 101 * S)
    evaluate(mon, T0 + 101 * S, net_pnl=-600.0)
    ladder.resume("loss accepted", T0 + 102 * S)
    assert evaluate(mon, T0 + 103 * S, net_pnl=-600.0) == []  # peak restarts at -600
    assert evaluate(mon, T0 + 104 * S, net_pnl=-1099.0) == []
    [t] = evaluate(mon, T0 + 105 * S, net_pnl=-1100.0)
    assert t.to_state is HALTED


def test_resume_does_not_forget_a_drawdown_under_the_limit() -> None:
    mon, ladder = monitor(max_daily_drawdown=1.0)
    evaluate(mon, T0, net_pnl=100.0)
    evaluate(mon, T0 + S, net_pnl=-300.0)  # 400 down
    ladder.escalate(PAUSED, "operator pause", T0 + 2 * S)
    ladder.resume("go", T0 + 3 * S)
    [t] = evaluate(mon, T0 + 4 * S, net_pnl=-400.0)  # 500 below the old peak
    assert t.to_state is HALTED


def test_evaluate_rejects_bad_numbers_and_changes_nothing() -> None:
    mon, ladder = monitor()
    mon.observe_feed("SEI/USDC", False, T0)
    for kwargs in (
        {"capital": 0.0},
        {"net_pnl": float("nan")},
        {"inventory": {"SEI/USDC": -0.1}},
        {"inventory": {"SEI/USDC": 2.0, "ETH/USDC": float("inf")}},
    ):
        with pytest.raises(RiskInputError):
            evaluate(mon, T0 + 60 * S, **kwargs)  # type: ignore[arg-type]
    assert (ladder.state, ladder.history) == (ACTIVE, [])
    with pytest.raises(RiskInputError, match="latency_ns must be an integer >= 0"):
        mon.observe_ack_latency(-1)


# -- gate -------------------------------------------------------------------------------------

# Limit 2% of 10 000 = 200 quote; at price 2.0 and lot 1.0 that is 100 lots.
GATE = {"price": 2.0, "lot_size": 1.0, "equity": 10_000.0}


def gate(state: RiskState = ACTIVE, **changes: object) -> RiskGate:
    return RiskGate(RiskSettings(**changes), RiskLadder(state=state))  # type: ignore[arg-type]


def check(g: RiskGate, side: Side, size: int, position: int, working: int, **over: float):
    kwargs = {**GATE, **over}
    return g.check(
        side=side, size_lots=size, position_lots=position, working_lots=working, **kwargs
    )


def test_gate_passes_an_order_inside_the_limit_untouched() -> None:
    assert check(gate(), Side.BUY, 100, 0, 0) == (100, "")
    assert check(gate(), Side.SELL, 100, 0, 0) == (100, "")


def test_gate_clips_to_the_position_limit_counting_working_orders() -> None:
    size, reason = check(gate(), Side.BUY, 50, 40, 30)  # 40 + 30 held or working: room 30
    assert size == 30
    assert reason == (
        "position limit 100 lots (2.00% of equity 10000.00) with +70 lots held or working; "
        "size 50 -> 30"
    )
    assert check(gate(), Side.BUY, 50, 40, 60)[0] == 0
    assert check(gate(), Side.SELL, 80, -10, -20)[0] == 70  # -30 now: room 70 more short
    # Opposite to the position but larger than it: flips, so the limit applies past zero.
    assert check(gate(), Side.SELL, 130, 40, -10) == (130, "")  # ends at -100
    assert check(gate(), Side.SELL, 140, 40, -10)[0] == 130


def test_gate_never_clips_a_reducing_order_by_the_position_limit() -> None:
    # 150 lots long is over the limit (the price moved); selling 100 of them reduces it.
    assert check(gate(), Side.SELL, 100, 150, 0) == (100, "")
    assert check(gate(), Side.SELL, 100, 150, -50) == (100, "")


def test_gate_limits_count_whole_lots_ignoring_float_noise() -> None:
    # 200 / (3.0 * 0.1) = 666.67 lots: 666 lots are 199.8 <= 200, 667 lots 200.1.
    assert check(gate(), Side.BUY, 1000, 0, 0, price=3.0, lot_size=0.1)[0] == 666
    # 7 lots at 1.1 are exactly 7.7, although 7 * 1.1 is 7.700000000000001 in floats.
    assert check(gate(max_notional=7.7), Side.BUY, 10, 0, 0, price=1.1)[0] == 7
    # 0.3 / 0.1 is 2.9999999999999996 in floats: still 3 lots.
    assert check(gate(max_notional=0.3), Side.BUY, 10, 0, 0, price=0.1)[0] == 3
    # 2% of 385 is 7.7 as well.
    assert check(gate(), Side.BUY, 10, 0, 0, price=1.1, equity=385.0)[0] == 7


def test_gate_clips_by_max_notional_reducing_or_not() -> None:
    g = gate(max_notional=50.0)  # 25 lots at price 2
    assert check(g, Side.BUY, 30, 0, 0) == (25, "max_notional 50.00 per order; size 30 -> 25")
    assert check(g, Side.SELL, 30, 100, 0)[0] == 25
    size, reason = check(g, Side.BUY, 30, 90, 0)  # limit first (10), then notional
    assert size == 10 and reason.startswith("position limit") and "max_notional" not in reason


def test_gate_follows_the_ladder() -> None:
    assert check(gate(HALTED), Side.SELL, 10, 50, 0) == (0, "risk state halted")
    assert check(gate(PAUSED), Side.SELL, 10, 50, 0) == (0, "risk state paused")
    assert check(gate(FLATTENED), Side.BUY, 10, 0, 0) == (0, "risk state flattened")
    reducing = gate(REDUCING)
    assert check(reducing, Side.SELL, 10, 50, -30) == (10, "")
    assert check(reducing, Side.BUY, 10, 50, 0) == (0, "risk state reducing")
    assert check(reducing, Side.SELL, 10, 0, 0) == (0, "risk state reducing")
    assert check(reducing, Side.SELL, 10, 50, -50) == (0, "risk state reducing")
    # Larger than the position left: clipped to the part that reduces.
    size, reason = check(reducing, Side.SELL, 40, 50, -30)
    assert size == 20
    assert reason.startswith("risk state reducing: only the 20 lots that reduce inventory")


def test_gate_with_no_equity_allows_only_reducing_orders() -> None:
    assert check(gate(), Side.BUY, 10, 0, 0, equity=-5.0)[0] == 0
    assert check(gate(), Side.SELL, 10, 20, 0, equity=-5.0) == (10, "")


def test_gate_rejects_bad_input() -> None:
    g = gate()
    assert check(g, Side.BUY, 0, 0, 0) == (0, "")
    with pytest.raises(RiskInputError, match="size_lots must be an integer >= 0"):
        check(g, Side.BUY, -1, 0, 0)
    with pytest.raises(RiskInputError, match="working_lots must have the sign"):
        check(g, Side.BUY, 1, 0, -5)
    with pytest.raises(RiskInputError, match="price and lot_size must be > 0"):
        check(g, Side.BUY, 1, 0, 0, price=0.0)
    with pytest.raises(RiskInputError, match="equity must be a finite number"):
        check(g, Side.BUY, 1, 0, 0, equity=float("nan"))


@settings(max_examples=200, deadline=None)
@given(
    fraction=st.floats(0.001, 0.5),
    equity=st.floats(100.0, 1e6),
    price=st.floats(0.01, 500.0),
    lot_size=st.sampled_from([0.001, 0.1, 1.0, 10.0]),
    max_notional=st.sampled_from([0.0, 50.0, 1000.0]),
    state=st.sampled_from([ACTIVE, REDUCING]),
    start_share=st.floats(-1.0, 1.0),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["buy", "sell", "fill", "cancel"]),
            st.integers(1, 5000),
            st.floats(0.0, 1.0),
        ),
        max_size=40,
    ),
)
def test_gate_approved_orders_never_fill_past_the_limit(
    fraction: float,
    equity: float,
    price: float,
    lot_size: float,
    max_notional: float,
    state: RiskState,
    start_share: float,
    steps: list[tuple[str, int, float]],
) -> None:
    cap = fraction * equity
    position = int(start_share * cap / (price * lot_size))  # any start inside the limit
    while abs(position) * price * lot_size > cap:
        position -= 1 if position > 0 else -1
    g = RiskGate(
        RiskSettings(position_limit_fraction=fraction, max_notional=max_notional),
        RiskLadder(state=state),
    )
    working: list[int] = []  # signed remaining lots of live orders

    for action, size, share in steps:
        if action in ("buy", "sell"):
            side = Side.BUY if action == "buy" else Side.SELL
            same = sum(w for w in working if w * side > 0)
            allowed, _ = g.check(
                side=side,
                size_lots=size,
                price=price,
                lot_size=lot_size,
                position_lots=position,
                working_lots=same,
                equity=equity,
            )
            assert 0 <= allowed <= size
            if allowed:
                working.append(side * allowed)
        elif working:
            i = int(share * (len(working) - 1))
            if action == "cancel":
                working.pop(i)
            else:  # a fill of part or all of one live order
                lots = max(1, round(abs(working[i]) * share))
                sign = 1 if working[i] > 0 else -1
                position += sign * lots
                working[i] -= sign * lots
                if working[i] == 0:
                    working.pop(i)
        # Within float noise (see the whole-lots test above).
        assert abs(position) * price * lot_size <= cap * (1 + 1e-9)
