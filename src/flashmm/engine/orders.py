"""Order manager: the order state machine, quote diffing, the order-rate budget, lost-order
resolution and reconciliation with the venue.

Each market has two quote slots (bid, ask) holding at most one working quote each; a
replaced quote is cancelled and stays tracked (pending-cancel) until the venue says it is
gone, so in-flight exposure is never forgotten. Every state change is journaled before
anyone else hears of it.

State machine (``OrderState``)::

    PENDING_NEW --ack--> OPEN --fill--> PARTIALLY_FILLED --fill--> FILLED
        |  \\               |                 |
        |   reject/429    cancel sent --> PENDING_CANCEL --venue cancelled--> CANCELLED
        |                                     (fills may still arrive)
        +-- no ack and unknown to the venue --> EXPIRED

Rules where the venue contract is silent are in ``docs/decisions.md`` (Engine orders).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Protocol

import msgspec

from flashmm.engine.journal import Journal
from flashmm.engine.records import LIVE_STATES, Fill, Order, OrderState, Side
from flashmm.venue.gateway import (
    GatewayError,
    GatewayTimeout,
    RateLimited,
    VenueGateway,
    VenueProtocolError,
    VenueRejected,
    VenueUnavailable,
)
from flashmm.venue.order_entry import (
    ErrorCode,
    ExecutionReport,
    NewOrderAck,
    OrderCancelled,
    OrderRejected,
    OrderRequest,
    OrderView,
    PositionUpdate,
    StreamEvent,
    UnitsError,
    from_units,
    to_units,
)

__all__ = ["MarketSpec", "OrderListener", "OrderManager", "OrderSettings", "QuoteSlot"]

log = logging.getLogger("flashmm.orders")


class OrderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How quotes are refreshed and how hard the venue is pushed, per market."""

    requote_ticks: int = 1
    """Replace a quote only when the wanted price is more than this many ticks away."""
    requote_size_fraction: float = 0.25
    """... or its remaining size differs from the wanted size by more than this fraction."""
    max_order_age_s: float = 30.0
    """... or it has rested longer than this (refresh queue position against stale fills)."""
    orders_per_second: int = 10
    """New orders per market in any one-second window; cancels are never held back."""
    max_in_flight: int = 5
    """No new order is sent while this many venue requests are unanswered."""
    ack_timeout_s: float = 2.0
    """An order without an ack after this long is looked up at the venue."""
    reconcile_grace_s: float = 2.0
    """A live order the venue no longer lists is closed only after this long without news."""
    time_in_force: str = "POST_ONLY"
    client_id_prefix: str = "fmm"
    keep_terminal_s: float = 300.0
    """Finished orders stay in memory this long (late events still find them)."""

    def __post_init__(self) -> None:
        if self.requote_ticks < 0:
            raise ValueError("requote_ticks must be >= 0")
        if not 0 <= self.requote_size_fraction <= 1:
            raise ValueError("requote_size_fraction must be within 0..1")
        for name in ("max_order_age_s", "ack_timeout_s", "reconcile_grace_s", "keep_terminal_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.orders_per_second < 1 or self.max_in_flight < 1:
            raise ValueError("orders_per_second and max_in_flight must be >= 1")
        if self.time_in_force not in ("GTC", "POST_ONLY"):
            raise ValueError("time_in_force must be GTC or POST_ONLY (quotes rest on the book)")
        if not self.client_id_prefix.isalnum() or len(self.client_id_prefix) > 16:
            raise ValueError("client_id_prefix must be 1-16 letters or digits")


class MarketSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A market's increments as the venue states them (``GET /v1/markets``)."""

    market_id: str
    tick_size: Decimal
    lot_size: Decimal
    base: str = ""
    quote: str = ""
    base_denom: str = ""
    base_decimals: int = 0
    quote_denom: str = ""
    quote_decimals: int = 0


class OrderListener(Protocol):
    """What the engine hears, always after the journal has it."""

    def on_order(self, order: Order) -> None:
        """``order`` changed state."""

    def on_fill(self, fill: Fill, order: Order) -> None: ...

    def on_ack(self, order: Order, latency_ns: int) -> None: ...

    def on_reject(self, order: Order, code: str) -> None: ...

    def on_venue_failure(self, kind: str, message: str) -> None:
        """``kind``: timeout, unavailable, rate_limited, protocol."""


class QuoteSlot:
    """One side of one market: its working quote and the rate budget it shares."""

    __slots__ = ("market_id", "order", "side")

    def __init__(self, market_id: str, side: Side) -> None:
        self.market_id = market_id
        self.side = side
        self.order: Order | None = None


class _RateBudget:
    """At most ``limit`` events in any one-second window (a ring of their times)."""

    __slots__ = ("_times", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._times: deque[int] = deque(maxlen=limit)

    def available(self, now_ns: int) -> bool:
        t = self._times
        return len(t) < self.limit or now_ns - t[0] >= 1_000_000_000

    def take(self, now_ns: int) -> None:
        self._times.append(now_ns)

    def left(self, now_ns: int) -> int:
        """Events the window allows right now."""
        return self.limit - sum(1 for t in self._times if now_ns - t < 1_000_000_000)


_FAILURE_KIND: dict[type[GatewayError], str] = {
    GatewayTimeout: "timeout",
    VenueUnavailable: "unavailable",
    VenueProtocolError: "protocol",
    RateLimited: "rate_limited",
}


class OrderManager:
    """Every order of the engine, by client order id; see the module docstring."""

    def __init__(
        self,
        settings: OrderSettings,
        markets: Iterable[MarketSpec],
        gateway: VenueGateway,
        journal: Journal,
        listener: OrderListener,
        *,
        session: int,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.markets = {m.market_id: m for m in markets}
        self.gateway = gateway
        self.journal = journal
        self.listener = listener
        self.clock = clock
        self.orders: dict[str, Order] = {}
        self._by_venue_id: dict[str, Order] = {}
        self.slots: dict[tuple[str, Side], QuoteSlot] = {
            (m, side): QuoteSlot(m, side) for m in self.markets for side in Side
        }
        self._budgets = {m: _RateBudget(settings.orders_per_second) for m in self.markets}
        # Per market, the live orders: what the venue's book shows (or is about to show)
        # of the engine, for the decision to leave out.
        self.working: dict[str, dict[str, Order]] = {m: {} for m in self.markets}
        self._prefix = f"{settings.client_id_prefix}{session:x}n"
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._suspect: dict[str, int] = {}
        self._last_forget = 0
        self.on_send: Callable[[Order], None] | None = None
        """Called just before an order's request is written (latency stamps)."""
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "submitted",
                "acked",
                "fills",
                "duplicate_fills",
                "own_cancels",
                "venue_cancels",
                "rejected",
                "expired",
                "budget_deferred",
                "in_flight_deferred",
                "lost_resolved",
                "foreign_cancelled",
                "unknown_events",
                "cancel_failures",
            ),
            0,
        )

    # ------------------------------------------------------------------ queries
    def live_orders(self, market_id: str | None = None) -> list[Order]:
        if market_id is not None:
            return list(self.working[market_id].values())
        return [o for working in self.working.values() for o in working.values()]

    def budget_left(self, market_id: str, now_ns: int) -> int:
        """New orders the market's rate budget allows right now."""
        return self._budgets[market_id].left(now_ns)

    def working_lots(self, market_id: str, side: Side) -> int:
        """Signed remaining size of the live orders of one side (counted as if filled)."""
        total = 0
        for o in self.working[market_id].values():
            if o.side is side:
                total += o.remaining_lots
        return total * side

    def restore(self, orders: Iterable[Order]) -> None:
        """Take over orders from the journal (before reconciliation)."""
        for order in orders:
            self.orders[order.client_order_id] = order
            if order.order_id is not None:
                self._by_venue_id[order.order_id] = order
            self._track(order)
            if order.is_live:
                slot = self.slots.get((order.market_id, order.side))
                if slot is not None and order.state is not OrderState.PENDING_CANCEL:
                    if slot.order is None:
                        slot.order = order
                    else:  # two working quotes on a side: keep one, the other goes
                        self._cancel(order, "duplicate quote after restart")

    # ------------------------------------------------------------------ quoting
    def update_quote(
        self, market_id: str, side: Side, price_ticks: int, size_lots: int, now_ns: int
    ) -> Order | None:
        """Make the slot's working quote (``size_lots`` at ``price_ticks``) what is wanted.

        ``size_lots <= 0`` or ``price_ticks <= 0`` pulls the slot. Returns a new order if
        one was sent. The caller has already passed the wanted size through the risk gate.
        """
        slot = self.slots[market_id, side]
        current = slot.order
        if size_lots <= 0 or price_ticks <= 0:
            if current is not None:
                self._cancel(current, "quote withdrawn")
                slot.order = None
            return None
        s = self.settings
        if current is not None:
            if current.state not in LIVE_STATES or current.state is OrderState.PENDING_CANCEL:
                slot.order = current = None
            elif (
                abs(current.price_ticks - price_ticks) <= s.requote_ticks
                and abs(current.remaining_lots - size_lots) <= s.requote_size_fraction * size_lots
                and now_ns - current.created_ns < s.max_order_age_s * 1e9
            ):
                return None  # close enough: keep the queue position
        budget = self._budgets[market_id]
        if not budget.available(now_ns):
            self.counters["budget_deferred"] += 1
            return None  # the old quote (if any) stays until the budget allows a replacement
        if self.gateway.in_flight >= s.max_in_flight:
            self.counters["in_flight_deferred"] += 1
            return None
        budget.take(now_ns)
        order = self._new_order(market_id, side, price_ticks, size_lots, now_ns)
        slot.order = order
        if current is not None:
            # after the new order: the replacement reaches the venue first, and the gate
            # already counted both
            self._cancel(current, "replaced")
        return order

    def pull(self, market_id: str | None, reason: str) -> int:
        """Cancel every live order (of one market) with one cancel-all request; returns how many."""
        targets = self.live_orders(market_id)
        for slot in self.slots.values():
            if market_id is None or slot.market_id == market_id:
                slot.order = None
        if not targets:
            return 0
        now = self.clock()
        for order in targets:
            if order.state is not OrderState.PENDING_CANCEL:
                self._transition(order, OrderState.PENDING_CANCEL, now, reason=reason)
            order.own_cancel = True
        self._spawn(self._cancel_all(market_id, reason))
        return len(targets)

    def _new_order(
        self,
        market_id: str,
        side: Side,
        price_ticks: int,
        size_lots: int,
        now_ns: int,
        time_in_force: str | None = None,
    ) -> Order:
        self._next_id += 1
        order = Order(
            client_order_id=f"{self._prefix}{self._next_id:x}",
            market_id=market_id,
            side=side,
            price_ticks=price_ticks,
            size_lots=size_lots,
            created_ns=now_ns,
            updated_ns=now_ns,
        )
        self.orders[order.client_order_id] = order
        self.journal.record_order(order)  # before the venue can hear of it
        self._track(order)
        self.counters["submitted"] += 1
        self._spawn(self._submit(order, time_in_force=time_in_force))
        return order

    def submit_order(
        self,
        market_id: str,
        side: Side,
        size_lots: int,
        *,
        price_ticks: int | None = None,
        time_in_force: str = "IOC",
    ) -> Order:
        """An order outside the quote slots (flattening): IOC market or limit."""
        return self._new_order(
            market_id, side, price_ticks or 0, size_lots, self.clock(), time_in_force
        )

    # ------------------------------------------------------------------ venue calls
    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every venue call under way (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _request(self, order: Order, time_in_force: str) -> OrderRequest:
        spec = self.markets[order.market_id]
        if order.price_ticks:
            return OrderRequest(
                market_id=order.market_id,
                side=order.side.wire,
                quantity=from_units(order.size_lots, spec.lot_size),
                client_order_id=order.client_order_id,
                price=from_units(order.price_ticks, spec.tick_size),
                time_in_force=time_in_force,  # type: ignore[arg-type]
            )
        return OrderRequest(
            market_id=order.market_id,
            side=order.side.wire,
            quantity=from_units(order.size_lots, spec.lot_size),
            client_order_id=order.client_order_id,
            type="market",
            time_in_force="IOC",
        )

    async def _submit(self, order: Order, *, time_in_force: str | None = None) -> None:
        request = self._request(order, time_in_force or self.settings.time_in_force)
        if self.on_send is not None:
            self.on_send(order)
        try:
            answer = await self.gateway.submit(request)
        except VenueRejected as exc:
            self._rejected(order, exc.code, exc.message)
            return
        except RateLimited as exc:
            # 429 (or held back before sending): the venue did not take it
            self.listener.on_venue_failure("rate_limited", str(exc))
            self._rejected(
                order,
                ErrorCode.RATE_LIMITED,
                f"rate limited; retry after {exc.retry_after_s:.3f} s",
            )
            return
        except GatewayError as exc:
            # timed out or the venue failed: the order may or may not be live; find out
            self._venue_failed(exc)
            self._spawn(self._resolve_lost(order, self.settings.ack_timeout_s))
            return
        if answer.order_id is not None and order.order_id is None:
            self._bind_venue_id(order, answer.order_id)
            if order.state is OrderState.PENDING_CANCEL and order.own_cancel:
                self._spawn(self._cancel_by_id(order))  # the cancel waited for the id

    def _venue_failed(self, exc: GatewayError) -> None:
        self.listener.on_venue_failure(_FAILURE_KIND.get(type(exc), "unavailable"), str(exc))

    def _index_venue_id(self, order: Order, order_id: str) -> None:
        """Learn the venue's id of ``order``; the caller journals the order."""
        order.order_id = order_id
        self._by_venue_id[order_id] = order

    def _bind_venue_id(self, order: Order, order_id: str) -> None:
        """Learn the venue's id of ``order`` outside a state change, and journal it."""
        self._index_venue_id(order, order_id)
        self.journal.record_order(order)

    def _rejected(self, order: Order, code: str, message: str) -> None:
        if not order.is_live:
            return
        self.counters["rejected"] += 1
        self._transition(order, OrderState.REJECTED, self.clock(), reason=f"{code}: {message}")
        self.listener.on_reject(order, str(code))

    def _cancel(self, order: Order, reason: str) -> None:
        """Ask the venue to cancel ``order`` (idempotent)."""
        if not order.is_live or (order.state is OrderState.PENDING_CANCEL and order.own_cancel):
            return
        order.own_cancel = True
        self._transition(order, OrderState.PENDING_CANCEL, self.clock(), reason=reason)
        if order.order_id is not None:
            self._spawn(self._cancel_by_id(order))
        # else the cancel goes out as soon as the submit's answer names the venue's id

    async def _cancel_by_id(self, order: Order) -> None:
        assert order.order_id is not None
        try:
            await self.gateway.cancel(order.order_id)
        except VenueRejected as exc:
            if exc.code == ErrorCode.UNKNOWN_ORDER:
                return  # already gone: its final event is on the stream
            self.counters["cancel_failures"] += 1
            log.warning("cancel of %s refused: %s", order.client_order_id, exc)
        except GatewayError as exc:
            self.counters["cancel_failures"] += 1
            self._venue_failed(exc)
            # retried by the periodic sweep (``sweep``) while the order stays pending-cancel

    async def _cancel_all(self, market_id: str | None, reason: str) -> None:
        try:
            await self.gateway.cancel_all(market_id)
        except GatewayError as exc:
            self.counters["cancel_failures"] += 1
            self._venue_failed(exc)
            log.warning("cancel-all (%s) failed: %s; the sweep retries", reason, exc)

    async def _resolve_lost(self, order: Order, delay_s: float) -> None:
        """An order whose submit got no answer: wait for the stream, then ask the venue."""
        await asyncio.sleep(delay_s)
        if order.state is not OrderState.PENDING_NEW and order.order_id is not None:
            return  # the stream told us meanwhile
        try:
            listed = await self.gateway.open_orders(order.market_id)
        except GatewayError as exc:
            self._venue_failed(exc)
            return  # the periodic reconciliation tries again
        self.counters["lost_resolved"] += 1
        self._reconcile_one(order, {v.client_order_id: v for v in listed}, self.clock(), 0)

    # ------------------------------------------------------------------ the stream
    def on_event(self, event: StreamEvent) -> None:
        """One execution-stream event, in ``seq`` order: journal, then tell the listener."""
        match event:
            case ExecutionReport():
                self._on_fill(event)
            case NewOrderAck():
                order = self._find(event.client_order_id, event.order_id)
                if order is None:
                    self._foreign(event.market_id, event.order_id, event.client_order_id)
                    self.journal.record_stream_seq(event.seq)
                    return
                if order.order_id is None:
                    self._index_venue_id(order, event.order_id)
                now = self.clock()
                if order.state is OrderState.PENDING_NEW:
                    self._transition(order, OrderState.OPEN, now, seq=event.seq)
                else:
                    self.journal.record_order(order, seq=event.seq)
                self.counters["acked"] += 1
                self.listener.on_ack(order, now - order.created_ns)
                if order.state is OrderState.PENDING_CANCEL and order.own_cancel:
                    self._spawn(self._cancel_by_id(order))
            case OrderCancelled():
                order = self._find(event.client_order_id, event.order_id)
                if order is None:
                    self.journal.record_stream_seq(event.seq)
                    return
                if order.own_cancel:
                    self.counters["own_cancels"] += 1
                    reason = order.reason or "cancelled by the engine"
                else:
                    self.counters["venue_cancels"] += 1
                    reason = f"venue: {event.reason}"
                self._transition(
                    order, OrderState.CANCELLED, self.clock(), reason=reason, seq=event.seq
                )
            case OrderRejected():
                order = self._find(event.client_order_id, event.order_id)
                if order is None:
                    self.journal.record_stream_seq(event.seq)
                    return
                if order.order_id is None:
                    self._index_venue_id(order, event.order_id)
                self.counters["rejected"] += 1
                self._transition(
                    order,
                    OrderState.REJECTED,
                    self.clock(),
                    reason=f"{event.code}: {event.reason}",
                    seq=event.seq,
                )
                self.listener.on_reject(order, event.code)
            case PositionUpdate():
                self.journal.record_stream_seq(event.seq)

    def _on_fill(self, event: ExecutionReport) -> None:
        order = self._find(event.client_order_id, event.order_id)
        spec = self.markets.get(event.market_id)
        if order is None or spec is None:
            # A fill of an order the engine does not know still happened on the account:
            # count it loudly; reconciliation deals with the order itself.
            self.counters["unknown_events"] += 1
            log.error("fill of an unknown order %s (%s)", event.client_order_id, event.order_id)
            self.journal.record_stream_seq(event.seq)
            return
        try:
            price = to_units(event.price, spec.tick_size, "price")
            size = to_units(event.quantity, spec.lot_size, "quantity")
            fee = Decimal(event.fee)
        except (UnitsError, ArithmeticError) as exc:
            self.counters["unknown_events"] += 1
            log.error("unreadable fill %s dropped: %s", event.trade_id, exc)
            self.journal.record_stream_seq(event.seq)
            return
        fill = Fill(
            trade_id=event.trade_id,
            order_id=event.order_id,
            client_order_id=order.client_order_id,
            market_id=order.market_id,
            side=order.side,
            price_ticks=price,
            size_lots=size,
            fee=fee,
            liquidity=event.liquidity_type,
            ts_ns=self.clock(),
            seq=event.seq,
        )
        if order.order_id is None:
            self._index_venue_id(order, event.order_id)
        previous = (order.state, order.filled_lots, order.updated_ns)
        order.filled_lots += size
        if order.filled_lots >= order.size_lots:
            order.state = OrderState.FILLED
        elif order.state is not OrderState.PENDING_CANCEL:
            order.state = OrderState.PARTIALLY_FILLED
        order.updated_ns = fill.ts_ns
        if not self.journal.record_fill(fill, order, seq=event.seq):
            order.state, order.filled_lots, order.updated_ns = previous
            self.counters["duplicate_fills"] += 1
            return
        self.counters["fills"] += 1
        self._track(order)
        self.listener.on_fill(fill, order)
        self.listener.on_order(order)

    def _find(self, client_order_id: str, order_id: str) -> Order | None:
        order = self.orders.get(client_order_id)
        if order is None:
            order = self._by_venue_id.get(order_id)
        return order

    def _transition(
        self,
        order: Order,
        state: OrderState,
        now_ns: int,
        *,
        reason: str | None = None,
        seq: int | None = None,
    ) -> None:
        order.state = state
        order.updated_ns = now_ns
        if reason is not None:
            order.reason = reason
        self.journal.record_order(order, seq=seq)
        self._track(order)
        self.listener.on_order(order)

    def _track(self, order: Order) -> None:
        working = self.working.get(order.market_id)
        if working is None:
            return
        if order.is_live:
            working[order.client_order_id] = order
        else:
            working.pop(order.client_order_id, None)

    # ------------------------------------------------------------------ reconciliation
    def reconcile(self, listed: Iterable[OrderView], now_ns: int) -> dict[str, int]:
        """Compare with the venue's open orders; see ``docs/decisions.md`` (Engine orders).

        Unknown venue orders in the engine's markets are cancelled (never adopted: the
        engine cannot know what they were for). Live orders the venue does not list are
        closed once they stayed unlisted for ``reconcile_grace_s``.
        """
        by_client = {v.client_order_id: v for v in listed if v.market_id in self.markets}
        found = dict.fromkeys(("matched", "foreign_cancelled", "closed"), 0)
        for view in by_client.values():
            order = self.orders.get(view.client_order_id)
            if order is None or not order.is_live:
                self._foreign(view.market_id, view.order_id, view.client_order_id)
                found["foreign_cancelled"] += 1
        grace = int(self.settings.reconcile_grace_s * 1e9)
        for order in self.live_orders():
            found[self._reconcile_one(order, by_client, now_ns, grace)] += 1
        return found

    def _reconcile_one(
        self, order: Order, by_client: dict[str, OrderView], now_ns: int, grace_ns: int
    ) -> str:
        view = by_client.get(order.client_order_id)
        if view is not None:
            self._suspect.pop(order.client_order_id, None)
            if order.order_id is None:
                self._bind_venue_id(order, view.order_id)
            if order.state is OrderState.PENDING_NEW:
                self._transition(order, OrderState.OPEN, now_ns)
            if order.state is OrderState.PENDING_CANCEL and order.own_cancel:
                self._spawn(self._cancel_by_id(order))  # the earlier cancel may have been lost
            return "matched"
        first = self._suspect.setdefault(order.client_order_id, now_ns)
        if now_ns - first < grace_ns or now_ns - order.updated_ns < grace_ns:
            return "matched"  # its final event may still be on its way
        self._suspect.pop(order.client_order_id, None)
        if order.order_id is None and order.filled_lots == 0:
            self.counters["expired"] += 1
            self._transition(order, OrderState.EXPIRED, now_ns, reason="never reached the venue")
        else:
            log.error(
                "order %s is live here but not at the venue; closing it as cancelled",
                order.client_order_id,
            )
            self.counters["venue_cancels"] += 1
            self._transition(order, OrderState.CANCELLED, now_ns, reason="not open at the venue")
        return "closed"

    def _foreign(self, market_id: str, order_id: str, client_order_id: str) -> None:
        if market_id not in self.markets:
            return  # other markets of the account are not the engine's business
        self.counters["foreign_cancelled"] += 1
        log.warning("cancelling unknown venue order %s (%s)", order_id, client_order_id)
        self._spawn(self._cancel_foreign(order_id))

    async def _cancel_foreign(self, order_id: str) -> None:
        try:
            await self.gateway.cancel(order_id)
        except VenueRejected:
            pass  # gone already
        except GatewayError as exc:
            self._venue_failed(exc)

    def _forget_terminal(self, now_ns: int) -> None:
        """Drop finished orders after ``keep_terminal_s`` (the journal keeps them)."""
        horizon = now_ns - int(self.settings.keep_terminal_s * 1e9)
        if now_ns - self._last_forget < 1_000_000_000:
            return
        self._last_forget = now_ns
        for cid in [c for c, o in self.orders.items() if not o.is_live and o.updated_ns < horizon]:
            order = self.orders.pop(cid)
            if order.order_id is not None:
                self._by_venue_id.pop(order.order_id, None)

    def sweep(self, now_ns: int) -> None:
        """Periodic: resend cancels that got no answer; look up orders that got no ack."""
        timeout = int(self.settings.ack_timeout_s * 1e9)
        self._forget_terminal(now_ns)
        for order in self.live_orders():
            if now_ns - order.updated_ns < timeout:
                continue
            if order.state is OrderState.PENDING_CANCEL and order.order_id is not None:
                order.updated_ns = now_ns
                self._spawn(self._cancel_by_id(order))
            elif order.state is OrderState.PENDING_NEW:
                order.updated_ns = now_ns
                self._spawn(self._resolve_lost(order, 0.0))  # it waited ack_timeout_s already
