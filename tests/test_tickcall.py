"""The decision tick through the C seam (``DecideCall``) is the jitted kernels, bit for bit.

Real market data (``data/binance``) drives two independent copies of the same state: one
through the seam, one through Numba's dispatcher (``exclude_own`` then ``decide``), with
random inventory and random own orders on every tick. Every output and every piece of
state must match to the bit after every tick.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flashmm._core.book import OK, OrderBook
from flashmm._core.features import RM_MID_COUNT, RM_TRADE_COUNT, FeatureState, push_trade
from flashmm._core.model import N_CLASSES, Model
from flashmm._core.quoting import N_QUOTE_OUT, QO_BID, QO_SKEW_BPS, QuoteParams
from flashmm._core.tick import decide, decide_cfunc, exclude_own
from flashmm._core.tickcall import DecideCall, DecideKernelError
from flashmm.data.binance import infer_increments
from flashmm.data.frames import binance_to_frames
from flashmm.engine.pipeline import MAX_OWN_ORDERS, MarketPipeline
from flashmm.venue.protocol import BookUpdate, FrameDecoder, Notification, Trade

DATA = Path(__file__).parent / "data" / "binance"
FEEDS = {
    "spot": DATA / "spot_btcusdt_20240808_head12k.gz",
    "usdm": DATA / "usdm_btcusdt_20240808_head10k.gz",
}


def bits(x: Any) -> np.ndarray:
    """Float64 values as their bit patterns, so NaN == NaN and -0.0 != 0.0."""
    return np.asarray(x, dtype=np.float64).view(np.int64)


def market_events(feed: str) -> tuple[float, float, Iterator[tuple[int, BookUpdate | Trade]]]:
    """Tick size, lot size and the events of a real capture, decoded as the engine does.

    The decoder reuses its arrays, so each event must be used before the next is drawn.
    """
    path = FEEDS[feed]
    tick, lot = infer_increments(path)
    frames = list(binance_to_frames([path], "BTC/USDT", tick, lot))

    def events() -> Iterator[tuple[int, BookUpdate | Trade]]:
        decoder = FrameDecoder()
        for recv_ns, frame in frames:
            msg = decoder.decode(frame)
            if isinstance(msg, Notification):
                for ev in msg.events:
                    if isinstance(ev, BookUpdate | Trade):
                        yield recv_ns, ev

    return tick, lot, events()


def random_own(rng: np.random.Generator, top: np.ndarray, own: np.ndarray) -> int:
    """Fill ``own`` with 1..6 random own orders, mostly at the book's levels (some larger
    than the level, some at prices the book does not show); returns how many."""
    n = int(rng.integers(1, 7))
    for j in range(n):
        row = 0 if rng.random() < 0.5 else 2
        levels = np.flatnonzero(top[row + 1] > 0)
        if levels.size and rng.random() < 0.8:
            k = int(rng.choice(levels))
            price, size = int(top[row, k]), int(top[row + 1, k])
        else:
            price, size = int(top[row, 0]) + int(rng.integers(-20, 21)), 10
        own[j] = (1 if row == 0 else -1, price, int(rng.integers(1, 2 * size + 2)))
    return n


class Reference:
    """Copies of a seam's arrays, driven through Numba's dispatcher as the engine once was."""

    def __init__(self, state: FeatureState, model: Model, params: np.ndarray, depth: int) -> None:
        self.state = FeatureState(
            state.mid_ts.shape[0], state.trade_ts.shape[0], state.vol_halflife_s
        )
        self.model = Model(
            mean=model.mean.copy(),
            std=model.std.copy(),
            weights=model.weights.copy(),
            intercepts=model.intercepts.copy(),
            move_weights=model.move_weights.copy(),
            move_intercept=model.move_intercept,
        )
        self.params = params.copy()
        self.quote = np.zeros(N_QUOTE_OUT)
        self.outside = np.zeros((4, depth), dtype=np.int64)

    def on_trade(self, now_ns: int, size: float, side: int) -> None:
        s = self.state
        push_trade(now_ns, side * size, s.trade_ts, s.trade_qty, s.ring_meta)

    def decide(
        self, now_ns: int, top: np.ndarray, inventory: float, own: np.ndarray, n_own: int
    ) -> float:
        s, m = self.state, self.model
        if n_own:
            exclude_own(top.copy(), own.copy(), n_own, self.outside)
            top = self.outside
        return decide(
            now_ns,
            top.copy(),
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
            inventory,
            self.params,
            self.quote,
        )

    def assert_same(
        self, mid: float, ref_mid: float, s: FeatureState, prediction: np.ndarray, q: np.ndarray
    ) -> None:
        """The seam's mid, feature state, prediction and quote equal this copy's, bitwise."""
        r = self.state
        assert bits(mid) == bits(ref_mid)
        for got, want in [
            (s.out, r.out),
            (prediction, self.model.out),
            (q, self.quote),
            (s.mid_px, r.mid_px),
            (s.vol_state, r.vol_state),
        ]:
            np.testing.assert_array_equal(bits(got), bits(want))
        np.testing.assert_array_equal(s.mid_ts, r.mid_ts)
        np.testing.assert_array_equal(s.ring_meta, r.ring_meta)


def random_model(rng: np.random.Generator) -> Model:
    """A model with a view: weights large enough that direction and skew move."""
    f = len(Model.zeros().mean)
    return Model(
        mean=rng.normal(0.0, 0.5, f),
        std=rng.uniform(0.5, 2.0, f),
        weights=rng.normal(0.0, 1.5, (N_CLASSES, f)),
        intercepts=rng.normal(0.0, 0.3, N_CLASSES),
        move_weights=rng.normal(0.0, 3.0, f),
        move_intercept=0.1,
    )


@pytest.mark.parametrize("with_own", [False, True], ids=["book", "own-excluded"])
@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_pipeline_matches_dispatcher_bit_for_bit(feed: str, with_own: bool) -> None:
    tick, lot, events = market_events(feed)
    rng = np.random.default_rng(20240808)
    pipe = MarketPipeline(tick, lot)
    ref = Reference(pipe.state, pipe.model, pipe.quote_params.to_array(), pipe.book.top.shape[1])
    ticks = quoted = moved = 0
    for now, ev in events:
        if isinstance(ev, Trade):
            pipe.on_trade(now, ev.size, ev.side)
            ref.on_trade(now, ev.size, ev.side)
            continue
        # The book alone, so the own orders can be drawn from the levels it now shows.
        if ev.is_snapshot:
            assert pipe.book.apply_snapshot(ev.bids, ev.asks, ev.sequence) == OK
        else:
            assert pipe.book.apply_delta(ev.bids, ev.asks, ev.sequence, -1) == OK
        pipe.inventory_lots = float(rng.integers(-1500, 1501))
        pipe.n_own = random_own(rng, pipe.book.top, pipe.own) if with_own else 0
        mid = pipe.decide(now)
        ref_mid = ref.decide(now, pipe.book.top, pipe.inventory_lots, pipe.own, pipe.n_own)
        ref.assert_same(mid, ref_mid, pipe.state, pipe.prediction, pipe.quote)
        assert bits(pipe.mid) == bits(mid)
        ticks += 1
        quoted += pipe.quote[QO_BID] > 0
        moved += bits(mid) != bits(pipe.book.mid)
    assert ticks > 500 and quoted > ticks // 2  # the comparison saw real quotes
    # Own orders took a whole best level on about one tick in seven.
    assert (moved > ticks // 10) if with_own else (moved == 0)


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_call_matches_dispatcher_with_small_rings_and_a_model_with_a_view(feed: str) -> None:
    """Rings that wrap many times, a model whose prediction skews the quote."""
    tick, lot, events = market_events(feed)
    rng = np.random.default_rng(7)
    book = OrderBook(tick, lot, depth=5)
    state = FeatureState(mid_capacity=16, trade_capacity=8, vol_halflife_s=3.0)
    model = random_model(rng)
    params = QuoteParams(max_inventory_lots=500, max_skew_bps=50.0).to_array()
    quote = np.zeros(N_QUOTE_OUT)
    own = np.zeros((8, 3), dtype=np.int64)
    call = DecideCall(
        decide_cfunc(),
        book.top,
        own,
        np.zeros_like(book.top),
        state.mid_ts,
        state.mid_px,
        state.trade_ts,
        state.trade_qty,
        state.ring_meta,
        state.vol_state,
        state.vol_halflife_s,
        state.out,
        model.mean,
        model.std,
        model.weights,
        model.intercepts,
        model.move_weights,
        model.move_intercept,
        model.scratch,
        model.out,
        params,
        quote,
    ).call
    ref = Reference(state, model, params, 5)
    skewed = 0
    for now, ev in events:
        if isinstance(ev, Trade):
            push_trade(now, ev.side * ev.size, state.trade_ts, state.trade_qty, state.ring_meta)
            ref.on_trade(now, ev.size, ev.side)
            continue
        if ev.is_snapshot:
            assert book.apply_snapshot(ev.bids, ev.asks, ev.sequence) == OK
        else:
            assert book.apply_delta(ev.bids, ev.asks, ev.sequence, -1) == OK
        inventory = float(rng.integers(-800, 801))
        n_own = random_own(rng, book.top, own) if rng.random() < 0.5 else 0
        mid = call(now, inventory, n_own)
        ref_mid = ref.decide(now, book.top, inventory, own, n_own)
        ref.assert_same(mid, ref_mid, state, model.out, quote)
        np.testing.assert_array_equal(bits(model.scratch), bits(ref.model.scratch))
        skewed += quote[QO_SKEW_BPS] != 0.0
    assert state.ring_meta[RM_MID_COUNT] == 16 and state.ring_meta[RM_TRADE_COUNT] == 8
    assert skewed > 100  # the prediction moved the quote


# ---------------------------------------------------------------- a hand-checked tick


def small_arrays() -> dict[str, Any]:
    """Valid DecideCall arguments: a book bid 100 x 5 / 99 x 2, ask 102 x 3, no history."""
    state = FeatureState()
    model = Model.zeros()
    top = np.zeros((4, 3), dtype=np.int64)
    top[:, 0] = (100, 5, 102, 3)
    top[:, 1] = (99, 2, 0, 0)
    return {
        "kernel": decide_cfunc(),
        "top": top,
        "own": np.zeros((4, 3), dtype=np.int64),
        "outside_top": np.zeros((4, 3), dtype=np.int64),
        "mid_ts": state.mid_ts,
        "mid_px": state.mid_px,
        "trade_ts": state.trade_ts,
        "trade_qty": state.trade_qty,
        "ring_meta": state.ring_meta,
        "vol_state": state.vol_state,
        "vol_halflife_s": state.vol_halflife_s,
        "features": state.out,
        "mean": model.mean,
        "std": model.std,
        "weights": model.weights,
        "intercepts": model.intercepts,
        "move_weights": model.move_weights,
        "move_intercept": model.move_intercept,
        "scratch": model.scratch,
        "prediction": model.out,
        "quote_params": QuoteParams().to_array(),
        "quote": np.zeros(N_QUOTE_OUT),
    }


def test_own_orders_are_left_out_of_the_book_the_tick_reads() -> None:
    a = small_arrays()
    call = DecideCall(**a).call
    assert call(1, 0.0, 0) == 101.0  # (100 + 102) / 2
    a["own"][0] = (1, 100, 5)  # all of the best bid is ours: the market's best is 99
    assert call(2, 0.0, 1) == 100.5  # (99 + 102) / 2
    np.testing.assert_array_equal(a["outside_top"][:, 0], [99, 2, 102, 3])
    np.testing.assert_array_equal(a["outside_top"][:, 1], [0, 0, 0, 0])
    np.testing.assert_array_equal(a["top"][:, 0], [100, 5, 102, 3])  # the book is untouched
    # 1 ns apart is one 1 ms bucket of the mid ring: the second mid replaced the first.
    assert a["ring_meta"][RM_MID_COUNT] == 1 and a["mid_px"][0] == 100.5


def test_the_call_keeps_its_arrays_alive() -> None:
    call = DecideCall(**small_arrays()).call  # no other reference to any of the arrays
    gc.collect()
    junk = [np.full((4, 3), -1, dtype=np.int64) for _ in range(1000)]
    assert call(1, 0.0, 0) == 101.0
    del junk


# ---------------------------------------------------------------- refusals


def strided(a: np.ndarray) -> np.ndarray:
    """A non-contiguous view with ``a``'s dtype and shape."""
    wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), dtype=a.dtype)
    return wide[..., ::2]


