"""Risk: the risk-state ladder, the automatic triggers that climb it, and the pre-trade gate.

- :class:`RiskLadder` is the engine's single risk state, an explicit state machine
  ACTIVE -> REDUCING -> PAUSED -> HALTED -> FLATTENED (in that order of severity).
  Automatic requests only climb; ``resume()`` is the way down.
- :class:`RiskMonitor` turns observations (orders, rejects, ack latencies, feed states,
  PnL, inventory) into ladder transitions.
- :class:`RiskGate` checks one proposed order against the ladder and the position and
  notional limits, counting in-flight orders as filled.

Everything here is synchronous and deterministic: time is always the caller's ``now_ns``,
and the engine does the reacting (cancel all, flatten, journal, log) to the returned
:class:`Transition` records. See ``docs/decisions.md`` (Engine risk).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from enum import StrEnum

import msgspec

from flashmm.engine.records import Side

__all__ = [
    "RiskGate",
    "RiskInputError",
    "RiskLadder",
    "RiskMonitor",
    "RiskSettings",
    "RiskSettingsError",
    "RiskState",
    "RiskTransitionError",
    "Transition",
]

_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000
_NS_PER_DAY = 86_400 * _NS_PER_S
_HISTORY_LIMIT = 1000
# Relative float noise this small must not change a size by a whole lot.
_REL_EPS = 1e-9


class RiskSettingsError(ValueError):
    """A risk setting is out of its allowed range."""


class RiskTransitionError(ValueError):
    """A ladder request that the state machine does not allow; the state is unchanged."""


class RiskInputError(ValueError):
    """A number given to the monitor or the gate is unusable; nothing was changed."""


class RiskState(StrEnum):
    """The engine's risk state, least to most severe."""

    ACTIVE = "active"
    """Quoting normally."""
    REDUCING = "reducing"
    """Only orders that reduce inventory."""
    PAUSED = "paused"
    """No new orders; ends by itself when timed or when its cause clears."""
    HALTED = "halted"
    """All orders cancelled, none sent; only the operator resumes."""
    FLATTENED = "flattened"
    """Inventory closed after an emergency stop; only the operator resumes."""

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {state: rank for rank, state in enumerate(RiskState)}


def _check_number(
    name: str, value: object, *, low: float, low_open: bool, high: float = math.inf
) -> None:
    allowed = f"{'>' if low_open else '>='} {low:g}" + (
        f" and <= {high:g}" if high != math.inf else ""
    )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RiskSettingsError(f"{name} must be a number {allowed}, got {value!r}")
    v = float(value)
    too_low = v <= low if low_open else v < low
    if not math.isfinite(v) or too_low or v > high:
        raise RiskSettingsError(f"{name} must be {allowed}, got {value!r}")


