"""One market's hot path: book -> features -> prediction -> quote proposal.

:class:`MarketPipeline` owns every buffer the path needs, allocated once. The engine,
the replay command and the model-fitting script all drive markets through it, so what
is replayed and fitted is exactly what trades.
"""

from __future__ import annotations

import math

import numpy as np

from flashmm._core.book import OK, OrderBook
from flashmm._core.features import FeatureState, push_trade
from flashmm._core.model import Model
from flashmm._core.quoting import N_QUOTE_OUT, QuoteParams
from flashmm._core.tick import decide, exclude_own

MAX_OWN_ORDERS = 64
"""Own resting orders a market can leave out of its book view at once."""


class MarketPipeline:
    """Book, feature rings, model and quote buffers of one market.

    After each applied book update, ``features``, ``prediction`` and ``quote`` hold the
    latest outputs (arrays reused in place: copy them to keep them).
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
        self.book = book if book is not None else OrderBook(tick_size, lot_size, depth=depth)
        self.state = FeatureState()
        self.model = model if model is not None else Model.load_default()
        self.quote_params = quote_params if quote_params is not None else QuoteParams()
        self._qp = self.quote_params.to_array()
        self.features = self.state.out
        self.prediction = self.model.out
        self.quote = np.zeros(N_QUOTE_OUT, dtype=np.float64)
        self.inventory_lots = 0.0
        self.mid = math.nan
        # The engine's own resting orders (side, price ticks, lots), left out of the book
        # the decision reads; rows [0, n_own) are in use.
        self.own = np.zeros((MAX_OWN_ORDERS, 3), dtype=np.int64)
        self.n_own = 0
        self._outside_top = np.zeros_like(self.book.top)

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
        """Features, prediction and quote from the book as it stands; returns the mid."""
        s, m = self.state, self.model
        top = self.book.top
        if self.n_own:
            exclude_own(top, self.own, self.n_own, self._outside_top)
            top = self._outside_top
        self.mid = decide(
            now_ns,
            top,
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
            self.inventory_lots,
            self._qp,
            self.quote,
        )
        return self.mid

    def on_trade(self, now_ns: int, size: float, side: int) -> None:
        """Record a trade: ``side`` is the aggressor, +1 buy or -1 sell."""
        s = self.state
        push_trade(now_ns, side * size, s.trade_ts, s.trade_qty, s.ring_meta)

    def warm_up(self) -> None:
        """Run every kernel once on throwaway state so the first real tick is not slow.

        Numba loads (or compiles) a kernel on its first call; that must not happen on
        the first live frame.
        """
        probe = MarketPipeline(1.0, 1.0, model=self.model, quote_params=self.quote_params)
        bids = np.array([[100.0, 1.0]])
        asks = np.array([[101.0, 1.0]])
        probe.apply_book_update(1, True, bids, asks, 1)
        probe.on_trade(2, 1.0, 1)
        probe.apply_book_update(3, False, bids, asks, 2)
        probe.own[0] = (1, 100, 1)
        probe.n_own = 1
        probe.decide(4)
