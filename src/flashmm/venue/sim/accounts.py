"""The simulator's accounts: balances, order locks, fees and positions, in exact decimals.

A :class:`Ledger` keeps, per account and asset, a ``total`` and the part ``locked`` by open
orders (``available = total - locked``). The order-entry server uses it around the matching
book (:mod:`flashmm.venue.sim.matching`):

1. :meth:`Ledger.check_order` before accepting an order (:class:`InsufficientBalance` if
   the account cannot cover it), then :meth:`Ledger.lock` once it is accepted;
2. :meth:`Ledger.settle` for every :class:`~flashmm.venue.sim.matching.Fill`;
3. :meth:`Ledger.release` when an order is cancelled.

A buy locks its quote cost at the limit price (a market buy: at the worst price the caller
expects it to reach) plus the highest fee rate; a sell locks its base size. The lock is
kept per lot, each lot's share rounded up to the quote asset's decimals, so the part
released by a fill always covers what that fill costs: no balance can go negative.
Fees are charged in the quote asset and rounded up (towards +infinity, so a rebate is
rounded down in magnitude) to the asset's decimals.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from decimal import (
    ROUND_CEILING,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Final, ParamSpec, TypeVar

import msgspec

from flashmm.venue.order_entry import decimal_text
from flashmm.venue.sim.matching import BUY, SELL, Fill

__all__ = [
    "DEFAULT_MAKER_BPS",
    "DEFAULT_TAKER_BPS",
    "Account",
    "Asset",
    "Balance",
    "DuplicateAccount",
    "DuplicateLock",
    "FeeSchedule",
    "InsufficientBalance",
    "InvalidSpec",
    "Ledger",
    "LedgerError",
    "MarketSpec",
    "Position",
    "SettlementError",
    "UnknownAccount",
    "UnknownAsset",
]

DEFAULT_MAKER_BPS: Final = Decimal(0)
DEFAULT_TAKER_BPS: Final = Decimal(5)
_BPS: Final = Decimal(10_000)
_MAX_DECIMALS: Final = 18
# Enough digits that sums, products and roundings of amounts are exact whatever the
# caller's decimal context (the default keeps 28, too few for 18-decimal assets).
_CONTEXT: Final = Context(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow])


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _exact(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``method`` in :data:`_CONTEXT`."""

    @functools.wraps(method)
    def exact(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with localcontext(_CONTEXT):
            return method(*args, **kwargs)

    return exact


# ------------------------------------------------------------------------------ errors


class LedgerError(Exception):
    """Base of every error of this module; the ledger is unchanged after one."""


class InvalidSpec(LedgerError, ValueError):
    """An asset, market, fee schedule, account or amount that cannot be used."""


class UnknownAccount(LedgerError, LookupError):
    """No account of this name."""


class UnknownAsset(LedgerError, LookupError):
    """An asset symbol the ledger was not given."""


class DuplicateAccount(LedgerError):
    """An account name or address that is already taken."""


class DuplicateLock(LedgerError):
    """The order already holds a lock."""


class InsufficientBalance(LedgerError):
    """The account's available balance cannot cover the order."""

    def __init__(self, account: str, asset: str, required: Decimal, available: Decimal) -> None:
        super().__init__(
            f"account {account!r} needs {decimal_text(required)} {asset} available for this order "
            f"but has {decimal_text(available)} {asset} available"
        )
        self.account = account
        self.asset = asset
        self.required = required
        self.available = available

    @property
    def details(self) -> dict[str, str]:
        """For an API error's ``details``: amounts as plain decimal strings."""
        return {
            "asset": self.asset,
            "required": decimal_text(self.required),
            "available": decimal_text(self.available),
        }


class SettlementError(LedgerError):
    """A fill that does not match its order's lock, or that the account cannot pay."""


# ------------------------------------------------------------------------------ specs


class Asset(msgspec.Struct, frozen=True):
    """An asset: ``SEI`` is denominated on chain in ``usei`` with 6 decimals."""

    symbol: str
    denom: str
    decimals: int

    def __post_init__(self) -> None:
        if not self.symbol or not self.denom:
            raise InvalidSpec("an asset needs a symbol and a denom")
        if not 0 <= self.decimals <= _MAX_DECIMALS:
            raise InvalidSpec(
                f"asset {self.symbol}: decimals must be 0..{_MAX_DECIMALS}, got {self.decimals}"
            )

    @property
    def unit(self) -> Decimal:
        """The smallest amount: ``10 ** -decimals``."""
        return Decimal(1).scaleb(-self.decimals)


class MarketSpec(msgspec.Struct, frozen=True):
    """A market: a price is ``ticks * tick_size`` quote per base, a size ``lots * lot_size`` base.

    A lot must be a whole number of base units and a tick times a lot a whole number of
    quote units, so every trade moves exact on-chain amounts.
    """

    market_id: str
    base: Asset
    quote: Asset
    tick_size: Decimal
    lot_size: Decimal
    min_size_lots: int = 1

    @_exact
    def __post_init__(self) -> None:
        where = f"market {self.market_id}"
        if not (self.tick_size.is_finite() and self.tick_size > 0):
            raise InvalidSpec(f"{where}: tick_size must be > 0, got {self.tick_size}")
        if not (self.lot_size.is_finite() and self.lot_size > 0):
            raise InvalidSpec(f"{where}: lot_size must be > 0, got {self.lot_size}")
        if self.lot_size % self.base.unit:
            raise InvalidSpec(
                f"{where}: lot_size {self.lot_size} is finer than {self.base.symbol}'s "
                f"{self.base.decimals} decimals"
            )
        if (self.tick_size * self.lot_size) % self.quote.unit:
            raise InvalidSpec(
                f"{where}: tick_size x lot_size = {self.tick_size * self.lot_size} is finer "
                f"than {self.quote.symbol}'s {self.quote.decimals} decimals"
            )
        if self.min_size_lots < 1:
            raise InvalidSpec(f"{where}: min_size_lots must be >= 1, got {self.min_size_lots}")

    def price(self, price_ticks: int) -> Decimal:
        return price_ticks * self.tick_size

    def size(self, size_lots: int) -> Decimal:
        return size_lots * self.lot_size

    def notional(self, price_ticks: int, size_lots: int) -> Decimal:
        """The quote amount of ``size_lots`` at ``price_ticks`` (exact by construction)."""
        return price_ticks * size_lots * self.tick_size * self.lot_size


class FeeSchedule(msgspec.Struct, frozen=True):
    """Fee rates in basis points of the notional; a negative maker rate is a rebate."""

    maker_bps: Decimal = DEFAULT_MAKER_BPS
    taker_bps: Decimal = DEFAULT_TAKER_BPS

    def __post_init__(self) -> None:
        for name in ("maker_bps", "taker_bps"):
            rate = getattr(self, name)
            if not (rate.is_finite() and -_BPS < rate < _BPS):
                raise InvalidSpec(f"{name} must lie strictly between -10000 and 10000, got {rate}")
        if self.taker_bps < 0:
            raise InvalidSpec(f"taker_bps must be >= 0, got {self.taker_bps}")

    def rate(self, liquidity: str) -> Decimal:
        return self.maker_bps if liquidity == "maker" else self.taker_bps


class Account(msgspec.Struct, frozen=True):
    """A venue account and its opening balances per asset symbol (in whole assets)."""

    name: str
    api_key: str
    address: str
    balances: dict[str, Decimal] = {}

    def __repr__(self) -> str:
        # the API key is a secret: it never reaches a log line through repr
        return f"Account(name={self.name!r}, address={self.address!r}, api_key=***)"


class Balance(msgspec.Struct, frozen=True):
    total: Decimal
    available: Decimal
    locked: Decimal


class Position(msgspec.Struct, frozen=True):
    """Net base position of one account in one market. ``avg_entry_price`` is the mean
    price of the open position (0 when flat); ``realized_pnl`` excludes fees."""

    market_id: str
    size: Decimal
    avg_entry_price: Decimal
    realized_pnl: Decimal
    fees_paid: Decimal


# ------------------------------------------------------------------------------ ledger


@dataclass(slots=True)
class _Lock:
    account: str
    side: int
    asset: str
    per_lot: Decimal
    lots: int


@dataclass(slots=True)
class _Position:
    size: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)
    fees_paid: Decimal = Decimal(0)


