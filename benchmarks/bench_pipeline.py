"""The decision path: one tick of features + prediction + quote, and frame bytes -> quote.

Targets (issue: compiled hot path): features + prediction + quote for one tick,
median <= 5 µs; the whole path from frame bytes to quote decision over a replay of real
data, p99 <= 25 µs (p50, p99 and p99.9 reported).

    pytest benchmarks/bench_pipeline.py --benchmark-enable --benchmark-only
    pytest benchmarks/bench_pipeline.py --benchmark-enable --benchmark-only -k seam
    python benchmarks/bench_pipeline.py        # per-frame latency percentiles only
"""

from __future__ import annotations

import flashmm  # noqa: F401  (first: it keeps BLAS to one thread before numpy loads)

# isort: split
import itertools
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from flashmm._core.tick import decide, exclude_own
from flashmm.data.binance import infer_increments
from flashmm.data.frames import binance_to_frames
from flashmm.engine.pipeline import MarketPipeline
from flashmm.venue.protocol import BookUpdate, FrameDecoder, Notification, Trade

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "binance"
FEEDS = {
    "spot": DATA / "spot_btcusdt_20240808_head12k.gz",
    "usdm": DATA / "usdm_btcusdt_20240808_head10k.gz",
}


class Feed(NamedTuple):
    tick: float
    lot: float
    frames: list[tuple[int, bytes]]


def load_feed(name: str) -> Feed:
    tick, lot = infer_increments(FEEDS[name])
    return Feed(tick, lot, list(binance_to_frames([FEEDS[name]], "BTC/USDT", tick, lot)))


def run_frame(decoder: FrameDecoder, pipe: MarketPipeline, recv_ns: int, frame: bytes) -> None:
    """What the engine does with one frame off the socket, up to the quote decision."""
    msg = decoder.decode(frame)
    if isinstance(msg, Notification):
        for ev in msg.events:
            if isinstance(ev, BookUpdate):
                pipe.apply_book_update(recv_ns, ev.is_snapshot, ev.bids, ev.asks, ev.sequence)
            elif isinstance(ev, Trade):
                pipe.on_trade(recv_ns, ev.size, ev.side)


def frame_latencies(feed: Feed) -> np.ndarray:
    """Per-frame wall time in ns for a full replay (fresh pipeline, kernels warmed)."""
    pipe = MarketPipeline(feed.tick, feed.lot)
    pipe.warm_up()
    decoder = FrameDecoder()
    out = np.empty(len(feed.frames), dtype=np.int64)
    clock = time.perf_counter_ns
    for k, (recv_ns, frame) in enumerate(feed.frames):
        t0 = clock()
        run_frame(decoder, pipe, recv_ns, frame)
        out[k] = clock() - t0
    assert pipe.book.is_valid
    return out


def percentiles(ns: np.ndarray) -> dict[str, float]:
    p50, p99, p999 = np.percentile(ns, [50, 99, 99.9])
    return {"p50_us": p50 / 1e3, "p99_us": p99 / 1e3, "p99.9_us": p999 / 1e3, "frames": len(ns)}


@pytest.fixture(scope="module")
def warmed_pipeline() -> tuple[MarketPipeline, int]:
    """A pipeline whose rings and book hold a real minute and a half of market."""
    feed = load_feed("spot")
    pipe = MarketPipeline(feed.tick, feed.lot)
    pipe.warm_up()
    decoder = FrameDecoder()
    for recv_ns, frame in feed.frames:
        run_frame(decoder, pipe, recv_ns, frame)
    return pipe, feed.frames[-1][0]


def test_decide_one_tick(benchmark, warmed_pipeline) -> None:
    """Features + prediction + quote from the current book: one fused jitted call."""
    pipe, now = warmed_pipeline
    clock = itertools.count(now, 1_000_000)
    mid = benchmark(lambda: pipe.decide(next(clock)))
    assert mid == pipe.book.mid


