"""Redis key and channel names shared by the engine and the sidecar.

Everything lives under one prefix (``flashmm`` by default) so that several deployments
can share a server.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["LIVE_CHANNELS", "Keys", "LiveChannel"]

LiveChannel = Literal["trading", "positions", "predictions", "orders", "fills", "alerts"]
LIVE_CHANNELS: tuple[LiveChannel, ...] = (
    "trading",
    "positions",
    "predictions",
    "orders",
    "fills",
    "alerts",
)
"""The channels of ``WS /ws/live-metrics``; each has a history stream with sequence numbers."""


class Keys(msgspec.Struct, frozen=True):
    """Every key the two processes agree on."""

    prefix: str = "flashmm"

    @property
    def engine(self) -> str:
        """Latest engine state (:class:`~flashmm.state.schema.EngineState`), with heartbeat."""
        return f"{self.prefix}:engine"

    def snapshot(self, symbol: str) -> str:
        """Latest state of one market (:class:`~flashmm.state.schema.MarketSnapshot`)."""
        return f"{self.prefix}:snapshot:{symbol}"

    def channel(self, kind: str, symbol: str) -> str:
        """Pub/sub channel ``{prefix}:{kind}:{symbol}``, e.g. ``flashmm:fills:SEI/USDC``."""
        return f"{self.prefix}:{kind}:{symbol}"

    @property
    def alerts(self) -> str:
        """Pub/sub channel of alerts (not per market)."""
        return f"{self.prefix}:alerts"

    def history(self, channel: LiveChannel) -> str:
        """Trimmed stream of one live channel's events, each with its sequence number."""
        return f"{self.prefix}:history:{channel}"

    @property
    def stream_orders(self) -> str:
        return f"{self.prefix}:stream:orders"

    @property
    def stream_fills(self) -> str:
        return f"{self.prefix}:stream:fills"

    @property
    def commands(self) -> str:
        """Stream sidecar -> engine of :class:`~flashmm.state.schema.Command`."""
        return f"{self.prefix}:commands"

    @property
    def command_results(self) -> str:
        """Stream engine -> sidecar of :class:`~flashmm.state.schema.CommandResult`."""
        return f"{self.prefix}:command_results"

    @property
    def audit(self) -> str:
        """Stream of :class:`~flashmm.state.schema.AuditEntry`, one per admin action."""
        return f"{self.prefix}:audit"

    def rate_limit_prefix(self) -> str:
        """Prefix of the sidecar's shared rate-limit counters."""
        return f"{self.prefix}:ratelimit"