class Ledger:
    """Balances, locks and positions of every account at the venue."""

    def __init__(self, assets: list[Asset], fees: FeeSchedule | None = None) -> None:
        self.fees = FeeSchedule() if fees is None else fees
        self._assets: dict[str, Asset] = {}
        for asset in assets:
            if asset.symbol in self._assets:
                raise InvalidSpec(f"asset {asset.symbol} is listed twice")
            self._assets[asset.symbol] = asset
        self._accounts: dict[str, Account] = {}
        self._by_address: dict[str, str] = {}
        self._total: dict[tuple[str, str], Decimal] = {}
        self._locked: dict[tuple[str, str], Decimal] = {}
        self._locks: dict[tuple[str, int], _Lock] = {}
        self._positions: dict[tuple[str, str], _Position] = {}
        self.fees_collected: dict[str, Decimal] = {s: Decimal(0) for s in self._assets}
        """Fees net of rebates per asset symbol: what the venue earned."""

    # ------------------------------------------------------------------ accounts

    @_exact
    def add_account(self, account: Account) -> None:
        """Open an account with its opening balances."""
        if account.name in self._accounts:
            raise DuplicateAccount(f"account {account.name!r} already exists")
        if account.address in self._by_address:
            raise DuplicateAccount(f"address {account.address} already belongs to an account")
        amounts = {s: self._amount(s, v) for s, v in account.balances.items()}
        self._accounts[account.name] = account
        self._by_address[account.address] = account.name
        for symbol in self._assets:
            self._total[account.name, symbol] = amounts.get(symbol, Decimal(0))
            self._locked[account.name, symbol] = Decimal(0)

    @_exact
    def deposit(self, account: str, symbol: str, amount: Decimal) -> None:
        """Credit ``amount`` (>= 0, on the asset's decimals) to the account."""
        self._account(account)
        value = self._amount(symbol, amount)
        self._total[account, symbol] += value

    def account(self, name: str) -> Account:
        return self._account(name)

    @_exact
    def balance(self, account: str, symbol: str) -> Balance:
        self._account(account)
        self._asset(symbol)
        total, locked = self._total[account, symbol], self._locked[account, symbol]
        return Balance(total=total, available=total - locked, locked=locked)

    def balances(self, account: str) -> dict[str, Balance]:
        return {symbol: self.balance(account, symbol) for symbol in self._assets}

    def position(self, account: str, market: MarketSpec) -> Position:
        self._account(account)
        pos = self._positions.get((account, market.market_id), _Position())
        return Position(
            market_id=market.market_id,
            size=pos.size,
            avg_entry_price=pos.avg_price,
            realized_pnl=pos.realized_pnl,
            fees_paid=pos.fees_paid,
        )

    @_exact
    def cosmos_balances(self, address: str) -> list[dict[str, str]]:
        """The Cosmos bank ``balances`` of an address: ``{"denom", "amount"}`` sorted by
        denom, amounts as integer strings in the smallest unit, zero balances left out.

        Funds locked by open orders are escrowed on a real chain, so this is the available
        balance. An unknown address has no balances (as on a real chain).
        """
        name = self._by_address.get(address)
        if name is None:
            return []
        out = []
        for symbol, asset in self._assets.items():
            available = self._total[name, symbol] - self._locked[name, symbol]
            if available:
                amount = int(available.scaleb(asset.decimals))
                out.append({"denom": asset.denom, "amount": str(amount)})
        out.sort(key=lambda coin: coin["denom"])
        return out

    # ------------------------------------------------------------------ orders

    @_exact
    def check_order(
        self,
        account: str,
        market: MarketSpec,
        side: int,
        price_ticks: int,
        size_lots: int,
        is_market: bool = False,
        worst_price_ticks: int | None = None,
    ) -> Decimal:
        """The amount an order would lock (quote for a buy, base for a sell).

        Raises :class:`InsufficientBalance` if the account's available balance is short.
        """
        lock = self._lock_for(
            account, market, side, price_ticks, size_lots, is_market, worst_price_ticks
        )
        return self._require(lock)

    @_exact
    def lock(
        self,
        account: str,
        market: MarketSpec,
        order_id: int,
        side: int,
        price_ticks: int,
        size_lots: int,
        is_market: bool = False,
        worst_price_ticks: int | None = None,
    ) -> Decimal:
        """Lock what the accepted order ``order_id`` may spend; returns the amount locked."""
        if (market.market_id, order_id) in self._locks:
            raise DuplicateLock(f"order {order_id} in {market.market_id} is already locked")
        lock = self._lock_for(
            account, market, side, price_ticks, size_lots, is_market, worst_price_ticks
        )
        required = self._require(lock)
        self._locks[market.market_id, order_id] = lock
        self._locked[account, lock.asset] += required
        return required

    @_exact
    def release(self, market: MarketSpec, order_id: int) -> Decimal:
        """Unlock what is still locked for an order (cancelled); 0 if nothing is."""
        lock = self._locks.pop((market.market_id, order_id), None)
        if lock is None:
            return Decimal(0)
        amount = lock.per_lot * lock.lots
        self._locked[lock.account, lock.asset] -= amount
        return amount

    @_exact
    def locked_for(self, market: MarketSpec, order_id: int) -> Decimal:
        lock = self._locks.get((market.market_id, order_id))
        return Decimal(0) if lock is None else lock.per_lot * lock.lots

    @_exact
    def settle(self, fill: Fill, market: MarketSpec) -> Decimal:
        """Book one fill: move base and quote, charge the fee in quote, release the filled
        part of the order's lock, update the position. Returns the fee (negative: rebate).

        An order without a lock pays from the available balance. :class:`SettlementError`
        (nothing booked) if the fill does not match the lock or cannot be paid.
        """
        account = fill.account
        self._account(account)
        base, quote = market.base.symbol, market.quote.symbol
        self._asset(base)
        self._asset(quote)
        if fill.side != BUY and fill.side != SELL:
            raise SettlementError(f"fill of order {fill.order_id}: side must be +1 or -1")
        if fill.size_lots <= 0 or fill.price_ticks <= 0:
            raise SettlementError(f"fill of order {fill.order_id}: price and size must be > 0")
        notional = market.notional(fill.price_ticks, fill.size_lots)
        fee = _ceil(notional * self.fees.rate(fill.liquidity) / _BPS, market.quote)
        size = market.size(fill.size_lots)

        lock = self._locks.get((market.market_id, fill.order_id))
        released = Decimal(0)
        if lock is not None:
            if lock.account != account or lock.side != fill.side:
                raise SettlementError(
                    f"fill of order {fill.order_id} ({account}, side {fill.side}) does not "
                    f"match its lock ({lock.account}, side {lock.side})"
                )
            if lock.lots != fill.size_lots + fill.remaining_lots:
                raise SettlementError(
                    f"fill of order {fill.order_id}: {fill.size_lots} + {fill.remaining_lots} "
                    f"remaining lots, but {lock.lots} lots are locked"
                )
            released = lock.per_lot * fill.size_lots

        total, locked = self._total, self._locked
        if fill.side == BUY:
            new = {
                (account, quote): (
                    total[account, quote] - notional - fee,
                    locked[account, quote] - released,
                ),
                (account, base): (total[account, base] + size, locked[account, base]),
            }
        else:
            new = {
                (account, base): (total[account, base] - size, locked[account, base] - released),
                (account, quote): (total[account, quote] + notional - fee, locked[account, quote]),
            }
        for (_, symbol), (new_total, new_locked) in new.items():
            if new_total - new_locked < 0 or new_locked < 0:
                raise SettlementError(
                    f"fill of order {fill.order_id} would leave {account!r} with "
                    f"{new_total - new_locked} {symbol} available: lock the order before "
                    "submitting it (a market buy at the worst price it can reach)"
                )
        for key, (new_total, new_locked) in new.items():
            total[key], locked[key] = new_total, new_locked
        if lock is not None:
            lock.lots -= fill.size_lots
            if not lock.lots:
                del self._locks[market.market_id, fill.order_id]
        self.fees_collected[quote] += fee
        self._update_position(account, market, fill.side, size, market.price(fill.price_ticks), fee)
        return fee

    # ------------------------------------------------------------------ internals

    def _account(self, name: str) -> Account:
        account = self._accounts.get(name)
        if account is None:
            raise UnknownAccount(f"no account {name!r}")
        return account

    def _asset(self, symbol: str) -> Asset:
        asset = self._assets.get(symbol)
        if asset is None:
            raise UnknownAsset(f"unknown asset {symbol!r}; known: {', '.join(self._assets)}")
        return asset

    def _require(self, lock: _Lock) -> Decimal:
        required = lock.per_lot * lock.lots
        available = self._total[lock.account, lock.asset] - self._locked[lock.account, lock.asset]
        if required > available:
            raise InsufficientBalance(lock.account, lock.asset, required, available)
        return required

    def _amount(self, symbol: str, amount: Decimal) -> Decimal:
        asset = self._asset(symbol)
        try:
            value = Decimal(amount)
        except (InvalidOperation, TypeError, ValueError):
            raise InvalidSpec(f"{symbol} amount {amount!r} is not a decimal number") from None
        if not value.is_finite() or value < 0:
            raise InvalidSpec(f"{symbol} amount must be >= 0, got {amount}")
        if value % asset.unit:
            raise InvalidSpec(f"{symbol} amount {amount} has more than {asset.decimals} decimals")
        return value

    def _lock_for(
        self,
        account: str,
        market: MarketSpec,
        side: int,
        price_ticks: int,
        size_lots: int,
        is_market: bool,
        worst_price_ticks: int | None,
    ) -> _Lock:
        self._account(account)
        self._asset(market.base.symbol)
        self._asset(market.quote.symbol)
        if size_lots <= 0:
            raise InvalidSpec(f"size must be at least 1 lot, got {size_lots}")
        if side == SELL:
            return _Lock(account, side, market.base.symbol, market.lot_size, size_lots)
        if side != BUY:
            raise InvalidSpec(f"side must be +1 (buy) or -1 (sell), got {side!r}")
        price = worst_price_ticks if is_market else price_ticks
        if price is None or price <= 0:
            what = "worst_price_ticks of a market buy" if is_market else "a limit price"
            raise InvalidSpec(f"{what} must be >= 1 tick, got {price}")
        # the highest rate the order can pay, so that maker and taker fills are both covered
        rate = max(self.fees.taker_bps, self.fees.maker_bps, Decimal(0))
        per_lot = _ceil(market.notional(price, 1) * (1 + rate / _BPS), market.quote)
        return _Lock(account, side, market.quote.symbol, per_lot, size_lots)

    def _update_position(
        self,
        account: str,
        market: MarketSpec,
        side: int,
        size: Decimal,
        price: Decimal,
        fee: Decimal,
    ) -> None:
        pos = self._positions.setdefault((account, market.market_id), _Position())
        pos.fees_paid += fee
        signed = size if side == BUY else -size
        if not pos.size or (pos.size > 0) == (signed > 0):
            held = abs(pos.size)
            pos.avg_price = (held * pos.avg_price + size * price) / (held + size)
            pos.size += signed
            return
        closed = min(size, abs(pos.size))
        direction = 1 if pos.size > 0 else -1
        pos.realized_pnl += closed * (price - pos.avg_price) * direction
        pos.size += signed
        if not pos.size:
            pos.avg_price = Decimal(0)
        elif (pos.size > 0) != (direction > 0):
            pos.avg_price = price  # flipped: the rest opened at this fill's price


def _ceil(amount: Decimal, asset: Asset) -> Decimal:
    return amount.quantize(asset.unit, rounding=ROUND_CEILING)