ARRAYS = [k for k, v in small_arrays().items() if isinstance(v, np.ndarray)]
WRITTEN = ["outside_top", "mid_ts", "mid_px", "ring_meta", "vol_state", "features"]
WRITTEN += ["scratch", "prediction", "quote"]


@pytest.mark.parametrize("name", ARRAYS)
def test_wrong_dtype_is_refused_naming_the_array(name: str) -> None:
    a = small_arrays()
    wrong = np.float32 if a[name].dtype == np.float64 else np.float64
    a[name] = a[name].astype(wrong)
    with pytest.raises(TypeError, match=rf"^{name}: expected dtype"):
        DecideCall(**a)


@pytest.mark.parametrize("name", ARRAYS)
def test_non_contiguous_array_is_refused_naming_the_array(name: str) -> None:
    a = small_arrays()
    a[name] = strided(a[name])
    assert not a[name].flags.c_contiguous
    with pytest.raises(TypeError, match=rf"^{name}: must be C-contiguous"):
        DecideCall(**a)


@pytest.mark.parametrize("name", ["top", "weights", "own"])
def test_fortran_order_is_refused(name: str) -> None:
    a = small_arrays()
    a[name] = np.asfortranarray(a[name])
    with pytest.raises(TypeError, match=rf"^{name}: must be C-contiguous"):
        DecideCall(**a)


