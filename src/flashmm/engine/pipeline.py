"""One market's hot path: book -> features -> prediction -> quote proposal.

:class:`MarketPipeline` owns every buffer the path needs, allocated once. The engine,
the replay command and the model-fitting script all drive markets through it, so what
is replayed and fitted is exactly what trades.
"""

from __future__ import annotations

import math

import numpy as np

from flashmm._core.book import OK, OrderBook
from flashmm._core.features import N_FEATURES, FeatureState, push_trade
from flashmm._core.model import N_OUT, Model
from flashmm._core.quoting import N_QUOTE_OUT, QuoteParams
from flashmm._core.tick import decide_cfunc
from flashmm._core.tickcall import DecideCall

MAX_OWN_ORDERS = 64
"""Own resting orders a market can leave out of its book view at once."""


class MarketPipeline:
    """Book, feature rings, model and quote buffers of one market.

    After each applied book update, ``features``, ``prediction`` and ``quote`` hold the
    latest outputs (arrays reused in place: copy them to keep them).

    The book, feature state, model, quote parameters and buffers are fixed for the
    pipeline's life (read-only attributes): its compiled decision call holds pointers into
    their arrays. To trade with another model or parameters, build a new pipeline.
    """

    def __init__(
        self,
        tick_size: float,
        lot_size: float,
        *,
        model: Model | None = None,
        quote_params: QuoteParams | None = None,
        depth: int = 10,
        book: OrderBook | None = None,
    ) -> None:
        # The live engine passes the feed's book: one book per market, kept by the feed.
        self._book = book if book is not None else OrderBook(tick_size, lot_size, depth=depth)
        self._state = FeatureState()
        self._model = model if model is not None else Model.load_default()
        self._quote_params = quote_params if quote_params is not None else QuoteParams()
        # Own output buffers, not the model's: the engine shares one model between markets.
        self._prediction = np.zeros(N_OUT, dtype=np.float64)
        self._scratch = np.zeros(N_FEATURES, dtype=np.float64)
        self._quote = np.zeros(N_QUOTE_OUT, dtype=np.float64)
        self.inventory_lots = 0.0
        self.mid = math.nan
        # The engine's own resting orders (side, price ticks, lots), left out of the book
        # the decision reads; rows [0, n_own) are in use.
        self._own = np.zeros((MAX_OWN_ORDERS, 3), dtype=np.int64)
        self.n_own = 0
        self._outside_top = np.zeros_like(self._book.top)
        s, m = self._state, self._model
        self._decide = DecideCall(
            decide_cfunc(),
            self._book.top,
            self._own,
            self._outside_top,
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
            self._scratch,
            self._prediction,
            self._quote_params.to_array(),
            self._quote,
        ).call

    @property
    def book(self) -> OrderBook:
        """The market's order book."""
        return self._book

    @property
    def state(self) -> FeatureState:
        """Rings and state of the feature kernel."""
        return self._state

    @property
    def model(self) -> Model:
        """The model the decision predicts with."""
        return self._model

    @property
    def quote_params(self) -> QuoteParams:
        """The quoting parameters."""
        return self._quote_params

    @property
    def features(self) -> np.ndarray:
        """The latest features (``FEATURE_NAMES`` order)."""
        return self._state.out

    @property
    def prediction(self) -> np.ndarray:
        """The latest prediction (the model's ``OUT_*`` order)."""
        return self._prediction

    @property
    def quote(self) -> np.ndarray:
        """The latest quote proposal (``QO_*`` order)."""
        return self._quote

    @property
    def own(self) -> np.ndarray:
        """``(MAX_OWN_ORDERS, 3)`` int64 rows (side, price ticks, lots); fill in place."""
        return self._own

    def apply_book_update(
        self,
        now_ns: int,
        is_snapshot: bool,
        bids: np.ndarray,
        asks: np.ndarray,
        sequence: int,
        first_sequence: int = -1,
    ) -> int:
        """Apply a frame to the book; on OK run the decision. Returns the book status."""
        if is_snapshot:
            status = self.book.apply_snapshot(bids, asks, sequence)
        else:
            status = self.book.apply_delta(bids, asks, sequence, first_sequence)
        if status == OK:
            self.decide(now_ns)
        return status

    def decide(self, now_ns: int) -> float:
        """Features, prediction and quote from the book as it stands; returns the mid.

        The book is read without the engine's own orders ``own[:n_own]``.
        """
        self.mid = mid = self._decide(now_ns, self.inventory_lots, self.n_own)
        return mid

    def on_trade(self, now_ns: int, size: float, side: int) -> None:
        """Record a trade: ``side`` is the aggressor, +1 buy or -1 sell."""
        s = self._state
        push_trade(now_ns, side * size, s.trade_ts, s.trade_qty, s.ring_meta)

    def warm_up(self) -> None:
        """Run every kernel once on throwaway state so the first real tick is not slow.

        Numba loads (or compiles) a kernel on its first call; that must not happen on
        the first live frame. (Building a pipeline already loaded the decision's C entry
        point; this runs it, with and without own orders, and the trade kernel.)
        """
        probe = MarketPipeline(1.0, 1.0, model=self._model, quote_params=self._quote_params)
        bids = np.array([[100.0, 1.0]])
        asks = np.array([[101.0, 1.0]])
        probe.apply_book_update(1, True, bids, asks, 1)
        probe.on_trade(2, 1.0, 1)
        probe.apply_book_update(3, False, bids, asks, 2)
        probe.own[0] = (1, 100, 1)
        probe.n_own = 1
        probe.decide(4)
