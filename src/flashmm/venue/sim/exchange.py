"""The simulated venue: markets, accounts, order entry, market flow and faults in one place.

:class:`Exchange` owns one :class:`~flashmm.venue.sim.matching.MatchingBook` per market
and the account ledger. Every change goes through it, on one event loop, in one order:
validate, act on the book, settle what traded, then tell the world (the account's
execution stream, then the market-data feed). The servers around it (``rest``,
``market_data``) only translate.

Outside liquidity comes from a :class:`~flashmm.venue.sim.synthetic.SyntheticFlow`
(real orders of an internal account) or from the replay of an event file through the
book's queue-position model. Either runs as a task started by :meth:`Exchange.run`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from flashmm.data import samples
from flashmm.data.events import EventKind, batch_bounds, load_events
from flashmm.venue.order_entry import (
    BalanceView,
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
    decimal_text,
    encode_stream_event,
    from_units,
    to_units,
)
from flashmm.venue.protocol import Trade, format_rfc3339_ns
from flashmm.venue.sim import faults as F
from flashmm.venue.sim.accounts import Account as LedgerAccount
from flashmm.venue.sim.accounts import (
    Asset,
    FeeSchedule,
    InsufficientBalance,
    InvalidSpec,
    Ledger,
    MarketSpec,
)
from flashmm.venue.sim.config import SAMPLE_PREFIX, MarketConfig, SimConfig, SimConfigError
from flashmm.venue.sim.market_data import BookState, MarketDataServer, MarketFormat
from flashmm.venue.sim.matching import (
    Accepted,
    Cancelled,
    Event,
    Fill,
    MatchingBook,
    Order,
    OrderType,
    PublicTrade,
    STPMode,
    TimeInForce,
)
from flashmm.venue.sim.synthetic import CancelLimit, MarketOrder, PlaceLimit, SyntheticFlow

__all__ = ["Account", "Exchange", "OrderError", "ReplayTape", "StreamGap"]

log = logging.getLogger("flashmm.sim")

# The synthetic market's own orders (no ledger, no stream). Bids, asks and market orders
# are three accounts so that self-trade prevention never stops the flow trading with itself.
FLOW_PREFIX = "__flow_"
FLOW_BIDS, FLOW_ASKS, FLOW_TAKER = "__flow_bids__", "__flow_asks__", "__flow_taker__"
_SIDE = {"buy": 1, "sell": -1}
_SIDE_NAME = {1: "buy", -1: "sell"}


class OrderError(Exception):
    """A request the venue refuses; ``code`` and ``details`` go into the REST answer."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.details = details


class ReplayTape:
    """A recording as plain Python lists: what the replay loop reads per venue update.

    Converting once up front keeps numpy's per-call overhead out of a loop that applies
    tens of thousands of updates per second.
    """

    def __init__(self, events: np.ndarray) -> None:
        starts, ends = batch_bounds(events)
        self.starts: list[int] = starts.tolist()
        self.ends: list[int] = ends.tolist()
        last = ends - 1
        self.kinds: list[int] = events["kind"][last].tolist()
        self.times: list[int] = events["local_ts"][last].tolist()
        self.rows: list[tuple[int, int, int]] = events[["side", "price", "size"]].tolist()
        self.primed = 0  # steps applied before the replay loop starts

    def __len__(self) -> int:
        return len(self.kinds)


class StreamGap(Exception):
    """``/v1/stream?since=N`` asks for events the journal no longer holds."""


@dataclass(slots=True, eq=False)
class _OrderRecord:
    order_id: str
    request: OrderRequest
    size_lots: int
    created: str


@dataclass(slots=True, eq=False)
class Account:
    """An account and its execution stream (``seq`` counts its events from 1)."""

    name: str
    api_key: str
    address: str
    journal_size: int
    seq: int = 0
    journal: deque[tuple[int, bytes]] = field(default_factory=deque)
    sinks: list[Callable[[bytes | None], None]] = field(default_factory=list)
    orders: dict[str, _OrderRecord] = field(default_factory=dict)  # by client order id