@pytest.mark.parametrize("name", ["top", "features", "quote"])
def test_a_list_is_refused(name: str) -> None:
    a = small_arrays()
    a[name] = a[name].tolist()
    with pytest.raises(TypeError, match=rf"^{name}: expected a numpy array of \w+, got list"):
        DecideCall(**a)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("top", (3, 3)),
        ("outside_top", (4, 2)),  # must match top
        ("own", (4, 2)),
        ("mid_px", (10,)),  # must match mid_ts
        ("trade_qty", (7,)),  # must match trade_ts
        ("ring_meta", (5,)),
        ("features", (11,)),
        ("weights", (N_CLASSES, 11)),
        ("intercepts", (2,)),
        ("prediction", (5,)),
        ("quote_params", (9,)),
        ("quote", (N_QUOTE_OUT, 1)),
    ],
)
def test_wrong_shape_is_refused_naming_the_array(name: str, shape: tuple[int, ...]) -> None:
    a = small_arrays()
    a[name] = np.zeros(shape, dtype=a[name].dtype)
    with pytest.raises(ValueError, match=rf"^{name}: expected shape"):
        DecideCall(**a)


@pytest.mark.parametrize("name", WRITTEN)
def test_read_only_output_is_refused(name: str) -> None:
    a = small_arrays()
    a[name].flags.writeable = False
    with pytest.raises(ValueError, match=rf"^{name}: must be writable"):
        DecideCall(**a)


