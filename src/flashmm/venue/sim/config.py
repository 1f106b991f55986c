"""The simulator's configuration: a TOML file over named defaults, checked before start.

``flashmm sim`` with no file runs :func:`default_config`: two thin synthetic Sei-like
markets (``SEI/USDC``, ``ETH/USDC``) and a replay of the packaged real BTC/USDT sample,
one funded ``demo`` account and one ``other`` account. A file replaces whole sections
it names (``markets``, ``accounts``, ...) and keeps the defaults of the others.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import msgspec

from flashmm._toml import read_toml
from flashmm.venue.sim.synthetic import SyntheticParams

__all__ = [
    "AccountConfig",
    "AssetConfig",
    "FeeConfig",
    "FeedConfig",
    "MarketConfig",
    "RateLimitConfig",
    "ReplayConfig",
    "ScheduledFault",
    "ServerConfig",
    "SimConfig",
    "SimConfigError",
    "default_config",
    "load_config",
]

SAMPLE_PREFIX = "sample:"


class SimConfigError(ValueError):
    """A configuration file that cannot run; the message names the field."""


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    market_data_port: int = 0  # 0: any free port (the ready file tells which)
    order_entry_port: int = 0
    max_request_bytes: int = 64 * 1024
    stream_journal_events: int = 10_000  # per account, resent on ``/v1/stream?since=``


class FeedConfig(_Section):
    snapshot_interval_s: float = 5.0  # periodic OrderBookUpdate snapshots; 0 = none


class FeeConfig(_Section):
    maker_bps: float = 0.0  # negative: a rebate
    taker_bps: float = 5.0


class RateLimitConfig(_Section):
    orders_per_second: int = 200  # per account and moving one-second window, over order requests


class AssetConfig(_Section):
    symbol: str
    denom: str
    decimals: int = 6


class ReplayConfig(_Section):
    file: str = "sample:btcusdt_spot_20240808"  # a .npz path, or sample:<name>
    speed: float = 1.0  # 1 = real time, 10 = ten times faster, 0 = as fast as possible
    loop: bool = True  # start over (with a fresh snapshot) at the end


class MarketConfig(_Section):
    market_id: str
    base: str
    quote: str
    tick_size: str
    lot_size: str
    source: Literal["synthetic", "replay"] = "synthetic"
    synthetic: SyntheticParams = SyntheticParams()
    replay: ReplayConfig = ReplayConfig()
    status: Literal["open", "halted", "closed"] = "open"


class AccountConfig(_Section):
    name: str
    api_key: str
    address: str
    balances: dict[str, str] = {}


class ScheduledFault(_Section):
    at_s: float  # seconds after start
    fault: str
    params: dict[str, Any] = {}


class SimConfig(_Section):
    seed: int = 7
    self_trade_prevention: Literal["cancel_resting", "cancel_taking", "cancel_both"] = (
        "cancel_resting"
    )
    server: ServerConfig = ServerConfig()
    feed: FeedConfig = FeedConfig()
    fees: FeeConfig = FeeConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    assets: list[AssetConfig] = []
    markets: list[MarketConfig] = []
    accounts: list[AccountConfig] = []
    faults: list[ScheduledFault] = []

    def market(self, market_id: str) -> MarketConfig:
        for m in self.markets:
            if m.market_id == market_id:
                return m
        raise KeyError(market_id)


def default_config() -> SimConfig:
    """Two thin synthetic Sei-like markets, one replayed real market, two accounts."""
    return SimConfig(
        assets=[
            AssetConfig(symbol="SEI", denom="usei", decimals=6),
            AssetConfig(symbol="USDC", denom="uusdc", decimals=6),
            AssetConfig(symbol="ETH", denom="wei", decimals=18),
            AssetConfig(symbol="BTC", denom="sat", decimals=8),
            AssetConfig(symbol="USDT", denom="usdt", decimals=8),
        ],
        markets=[
            MarketConfig(
                market_id="SEI/USDC",
                base="SEI",
                quote="USDC",
                tick_size="0.0001",
                lot_size="1",
                synthetic=SyntheticParams(seed=11, initial_price_ticks=4000),
            ),
            MarketConfig(
                market_id="ETH/USDC",
                base="ETH",
                quote="USDC",
                tick_size="0.01",
                lot_size="0.001",
                synthetic=SyntheticParams(
                    seed=12,
                    initial_price_ticks=300_000,
                    volatility_ticks_per_sqrt_s=20.0,
                    depth_decay=0.05,
                    limit_size_mean_lots=500.0,
                    market_size_mean_lots=200.0,
                ),
            ),
            MarketConfig(
                market_id="BTC/USDT",
                base="BTC",
                quote="USDT",
                tick_size="0.01",
                lot_size="0.000001",
                source="replay",
            ),
        ],
        accounts=[
            AccountConfig(
                name="demo",
                api_key="demo-key",
                address="sei1demo0000000000000000000000000000000000",
                balances={
                    "SEI": "1000000",
                    "USDC": "1000000",
                    "ETH": "100",
                    "BTC": "10",
                    "USDT": "1000000",
                },
            ),
            AccountConfig(
                name="other",
                api_key="other-key",
                address="sei1other000000000000000000000000000000000",
                balances={
                    "SEI": "100000",
                    "USDC": "100000",
                    "ETH": "10",
                    "BTC": "1",
                    "USDT": "100000",
                },
            ),
        ],
    )


def load_config(path: str | Path | None) -> SimConfig:
    """The default configuration, with the sections of the TOML file at ``path`` over it."""
    base = default_config()
    if path is None:
        return check_config(base)
    path = Path(path)
    data = read_toml(path, SimConfigError)
    merged = msgspec.to_builtins(base) | data
    try:
        config = msgspec.convert(merged, SimConfig)
    except msgspec.ValidationError as exc:
        raise SimConfigError(f"{path}: {exc}") from None
    try:
        return check_config(config)
    except SimConfigError as exc:
        raise SimConfigError(f"{path}: {exc}") from None


def _decimal(text: str, where: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise SimConfigError(f"{where} = {text!r} is not a decimal number") from None
    if not value.is_finite() or value <= 0:
        raise SimConfigError(f"{where} = {text!r} must be a positive decimal")
    return value


def check_config(config: SimConfig) -> SimConfig:
    """Cross-field checks that types alone cannot express; returns ``config``."""
    if not config.markets:
        raise SimConfigError("no markets configured")
    assets = {a.symbol: a for a in config.assets}
    if len(assets) != len(config.assets):
        raise SimConfigError("assets: a symbol is listed twice")
    seen: set[str] = set()
    for i, m in enumerate(config.markets):
        where = f"markets[{i}] ({m.market_id})"
        if m.market_id in seen:
            raise SimConfigError(f"{where}: market_id listed twice")
        seen.add(m.market_id)
        if not m.market_id or "'" in m.market_id or m.market_id.strip() != m.market_id:
            raise SimConfigError(f"{where}: market_id must be non-empty, without quotes or spaces")
        for role in ("base", "quote"):
            if getattr(m, role) not in assets:
                raise SimConfigError(f"{where}.{role}: unknown asset {getattr(m, role)!r}")
        _decimal(m.tick_size, f"{where}.tick_size")
        _decimal(m.lot_size, f"{where}.lot_size")
        if m.source == "replay" and not m.replay.speed >= 0:
            raise SimConfigError(f"{where}.replay.speed must be >= 0")
    keys: set[str] = set()
    for i, a in enumerate(config.accounts):
        where = f"accounts[{i}] ({a.name})"
        if a.api_key in keys:
            raise SimConfigError(f"{where}: api_key used twice")
        keys.add(a.api_key)
        for symbol, amount in a.balances.items():
            if symbol not in assets:
                raise SimConfigError(f"{where}.balances: unknown asset {symbol!r}")
            try:
                value = Decimal(amount)
            except InvalidOperation:
                value = Decimal(-1)
            if not value.is_finite() or value < 0:
                raise SimConfigError(f"{where}.balances.{symbol} = {amount!r} must be >= 0")
    if config.feed.snapshot_interval_s < 0:
        raise SimConfigError("feed.snapshot_interval_s must be >= 0")
    if config.rate_limit.orders_per_second <= 0:
        raise SimConfigError("rate_limit.orders_per_second must be > 0")
    return config
