"""Synthetic market flow generation speed.

Target: at least 100k actions per second with the default (thin Sei-like) parameters.
Each round generates ``ACTIONS`` actions from a fresh flow: divide the figures by
``ACTIONS`` for the time per action (``extra_info`` says so).

    pytest benchmarks/bench_synthetic.py --benchmark-enable --benchmark-only
"""

from __future__ import annotations

from flashmm.venue.sim.synthetic import SyntheticFlow, SyntheticParams

ACTIONS = 20_000
START_NS = 1_700_000_000_000_000_000


def test_next_action(benchmark) -> None:
    """One ``next_action`` call per action, as a driver stepping event by event."""

    def generate() -> int:
        flow = SyntheticFlow(SyntheticParams(), START_NS)
        for _ in range(ACTIONS):
            flow.next_action()
        return ACTIONS

    assert benchmark(generate) == ACTIONS
    benchmark.extra_info["actions_per_round"] = ACTIONS


def test_actions_until(benchmark) -> None:
    """One ``actions_until`` call per simulated second, as a driver on a clock."""
    params = SyntheticParams()
    # about 4.5 actions per simulated second with the defaults
    seconds = ACTIONS * 2 // 9

    def generate() -> int:
        flow = SyntheticFlow(params, START_NS)
        return sum(len(flow.actions_until(START_NS + s * 10**9)) for s in range(1, seconds + 1))

    n = benchmark(generate)
    assert n > ACTIONS // 2
    benchmark.extra_info["actions_per_round"] = n