def test_kernel_must_be_the_cfunc() -> None:
    a = small_arrays()
    a["kernel"] = decide  # the dispatcher has no C address
    with pytest.raises(TypeError, match=r"^kernel: expected tick\.decide_cfunc"):
        DecideCall(**a)


@pytest.mark.parametrize("n_own", [-1, 5])
def test_n_own_out_of_range_is_refused_and_changes_nothing(n_own: int) -> None:
    a = small_arrays()
    call = DecideCall(**a).call
    before = {k: v.copy() for k, v in a.items() if isinstance(v, np.ndarray)}
    with pytest.raises(ValueError, match=r"n_own must be in 0\.\.4, got"):
        call(1, 0.0, n_own)
    for k, v in before.items():
        np.testing.assert_array_equal(a[k].view(np.uint8), v.view(np.uint8))


def test_pipeline_refuses_own_beyond_its_buffer() -> None:
    pipe = MarketPipeline(1.0, 1.0, model=Model.zeros())
    pipe.n_own = MAX_OWN_ORDERS + 1
    with pytest.raises(ValueError, match="n_own must be in"):
        pipe.decide(1)


def test_a_kernel_exception_becomes_a_specific_error() -> None:
    """A zero mid (a degenerate book, bid -1 / ask 1) divides by zero in the features."""
    a = small_arrays()
    a["top"][:, 0] = (-1, 5, 1, 3)
    with pytest.raises(ZeroDivisionError):
        Reference(FeatureState(), Model.zeros(), a["quote_params"], 3).decide(
            1, a["top"], 0.0, a["own"], 0
        )
    with pytest.raises(DecideKernelError, match="division by zero"):
        DecideCall(**a).call(1, 0.0, 0)


@pytest.mark.parametrize(
    "name", ["book", "state", "model", "quote_params", "features", "prediction", "quote", "own"]
)
def test_pipeline_buffers_cannot_be_swapped(name: str) -> None:
    """The compiled call holds pointers into them: replacing one would go unseen."""
    pipe = MarketPipeline(1.0, 1.0, model=Model.zeros())
    with pytest.raises(AttributeError):
        setattr(pipe, name, getattr(pipe, name))


def test_pipelines_sharing_a_model_keep_their_own_predictions() -> None:
    """The engine gives every market the same model: one market's tick must not overwrite
    the prediction another market publishes."""
    model = random_model(np.random.default_rng(3))
    bid_heavy = MarketPipeline(1.0, 1.0, model=model)
    ask_heavy = MarketPipeline(1.0, 1.0, model=model)
    bid_heavy.book.apply_snapshot(np.array([[100.0, 50.0]]), np.array([[102.0, 1.0]]), 1)
    ask_heavy.book.apply_snapshot(np.array([[100.0, 1.0]]), np.array([[102.0, 50.0]]), 1)
    bid_heavy.decide(1)
    mine = bid_heavy.prediction.copy()
    ask_heavy.decide(1)
    assert bits(bid_heavy.prediction).tolist() == bits(mine).tolist()
    assert bits(ask_heavy.prediction).tolist() != bits(mine).tolist()
    assert bid_heavy.prediction is not model.out and ask_heavy.prediction is not model.out
