"""Engine settings: one TOML file over named defaults, then ``FLASHMM_*`` environment overrides.

An override names its key path with double underscores, and its value is read as a TOML
value (falling back to a plain string)::

    FLASHMM_RISK__MAX_DRAWDOWN=0.03
    FLASHMM_VENUE__API_KEY=secret
    FLASHMM_VENUE__MARKET_DATA_URLS='["ws://a:8080/websocket", "ws://b:8080/websocket"]'

Everything is validated at start; an error names the file or variable and the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from flashmm._core.quoting import QuoteParams
from flashmm._toml import read_toml
from flashmm.engine.orders import OrderSettings
from flashmm.engine.risk import RiskSettings
from flashmm.venue.feed import FeedConfigError, FeedMarket, FeedSettings, FeedTuning
from flashmm.venue.gateway import GatewayTuning

__all__ = [
    "ENV_PREFIX",
    "ApiSection",
    "ConfigError",
    "EngineConfig",
    "EngineSection",
    "FeedSection",
    "GatewaySection",
    "MarketConfig",
    "RateLimitSection",
    "StateSection",
    "VenueSection",
    "load_config",
]

ENV_PREFIX = "FLASHMM_"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names where and which key."""


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class EngineSection(_Section):
    name: str = "flashmm"
    journal: str = "flashmm-journal.sqlite3"
    """SQLite journal of every order and fill; relative paths are from the working directory."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100
    """Prometheus ``/metrics`` port (0: any free port; the ready file tells which)."""
    decide_hz: float = 5.0
    """Decisions per second per market when the book is quiet; top-of-book changes also decide."""
    reconcile_interval_s: float = 10.0
    risk_interval_s: float = 1.0
    shutdown_timeout_s: float = 5.0
    """How long SIGTERM waits for the venue to confirm that quotes are cancelled."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"


class VenueSection(_Section):
    market_data_urls: list[str] = msgspec.field(
        default_factory=lambda: ["ws://127.0.0.1:8080/websocket"]
    )
    """The primary first, then backups in failover order."""
    rest_url: str = "http://127.0.0.1:8081"
    stream_url: str = "ws://127.0.0.1:8081/v1/stream"
    api_key: str = "demo-key"
    address: str = "sei1demo0000000000000000000000000000000000"
    """The account's bank address, for balances."""


class FeedSection(FeedTuning):
    """:class:`flashmm.venue.feed.FeedSettings` without the URLs and markets.

    The fields and struct options are :class:`~flashmm.venue.feed.FeedTuning`'s (the same
    as :class:`_Section`'s); their rules are checked through ``FeedSettings`` in ``_check``.
    """


class GatewaySection(GatewayTuning, frozen=True):
    """:class:`flashmm.venue.gateway.GatewaySettings` without the venue's addresses.

    The fields are :class:`~flashmm.venue.gateway.GatewayTuning`'s; frozen like every
    section (the gateway's own settings are not).
    """


class StateSection(_Section):
    """Where the engine publishes its state and reads commands (Redis)."""

    redis_url: str = ""
    """``redis://host:port/db``; empty: an embedded Valkey server in ``run_dir``."""
    prefix: str = "flashmm"
    """Prefix of every key and channel, so deployments can share one server."""
    run_dir: str = ".flashmm"
    """The embedded server's files and ``redis.url``, where the sidecar and CLI find it."""
    flush_hz: float = 10.0
    """Latest-state flushes per second."""
    history_maxlen: int = 10_000
    """Events kept per live channel for WebSocket resume (approximate trim)."""
    stream_maxlen: int = 100_000
    """Entries kept in the order and fill history streams (approximate trim)."""
    max_pending_events: int = 10_000
    """Events held while Redis is slow or down; older ones are dropped and counted."""
    heartbeat_timeout_s: float = 3.0
    """The sidecar calls the engine unavailable once its heartbeat is older than this."""


class RateLimitSection(_Section):
    """Requests per client address and endpoint group, in ``limits`` notation."""

    health: str = "100/minute"
    trading: str = "60/minute"
    metrics: str = "30/minute"
    admin: str = "10/minute"


class ApiSection(_Section):
    """The ``flashmm api`` sidecar."""

    host: str = "127.0.0.1"
    port: int = 8000
    """0: any free port (the ready file tells which)."""
    jwt_secret: str = ""
    """HS secret of the bearer tokens; set it with ``FLASHMM_API__JWT_SECRET``, never in git.
    The sidecar refuses to start without one (``flashmm demo`` makes one up)."""
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    token_ttl_s: int = 3600
    cors_origins: list[str] = []
    """Origins allowed to call the API from a browser; empty: none but the same origin."""
    max_body_bytes: int = 16_384
    command_timeout_s: float = 30.0
    """How long an admin request waits for the engine's answer before 504."""
    ws_max_per_ip: int = 10
    ws_heartbeat_s: float = 30.0
    ws_send_queue: int = 256
    """Messages queued for one WebSocket client; a client that falls further behind is
    dropped with a close reason instead of slowing the others."""
    rate_limits: RateLimitSection = RateLimitSection()


