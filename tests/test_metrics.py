"""Engine metrics: stamps folded into histograms, exposed by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flashmm.metrics import (
    LATENCY_STAGES,
    ClockWentBackwards,
    EngineMetrics,
    InvalidCapacity,
    MetricsServerError,
    QuoteUptime,
    TickClock,
    UnknownLabel,
)

T = 5_000_000_000_000  # a plausible time.monotonic_ns() value
LE = [
    "1e-06", "2e-06", "5e-06", "1e-05", "2e-05", "5e-05", "0.0001", "0.0002", "0.0005",
    "0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1.0", "+Inf",
]  # fmt: skip

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Served = tuple[EngineMetrics, int]


@pytest.fixture
def served() -> Iterator[Served]:
    """Metrics served on a free port of 127.0.0.1, and that port."""
    metrics = EngineMetrics()
    port = metrics.serve()
    yield metrics, port
    metrics.close()


def scrape(port: int) -> tuple[set[str], Samples]:
    """Family names and every sample of one GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return names, samples


def collected(metrics: EngineMetrics) -> Samples:
    """Every sample of the registry, read in-process: what a scrape would serve."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def histogram(samples: Samples, stage: str) -> tuple[list[float], float, float]:
    """Cumulative bucket counts in ``LE`` order, the sum and the count of one stage."""
    name = "flashmm_stage_latency_seconds"
    buckets = [value(samples, name + "_bucket", stage=stage, le=le) for le in LE]
    return (
        buckets,
        value(samples, name + "_sum", stage=stage),
        value(samples, name + "_count", stage=stage),
    )


def cumulative(*bucket_of_each_observation: str) -> list[float]:
    """Expected cumulative counts, from the bucket each observation was hand-placed in."""
    return [
        float(sum(LE.index(b) <= i for b in bucket_of_each_observation)) for i in range(len(LE))
    ]


def test_bucket_counts_and_sums_are_exact(served: Served) -> None:
    metrics, port = served
    clock = metrics.clock
    # decoded, book_applied, decided intervals (ns): a stamp on a bound counts in it (le).
    clock.commit(T, T + 1_000, T + 2_500, T + 702_500)  # 1 µs, 1.5 µs, 0.7 ms
    clock.commit(T, T + 999, T + 3_000, T + 2_000_003_000)  # 0.999 µs, 2.001 µs, 2 s
    clock.commit(T, T, T + 5_000, T + 1_000_005_000)  # 0, 5 µs, 1 s
    clock.order_sent(T + 10_000, T + 30_000, T)  # decided -> sent 20 µs, received -> 30 µs
    clock.order_sent(T + 10_000, T + 10_000, T)  # 0, 10 µs
    clock.acked(T + 30_000, T + 250_030_000)  # 250 ms

    assert metrics.flush() == 3 + 2 + 1
    _, samples = scrape(port)

    assert histogram(samples, "decoded") == (cumulative("1e-06", "1e-06", "1e-06"), 1999 / 1e9, 3)
    assert histogram(samples, "book_applied") == (
        cumulative("2e-06", "5e-06", "5e-06"),
        (1_500 + 2_001 + 5_000) / 1e9,
        3,
    )
    assert histogram(samples, "decided") == (
        cumulative("0.001", "+Inf", "1.0"),
        (700_000 + 2_000_000_000 + 1_000_000_000) / 1e9,
        3,
    )
    assert histogram(samples, "order_sent") == (cumulative("2e-05", "1e-06"), 20_000 / 1e9, 2)
    assert histogram(samples, "tick_to_order") == (cumulative("5e-05", "1e-05"), 40_000 / 1e9, 2)
    assert histogram(samples, "acked") == (cumulative("0.5"), 250_000_000 / 1e9, 1)


def test_every_stage_is_exposed_before_any_tick() -> None:
    metrics = EngineMetrics()
    samples = collected(metrics)
    for stage in LATENCY_STAGES:
        assert histogram(samples, stage) == ([0.0] * len(LE), 0.0, 0.0)


def test_flush_folds_each_row_once() -> None:
    metrics = EngineMetrics()
    clock = metrics.clock
    clock.commit(T, T + 1_000, T + 2_000, T + 3_000)
    clock.acked(T, T + 7_000)
    assert metrics.flush() == 2
    assert metrics.flush() == 0
    once = collected(metrics)
    assert metrics.flush() == 0
    again = collected(metrics)
    assert (
        histogram(again, "decoded")
        == histogram(once, "decoded")
        == (cumulative("1e-06"), 1_000 / 1e9, 1)
    )
    assert histogram(again, "acked")[2] == 1

    clock.commit(T, T + 3_000, T + 4_000, T + 5_000)
    assert metrics.flush() == 1
    later = collected(metrics)
    assert histogram(later, "decoded") == (cumulative("1e-06", "5e-06"), 4_000 / 1e9, 2)


def test_ring_overwrite_keeps_the_newest_rows_and_is_counted() -> None:
    metrics = EngineMetrics()
    clock = TickClock(capacity=4)  # order and ack rings hold 4 // 4 = 1 row
    metrics.clock = clock
    for k in range(1, 7):  # 6 rows into 4 slots: rows 1 and 2 are lost
        clock.commit(T, T + k * 1_000, T + k * 1_000, T + k * 1_000)
    clock.acked(T, T + 1)
    clock.acked(T, T + 2)
    assert clock.overwritten == {"tick": 2, "order": 0, "ack": 1}

    assert metrics.flush() == 4 + 1
    assert clock.overwritten == {"tick": 2, "order": 0, "ack": 1}
    samples = collected(metrics)
    # Rows 3..6: decoded after 3, 4, 5 and 6 µs.
    assert histogram(samples, "decoded") == (
        cumulative("5e-06", "5e-06", "5e-06", "1e-05"),
        18_000 / 1e9,
        4,
    )
    assert histogram(samples, "acked") == (cumulative("1e-06"), 2 / 1e9, 1)
    assert value(samples, "flashmm_latency_ring_overwrites_total", ring="tick") == 2
    assert value(samples, "flashmm_latency_ring_overwrites_total", ring="ack") == 1
    assert value(samples, "flashmm_latency_ring_overwrites_total", ring="order") == 0


def test_drain_across_the_ring_end_is_in_time_order() -> None:
    clock = TickClock(capacity=4)
    for k in range(3):
        clock.commit(T + k, T + k, T + k, T + k)
    assert clock.drain()[0][:, 0].tolist() == [T, T + 1, T + 2]
    for k in range(3, 6):  # slots 3, 0, 1
        clock.commit(T + k, T + k, T + k, T + k)
    ticks, orders, acks = clock.drain()
    assert ticks[:, 0].tolist() == [T + 3, T + 4, T + 5]
    assert orders.shape == (0, 3)
    assert acks.shape == (0, 2)
    assert clock.overwritten["tick"] == 0


def test_rows_written_in_place() -> None:
    metrics = EngineMetrics()
    clock = metrics.clock
    clock.commit(T, T, T, T)
    assert clock.slot == 1
    clock.stamps[clock.slot] = (T, T + 20_000, T + 20_000, T + 20_000)
    clock.advance()
    assert metrics.flush() == 2
    samples = collected(metrics)
    assert histogram(samples, "decoded") == (cumulative("1e-06", "2e-05"), 20_000 / 1e9, 2)


def test_rows_out_of_time_order_are_dropped_and_counted() -> None:
    metrics = EngineMetrics()
    clock = metrics.clock
    clock.commit(T, T - 1, T, T)  # decoded before received
    clock.commit(0, 1_000, 2_000, 3_000)  # received never stamped
    clock.commit(T, T + 1_000, T + 1_000, T + 1_000)
    clock.order_sent(T - 1, T + 5, T)  # decided before received
    clock.order_sent(T + 5, T + 4, T)  # sent before decided
    clock.acked(T + 5, T + 4)
    assert metrics.flush() == 1
    samples = collected(metrics)
    assert histogram(samples, "decoded")[2] == 1
    assert histogram(samples, "order_sent")[2] == 0
    assert histogram(samples, "acked")[2] == 0
    invalid = "flashmm_latency_rows_invalid_total"
    assert value(samples, invalid, ring="tick") == 2
    assert value(samples, invalid, ring="order") == 2
    assert value(samples, invalid, ring="ack") == 1


@pytest.mark.parametrize("capacity", [0, -1, 2.5, True, "8"])
def test_bad_capacity_is_refused(capacity: object) -> None:
    with pytest.raises(InvalidCapacity, match="integer >= 1"):
        TickClock(capacity)  # type: ignore[arg-type]


def test_quote_uptime_arithmetic() -> None:
    uptime = QuoteUptime(start_ns=1_000)
    assert uptime.ratio("SEI/USDC", "buy", 1_000) == 0.0
    uptime.set_live("SEI/USDC", "buy", True, 1_000)
    assert uptime.ratio("SEI/USDC", "buy", 1_000) == 1.0  # no time elapsed: the state now
    uptime.set_live("SEI/USDC", "buy", True, 1_300)  # already live: the stretch goes on
    uptime.set_live("SEI/USDC", "buy", False, 1_600)
    uptime.set_live("SEI/USDC", "buy", False, 1_700)
    uptime.set_live("SEI/USDC", "buy", True, 1_800)
    assert uptime.ratio("SEI/USDC", "buy", 2_000) == (600 + 200) / 1_000
    assert uptime.ratio("SEI/USDC", "buy", 1_800) == 600 / 800
    uptime.set_live("SEI/USDC", "sell", False, 1_500)
    assert uptime.ratio("SEI/USDC", "sell", 2_000) == 0.0
    assert uptime.ratio("ETH/USDC", "buy", 2_000) == 0.0
    assert sorted(uptime.pairs()) == [("SEI/USDC", "buy"), ("SEI/USDC", "sell")]


def test_quote_uptime_refuses_bad_input_and_changes_nothing() -> None:
    uptime = QuoteUptime(start_ns=1_000)
    uptime.set_live("SEI/USDC", "buy", True, 1_500)
    with pytest.raises(ClockWentBackwards, match="monotonic_ns"):
        uptime.set_live("SEI/USDC", "buy", False, 1_499)
    with pytest.raises(ClockWentBackwards):
        uptime.set_live("ETH/USDC", "buy", True, 999)
    with pytest.raises(UnknownLabel, match="expected one of buy, sell"):
        uptime.set_live("SEI/USDC", "bid", True, 1_600)
    assert uptime.ratio("SEI/USDC", "buy", 2_000) == 500 / 1_000
    assert uptime.pairs() == [("SEI/USDC", "buy")]


def test_quote_uptime_gauges_are_set_at_the_given_time() -> None:
    metrics = EngineMetrics()
    metrics.uptime = QuoteUptime(start_ns=T)
    metrics.uptime.set_live("SEI/USDC", "buy", True, T)
    metrics.uptime.set_live("SEI/USDC", "buy", False, T + 100)
    metrics.uptime.set_live("SEI/USDC", "sell", True, T + 250)
    metrics.uptime.set_live("SEI/USDC", "sell", False, T + 750)
    metrics.update_quote_uptime(T + 1_000)
    ratio = "flashmm_quote_uptime_ratio"
    samples = collected(metrics)
    assert value(samples, ratio, market="SEI/USDC", side="buy") == 100 / 1_000
    assert value(samples, ratio, market="SEI/USDC", side="sell") == 500 / 1_000

    with pytest.raises(ClockWentBackwards):
        metrics.update_quote_uptime(T + 500)  # before the sell side's last change
    # Nothing moved, not even the buy side (whose ratio at T + 500 would be 0.2).
    assert value(collected(metrics), ratio, market="SEI/USDC", side="buy") == 100 / 1_000
    assert value(collected(metrics), ratio, market="SEI/USDC", side="sell") == 500 / 1_000


def test_every_metric_is_in_a_scrape(served: Served) -> None:
    metrics, port = served
    metrics.add_market("SEI/USDC")
    metrics.feed_events.labels("SEI/USDC", "gap").inc()
    metrics.orders.labels("SEI/USDC", "buy").inc(3)
    metrics.cancels.labels("SEI/USDC", "venue").inc()
    metrics.fills.labels("SEI/USDC", "sell", "maker").inc()
    metrics.rejects.labels("SEI/USDC", "INSUFFICIENT_BALANCE").inc()
    metrics.venue_failures.labels("rate_limited").inc()
    metrics.risk_transitions.labels("paused").inc()
    metrics.book_staleness.labels("SEI/USDC").set(0.25)
    metrics.order_to_fill.labels("SEI/USDC").set(3.0)
    metrics.inventory.labels("SEI/USDC").set(-12.5)
    metrics.pnl.labels("SEI/USDC", "net").set(4.5)
    metrics.pnl.labels("total", "net").set(4.5)
    metrics.open_orders.labels("SEI/USDC", "buy").set(2)
    metrics.breaker_state.set(1)
    metrics.markout.labels("SEI/USDC", "5s").set(-1.5)
    metrics.set_risk_state("paused")
    names, samples = scrape(port)

    assert {
        "flashmm_stage_latency_seconds",
        "flashmm_feed_events",
        "flashmm_orders",
        "flashmm_cancels",
        "flashmm_fills",
        "flashmm_rejects",
        "flashmm_venue_failures",
        "flashmm_risk_transitions",
        "flashmm_book_staleness_seconds",
        "flashmm_quote_uptime_ratio",
        "flashmm_order_to_fill_ratio",
        "flashmm_inventory",
        "flashmm_pnl",
        "flashmm_risk_state",
        "flashmm_risk_state_info",
        "flashmm_open_orders",
        "flashmm_venue_breaker_open",
        "flashmm_markout_bps",
        "process_resident_memory_bytes",
    } <= names
    assert value(samples, "flashmm_feed_events_total", market="SEI/USDC", event="gap") == 1
    assert value(samples, "flashmm_feed_events_total", market="SEI/USDC", event="stale") == 0
    assert value(samples, "flashmm_orders_total", market="SEI/USDC", side="buy") == 3
    assert value(samples, "flashmm_orders_total", market="SEI/USDC", side="sell") == 0
    assert value(samples, "flashmm_cancels_total", market="SEI/USDC", origin="venue") == 1
    assert value(samples, "flashmm_cancels_total", market="SEI/USDC", origin="own") == 0
    fills = "flashmm_fills_total"
    assert value(samples, fills, market="SEI/USDC", side="sell", liquidity="maker") == 1
    assert value(samples, fills, market="SEI/USDC", side="buy", liquidity="taker") == 0
    rejects = "flashmm_rejects_total"
    assert value(samples, rejects, market="SEI/USDC", code="INSUFFICIENT_BALANCE") == 1
    assert value(samples, "flashmm_venue_failures_total", kind="rate_limited") == 1
    assert value(samples, "flashmm_venue_failures_total", kind="breaker_open") == 0
    assert value(samples, "flashmm_risk_transitions_total", to_state="paused") == 1
    assert value(samples, "flashmm_risk_transitions_total", to_state="halted") == 0
    assert value(samples, "flashmm_book_staleness_seconds", market="SEI/USDC") == 0.25
    assert value(samples, "flashmm_quote_uptime_ratio", market="SEI/USDC", side="sell") == 0
    assert value(samples, "flashmm_order_to_fill_ratio", market="SEI/USDC") == 3.0
    assert value(samples, "flashmm_inventory", market="SEI/USDC") == -12.5
    assert value(samples, "flashmm_pnl", market="SEI/USDC", kind="net") == 4.5
    assert value(samples, "flashmm_pnl", market="SEI/USDC", kind="fees") == 0
    assert value(samples, "flashmm_pnl", market="total", kind="net") == 4.5
    assert value(samples, "flashmm_open_orders", market="SEI/USDC", side="buy") == 2
    assert value(samples, "flashmm_venue_breaker_open") == 1
    assert value(samples, "flashmm_markout_bps", market="SEI/USDC", horizon="5s") == -1.5
    assert value(samples, "flashmm_risk_state") == 2
    assert value(samples, "flashmm_risk_state_info", state="paused") == 1
    assert value(samples, "flashmm_risk_state_info", state="active") == 0


def test_risk_state_gauges_move_together() -> None:
    metrics = EngineMetrics()
    state = metrics.registry.get_sample_value
    assert state("flashmm_risk_state") == 0
    assert state("flashmm_risk_state_info", {"state": "active"}) == 1
    metrics.set_risk_state("flattened")
    with pytest.raises(UnknownLabel, match="unknown risk state 'stopped'"):
        metrics.set_risk_state("stopped")
    assert state("flashmm_risk_state") == 4
    assert state("flashmm_risk_state_info", {"state": "flattened"}) == 1
    assert state("flashmm_risk_state_info", {"state": "active"}) == 0


def test_the_pnl_total_market_name_is_reserved() -> None:
    metrics = EngineMetrics()
    with pytest.raises(UnknownLabel, match="reserved"):
        metrics.add_market("total")
    assert (
        metrics.registry.get_sample_value(
            "flashmm_orders_total", {"market": "total", "side": "buy"}
        )
        is None
    )


def test_two_instances_have_separate_registries() -> None:
    first, second = EngineMetrics(), EngineMetrics()
    first.clock.commit(T, T + 1, T + 2, T + 3)
    first.flush()
    count = "flashmm_stage_latency_seconds_count"
    assert first.registry.get_sample_value(count, {"stage": "decoded"}) == 1
    assert second.registry.get_sample_value(count, {"stage": "decoded"}) == 0


def test_server_lifecycle() -> None:
    metrics = EngineMetrics()
    port = metrics.serve()
    try:
        with pytest.raises(MetricsServerError, match="already served"):
            metrics.serve()
        other = EngineMetrics()
        with pytest.raises(MetricsServerError, match="choose a free port"):
            other.serve(port=port)
        other.close()  # never started: nothing to do
    finally:
        metrics.close()
    metrics.close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass


def test_recent_latency_percentiles_cover_the_latest_samples_only() -> None:
    metrics = EngineMetrics()
    assert metrics.recent_latency_ms() == {}
    clock = metrics.clock
    # 2000 decisions of 1 ms, then the newest 1024 kept window: 24 old ones drop out
    for k in range(2000):
        clock.commit(T, T, T, T + 5_000_000)  # an old, slow decision: 5 ms
        if k % 500 == 499:
            metrics.flush()
    for _ in range(1024):
        clock.commit(T, T, T, T + 1_000_000)  # 1 ms
    metrics.flush()
    recent = metrics.recent_latency_ms()
    assert recent["decided_p50"] == recent["decided_p99"] == 1.0
    assert all(type(v) is float for v in recent.values())  # msgpack-able, not numpy
    assert recent["decoded_p95"] == 0.0
    assert "acked_p50" not in recent  # no sample yet: no figure