def _check_count(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RiskSettingsError(f"{name} must be an integer >= {low}, got {value!r}")


class RiskSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Risk limits. Fractions are of equity or capital; times in seconds unless named."""

    position_limit_fraction: float = 0.02
    """Per market: |position + same-side working orders| notional <= this * equity; > 0."""
    max_notional: float = 0.0
    """Per-order notional cap in quote currency; 0 = none."""
    max_drawdown: float = 0.05
    """Peak net PnL - net PnL >= this * capital halts; 0 < x <= 1."""
    max_daily_drawdown: float = 0.02
    """The same over the current UTC day (peak since 00:00 UTC); 0 < x <= 1."""
    reduce_clear_fraction: float = 0.8
    """An inventory REDUCING clears once every market is under this share of its limit."""
    stale_pause_s: float = 10.0
    """A market without a LIVE feed this long pauses everything until all are live."""
    reject_rate_limit: float = 0.5
    """Rejects / orders over the window at or above this pause for ``cooldown_s``."""
    reject_window_s: float = 60.0
    reject_min_orders: int = 10
    """The reject rate is judged only over at least this many orders."""
    latency_limit_ms: float = 250.0
    """Median order->ack latency of the last ``latency_window`` acks above this pauses."""
    latency_window: int = 20
    cooldown_s: float = 30.0
    """Duration of the automatic pause of the reject-rate and latency triggers."""

    def __post_init__(self) -> None:
        _check_number("position_limit_fraction", self.position_limit_fraction, low=0, low_open=True)
        _check_number("max_notional", self.max_notional, low=0, low_open=False)
        _check_number("max_drawdown", self.max_drawdown, low=0, low_open=True, high=1)
        _check_number("max_daily_drawdown", self.max_daily_drawdown, low=0, low_open=True, high=1)
        _check_number(
            "reduce_clear_fraction", self.reduce_clear_fraction, low=0, low_open=True, high=1
        )
        _check_number("stale_pause_s", self.stale_pause_s, low=0, low_open=True)
        _check_number("reject_rate_limit", self.reject_rate_limit, low=0, low_open=True, high=1)
        _check_number("reject_window_s", self.reject_window_s, low=0, low_open=True)
        _check_count("reject_min_orders", self.reject_min_orders, low=1)
        _check_number("latency_limit_ms", self.latency_limit_ms, low=0, low_open=True)
        _check_count("latency_window", self.latency_window, low=1)
        _check_number("cooldown_s", self.cooldown_s, low=0, low_open=True)


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One change of the ladder (or of a pause's end), as the engine journals and logs it."""

    from_state: RiskState
    to_state: RiskState
    reason: str
    ts_ns: int
    until_ns: int | None = None
    """When a timed PAUSED ends by itself; None = until its cause clears or the operator."""
    source: str = "auto"
    """Who asked: ``auto`` (a trigger), ``operator``, or the caller's own label."""


class RiskLadder:
    """The engine's risk state machine; see the module docstring for the order of states.

    Besides the public state, the ladder remembers whether the current state is *held* by
    a monitor condition (inventory breach, stale feed) that clears it when it ends, and,
    while PAUSED, which state the pause returns to.
    """

    def __init__(
        self,
        *,
        state: RiskState = RiskState.ACTIVE,
        since_ns: int = 0,
        until_ns: int | None = None,
    ) -> None:
        """Start in ``state`` (restored from the journal); a restored state is not held."""
        try:
            state = RiskState(state)
        except ValueError:
            raise RiskTransitionError(
                f"unknown risk state {state!r}; expected one of {[s.value for s in RiskState]}"
            ) from None
        if until_ns is not None and state is not RiskState.PAUSED:
            raise RiskTransitionError(f"until_ns is only for a paused state, not {state.value}")
        self.state: RiskState = state
        self.since_ns: int = since_ns
        self.until_ns: int | None = until_ns
        self.history: list[Transition] = []
        self._held = False
        # A held (untimed) pause remembers the latest timed pause asked meanwhile and keeps
        # it after the hold ends, so a stale feed coming back cannot cut a cooldown short.
        self._pending_until: int | None = None
        # Where a pause returns: an explicit REDUCING survives the pause.
        self._under = RiskState.ACTIVE
        self._under_held = False
        self._resumes = 0  # counts resume() transitions; the monitor watches it

    def __repr__(self) -> str:
        return (
            f"RiskLadder(state={self.state.value}, since_ns={self.since_ns}, "
            f"until_ns={self.until_ns})"
        )

    def escalate(
        self,
        to: RiskState,
        reason: str,
        now_ns: int,
        *,
        duration_s: float | None = None,
        source: str = "auto",
    ) -> Transition | None:
        """Climb to ``to``; None if already there or above (a later pause end extends it).

        ``duration_s`` times a PAUSED; without it the pause lasts until ``resume()``.
        """
        to = self._target(to)
        until_ns = None
        if duration_s is not None:
            if to is not RiskState.PAUSED:
                raise RiskTransitionError(f"duration_s applies only to paused, not {to.value}")
            if isinstance(duration_s, bool) or not (
                isinstance(duration_s, int | float) and math.isfinite(duration_s) and duration_s > 0
            ):
                raise RiskTransitionError(f"duration_s must be a number > 0, got {duration_s!r}")
            until_ns = now_ns + round(duration_s * _NS_PER_S)
        return self._request(to, reason, now_ns, until_ns=until_ns, source=source, held=False)

    def resume(self, reason: str, now_ns: int, *, source: str = "operator") -> Transition | None:
        """Back to ACTIVE from any state; None if already ACTIVE."""
        if self.state is RiskState.ACTIVE:
            return None
        self._resumes += 1
        return self._move(RiskState.ACTIVE, reason, now_ns, source=source)

    def flattened(self, reason: str, now_ns: int) -> Transition | None:
        """Record that an emergency stop closed the inventory: HALTED -> FLATTENED."""
        if self.state is RiskState.FLATTENED:
            return None
        if self.state is not RiskState.HALTED:
            raise RiskTransitionError(
                f"flattened is recorded only after an emergency stop, from halted; "
                f"the risk state is {self.state.value}"
            )
        return self._move(RiskState.FLATTENED, reason, now_ns, source="auto")

    def tick(self, now_ns: int) -> Transition | None:
        """End a timed PAUSED whose time is over."""
        if self.state is not RiskState.PAUSED or self.until_ns is None or now_ns < self.until_ns:
            return None
        return self._move(
            self._under, "timed pause ended", now_ns, source="auto", held=self._under_held
        )

    def allows(self, reduces_inventory: bool) -> bool:
        """May an order be sent now?"""
        if self.state is RiskState.ACTIVE:
            return True
        return self.state is RiskState.REDUCING and reduces_inventory

    # -- used by RiskMonitor for the conditions that clear by themselves -------------------

    def _hold(self, to: RiskState, reason: str, now_ns: int) -> Transition | None:
        """Climb to ``to`` for as long as a condition lasts (no timer)."""
        return self._request(to, reason, now_ns, until_ns=None, source="auto", held=True)

    def _release(self, state: RiskState, reason: str, now_ns: int) -> Transition | None:
        """The condition that held ``state`` is over: step down if nothing else holds it."""
        if self.state is not state or not self._held:
            if self.state is RiskState.PAUSED and self._under is state and self._under_held:
                self._under, self._under_held = RiskState.ACTIVE, False
            return None
        if state is RiskState.PAUSED:
            if self._pending_until is not None and self._pending_until > now_ns:
                return self._move(
                    RiskState.PAUSED,
                    f"{reason}; paused until the cooldown ends",
                    now_ns,
                    until_ns=self._pending_until,
                    source="auto",
                )
            return self._move(self._under, reason, now_ns, source="auto", held=self._under_held)
        return self._move(RiskState.ACTIVE, reason, now_ns, source="auto")

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _target(to: RiskState) -> RiskState:
        try:
            to = RiskState(to)
        except ValueError:
            raise RiskTransitionError(f"unknown risk state {to!r}") from None
        if to is RiskState.FLATTENED:
            raise RiskTransitionError("flattened is reached only through flattened()")
        return to

    def _request(
        self,
        to: RiskState,
        reason: str,
        now_ns: int,
        *,
        until_ns: int | None,
        source: str,
        held: bool,
    ) -> Transition | None:
        current = self.state
        if to.severity > current.severity:
            if to is RiskState.PAUSED:
                if current is RiskState.REDUCING:
                    self._under, self._under_held = RiskState.REDUCING, self._held
                else:
                    self._under, self._under_held = RiskState.ACTIVE, False
            return self._move(to, reason, now_ns, until_ns=until_ns, source=source, held=held)
        if to is not current:
            pausing_over_it = to is RiskState.REDUCING and current is RiskState.PAUSED
            if pausing_over_it and (self._under is RiskState.ACTIVE or not held):
                # Not a transition, but the pause now ends in REDUCING.
                self._under, self._under_held = RiskState.REDUCING, held
            return None
        if to is RiskState.PAUSED:
            return self._repause(reason, now_ns, until_ns=until_ns, source=source, held=held)
        if not held:
            self._held = False  # an explicit request owns the state from now on
        return None

    def _repause(
        self, reason: str, now_ns: int, *, until_ns: int | None, source: str, held: bool
    ) -> Transition | None:
        """A pause asked while PAUSED: extend it when it asks for longer."""
        if self.until_ns is None:  # already untimed: nothing lasts longer
            if self._held and until_ns is not None:
                pending = self._pending_until
                self._pending_until = until_ns if pending is None else max(pending, until_ns)
            elif self._held and not held:
                self._held, self._pending_until = False, None
            return None
        if until_ns is not None and until_ns <= self.until_ns:
            return None
        pending = self.until_ns if held else None
        transition = self._move(
            RiskState.PAUSED, reason, now_ns, until_ns=until_ns, source=source, held=held
        )
        self._pending_until = pending
        return transition

    def _move(
        self,
        to: RiskState,
        reason: str,
        now_ns: int,
        *,
        until_ns: int | None = None,
        source: str,
        held: bool = False,
    ) -> Transition:
        transition = Transition(
            from_state=self.state,
            to_state=to,
            reason=reason,
            ts_ns=now_ns,
            until_ns=until_ns,
            source=source,
        )
        if to is not self.state:
            self.since_ns = now_ns
        self.state = to
        self.until_ns = until_ns
        self._held = held
        self._pending_until = None
        if to is not RiskState.PAUSED:
            self._under, self._under_held = RiskState.ACTIVE, False
        self.history.append(transition)
        if len(self.history) > _HISTORY_LIMIT:
            del self.history[0]
        return transition


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RiskInputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class RiskMonitor:
    """Evaluates the automatic triggers; call observe_* as things happen and evaluate() ~1/s.

    Inventory breaches and stale feeds *hold* their state through the ladder's private
    ``_hold``/``_release`` and clear it when they end; the other triggers only escalate.
    """

    def __init__(self, settings: RiskSettings, ladder: RiskLadder) -> None:
        self.settings = settings
        self.ladder = ladder
        self._reject_window_ns = round(settings.reject_window_s * _NS_PER_S)
        self._stale_ns = round(settings.stale_pause_s * _NS_PER_S)
        self._orders: deque[int] = deque()
        self._rejects: deque[int] = deque()
        self._latencies: deque[int] = deque(maxlen=settings.latency_window)
        self._not_live_since: dict[str, int] = {}
        self._peak = 0.0
        self._day_peak = 0.0
        self._day: int | None = None  # UTC day of the last evaluation; None before the first
        self._breached: set[str] = set()  # drawdown limits beyond at the last evaluation
        self._inventory_breached = False
        self._stale = False
        self._resumes_seen = ladder._resumes

    def observe_order(self, now_ns: int) -> None:
        """An order was sent."""
        self._orders.append(now_ns)
        self._prune(self._orders, now_ns)

    def observe_reject(self, now_ns: int) -> None:
        """The venue rejected an order."""
        self._rejects.append(now_ns)
        self._prune(self._rejects, now_ns)

    def observe_ack_latency(self, latency_ns: int) -> None:
        """Time from sending an order to the venue's ack."""
        if isinstance(latency_ns, bool) or not isinstance(latency_ns, int) or latency_ns < 0:
            raise RiskInputError(f"latency_ns must be an integer >= 0, got {latency_ns!r}")
        self._latencies.append(latency_ns)

    def observe_feed(self, market_id: str, live: bool, now_ns: int) -> None:
        """A market's feed became LIVE (``live``) or anything else."""
        if live:
            self._not_live_since.pop(market_id, None)
        else:
            self._not_live_since.setdefault(market_id, now_ns)

    def evaluate(
        self,
        now_ns: int,
        *,
        net_pnl: float,
        capital: float,
        inventory_ratio: Mapping[str, float],
    ) -> list[Transition]:
        """Run every trigger; returns the transitions made, in order.

        ``inventory_ratio[m]`` is |position notional| / position-limit notional of market m.
        """
        net_pnl = _finite("net_pnl", net_pnl)
        capital = _finite("capital", capital)
        if capital <= 0:
            raise RiskInputError(f"capital must be > 0, got {capital!r}")
        ratios = {m: _finite(f"inventory_ratio[{m!r}]", r) for m, r in inventory_ratio.items()}
        for market, ratio in ratios.items():
            if ratio < 0:
                raise RiskInputError(f"inventory_ratio[{market!r}] must be >= 0, got {ratio!r}")

        # An operator resume acknowledges what stood at that moment (see _drawdowns).
        acknowledged = self.ladder._resumes != self._resumes_seen
        if acknowledged:
            self._resumes_seen = self.ladder._resumes
            self._inventory_breached = self._stale = False

        found = [
            self.ladder.tick(now_ns),
            *self._drawdowns(now_ns, net_pnl, capital, accept=acknowledged),
            self._inventory(now_ns, ratios),
            self._feeds(now_ns),
            self._reject_rate(now_ns),
            self._latency(now_ns),
        ]
        return [t for t in found if t is not None]

    # -- triggers --------------------------------------------------------------------------

    def _drawdowns(
        self, now_ns: int, net_pnl: float, capital: float, *, accept: bool
    ) -> list[Transition | None]:
        """Total and UTC-day drawdown; both peaks start at the first PnL seen.

        A breach that stood at the last evaluation before an operator resume is accepted
        by it: that peak restarts from the current PnL instead of halting again at once.
        """
        day = now_ns // _NS_PER_DAY
        if self._day is None:
            self._peak = net_pnl
        if day != self._day:
            self._day, self._day_peak = day, net_pnl
        self._peak = max(self._peak, net_pnl)
        self._day_peak = max(self._day_peak, net_pnl)
        s = self.settings
        out: list[Transition | None] = []
        for label, peak, limit in (
            ("total", self._peak, s.max_drawdown),
            ("daily", self._day_peak, s.max_daily_drawdown),
        ):
            drawdown = peak - net_pnl
            was_breached = label in self._breached
            self._breached.discard(label)
            if drawdown < limit * capital:
                continue
            if accept and was_breached:
                if label == "total":
                    self._peak = net_pnl
                else:
                    self._day_peak = net_pnl
                continue
            self._breached.add(label)
            since = "" if label == "total" else " since 00:00 UTC"
            reason = (
                f"{label} drawdown {drawdown / capital:.1%} of capital >= limit {limit:.1%} "
                f"(peak net PnL{since} {peak:.2f}, now {net_pnl:.2f})"
            )
            out.append(self.ladder.escalate(RiskState.HALTED, reason, now_ns))
        return out

    def _inventory(self, now_ns: int, ratios: dict[str, float]) -> Transition | None:
        """REDUCING at 100% of a limit; clears once every market is under the clear share."""
        worst = max(ratios.items(), key=lambda item: item[1], default=None)
        clear = self.settings.reduce_clear_fraction
        if worst is not None and worst[1] >= 1.0:
            self._inventory_breached = True
            reason = (
                f"inventory of {worst[0]} at {worst[1]:.0%} of its position limit (>= 100%); "
                f"only reducing orders until every market is under {clear:.0%}"
            )
            return self.ladder._hold(RiskState.REDUCING, reason, now_ns)
        if not self._inventory_breached:
            return None
        if worst is not None and worst[1] >= clear:
            # Still in the hysteresis band: re-assert after a pause dropped the hold.
            reason = f"inventory of {worst[0]} still at {worst[1]:.0%} of its position limit"
            return self.ladder._hold(RiskState.REDUCING, reason, now_ns)
        self._inventory_breached = False
        highest = "" if worst is None else f" (highest: {worst[0]} at {worst[1]:.0%})"
        reason = f"inventory under {clear:.0%} of the position limit in every market{highest}"
        return self.ladder._release(RiskState.REDUCING, reason, now_ns)

    def _feeds(self, now_ns: int) -> Transition | None:
        """PAUSED while a market's feed has not been LIVE for stale_pause_s, until all are."""
        stale = [
            (market, now_ns - since)
            for market, since in self._not_live_since.items()
            if now_ns - since >= self._stale_ns
        ]
        if stale:
            self._stale = True
            market, age_ns = max(stale, key=lambda item: item[1])
            reason = (
                f"market data for {market} not live for {age_ns / _NS_PER_S:.1f} s "
                f"(limit {self.settings.stale_pause_s:g} s); paused until every feed is live"
            )
            return self.ladder._hold(RiskState.PAUSED, reason, now_ns)
        if not self._stale or self._not_live_since:
            return None
        self._stale = False
        return self.ladder._release(
            RiskState.PAUSED, "every market-data feed is live again", now_ns
        )

    def _reject_rate(self, now_ns: int) -> Transition | None:
        s = self.settings
        self._prune(self._orders, now_ns)
        self._prune(self._rejects, now_ns)
        orders, rejects = len(self._orders), len(self._rejects)
        if orders < s.reject_min_orders or rejects / orders < s.reject_rate_limit:
            return None
        # The evidence is used up: the next judgement starts from fresh orders.
        self._orders.clear()
        self._rejects.clear()
        reason = (
            f"reject rate {rejects / orders:.0%} ({rejects} of {orders} orders in the last "
            f"{s.reject_window_s:g} s) >= limit {s.reject_rate_limit:.0%}; "
            f"paused {s.cooldown_s:g} s"
        )
        return self.ladder.escalate(RiskState.PAUSED, reason, now_ns, duration_s=s.cooldown_s)

    def _latency(self, now_ns: int) -> Transition | None:
        s = self.settings
        if len(self._latencies) < s.latency_window:
            return None
        median_ms = statistics.median(self._latencies) / _NS_PER_MS
        if median_ms <= s.latency_limit_ms:
            return None
        # A pause sends no orders, so old acks would otherwise re-trigger it forever.
        self._latencies.clear()
        reason = (
            f"median order->ack latency {median_ms:.1f} ms over the last {s.latency_window} "
            f"acks > limit {s.latency_limit_ms:g} ms; paused {s.cooldown_s:g} s"
        )
        return self.ladder.escalate(RiskState.PAUSED, reason, now_ns, duration_s=s.cooldown_s)

    def _prune(self, times: deque[int], now_ns: int) -> None:
        cutoff = now_ns - self._reject_window_ns
        while times and times[0] <= cutoff:
            times.popleft()


def _max_lots(cap: float, price: float, lot_size: float) -> int:
    """The most whole lots whose notional fits in ``cap``.

    Float noise must not cost a whole lot: 7 lots at 1.1 fit a cap of 7.7 although
    ``7 * 1.1`` is 7.700000000000001 in floats.
    """
    if cap <= 0:
        return 0
    return math.floor(cap / (price * lot_size) * (1.0 + _REL_EPS))


class RiskGate:
    """Pre-trade check of one order; returns the allowed size in lots (0 = blocked) and why."""

    def __init__(self, settings: RiskSettings, ladder: RiskLadder) -> None:
        self.settings = settings
        self.ladder = ladder

    def check(
        self,
        *,
        side: Side,
        size_lots: int,
        price: float,
        lot_size: float,
        position_lots: int,
        working_lots: int,
        equity: float,
    ) -> tuple[int, str]:
        """Clip or block an order; the reason is "" when the size is untouched.

        ``working_lots`` is the signed remaining size of this side's live orders, counted
        as if filled. An order reduces inventory when it is opposite to the position and
        no larger than the position left after those working orders.
        """
        side = Side(side)
        sign = int(side)
        if isinstance(size_lots, bool) or not isinstance(size_lots, int) or size_lots < 0:
            raise RiskInputError(f"size_lots must be an integer >= 0, got {size_lots!r}")
        if not (_finite("price", price) > 0 and _finite("lot_size", lot_size) > 0):
            raise RiskInputError(f"price and lot_size must be > 0, got {price!r}, {lot_size!r}")
        equity = _finite("equity", equity)
        if working_lots * sign < 0:
            raise RiskInputError(
                f"working_lots must have the sign of the order's side ({side.name}), "
                f"got {working_lots}"
            )
        if size_lots == 0:
            return 0, ""

        reasons: list[str] = []
        size = size_lots
        reducible = abs(position_lots) - abs(working_lots) if position_lots * sign < 0 else 0
        reduces = size <= reducible
        state = self.ladder.state
        if state is RiskState.REDUCING and not reduces and reducible > 0:
            reasons.append(
                f"risk state reducing: only the {reducible} lots that reduce inventory; "
                f"size {size} -> {reducible}"
            )
            size, reduces = reducible, True
        if not self.ladder.allows(reduces):
            return 0, f"risk state {state.value}"

        s = self.settings
        if not reduces:
            limit_lots = _max_lots(s.position_limit_fraction * equity, price, lot_size)
            exposure = position_lots + working_lots
            room = max(limit_lots - sign * exposure, 0)
            if size > room:
                reasons.append(
                    f"position limit {limit_lots} lots ({s.position_limit_fraction:.2%} of "
                    f"equity {equity:.2f}) with {exposure:+d} lots held or working; "
                    f"size {size} -> {room}"
                )
                size = room
        if s.max_notional > 0 and size > 0:
            cap_lots = _max_lots(s.max_notional, price, lot_size)
            if size > cap_lots:
                reasons.append(
                    f"max_notional {s.max_notional:.2f} per order; size {size} -> {cap_lots}"
                )
                size = cap_lots
        return size, "; ".join(reasons)