@pytest.mark.benchmark(group="decide-seam")
@pytest.mark.parametrize("n_own", [0, 2], ids=["no-own", "own-2"])
@pytest.mark.parametrize("seam", ["dispatcher", "cfunc"])
def test_decide_seam(benchmark, warmed_pipeline, seam: str, n_own: int) -> None:
    """One tick, same state: Numba's dispatcher (every array type-checked and unboxed
    per call) against the pipeline's C call of the same kernels."""
    pipe, now = warmed_pipeline
    clock = itertools.count(now, 1_000_000)
    top, own = pipe.book.top, pipe.own
    own[:2] = [(1, top[0, 0], top[1, 0]), (-1, top[2, 0], top[3, 0])]  # all of each best
    s, m, qp = pipe.state, pipe.model, pipe.quote_params.to_array()
    outside = np.zeros_like(top)

    def dispatcher() -> float:
        book = top
        if n_own:
            exclude_own(top, own, n_own, outside)
            book = outside
        return decide(
            next(clock),
            book,
            s.mid_ts,
            s.mid_px,
            s.trade_ts,
            s.trade_qty,
            s.ring_meta,
            s.vol_state,
            s.vol_halflife_s,
            s.out,
            m.mean,
            m.std,
            m.weights,
            m.intercepts,
            m.move_weights,
            m.move_intercept,
            m.scratch,
            m.out,
            pipe.inventory_lots,
            qp,
            pipe.quote,
        )

    tick = dispatcher if seam == "dispatcher" else lambda: pipe.decide(next(clock))
    pipe.n_own = n_own
    try:
        tick()  # the dispatcher loads its code on its first call: not part of the timing
        mid = benchmark(tick)
    finally:
        pipe.n_own = 0
    if n_own:  # the decision saw the second levels as the best
        assert mid == 0.5 * (top[0, 1] + top[2, 1])
    else:
        assert mid == pipe.book.mid


@pytest.mark.parametrize("feed", ["spot", "usdm"])
def test_full_path_frame_bytes_to_quote(benchmark, feed: str) -> None:
    """Every frame of a real-data replay: decode, book apply, features, model, quote."""
    data = load_feed(feed)
    runs: list[np.ndarray] = []

    def replay() -> None:
        runs.append(frame_latencies(data))

    benchmark.pedantic(replay, rounds=REPLAYS, iterations=1)
    typical, best = replay_percentiles(np.array(runs))
    benchmark.extra_info.update(replay_median=typical, per_frame_best=best)
    assert typical["frames"] == len(data.frames)


REPLAYS = 5


def replay_percentiles(runs: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """``runs``: per-frame ns of several replays, one row each. Returns the percentiles
    of the median replay (each percentile's median over the replays: one noisy replay
    on a shared machine does not decide it) and those of each frame's best time (its
    cost with the machine's noise taken out)."""
    each = [percentiles(row) for row in runs]
    typical = {k: float(np.median([p[k] for p in each])) for k in each[0]}
    return typical, percentiles(runs.min(axis=0))


def main() -> None:
    for feed in FEEDS:
        data = load_feed(feed)
        frame_latencies(data)  # one pass to settle caches and allocator
        runs = np.array([frame_latencies(data) for _ in range(REPLAYS)])
        # Most frames are trades, which never reach the decision: book frames on their own.
        book = np.array([b"OrderBookUpdate" in frame for _, frame in data.frames])
        for label, rows in ((feed, runs), (f"{feed} book", runs[:, book])):
            typical, best = replay_percentiles(rows)
            print(
                f"{label}: {typical['frames']:.0f} frames, median of {REPLAYS} replays: "
                f"p50 {typical['p50_us']:.2f} µs  p99 {typical['p99_us']:.2f} µs  "
                f"p99.9 {typical['p99.9_us']:.2f} µs | each frame's best: "
                f"p50 {best['p50_us']:.2f}  p99 {best['p99_us']:.2f}  p99.9 {best['p99.9_us']:.2f}"
            )


if __name__ == "__main__":
    main()
