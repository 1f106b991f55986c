"""The trading engine: one tick from the feed to the venue, and the lifecycle around it.

``feed -> book -> features/model/quote -> risk gate -> order manager -> gateway``, on one
event loop. The hot path (:meth:`Engine.on_book`) runs inside the feed's frame callback and
does not await; everything else (risk evaluation, reconciliation, sweeps, metrics) runs in
periodic tasks beside it.

Start-up order is what makes a restart safe: journal -> venue markets -> execution stream
(resumed after the journal's last seq) -> feed -> balances and capital -> reconciliation
-> ready. Quotes go out only after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from decimal import Decimal
from time import perf_counter_ns
from typing import Any

import msgspec
import numpy as np
from prometheus_client import Counter

from flashmm._core.book import OrderBook
from flashmm._core.model import Model
from flashmm._core.quoting import QO_ASK, QO_ASK_SIZE, QO_BID, QO_BID_SIZE
from flashmm.config import EngineConfig
from flashmm.engine.journal import Journal, JournalError, RiskRecord
from flashmm.engine.orders import MarketSpec, OrderManager
from flashmm.engine.pipeline import MAX_OWN_ORDERS, MarketPipeline
from flashmm.engine.portfolio import MarketPosition, Portfolio, PortfolioMarket, PortfolioTotals
from flashmm.engine.records import Fill, Order, OrderState, Side
from flashmm.engine.risk import RiskGate, RiskLadder, RiskMonitor, RiskState, Transition
from flashmm.metrics import PNL_KINDS, PNL_TOTAL_MARKET, EngineMetrics
from flashmm.state.commands import CommandReader, CommandSettings
from flashmm.state.keys import Keys
from flashmm.state.publisher import StatePublisher
from flashmm.state.views import EngineView, VolumeWindow
from flashmm.venue.feed import FeedMarket, FeedSettings, FeedState, MarketFeed
from flashmm.venue.gateway import (
    BreakerState,
    ExecutionStream,
    GatewayError,
    GatewaySettings,
    VenueGateway,
)
from flashmm.venue.order_entry import StreamEvent
from flashmm.venue.protocol import BookUpdate, Trade

__all__ = ["EmergencyStopReport", "Engine", "EngineError"]

log = logging.getLogger("flashmm.engine")


class EngineError(RuntimeError):
    """The engine cannot start or go on; the message says what to fix."""


class EmergencyStopReport(msgspec.Struct, kw_only=True):
    """What an emergency stop did."""

    orders_cancelled: int
    open_orders: int
    """Open orders the venue still listed at the end (0 is the goal)."""
    flat: bool
    positions: dict[str, float]
    risk_state: str
    elapsed_ms: float
    already_stopped: bool = False


class _Market:
    """Everything the engine keeps per market."""

    __slots__ = (
        "book",
        "decisions",
        "feed_reason",
        "last_decide_ns",
        "live",
        "lot",
        "order_counters",
        "pipe",
        "spec",
        "tick",
        "top_ask",
        "top_bid",
        "volume",
    )

    def __init__(
        self, spec: MarketSpec, pipe: MarketPipeline, order_counters: dict[Side, Counter]
    ) -> None:
        self.spec = spec
        self.pipe = pipe
        # ``flashmm_orders_total`` children, looked up once: ``labels()`` costs a lock and
        # a dict lookup per order on the hot path
        self.order_counters = order_counters
        self.book: OrderBook = pipe.book
        self.tick = float(spec.tick_size)
        self.lot = float(spec.lot_size)
        self.last_decide_ns = 0
        self.decisions = 0
        self.top_bid = 0
        self.top_ask = 0
        self.live = False
        self.feed_reason = "starting"
        self.volume = VolumeWindow()  # the venue's traded notional, for the published state


class Engine:
    """One engine process's trading; ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        clock: Callable[[], int] = time.time_ns,
        redis_url: str | None = None,
    ) -> None:
        """``redis_url`` (or ``[state] redis_url``) is where the state goes; neither: none."""
        self.config = config
        self.clock = clock
        self.redis_url = redis_url or config.state.redis_url or None
        self.publisher: StatePublisher | None = None
        self.commands: CommandReader | None = None
        self.ready = False
        self.metrics = EngineMetrics()
        self.alerts: list[str] = []
        self.markets: dict[str, _Market] = {}
        self.metrics_port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._emergency: asyncio.Task[EmergencyStopReport] | None = None
        self._sent_stamps: dict[str, tuple[int, int]] = {}  # client id -> (received, decided)
        self._flush_scheduled = False
        self._last_stream_connects = 0
        self._last_feed_connects = 0
        self._base_balances: dict[str, Decimal] = {}  # base held apart from the engine's fills
        self._balance_diffs: dict[str, Decimal] = {}
        self._orders_sent: dict[str, int] = {}
        self._fill_count: dict[str, int] = {}
        # set in start()
        self.journal: Journal
        self.gateway: VenueGateway
        self.stream: ExecutionStream
        self.feed: MarketFeed
        self.orders: OrderManager
        self.portfolio: Portfolio
        self.ladder: RiskLadder
        self.monitor: RiskMonitor
        self.gate: RiskGate

    # ================================================================= lifecycle
    async def start(self, *, ready_timeout_s: float = 10.0) -> None:
        """Recover, connect, reconcile; returns once quoting may begin."""
        cfg = self.config
        journal_path = cfg.engine.journal
        self.journal = Journal(journal_path)  # creates its folder
        state = self.journal.load(now_ns=self.clock())
        log.info(
            "journal %s: session %d, %d orders (%d live), %d fills, stream seq %s",
            journal_path,
            state.session,
            len(state.orders),
            sum(o.is_live for o in state.orders.values()),
            len(state.fills),
            state.stream_seq,
        )
        v = cfg.venue
        gateway_settings = GatewaySettings(
            rest_url=v.rest_url,
            stream_url=v.stream_url,
            api_key=v.api_key,
            max_in_flight=cfg.orders.max_in_flight,
            **msgspec.structs.asdict(cfg.gateway),
        )
        self.gateway = VenueGateway(gateway_settings)
        specs = await self._market_specs()

        self.portfolio = Portfolio(
            [
                PortfolioMarket(
                    market_id=s.market_id, tick_size=float(s.tick_size), lot_size=float(s.lot_size)
                )
                for s in specs
            ]
        )
        traded = {s.market_id for s in specs}
        for fill in state.fills:
            if fill.market_id in traded:  # markets no longer configured keep their history
                self.portfolio.apply_fill(fill)
        risk = state.risk
        if risk is not None:
            self.ladder = RiskLadder(
                state=RiskState(risk.state), since_ns=risk.ts_ns, until_ns=risk.until_ns
            )
            if self.ladder.state is not RiskState.ACTIVE:
                log.warning("restored risk state %s (%s)", risk.state, risk.reason)
        else:
            self.ladder = RiskLadder(since_ns=self.clock())
        self.monitor = RiskMonitor(cfg.risk, self.ladder)
        self.gate = RiskGate(cfg.risk, self.ladder)

        self.orders = OrderManager(
            cfg.orders,
            specs,
            self.gateway,
            self.journal,
            self,
            session=state.session,
            clock=self.clock,
        )
        self.orders.restore(state.orders.values())
        self.orders.on_send = self._on_send

        model = Model.load(cfg.model) if cfg.model else Model.load_default()
        feed_markets = [
            FeedMarket(s.market_id, float(s.tick_size), float(s.lot_size)) for s in specs
        ]
        self.feed = MarketFeed(
            FeedSettings(
                urls=list(v.market_data_urls),
                rest_url=v.rest_url,
                markets=feed_markets,
                **msgspec.structs.asdict(cfg.feed),
            ),
            self,
        )
        by_id = {m.market_id: m for m in cfg.enabled_markets}
        for spec in specs:
            pipe = MarketPipeline(
                float(spec.tick_size),
                float(spec.lot_size),
                model=model,
                quote_params=cfg.market_quoting(by_id[spec.market_id]),
                book=self.feed.books[spec.market_id],
            )
            pipe.warm_up()
            pipe.inventory_lots = float(self.portfolio.position_lots(spec.market_id))
            self.metrics.add_market(spec.market_id)  # first: it refuses a reserved name
            counters = {
                side: self.metrics.orders.labels(spec.market_id, side.wire) for side in Side
            }
            self.markets[spec.market_id] = _Market(spec, pipe, counters)
            self._orders_sent[spec.market_id] = self._fill_count[spec.market_id] = 0

        # The stream first: fills made while the engine was down arrive before quoting.
        self.stream = ExecutionStream(
            gateway_settings, self._on_stream_event, self._on_stream_gap, since=state.stream_seq
        )
        await self.stream.start()
        await self.feed.start()
        await self._wait_for_books(ready_timeout_s)
        await self._set_capital()
        found = await self._reconcile()
        log.info("reconciled with the venue: %s", found)
        self._evaluate_risk()  # drawdown peaks start from the PnL at start, not the first loss
        self.metrics_port = self.metrics.serve(cfg.engine.metrics_host, cfg.engine.metrics_port)
        loop = asyncio.get_running_loop()
        for name, coro in (
            ("decide", self._decide_loop()),
            ("risk", self._risk_loop()),
            ("housekeeping", self._housekeeping_loop()),
            ("reconcile", self._reconcile_loop()),
        ):
            self._tasks.append(loop.create_task(coro, name=f"flashmm.{name}"))
        self._last_stream_connects = self.stream.counters["connects"]
        self._last_feed_connects = self.feed.counters["connects"]
        self.ready = True
        if self.redis_url is not None:
            await self._start_state(self.redis_url)
        log.info(
            "engine ready: %d markets, metrics on port %d", len(self.markets), self.metrics_port
        )

    async def _start_state(self, redis_url: str) -> None:
        """The publisher and the command reader; neither waits for Redis to answer."""
        keys = Keys(prefix=self.config.state.prefix)
        self.publisher = StatePublisher(
            keys,
            redis_url,
            self.config.state,
            source=EngineView(self, started_ns=self.clock()),
            metrics=self.metrics,
            clock=self.clock,
        )
        self.commands = CommandReader(
            self,
            keys,
            redis_url,
            settings=CommandSettings(max_age_s=self.config.api.command_timeout_s),
            clock=self.clock,
        )
        await self.publisher.start()
        await self.commands.start()

    async def _market_specs(self) -> list[MarketSpec]:
        try:
            listed = {m.market_id: m for m in await self.gateway.markets()}
        except GatewayError as exc:
            raise EngineError(
                f"cannot list the venue's markets at {self.config.venue.rest_url}: {exc}"
            ) from None
        specs = []
        for market in self.config.enabled_markets:
            view = listed.get(market.market_id)
            if view is None:
                raise EngineError(
                    f"market {market.market_id!r} is not listed by the venue "
                    f"(it lists: {', '.join(sorted(listed)) or 'nothing'})"
                )
            specs.append(
                MarketSpec(
                    market_id=view.market_id,
                    tick_size=Decimal(view.tick_size),
                    lot_size=Decimal(view.lot_size),
                    base=view.base,
                    quote=view.quote,
                    base_denom=view.base_denom,
                    base_decimals=view.base_decimals,
                    quote_denom=view.quote_denom,
                    quote_decimals=view.quote_decimals,
                )
            )
        return specs

    async def _wait_for_books(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.feed.state(m) is not FeedState.SYNCING for m in self.markets):
                return
            await asyncio.sleep(0.01)
        waiting = [m for m in self.markets if self.feed.state(m) is FeedState.SYNCING]
        log.warning(
            "no book yet for %s after %.1f s; they start without quotes", waiting, timeout_s
        )

    async def _set_capital(self) -> None:
        """Capital = the account's holdings of the markets' assets at the mids, in the quote."""
        try:
            balances = await self.gateway.balances(self.config.venue.address)
        except GatewayError as exc:
            raise EngineError(f"cannot read the account's balances: {exc}") from None
        capital = 0.0
        quotes: set[str] = set()
        counted: set[str] = set()
        for m in self.markets.values():
            spec = m.spec
            mid = m.book.mid
            if spec.quote not in counted:
                capital += _amount(balances, spec.quote_denom, spec.quote_decimals)
                counted.add(spec.quote)
                quotes.add(spec.quote)
            if spec.base not in counted and math.isfinite(mid):
                capital += _amount(balances, spec.base_denom, spec.base_decimals) * mid * m.tick
                counted.add(spec.base)
        if len(quotes) > 1:
            log.warning("markets quote in %s: capital adds them as if at par", sorted(quotes))
        if capital <= 0:
            raise EngineError(
                f"account {self.config.venue.address} holds nothing to trade with in "
                f"{sorted(self.markets)}"
            )
        self.portfolio.capital = capital - self.portfolio.net_pnl()
        log.info("capital %.2f (equity %.2f)", self.portfolio.capital, self.portfolio.equity())

    async def stop(self) -> None:
        """Pull every quote, wait (bounded) for the venue to confirm, flush and close."""
        if self._stopping:
            return
        self._stopping = True
        self.ready = False
        if self.commands is not None:
            await self.commands.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if hasattr(self, "orders"):
            if self.orders.live_orders():
                self.orders.pull(None, "shutdown")
                await self._wait_no_live_orders(self.config.engine.shutdown_timeout_s)
            await self.orders.drain()
        if self.publisher is not None:
            await self.publisher.stop()  # after the pull: the last state shows no quotes
        if hasattr(self, "feed"):
            await self.feed.stop()
        if hasattr(self, "stream"):
            await self.stream.stop()
        if hasattr(self, "gateway"):
            await self.gateway.close()
        self.metrics.close()
        if hasattr(self, "journal"):
            self.journal.close()
        log.info("engine stopped")

    # ================================================================= hot path
    def on_book(self, market_id: str, book: OrderBook, update: BookUpdate | None) -> None:
        """A book update applied by the feed: decide at once if the top moved."""
        if not self.ready:
            return
        m = self.markets[market_id]
        bid, ask = book.best_bid, book.best_ask
        if bid == m.top_bid and ask == m.top_ask:
            return  # the decision cadence picks up deeper changes
        m.top_bid = bid
        m.top_ask = ask
        applied = perf_counter_ns()
        self._decide(m, self.clock())
        decided = perf_counter_ns()
        feed = self.feed
        if update is not None:
            self.metrics.clock.commit(feed.frame_ns, feed.decoded_ns, applied, decided)

    def _decide(self, m: _Market, now_ns: int) -> None:
        m.last_decide_ns = now_ns
        pipe = m.pipe
        own = pipe.own
        n = 0
        for order in self.orders.working[m.spec.market_id].values():
            if n == MAX_OWN_ORDERS:
                break
            own[n, 0] = order.side
            own[n, 1] = order.price_ticks
            own[n, 2] = order.remaining_lots
            n += 1
        pipe.n_own = n
        mid = pipe.decide(now_ns)
        m.decisions += 1
        if not m.live or not self.ready:
            return
        self.portfolio.mark(m.spec.market_id, mid, now_ns)
        journal = self.journal
        with journal.batch():  # one write for the decision's orders, before any is sent
            self._quote(m, pipe.quote, now_ns)
        if journal.unflushed and not self._flush_scheduled:
            # into the database once the orders are out: the loop runs this after the
            # first step of each send, which is the write to the venue
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_journal)

    def _flush_journal(self) -> None:
        self._flush_scheduled = False
        try:
            self.journal.flush()
        except JournalError as exc:
            # the records are safe in the order log; the next write tries again
            self._alert(f"journal: {exc}")

    def _quote(self, m: _Market, q: np.ndarray, now_ns: int) -> None:
        bid, ask = int(q[QO_BID]), int(q[QO_ASK])
        # Side-independent inputs of the gate, read once: equity() loops over every
        # market, and neither changes between the two sides (fills arrive on the stream).
        position = self.portfolio.position_lots(m.spec.market_id)
        equity = self.portfolio.equity()
        own_ask = self.orders.slots[m.spec.market_id, Side.SELL].order
        if own_ask is not None and bid >= own_ask.price_ticks:
            # the market moved up through our ask: move the ask first, or the new bid
            # would meet the old ask and a post-only venue would refuse it
            self._quote_side(m, Side.SELL, ask, int(q[QO_ASK_SIZE]), now_ns, position, equity)
            self._quote_side(m, Side.BUY, bid, int(q[QO_BID_SIZE]), now_ns, position, equity)
        else:
            self._quote_side(m, Side.BUY, bid, int(q[QO_BID_SIZE]), now_ns, position, equity)
            self._quote_side(m, Side.SELL, ask, int(q[QO_ASK_SIZE]), now_ns, position, equity)

    def _quote_side(
        self,
        m: _Market,
        side: Side,
        price: int,
        size: int,
        now_ns: int,
        position_lots: int,
        equity: float,
    ) -> None:
        market_id = m.spec.market_id
        if size > 0 and price > 0:
            working = self.orders.working_lots(market_id, side)
            slot = self.orders.slots[market_id, side].order
            if slot is not None and slot.is_live and slot.state is not OrderState.PENDING_CANCEL:
                working -= slot.remaining_lots * side  # the quote being replaced
            size, _why = self.gate.check(
                side=side,
                size_lots=size,
                price=price * m.tick,
                lot_size=m.lot,
                position_lots=position_lots,
                working_lots=working,
                equity=equity,
            )
        order = self.orders.update_quote(market_id, side, price, size, now_ns)
        if order is not None:
            self.monitor.observe_order(now_ns)
            m.order_counters[side].inc()
            self._orders_sent[market_id] += 1
            self._sent_stamps[order.client_order_id] = (self.feed.frame_ns, perf_counter_ns())

    def on_trade(self, market_id: str, trade: Trade) -> None:
        m = self.markets[market_id]
        now = self.clock()
        m.pipe.on_trade(now, trade.size, trade.side)
        m.volume.add(now, trade.price, trade.size)

    def on_state(self, market_id: str, state: FeedState, reason: str) -> None:
        # The feed is made for self.markets and started after the order manager exists.
        m = self.markets[market_id]
        live = state is FeedState.LIVE
        m.live = live
        m.feed_reason = reason
        self.metrics.feed_events.labels(market_id, state.value).inc()
        self.monitor.observe_feed(market_id, live, self.clock())
        if not live:
            pulled = self.orders.pull(market_id, f"feed {state.value}: {reason}")
            log.warning(
                "%s: feed %s (%s); %d orders pulled", market_id, state.value, reason, pulled
            )
        elif live:
            m.top_bid = m.top_ask = 0  # decide on the next update
            log.info("%s: feed live (%s)", market_id, reason)

    def on_alert(self, message: str) -> None:
        self._alert(message, kind="feed")

    def _alert(self, message: str, *, kind: str = "engine") -> None:
        self.alerts.append(message)
        del self.alerts[:-100]
        log.error("ALERT: %s", message)
        if self.publisher is not None:
            self.publisher.alert("critical", kind, message)

    # ================================================================= orders -> engine
    def on_order(self, order: Order) -> None:
        if order.state is OrderState.CANCELLED:
            self.metrics.cancels.labels(
                order.market_id, "own" if order.own_cancel else "venue"
            ).inc()
        if not order.is_live:
            self._sent_stamps.pop(order.client_order_id, None)
        if self.publisher is not None:
            self.publisher.order(order)

    def on_fill(self, fill: Fill, order: Order) -> None:
        self.portfolio.apply_fill(fill)
        m = self.markets.get(fill.market_id)
        if m is not None:
            m.pipe.inventory_lots = float(self.portfolio.position_lots(fill.market_id))
        self.metrics.fills.labels(fill.market_id, fill.side.wire, fill.liquidity).inc()
        if self.publisher is not None:
            self.publisher.fill(fill)
        if fill.market_id in self._fill_count:
            self._fill_count[fill.market_id] += 1
        log.info(
            "fill %s %s %d lots @ %d ticks (%s), position %d lots",
            fill.market_id,
            fill.side.wire,
            fill.size_lots,
            fill.price_ticks,
            fill.liquidity,
            self.portfolio.position_lots(fill.market_id),
        )

    def _on_send(self, order: Order) -> None:
        if self.publisher is not None:
            self.publisher.order(order, new=True)
        stamps = self._sent_stamps.get(order.client_order_id)
        if stamps is not None:
            received, decided = stamps
            sent = perf_counter_ns()
            self.metrics.clock.order_sent(decided, sent, received)
            self._sent_stamps[order.client_order_id] = (received, sent)

    def on_ack(self, order: Order, latency_ns: int) -> None:
        self.monitor.observe_ack_latency(latency_ns)
        stamps = self._sent_stamps.pop(order.client_order_id, None)
        if stamps is not None:
            self.metrics.clock.acked(stamps[1], perf_counter_ns())

    def on_reject(self, order: Order, code: str) -> None:
        self.monitor.observe_reject(self.clock())
        self.metrics.rejects.labels(order.market_id, code).inc()
        log.warning("order %s rejected: %s", order.client_order_id, order.reason)

    def on_venue_failure(self, kind: str, message: str) -> None:
        self.metrics.venue_failures.labels(kind).inc()
        log.warning("venue %s: %s", kind, message)

    def _on_stream_event(self, event: StreamEvent) -> None:
        self.orders.on_event(event)

    def _on_stream_gap(self, expected: int, got: int | None) -> None:
        # Events the venue no longer holds: fills may be missing. Stop adding risk and
        # let the operator look; reconciliation still closes what the venue closed.
        self._alert(f"execution stream gap: expected seq {expected}, got {got}", kind="stream")
        self._apply_transition(
            self.ladder.escalate(
                RiskState.PAUSED, f"execution stream gap at seq {expected}", self.clock()
            )
        )

    # ================================================================= risk
    def _apply_transition(self, transition: Transition | None) -> None:
        if transition is None:
            return
        self.journal.record_risk(
            RiskRecord(
                state=transition.to_state.value,
                reason=transition.reason,
                ts_ns=transition.ts_ns,
                until_ns=transition.until_ns,
            )
        )
        self.metrics.risk_transitions.labels(transition.to_state.value).inc()
        if self.publisher is not None:
            self.publisher.risk(transition)
        log.warning(
            "risk %s -> %s: %s",
            transition.from_state.value,
            transition.to_state.value,
            transition.reason,
            extra={"source": transition.source},
        )
        to = transition.to_state
        if to in (RiskState.PAUSED, RiskState.HALTED, RiskState.FLATTENED):
            self.orders.pull(None, f"risk {to.value}: {transition.reason}")
        if to is RiskState.HALTED and self._emergency is None:
            self._spawn_confirm_zero()
        if self.ready:
            now = self.clock()
            for m in self.markets.values():
                if m.live and m.book.is_valid:
                    self._decide(m, now)  # REDUCING / ACTIVE take effect now

    def _spawn_confirm_zero(self) -> None:
        task = asyncio.get_running_loop().create_task(self._confirm_zero_open_orders(5.0))
        self._tasks.append(task)

    def pause(
        self, reason: str, *, duration_s: float | None = None, source: str = "operator"
    ) -> Transition | None:
        t = self.ladder.escalate(
            RiskState.PAUSED, reason, self.clock(), duration_s=duration_s, source=source
        )
        self._apply_transition(t)
        return t

    def resume(self, reason: str, *, source: str = "operator") -> Transition | None:
        t = self.ladder.resume(reason, self.clock(), source=source)
        self._apply_transition(t)
        return t

    def halt(self, reason: str, *, source: str = "operator") -> Transition | None:
        t = self.ladder.escalate(RiskState.HALTED, reason, self.clock(), source=source)
        self._apply_transition(t)
        return t

    async def emergency_stop(self, reason: str, *, source: str = "operator") -> EmergencyStopReport:
        """HALTED + flatten in one idempotent call: a second call while one runs joins it."""
        if self._emergency is not None and not self._emergency.done():
            return await asyncio.shield(self._emergency)
        already = self.ladder.state is RiskState.FLATTENED
        self._emergency = asyncio.get_running_loop().create_task(
            self._emergency_stop(reason, source, already)
        )
        return await asyncio.shield(self._emergency)

    async def _emergency_stop(self, reason: str, source: str, already: bool) -> EmergencyStopReport:
        started = perf_counter_ns()
        cancelled = len(self.orders.live_orders())
        halted = self.ladder.escalate(
            RiskState.HALTED, f"emergency stop: {reason}", self.clock(), source=source
        )
        if halted is not None:
            self._apply_transition(halted)  # pulls every quote
        else:  # already halted: its pull may have been answered with an error
            self.orders.pull(None, "emergency stop")
        open_left = await self._confirm_zero_open_orders(5.0)
        flat = await self._flatten(10.0)
        if flat and open_left == 0:
            self._apply_transition(self.ladder.flattened(f"emergency stop: {reason}", self.clock()))
        report = EmergencyStopReport(
            orders_cancelled=cancelled,
            open_orders=open_left,
            flat=flat,
            positions={m: self.portfolio.position(m).position for m in self.markets},
            risk_state=self.ladder.state.value,
            elapsed_ms=(perf_counter_ns() - started) / 1e6,
            already_stopped=already,
        )
        log.warning("emergency stop done: %s", msgspec.to_builtins(report))
        return report

    async def _wait_no_live_orders(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.orders.live_orders():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.001)
        return True

    async def _confirm_zero_open_orders(self, timeout_s: float, attempts: int = 5) -> int:
        """Wait for the stream to close every order, then ask the venue; retry cancel-all."""
        left = -1
        for attempt in range(attempts):
            await self._wait_no_live_orders(timeout_s / attempts)
            try:
                listed = [
                    v for v in await self.gateway.open_orders() if v.market_id in self.markets
                ]
            except GatewayError as exc:
                log.warning("cannot confirm zero open orders (attempt %d): %s", attempt + 1, exc)
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            left = len(listed)
            if left == 0:
                return 0
            log.warning("%d orders still open at the venue; cancel-all again", left)
            self.orders.reconcile(listed, self.clock())
            self.orders.pull(None, "confirm zero open orders")
            for market_id in {v.market_id for v in listed}:
                with contextlib.suppress(GatewayError):
                    await self.gateway.cancel_all(market_id)
        return left

    async def _flatten(self, timeout_s: float) -> bool:
        """Close every position with IOC market orders; True once all are flat."""
        deadline = time.monotonic() + timeout_s
        while True:
            open_positions = {
                m: lots for m in self.markets if (lots := self.portfolio.position_lots(m)) != 0
            }
            if not open_positions:
                return True
            if time.monotonic() >= deadline:
                log.error("could not flatten %s within %.1f s", open_positions, timeout_s)
                return False
            pending = []
            for market_id, lots in open_positions.items():
                side = Side.SELL if lots > 0 else Side.BUY
                pending.append(self.orders.submit_order(market_id, side, abs(lots)))
            while any(o.is_live for o in pending) and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            if any(o.state is OrderState.REJECTED for o in pending):
                await asyncio.sleep(0.1)  # rate limit or an empty book: try again shortly

    # ================================================================= periodic tasks
    async def _decide_loop(self) -> None:
        period_ns = int(1e9 / self.config.engine.decide_hz)
        while True:
            await asyncio.sleep(period_ns / 4e9)
            now = self.clock()
            for m in self.markets.values():
                if m.live and m.book.is_valid and now - m.last_decide_ns >= period_ns:
                    self._decide(m, now)

    async def _risk_loop(self) -> None:
        interval = self.config.engine.risk_interval_s
        while True:
            await asyncio.sleep(interval)
            self._evaluate_risk()

    def _evaluate_risk(self) -> None:
        now = self.clock()
        equity = self.portfolio.equity()
        limit_fraction = self.config.risk.position_limit_fraction
        ratios = {}
        for market_id, m in self.markets.items():
            mark = self.portfolio.mark_ticks(market_id)
            lots = self.portfolio.position_lots(market_id)
            if lots and math.isfinite(mark) and equity > 0:
                ratios[market_id] = abs(lots) * m.lot * mark * m.tick / (limit_fraction * equity)
            else:
                ratios[market_id] = 0.0
        for t in self.monitor.evaluate(
            now,
            net_pnl=self.portfolio.net_pnl(),
            capital=self.portfolio.capital,
            inventory_ratio=ratios,
        ):
            self._apply_transition(t)

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = self.clock()
            self.orders.sweep(now)
            connects = self.stream.counters["connects"]
            feed_connects = self.feed.counters["connects"]
            if connects != self._last_stream_connects or feed_connects != self._last_feed_connects:
                self._last_stream_connects = connects
                self._last_feed_connects = feed_connects
                log.info("venue reconnected: reconciling")
                with contextlib.suppress(GatewayError):
                    await self._reconcile()
            self._publish_metrics(now)

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.engine.reconcile_interval_s)
            try:
                await self._reconcile()
            except GatewayError as exc:
                log.warning("periodic reconciliation failed: %s", exc)

    async def _reconcile(self) -> dict[str, int]:
        listed = await self.gateway.open_orders()
        found = self.orders.reconcile(listed, self.clock())
        with contextlib.suppress(GatewayError):
            await self._check_balances()
        return found

    async def _check_balances(self) -> None:
        """Compare the venue's base holdings with what the journal's fills imply.

        A balance read can run ahead of the stream events of the same fill, so a
        difference counts only when two reads in a row find the same one.
        """
        balances = await self.gateway.balances(self.config.venue.address)
        for m in self.markets.values():
            spec = m.spec
            held = Decimal(balances.get(spec.base_denom, 0)).scaleb(-spec.base_decimals)
            # the bank balance is what is available: resting sells have their base escrowed
            # (working_lots is signed: the sells' remaining lots, negated)
            escrowed = -self.orders.working_lots(spec.market_id, Side.SELL)
            mine = self.portfolio.position_lots(spec.market_id) - escrowed
            outside = held - mine * spec.lot_size
            base = self._base_balances.setdefault(spec.market_id, outside)
            if outside == base:
                self._balance_diffs.pop(spec.market_id, None)
            elif self._balance_diffs.get(spec.market_id) != outside:
                self._balance_diffs[spec.market_id] = outside  # confirm on the next read
            else:
                self._alert(
                    f"{spec.market_id}: the venue's {spec.base} balance moved by "
                    f"{outside - base} more than this engine's fills explain "
                    "(trading outside the engine, or a lost fill)",
                    kind="balance",
                )
                self._base_balances[spec.market_id] = outside
                del self._balance_diffs[spec.market_id]

    def _publish_metrics(self, now_ns: int) -> None:
        met = self.metrics
        met.flush()
        totals = self.portfolio.totals()
        for market_id in self.markets:
            pos = self.portfolio.position(market_id)
            met.inventory.labels(market_id).set(pos.position)
            self._publish_pnl(market_id, pos)
            for horizon, markout in pos.markouts.items():
                met.markout.labels(market_id, horizon).set(markout.mean_bps)
            stale = self.feed.staleness_s(market_id)
            met.book_staleness.labels(market_id).set(stale if math.isfinite(stale) else -1.0)
            live_orders = self.orders.live_orders(market_id)
            for side in Side:
                slot = self.orders.slots[market_id, side].order
                live = slot is not None and slot.state in (
                    OrderState.OPEN,
                    OrderState.PARTIALLY_FILLED,
                )
                met.uptime.set_live(market_id, side.wire, live, now_ns)
                working = sum(1 for o in live_orders if o.side is side)
                met.open_orders.labels(market_id, side.wire).set(working)
            sent, fills = self._orders_sent[market_id], self._fill_count[market_id]
            met.order_to_fill.labels(market_id).set(sent / fills if fills else 0.0)
        self._publish_pnl(PNL_TOTAL_MARKET, totals)
        met.update_quote_uptime(now_ns)
        met.set_risk_state(self.ladder.state.value)
        met.breaker_state.set(1.0 if self.gateway.breaker.state is not BreakerState.CLOSED else 0.0)

    def _publish_pnl(self, market: str, pnl: MarketPosition | PortfolioTotals) -> None:
        """The ``flashmm_pnl`` gauges of one market, or of the total over markets."""
        gauge = self.metrics.pnl
        values = (pnl.realized_pnl, pnl.unrealized_pnl, pnl.fees, pnl.net_pnl)  # PNL_KINDS order
        for kind, value in zip(PNL_KINDS, values, strict=True):
            gauge.labels(market, kind).set(value)

    # ================================================================= views
    def status(self) -> dict[str, Any]:
        """A plain summary (the ready file, logs and tests read it)."""
        return {
            "ready": self.ready,
            "risk_state": self.ladder.state.value,
            "markets": {
                m: {
                    "feed": self.feed.state(m).value,
                    "position": self.portfolio.position(m).position,
                    "open_orders": len(self.orders.live_orders(m)),
                }
                for m in self.markets
            },
            "alerts": list(self.alerts[-10:]),
        }

    def ready_payload(self) -> dict[str, Any]:
        urls = {"metrics": f"http://{self.config.engine.metrics_host}:{self.metrics_port}/metrics"}
        if self.redis_url is not None:
            urls["redis"] = self.redis_url
        return {
            "pid": os.getpid(),
            "service": "engine",
            "urls": urls,
            "markets": sorted(self.markets),
        }


# ---------------------------------------------------------------------- balances
def _amount(balances: dict[str, int], denom: str, decimals: int) -> float:
    return balances.get(denom, 0) / 10**decimals
