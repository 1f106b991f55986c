"""The engine's records of its orders and fills, shared by the order manager, the
portfolio and the journal.

Prices are integer ticks and sizes integer lots of the order's market; fees are exact
decimals of the market's quote asset (negative: a rebate). Times are wall-clock ns.
"""

from __future__ import annotations

from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Literal

import msgspec

__all__ = ["LIVE_STATES", "TERMINAL_STATES", "Fill", "Order", "OrderState", "Side"]


class Side(IntEnum):
    """Sign of an order's effect on inventory."""

    BUY = 1
    SELL = -1

    @property
    def wire(self) -> Literal["buy", "sell"]:
        return "buy" if self is Side.BUY else "sell"


class OrderState(StrEnum):
    """Where an order is in its life; see ``docs/decisions.md`` (Engine orders)."""

    PENDING_NEW = "pending_new"
    """Sent (or about to be); the venue has not acked it yet."""
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    PENDING_CANCEL = "pending_cancel"
    """We asked the venue to cancel it; fills may still arrive until it says cancelled."""
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    """The venue never acked it and does not know it: it never traded."""


TERMINAL_STATES = frozenset(
    {OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED, OrderState.EXPIRED}
)
LIVE_STATES = frozenset(OrderState) - TERMINAL_STATES


class Order(msgspec.Struct, kw_only=True):
    """One order the engine placed (or adopted); mutated in place by the order manager."""

    client_order_id: str
    market_id: str
    side: Side
    price_ticks: int
    size_lots: int
    state: OrderState = OrderState.PENDING_NEW
    order_id: str | None = None
    """The venue's id, known from its ack."""
    filled_lots: int = 0
    created_ns: int = 0
    updated_ns: int = 0
    reason: str = ""
    """Why it was cancelled, rejected or expired."""
    own_cancel: bool = False
    """The engine asked for the cancel (as opposed to the venue cancelling on its own)."""

    @property
    def remaining_lots(self) -> int:
        return self.size_lots - self.filled_lots

    @property
    def is_live(self) -> bool:
        return self.state not in TERMINAL_STATES


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    """One execution of one of the engine's orders. ``trade_id`` is unique per fill."""

    trade_id: str
    order_id: str
    client_order_id: str
    market_id: str
    side: Side
    price_ticks: int
    size_lots: int
    fee: Decimal
    liquidity: Literal["maker", "taker"]
    ts_ns: int
    seq: int = 0
    """The execution stream's ``seq`` that carried it (0: not from the stream)."""