@dataclass(slots=True, eq=False)
class _Market:
    config: MarketConfig
    spec: MarketSpec
    book: MatchingBook
    fmt: MarketFormat
    tick: float
    lot: float
    status: str
    scale: np.ndarray = field(init=False)  # [tick, lot]: ticks and lots to prices and sizes
    sequence: int = 0
    skip: int = 0
    flow: SyntheticFlow | None = None
    flow_orders: dict[int, int] = field(default_factory=dict)  # flow id -> order number
    flow_ids: dict[int, int] = field(default_factory=dict)  # order number -> flow id

    def __post_init__(self) -> None:
        self.scale = np.array([self.tick, self.lot])

    @property
    def market_id(self) -> str:
        return self.config.market_id


class Exchange:
    """The venue's state and rules. Single-threaded: call it from one event loop only."""

    def __init__(self, config: SimConfig, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self.clock = clock
        self.market_data: MarketDataServer | None = None
        self.fault_counts: dict[str, int] = dict.fromkeys(F.FAULT_NAMES, 0)
        self._numbers = itertools.count(1)
        self._orders: dict[str, tuple[_Market, Account, int]] = {}  # by order id
        self._forced_429: list[float] = []
        self._reject_next: list[str] = []
        self._replays: dict[str, ReplayTape] = {}
        assets = {a.symbol: Asset(a.symbol, a.denom, a.decimals) for a in config.assets}
        self.markets: dict[str, _Market] = {}
        for m in config.markets:
            try:
                spec = MarketSpec(
                    m.market_id,
                    assets[m.base],
                    assets[m.quote],
                    Decimal(m.tick_size),
                    Decimal(m.lot_size),
                )
            except InvalidSpec as exc:
                raise SimConfigError(str(exc)) from None
            fmt = MarketFormat(_decimals(spec.tick_size), _decimals(spec.lot_size))
            book = MatchingBook(m.market_id, STPMode(config.self_trade_prevention))
            tick, lot = float(spec.tick_size), float(spec.lot_size)
            self.markets[m.market_id] = _Market(m, spec, book, fmt, tick, lot, "open")
        fees = FeeSchedule(Decimal(str(config.fees.maker_bps)), Decimal(str(config.fees.taker_bps)))
        self.ledger = Ledger(list(assets.values()), fees)
        self.accounts: dict[str, Account] = {}
        for a in config.accounts:
            account = Account(a.name, a.api_key, a.address, config.server.stream_journal_events)
            try:
                self.ledger.add_account(
                    LedgerAccount(
                        a.name, a.api_key, a.address, {s: Decimal(v) for s, v in a.balances.items()}
                    )
                )
            except InvalidSpec as exc:
                raise SimConfigError(f"account {a.name}: {exc}") from None
            self.accounts[a.api_key] = account
        for market in self.markets.values():
            if market.config.status != "open":
                self._set_status(market, market.config.status)

    # ------------------------------------------------------------------ accounts
    def account_for_key(self, api_key: str) -> Account | None:
        return self.accounts.get(api_key)

    def cosmos_balances(self, address: str) -> list[dict[str, str]]:
        """Available balances, Cosmos style; an unknown address has none, as on a chain."""
        return self.ledger.cosmos_balances(address)

    # --------------------------------------------------------------- order entry
    def place_order(self, account: Account, req: OrderRequest) -> str:
        """Validate and act on ``req``; returns the order id (the same one for a resend)."""
        known = account.orders.get(req.client_order_id)
        if known is not None:
            if known.request == req:
                return known.order_id  # idempotent resend: nothing happens twice
            raise OrderError(
                ErrorCode.DUPLICATE_CLIENT_ORDER_ID,
                f"client_order_id {req.client_order_id!r} was used for a different order",
                {"order_id": known.order_id},
            )
        market = self._market(req.market_id)
        if market.status != "open":
            raise OrderError(
                ErrorCode.MARKET_NOT_OPEN,
                f"{market.market_id} is {market.status}",
                {"status": market.status},
            )
        side = _SIDE[req.side]
        price_ticks = 0
        if req.price is not None:
            price_ticks = _units(req.price, market.spec.tick_size, "price")
            if price_ticks <= 0:
                raise OrderError(ErrorCode.INVALID_TICK_SIZE, "price must be at least one tick")
        size_lots = _units(req.quantity, market.spec.lot_size, "quantity")
        if size_lots < market.spec.min_size_lots:
            raise OrderError(
                ErrorCode.INVALID_LOT_SIZE,
                f"quantity must be at least {market.spec.min_size_lots} lot(s) of "
                f"{market.spec.lot_size}",
            )
        tif = TimeInForce(req.time_in_force)
        if tif is TimeInForce.POST_ONLY and market.book.would_cross(side, price_ticks):
            raise OrderError(
                ErrorCode.POST_ONLY_WOULD_CROSS,
                "a post-only order at this price would trade at once",
                {
                    "best_bid": self._price_text(market, market.book.best_bid()),
                    "best_ask": self._price_text(market, market.book.best_ask()),
                },
            )
        is_market = req.type == "market"
        worst = None
        if is_market:
            # what the order can reach, skipping the account's own orders as matching does;
            # nothing to reach: nothing will fill, lock one tick per lot
            worst = market.book.sweep_price(side, size_lots, account.name) or 1
        try:
            self.ledger.check_order(
                account.name, market.spec, side, price_ticks, size_lots, is_market, worst
            )
        except InsufficientBalance as exc:
            raise OrderError(ErrorCode.INSUFFICIENT_BALANCE, str(exc), exc.details) from None
        number = next(self._numbers)
        record = _OrderRecord(str(number), req, size_lots, format_rfc3339_ns(self.clock()))
        account.orders[req.client_order_id] = record
        self._orders[record.order_id] = (market, account, number)
        if self._reject_next:
            reason = self._reject_next.pop(0)
            self._emit(
                account,
                OrderRejected(
                    seq=0,
                    timestamp=record.created,
                    order_id=record.order_id,
                    client_order_id=req.client_order_id,
                    market_id=market.market_id,
                    code="REJECTED",
                    reason=reason,
                ),
            )
            return record.order_id
        self.ledger.lock(
            account.name, market.spec, number, side, price_ticks, size_lots, is_market, worst
        )
        order = Order(
            number,
            account.name,
            req.client_order_id,
            side,
            price_ticks,
            size_lots,
            OrderType(req.type),
            tif,
        )
        self._apply(market, market.book.submit(order, self.clock()))
        return record.order_id

    def cancel_order(self, account: Account, order_id: str) -> None:
        found = self._orders.get(order_id)
        if found is None or found[1] is not account or found[0].book.order_state(found[2]) is None:
            raise OrderError(ErrorCode.UNKNOWN_ORDER, f"no open order {order_id} for this account")
        market, _, number = found
        self._apply(market, market.book.cancel(number, account.name))

    def cancel_all(self, account: Account, market_id: str | None) -> int:
        targets = [self._market(market_id)] if market_id else list(self.markets.values())
        count = 0
        for market in targets:
            events = market.book.cancel_all(account.name)
            count += len(events)
            self._apply(market, events)
        return count

    def open_orders(self, account: Account, market_id: str | None) -> list[OrderView]:
        targets = [self._market(market_id)] if market_id else list(self.markets.values())
        views = []
        for market in targets:
            for state in market.book.open_orders(account.name):
                record = account.orders[state.order.client_order_id]
                views.append(
                    OrderView(
                        order_id=record.order_id,
                        client_order_id=record.request.client_order_id,
                        market_id=market.market_id,
                        side=record.request.side,
                        type=record.request.type,
                        time_in_force=record.request.time_in_force,
                        price=record.request.price,
                        quantity=record.request.quantity,
                        remaining_quantity=from_units(state.remaining_lots, market.spec.lot_size),
                        filled_quantity=from_units(state.filled_lots, market.spec.lot_size),
                        timestamp=record.created,
                    )
                )
        return views

    # ------------------------------------------------------------------- markets
    def market_list(self) -> list[dict[str, Any]]:
        return [
            {
                "market_id": m.market_id,
                "base": m.spec.base.symbol,
                "quote": m.spec.quote.symbol,
                "base_denom": m.spec.base.denom,
                "base_decimals": m.spec.base.decimals,
                "quote_denom": m.spec.quote.denom,
                "quote_decimals": m.spec.quote.decimals,
                "tick_size": str(m.spec.tick_size),
                "lot_size": str(m.spec.lot_size),
                "status": m.status,
                "source": m.config.source,
                "sequence": m.sequence,
            }
            for m in self.markets.values()
        ]

    def book_snapshot(self, market_id: str, depth: int) -> dict[str, Any]:
        """The book as of its current sequence, prices and sizes as decimal strings."""
        market = self._market(market_id)
        bids, asks = market.book.depth(depth or 1 << 30)
        tick, lot = market.spec.tick_size, market.spec.lot_size
        return {
            "market_id": market.market_id,
            "sequence": market.sequence,
            "timestamp": format_rfc3339_ns(self.clock()),
            "status": market.status,
            "bids": [[from_units(p, tick), from_units(s, lot)] for p, s in bids],
            "asks": [[from_units(p, tick), from_units(s, lot)] for p, s in asks],
        }

    def book_state(self, market_id: str) -> BookState:
        market = self.markets[market_id]
        bids, asks = market.book.depth(1 << 30)
        return BookState(
            market.sequence,
            self.clock(),
            self._levels(market, bids),
            self._levels(market, asks),
        )

    def market_status(self, market_id: str) -> str:
        return self.markets[market_id].status

    def market_formats(self) -> dict[str, MarketFormat]:
        return {m.market_id: m.fmt for m in self.markets.values()}

    # -------------------------------------------------------------------- stream
    def attach_stream(
        self, account: Account, sink: Callable[[bytes | None], None], since: int | None
    ) -> Callable[[], None]:
        """Send the account's events to ``sink``, after resending those after ``since``.

        Returns the function that detaches ``sink``. :class:`StreamGap` if ``since`` is
        ahead of the stream or older than the journal keeps.
        """
        if since is not None:
            if since > account.seq:
                raise StreamGap(f"since={since} is ahead of the stream (last seq {account.seq})")
            oldest = account.journal[0][0] if account.journal else account.seq + 1
            if since + 1 < oldest:
                raise StreamGap(
                    f"events after seq {since} are no longer kept (oldest {oldest}); "
                    "reconcile with GET /v1/orders and reconnect without since"
                )
            for seq, frame in account.journal:
                if seq > since:
                    sink(frame)
        account.sinks.append(sink)

        def detach() -> None:
            if sink in account.sinks:
                account.sinks.remove(sink)

        return detach

    def _emit(self, account: Account, event: StreamEvent) -> None:
        account.seq += 1
        event.seq = account.seq
        frame = encode_stream_event(event)
        account.journal.append((account.seq, frame))
        if len(account.journal) > account.journal_size:
            account.journal.popleft()
        for sink in account.sinks:
            sink(frame)

    # ------------------------------------------------------------- book events
    def _apply(self, market: _Market, events: list[Event]) -> None:
        """Settle and report what the book did, then publish the book's changes."""
        trades: list[Trade] = []
        now = self.clock()
        stamp = format_rfc3339_ns(now)
        spec = market.spec
        for ev in events:
            kind = type(ev)
            if kind is PublicTrade:
                trades.append(
                    Trade(
                        market.market_id,
                        ev.ts,
                        ev.price_ticks * market.tick,
                        ev.size_lots * market.lot,
                        ev.taker_side,
                        str(ev.trade_id),
                    )
                )
                continue
            account_name = ev.order.account if kind is Accepted else ev.account
            if account_name.startswith(FLOW_PREFIX):
                self._flow_event(market, ev)
                continue
            number = ev.order.order_id if kind is Accepted else ev.order_id
            account = self._orders[str(number)][1]
            client_id = ev.order.client_order_id if kind is Accepted else ev.client_order_id
            record = account.orders[client_id]
            if kind is Accepted:
                req = record.request
                self._emit(
                    account,
                    NewOrderAck(
                        seq=0,
                        timestamp=stamp,
                        order_id=record.order_id,
                        client_order_id=client_id,
                        market_id=market.market_id,
                        side=req.side,
                        order_type=req.type,
                        time_in_force=req.time_in_force,
                        price=req.price,
                        quantity=req.quantity,
                    ),
                )
            elif kind is Fill:
                fee = self.ledger.settle(ev, spec)
                self._emit(
                    account,
                    ExecutionReport(
                        seq=0,
                        timestamp=stamp,
                        order_id=record.order_id,
                        client_order_id=client_id,
                        market_id=market.market_id,
                        trade_id=str(ev.trade_id),
                        side=_SIDE_NAME[ev.side],
                        price=from_units(ev.price_ticks, spec.tick_size),
                        quantity=from_units(ev.size_lots, spec.lot_size),
                        cumulative_quantity=from_units(
                            record.size_lots - ev.remaining_lots, spec.lot_size
                        ),
                        remaining_quantity=from_units(ev.remaining_lots, spec.lot_size),
                        liquidity_type=ev.liquidity,
                        fee=decimal_text(fee),
                        fee_asset=spec.quote.symbol,
                        status="filled" if ev.remaining_lots == 0 else "partially_filled",
                    ),
                )
                self._emit(account, self._position(account, market, stamp))
            elif kind is Cancelled:
                self.ledger.release(spec, number)
                self._emit(
                    account,
                    OrderCancelled(
                        seq=0,
                        timestamp=stamp,
                        order_id=record.order_id,
                        client_order_id=client_id,
                        market_id=market.market_id,
                        remaining_quantity=from_units(ev.remaining_lots, spec.lot_size),
                        reason=str(ev.reason),
                    ),
                )
        self._publish_changes(market, now)
        if trades and self.market_data is not None:
            self.market_data.publish_trades(market.market_id, trades)

    def _position(self, account: Account, market: _Market, stamp: str) -> PositionUpdate:
        spec = market.spec
        position = self.ledger.position(account.name, spec)
        balances = {
            asset.symbol: BalanceView(
                total=decimal_text(b.total), available=decimal_text(b.available)
            )
            for asset in (spec.base, spec.quote)
            for b in (self.ledger.balance(account.name, asset.symbol),)
        }
        return PositionUpdate(
            seq=0,
            timestamp=stamp,
            market_id=market.market_id,
            position=decimal_text(position.size),
            average_entry_price=decimal_text(position.avg_entry_price) if position.size else None,
            balances=balances,
        )

    def _publish_changes(self, market: _Market, now: int) -> None:
        bids, asks = market.book.take_changes()
        if not bids and not asks:
            return
        market.sequence += 1 + market.skip
        market.skip = 0
        if self.market_data is not None:
            rows = self._levels(market, bids + asks)  # one conversion for both sides
            self.market_data.publish_book(
                market.market_id, market.sequence, False, rows[: len(bids)], rows[len(bids) :], now
            )

    def publish_snapshots(self) -> None:
        """A snapshot of every market to its subscribers (each takes a new sequence)."""
        now = self.clock()
        for market in self.markets.values():
            market.book.take_changes()  # the snapshot carries them
            market.sequence += 1 + market.skip
            market.skip = 0
            if self.market_data is not None:
                bids, asks = market.book.depth(1 << 30)
                self.market_data.publish_book(
                    market.market_id,
                    market.sequence,
                    True,
                    self._levels(market, bids),
                    self._levels(market, asks),
                    now,
                )

    @staticmethod
    def _levels(market: _Market, levels: list[tuple[int, int]]) -> np.ndarray:
        rows = np.fromiter(chain.from_iterable(levels), np.float64, 2 * len(levels))
        rows = rows.reshape(-1, 2)
        rows *= market.scale
        return rows

    # --------------------------------------------------------------- market flow
    def _flow_event(self, market: _Market, ev: Event) -> None:
        if (type(ev) is Fill and ev.remaining_lots == 0) or type(ev) is Cancelled:
            flow_id = market.flow_ids.pop(ev.order_id, None)
            if flow_id is not None:
                del market.flow_orders[flow_id]
                assert market.flow is not None
                market.flow.on_filled(flow_id)

    def apply_flow_action(self, market: _Market, action: PlaceLimit | CancelLimit | MarketOrder):
        book = market.book
        if book.halted and type(action) is not CancelLimit:
            return
        if type(action) is CancelLimit:
            number = market.flow_orders.get(action.flow_id)
            if number is not None:
                self._apply(market, book.cancel(number))
            return
        number = next(self._numbers)
        if type(action) is PlaceLimit:
            order = Order(
                number,
                FLOW_BIDS if action.side == 1 else FLOW_ASKS,
                f"flow-{action.flow_id}",
                action.side,
                action.price_ticks,
                action.size_lots,
            )
            market.flow_orders[action.flow_id] = number
            market.flow_ids[number] = action.flow_id
        else:
            order = Order(
                number,
                FLOW_TAKER,
                f"flow-m{number}",
                action.side,
                0,
                action.size_lots,
                OrderType.MARKET,
                TimeInForce.IOC,
            )
        self._apply(market, book.submit(order, self.clock()))
        bid, ask = book.best_bid(), book.best_ask()
        if bid is not None and ask is not None and market.flow is not None:
            market.flow.on_mid((bid + ask) / 2)

    async def _run_synthetic(self, market: _Market) -> None:
        loop = asyncio.get_running_loop()
        start_ns = self.clock()
        start_t = loop.time()
        flow = market.flow = SyntheticFlow(market.config.synthetic, start_ns)
        while True:
            action = flow.next_action()
            due = start_t + (action.ts_ns - start_ns) / 1e9
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.apply_flow_action(market, action)

    def replay_tape(self, events: np.ndarray) -> ReplayTape:
        """``events`` (checked rows of an event file) ready to replay step by step."""
        return ReplayTape(events)

    def apply_replay_step(self, market: _Market, tape: ReplayTape, k: int) -> None:
        """Replay the recording's ``k``-th venue update: a snapshot, a delta, or a trade."""
        kind = tape.kinds[k]
        rows = tape.rows[tape.starts[k] : tape.ends[k]]
        book = market.book
        now = self.clock()
        if kind == EventKind.DEPTH_DELTA:
            events = book.set_outside_levels(rows, now)
        elif kind == EventKind.TRADE:
            side, price, size = rows[0]
            events = book.outside_trade(price, size, side, now)
        elif kind == EventKind.DEPTH_SNAPSHOT:
            events = book.replace_outside(
                [(p, q) for s, p, q in rows if s == 1 and q],
                [(p, q) for s, p, q in rows if s == -1 and q],
                now,
            )
        else:
            return  # own-order events of a recording: not market flow
        self._apply(market, events)

    async def _run_replay(self, market: _Market, tape: ReplayTape) -> None:
        loop = asyncio.get_running_loop()
        speed = market.config.replay.speed
        if not tape.kinds:
            return
        first = tape.primed  # the steps start_replays applied already
        while True:
            start_t, first_ts = loop.time(), tape.times[first]
            for k in range(first, len(tape)):
                ts = tape.times[k]
                if speed > 0:
                    delay = start_t + (ts - first_ts) / 1e9 / speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif k % 64 == 0:
                    await asyncio.sleep(0)  # as fast as possible, but let clients in
                self.apply_replay_step(market, tape, k)
            if not market.config.replay.loop:
                return
            first = 0
            log.info("%s: replay starts over", market.market_id)

    def load_replay(self, market: _Market) -> np.ndarray:
        """The event rows to replay for ``market``, checked against its increments."""
        source = market.config.replay.file
        if source.startswith(SAMPLE_PREFIX):
            path = samples.sample_path(source[len(SAMPLE_PREFIX) :])
        else:
            path = Path(source)
        loaded = load_events(path)
        header = loaded.header
        if (
            Decimal(str(header.tick_size)) != market.spec.tick_size
            or Decimal(str(header.lot_size)) != market.spec.lot_size
        ):
            raise SimConfigError(
                f"{market.market_id}: replay file {source} has tick {header.tick_size} and lot "
                f"{header.lot_size}; the market has {market.spec.tick_size} and "
                f"{market.spec.lot_size}"
            )
        return loaded.events

    def load_replays(self) -> None:
        """Load every replay file and apply its first update, so that each replayed market
        has its recorded book before anyone connects (:class:`SimConfigError` if a file
        is bad)."""
        for market in self.markets.values():
            if market.config.source == "replay" and market.market_id not in self._replays:
                tape = self._replays[market.market_id] = ReplayTape(self.load_replay(market))
                if len(tape):
                    self.apply_replay_step(market, tape, 0)
                    tape.primed = 1

    async def run(self) -> None:
        """Run every market's flow, the periodic snapshots and the scheduled faults."""
        self.load_replays()
        tasks = []
        for market in self.markets.values():
            if market.config.source == "synthetic":
                tasks.append(self._run_synthetic(market))
            else:
                tasks.append(self._run_replay(market, self._replays[market.market_id]))
        if self.config.feed.snapshot_interval_s > 0:
            tasks.append(self._run_snapshots(self.config.feed.snapshot_interval_s))
        for scheduled in self.config.faults:
            tasks.append(self._run_scheduled(scheduled))
        await asyncio.gather(*tasks)

    async def _run_snapshots(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.publish_snapshots()

    async def _run_scheduled(self, scheduled: Any) -> None:
        await asyncio.sleep(scheduled.at_s)
        self.inject(F.parse_fault(scheduled.fault, scheduled.params))

    # -------------------------------------------------------------------- faults
    def take_forced_rate_limit(self) -> float | None:
        """``Retry-After`` seconds if an injected 429 burst is under way."""
        return self._forced_429.pop() if self._forced_429 else None

    def fault_report(self) -> dict[str, Any]:
        report: dict[str, Any] = {"faults": dict(self.fault_counts)}
        if self.market_data is not None:
            report["market_data"] = dict(self.market_data.counters)
        report["pending"] = {
            "rate_limited_requests": len(self._forced_429),
            "rejected_orders": len(self._reject_next),
        }
        return report

    def inject(self, fault: F.Fault) -> dict[str, Any]:
        """Apply ``fault`` now; logged, counted, and described in the result."""
        name = type(fault).__struct_config__.tag
        result: dict[str, Any] = {"fault": name}
        md = self.market_data
        match fault:
            case F.DropConnections(target=target):
                if target in ("market_data", "all") and md is not None:
                    result["market_data_dropped"] = md.drop_connections()
                if target in ("stream", "all"):
                    sinks = [s for a in self.accounts.values() for s in a.sinks]
                    for sink in sinks:
                        sink(None)  # the stream's writer ends and closes its socket
                    result["streams_dropped"] = len(sinks)
            case F.SkipSequence(market_id=market_id, count=count):
                self._market(market_id).skip += count
                result["skipped"] = count
            case F.SendCrossedFrame(market_id=market_id):
                market = self._market(market_id)
                bid, ask = market.book.best_bid(), market.book.best_ask()
                market.sequence += 1
                if ask is not None:
                    asks = np.empty((0, 2))
                else:  # no ask to cross: the frame brings one, else nothing would be crossed
                    ask = bid or 1
                    asks = np.array([[ask * market.tick, market.lot]])
                crossed = np.array([[(ask + 1) * market.tick, market.lot]])
                if md is not None:
                    md.publish_book(market_id, market.sequence, False, crossed, asks, self.clock())
                result["sequence"] = market.sequence
            case F.SendMalformedFrame():
                result["clients"] = md.send_garbage(_GARBAGE) if md is not None else 0
            case F.DelayFrames(delay_ms=delay_ms, duration_s=duration_s):
                if md is not None:
                    md.set_delay(delay_ms / 1000)
                    if duration_s > 0:
                        asyncio.get_running_loop().call_later(duration_s, md.set_delay, 0.0)
            case F.StallFeed(duration_s=duration_s):
                if md is not None:
                    md.stall(duration_s)
            case F.RateLimitBurst(count=count, retry_after_s=retry_after_s):
                self._forced_429.extend([retry_after_s] * count)
            case F.RejectOrders(count=count, reason=reason):
                self._reject_next.extend([reason] * count)
            case F.HaltMarket(market_id=market_id, status=status):
                self._set_status(self._market(market_id), status)
        self.fault_counts[name] += 1
        log.warning("fault injected: %s", result | {"params": fault})
        return result

    def _set_status(self, market: _Market, status: str) -> None:
        book = market.book
        if status == "open":
            if book.halted:
                self._apply(market, book.resume(self.clock()))
        else:
            if not book.halted:
                book.halt()
            if status == "closed":
                self._apply(market, book.cancel_everything())
        market.status = status
        if self.market_data is not None:
            self.market_data.publish_status(market.market_id, status)

    # ------------------------------------------------------------------- helpers
    def _market(self, market_id: str) -> _Market:
        market = self.markets.get(market_id)
        if market is None:
            raise OrderError(
                ErrorCode.UNKNOWN_MARKET,
                f"unknown market {market_id!r}",
                {"markets": sorted(self.markets)},
            )
        return market

    def _price_text(self, market: _Market, ticks: int | None) -> str | None:
        return None if ticks is None else from_units(ticks, market.spec.tick_size)


_GARBAGE = b'{"jsonrpc":"2.0","id":1,"result":{"events":[{"type":"OrderBookUpdate","attri'


def _units(text: str, increment: Decimal, field: str) -> int:
    try:
        return to_units(text, increment, field)
    except UnitsError as exc:
        code = (
            (ErrorCode.INVALID_TICK_SIZE if field == "price" else ErrorCode.INVALID_LOT_SIZE)
            if exc.off_grid
            else ErrorCode.INVALID_REQUEST
        )
        raise OrderError(code, str(exc), {"field": field, "increment": str(increment)}) from None


def _decimals(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    return max(0, -int(exponent))