class MarketConfig(_Section):
    market_id: str
    quoting: dict[str, Any] = {}
    """Overrides of ``[quoting]`` for this market only."""
    enabled: bool = True


class EngineConfig(_Section):
    engine: EngineSection = EngineSection()
    venue: VenueSection = VenueSection()
    feed: FeedSection = FeedSection()
    gateway: GatewaySection = GatewaySection()
    orders: OrderSettings = OrderSettings()
    risk: RiskSettings = RiskSettings()
    quoting: QuoteParams = QuoteParams()
    state: StateSection = StateSection()
    api: ApiSection = ApiSection()
    model: str = ""
    """Model file (JSON) for the predictor; empty: the packaged default model."""
    markets: list[MarketConfig] = msgspec.field(
        default_factory=lambda: [
            MarketConfig(market_id="SEI/USDC"),
            MarketConfig(market_id="ETH/USDC"),
        ]
    )

    def market_quoting(self, market: MarketConfig) -> QuoteParams:
        """``[quoting]`` with the market's own overrides over it."""
        if not market.quoting:
            return self.quoting
        merged = msgspec.to_builtins(self.quoting) | market.quoting
        return _convert(merged, QuoteParams, f"markets[{market.market_id}].quoting")

    @property
    def enabled_markets(self) -> list[MarketConfig]:
        return [m for m in self.markets if m.enabled]


def _convert(data: Any, kind: type[Any], where: str) -> Any:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ValueError as exc:  # a __post_init__ check
        raise ConfigError(f"{where}: {exc}") from None


# Variables of the flashmm command itself, not settings.
_NOT_SETTINGS = frozenset({"FLASHMM_CONFIG"})


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a plain string


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Set each ``FLASHMM_A__B=v`` as ``data[a][b] = v``; returns the variables used."""
    used = []
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"{name}: empty key in the variable name")
        node = data
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {key!r} is not a table, cannot set {path[-1]!r} in it")
            node = child
        node[path[-1]] = _env_value(text)
        used.append(name)
    return used


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> EngineConfig:
    """Defaults, then the TOML file at ``path``, then ``FLASHMM_*`` variables of ``environ``."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        data = read_toml(path, ConfigError)
    used = _apply_env(data, os.environ if environ is None else environ)
    if used:
        where = f"{where} with {', '.join(used)}"
    config: EngineConfig = _convert(data, EngineConfig, where)
    _check(config, where)
    return config


def _check(config: EngineConfig, where: str) -> None:
    """Cross-field rules that types alone do not express."""
    markets = config.enabled_markets
    if not markets:
        raise ConfigError(f"{where}: markets: no enabled market")
    ids = [m.market_id for m in config.markets]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: markets: a market_id is listed twice")
    for market in markets:
        try:
            config.market_quoting(market)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    e = config.engine
    if not e.decide_hz > 0:
        raise ConfigError(f"{where}: engine.decide_hz must be > 0")
    for name in ("reconcile_interval_s", "risk_interval_s", "shutdown_timeout_s"):
        if not getattr(e, name) > 0:
            raise ConfigError(f"{where}: engine.{name} must be > 0")
    if not 0 <= e.metrics_port <= 65535:
        raise ConfigError(f"{where}: engine.metrics_port must be within 0..65535")
    st = config.state
    if not st.flush_hz > 0:
        raise ConfigError(f"{where}: state.flush_hz must be > 0")
    if st.redis_url and not st.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{where}: state.redis_url must be a redis:// URL, got {st.redis_url!r}")
    for name in ("history_maxlen", "stream_maxlen", "max_pending_events"):
        if not getattr(st, name) > 0:
            raise ConfigError(f"{where}: state.{name} must be > 0")
    a = config.api
    if not 0 <= a.port <= 65535:
        raise ConfigError(f"{where}: api.port must be within 0..65535")
    for name in (
        "token_ttl_s",
        "max_body_bytes",
        "command_timeout_s",
        "ws_max_per_ip",
        "ws_heartbeat_s",
        "ws_send_queue",
    ):
        if not getattr(a, name) > 0:
            raise ConfigError(f"{where}: api.{name} must be > 0")
    v = config.venue
    if not v.market_data_urls:
        raise ConfigError(f"{where}: venue.market_data_urls must list at least one URL")
    for url in v.market_data_urls:
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{where}: venue.market_data_urls: {url!r} is not a ws:// URL")
    if not v.rest_url.startswith("http://"):
        raise ConfigError(f"{where}: venue.rest_url must be an http:// URL, got {v.rest_url!r}")
    if not v.stream_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"{where}: venue.stream_url must be a ws:// URL, got {v.stream_url!r}")
    try:  # the feed's own rules, on the section's values (URLs and markets checked above)
        FeedSettings(
            urls=list(v.market_data_urls),
            rest_url=v.rest_url,
            markets=[FeedMarket("-", 1.0, 1.0)],
            **msgspec.structs.asdict(config.feed),
        )
    except FeedConfigError as exc:
        raise ConfigError(f"{where}: feed.{exc}") from None
    if config.model and not Path(config.model).is_file():
        raise ConfigError(f"{where}: model: no such file {config.model!r}")
