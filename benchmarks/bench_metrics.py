"""Stage-latency recording: the hot path's ``TickClock.commit`` against the obvious
``Histogram.observe`` per stage, side by side in one run.

- ``commit``: one tick's four stamps into the ring (the hot path's whole cost);
- ``observe x4``: the baseline, four prometheus ``Histogram.observe`` calls per tick on
  children bound in advance (three stage intervals and tick_to_order);
- ``harness``: the same loop calling nothing, to subtract from both;
- ``flush 10k``: folding 10,000 committed ticks into the buckets (off the hot path),
  next to ``observe x4`` for the same 10,000 ticks.

Per-tick cases run ``CALLS`` ticks per round: divide their figures by ``CALLS``
(``extra_info`` says so). Every case checks its result, so ``--benchmark-disable`` (one
call each) is a smoke test.

    pytest benchmarks/bench_metrics.py --benchmark-enable --benchmark-only
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from flashmm.metrics import LATENCY_BUCKETS_NS, EngineMetrics, TickClock

CALLS = 1000
FLUSH_ROWS = 10_000
T0 = 5_000_000_000_000
# Hand-picked stage gaps (ns): decode 3 µs, apply 1.5 µs, decide 12 µs.
TICKS = [(T0 + k, T0 + k + 3_000, T0 + k + 4_500, T0 + k + 16_500) for k in range(CALLS)]


BASELINE = "baseline_stage_latency_seconds"


def _baseline() -> tuple[CollectorRegistry, list[Histogram]]:
    """A registry and its histogram's children, one per stage, bound in advance."""
    registry = CollectorRegistry()
    histogram = Histogram(
        BASELINE,
        "Baseline: one observe per stage.",
        ["stage"],
        buckets=[b / 1e9 for b in LATENCY_BUCKETS_NS],
        registry=registry,
    )
    stages = ("decoded", "book_applied", "decided", "tick_to_order")
    return registry, [histogram.labels(stage) for stage in stages]


def _mean_seconds(registry: CollectorRegistry, name: str, stage: str) -> float:
    total = registry.get_sample_value(name + "_sum", {"stage": stage})
    count = registry.get_sample_value(name + "_count", {"stage": stage})
    assert total is not None
    assert count
    return total / count


def _observe_ticks(children: list[Histogram], ticks: list[tuple[int, int, int, int]]) -> None:
    decoded, applied, decided, tick_to_order = children
    for received, t_decoded, t_applied, t_decided in ticks:
        decoded.observe((t_decoded - received) / 1e9)
        applied.observe((t_applied - t_decoded) / 1e9)
        decided.observe((t_decided - t_applied) / 1e9)
        tick_to_order.observe((t_decided - received) / 1e9)


@pytest.mark.benchmark(group="per tick (x CALLS)")
def test_commit(benchmark) -> None:
    clock = TickClock()
    commit = clock.commit

    def ticks() -> None:
        for received, decoded, applied, decided in TICKS:
            commit(received, decoded, applied, decided)

    benchmark(ticks)
    assert clock.stamps[(clock.slot - 1) % clock.capacity].tolist() == list(TICKS[-1])
    benchmark.extra_info["calls_per_round"] = CALLS


@pytest.mark.benchmark(group="per tick (x CALLS)")
def test_baseline_observe_x4(benchmark) -> None:
    registry, children = _baseline()
    benchmark(_observe_ticks, children, TICKS)
    assert _mean_seconds(registry, BASELINE, "decoded") == pytest.approx(3e-6)
    benchmark.extra_info["calls_per_round"] = CALLS


@pytest.mark.benchmark(group="per tick (x CALLS)")
def test_harness(benchmark) -> None:
    def ticks() -> int:
        last = 0
        for received, _decoded, _applied, decided in TICKS:
            last = decided - received
        return last

    assert benchmark(ticks) == 16_500
    benchmark.extra_info["calls_per_round"] = CALLS


@pytest.mark.benchmark(group="10k ticks, off the hot path")
def test_flush_10k_rows(benchmark) -> None:
    metrics = EngineMetrics()
    clock = metrics.clock
    ticks = TICKS * (FLUSH_ROWS // CALLS)

    def fill() -> None:
        for row in ticks:
            clock.commit(*row)

    assert benchmark.pedantic(metrics.flush, setup=fill, rounds=50) == FLUSH_ROWS
    mean = _mean_seconds(metrics.registry, "flashmm_stage_latency_seconds", "decided")
    assert mean == pytest.approx(12e-6)
    benchmark.extra_info["rows_per_call"] = FLUSH_ROWS


@pytest.mark.benchmark(group="10k ticks, off the hot path")
def test_baseline_observe_x4_10k_ticks(benchmark) -> None:
    registry, children = _baseline()
    ticks = TICKS * (FLUSH_ROWS // CALLS)
    benchmark.pedantic(_observe_ticks, (children, ticks), rounds=50)
    assert _mean_seconds(registry, BASELINE, "decided") == pytest.approx(12e-6)
    benchmark.extra_info["ticks_per_call"] = FLUSH_ROWS
