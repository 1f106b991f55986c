"""``/metrics`` (Prometheus text, from the engine's published state) and ``/metrics/trading``.

The engine serves its own detailed Prometheus port; these are the specification's summary
metrics, computed from what the engine publishes, so one scrape of the sidecar is enough
for the dashboards of the specification.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flashmm.api._clock import now_ns, rfc3339_now
from flashmm.api._context import Ctx, guard
from flashmm.api._models import MarketMetrics, TradingMetrics, TradingTotals, error_responses
from flashmm.api._state import EngineView
from flashmm.state.schema import MarketSnapshot

__all__ = ["router", "spread_improvement_bps"]

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["metrics"], responses=error_responses(401, 403, 429, 503))
MetricsAccess = Annotated[object, Depends(guard("metrics", "read"))]


def spread_improvement_bps(snap: MarketSnapshot) -> float | None:
    """How much tighter the market is with this engine's orders than without them."""
    if snap.outside_spread_bps is None or snap.spread_bps is None:
        return None
    return snap.outside_spread_bps - snap.spread_bps


class _StateCollector(Collector):
    """Renders one read of the engine state; built per scrape."""

    def __init__(
        self, view: EngineView, snapshots: dict[str, MarketSnapshot], ws_connections: int
    ) -> None:
        self._view = view
        self._snapshots = snapshots
        self._ws = ws_connections

    def collect(self) -> Iterator[Metric]:
        view, state = self._view, self._view.state
        yield GaugeMetricFamily(
            "flashmm_engine_up",
            "1 while the engine publishes a fresh heartbeat, else 0.",
            value=1.0 if view.available else 0.0,
        )
        yield GaugeMetricFamily(
            "flashmm_api_websocket_clients",
            "WebSocket clients of this sidecar process.",
            value=float(self._ws),
        )
        if view.heartbeat_age_s is not None:
            yield GaugeMetricFamily(
                "flashmm_engine_heartbeat_age_seconds",
                "Age of the engine's last heartbeat.",
                value=view.heartbeat_age_s,
            )
        if state is None or not view.available:
            return  # stale numbers would look live on a graph
        yield CounterMetricFamily(
            "flashmm_predictions",
            "Total number of ML predictions made",
            value=float(state.counters.predictions),
        )
        if state.model.accuracy is not None:
            yield GaugeMetricFamily(
                "flashmm_prediction_accuracy",
                "Accuracy of ML predictions",
                value=state.model.accuracy,
            )
        improvement = GaugeMetricFamily(
            "flashmm_spread_improvement_bps",
            "Current spread improvement in basis points",
            labels=["market"],
        )
        spread = GaugeMetricFamily(
            "flashmm_spread_bps", "Current venue spread in basis points", labels=["market"]
        )
        position = GaugeMetricFamily(
            "flashmm_position_usdc", "Position value in the quote currency", labels=["market"]
        )
        pnl = GaugeMetricFamily(
            "flashmm_daily_pnl_usdc", "Net PnL since the start of the UTC day", labels=["market"]
        )
        quoting = GaugeMetricFamily(
            "flashmm_quoting", "1 while both allowed sides are live", labels=["market"]
        )
        for symbol, snap in self._snapshots.items():
            if (value := spread_improvement_bps(snap)) is not None:
                improvement.add_metric([symbol], value)
            if snap.spread_bps is not None:
                spread.add_metric([symbol], snap.spread_bps)
            position.add_metric([symbol], snap.position.position_usdc)
            pnl.add_metric([symbol], snap.daily_pnl)
            quoting.add_metric([symbol], 1.0 if snap.quoting else 0.0)
        yield from (improvement, spread, position, pnl, quoting)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_TEXT: {}}, "description": "Prometheus text."}},
    summary="Prometheus exposition of the specification's metrics",
)
async def prometheus(ctx: Ctx, _: MetricsAccess) -> Response:
    read = await ctx.state.current()
    view, snaps = ctx.state.view(read), read.snapshots
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StateCollector(view, snaps, ctx.hub.connections))
    return Response(generate_latest(registry), media_type=PROMETHEUS_TEXT)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@router.get(
    "/metrics/trading",
    response_model=TradingMetrics,
    summary="Trading metrics in JSON, in total and per market",
)
async def trading_metrics(ctx: Ctx, _: MetricsAccess) -> TradingMetrics:
    state, read = await ctx.state.require_engine()
    snaps = read.snapshots
    uptime_s = max(0.0, (now_ns() - state.started_ns) / 1e9)
    quoted = [s.quote.spread_bps for s in snaps.values() if s.quote and s.quote.spread_bps]
    improvements = [
        (s.outside_spread_bps - s.spread_bps) / s.outside_spread_bps * 100
        for s in snaps.values()
        if s.outside_spread_bps and s.spread_bps is not None
    ]
    return TradingMetrics(
        timestamp=rfc3339_now(),
        metrics=TradingTotals(
            total_volume_usdc=state.portfolio.volume,
            total_trades=state.counters.fills,
            average_spread_bps=_mean(quoted),
            spread_improvement_percent=_mean(improvements),
            maker_fee_earned_usdc=-state.portfolio.fees,
            prediction_accuracy=state.model.accuracy,
            system_uptime_seconds=int(uptime_s),
            orders_per_minute=state.counters.orders_placed / (uptime_s / 60) if uptime_s else 0.0,
            latency_p95_ms=state.latency_ms.get("acked_p95"),
        ),
        by_market={
            symbol: MarketMetrics(
                volume_usdc=snap.position.volume_usdc,
                trades=snap.fills,
                spread_bps=snap.quote.spread_bps if snap.quote else None,
                position_usdc=snap.position.position_usdc,
                pnl_usdc=snap.position.pnl_usdc,
            )
            for symbol, snap in snaps.items()
        },
        latency_ms=state.latency_ms,
    )
