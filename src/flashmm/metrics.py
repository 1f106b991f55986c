"""The engine's Prometheus metrics, served on the engine's own port.

Stage latencies never touch a Histogram on the hot path: the tick writes int64
``time.monotonic_ns()`` stamps into :class:`TickClock`'s preallocated rings, and
:meth:`EngineMetrics.flush` (a task about once a second, off the hot path) folds the
pending rows into bucket counts with numpy. A custom collector exposes those counts as
``flashmm_stage_latency_seconds``. Everything else is an ordinary counter or gauge.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    start_http_server,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "FEED_EVENTS",
    "LATENCY_BUCKETS_NS",
    "LATENCY_STAGES",
    "LIQUIDITIES",
    "ORDER_ORIGINS",
    "PNL_KINDS",
    "PNL_TOTAL_MARKET",
    "RINGS",
    "RISK_STATES",
    "SIDES",
    "STAGES",
    "VENUE_FAILURE_KINDS",
    "ClockWentBackwards",
    "EngineMetrics",
    "InvalidCapacity",
    "MetricsError",
    "MetricsServerError",
    "QuoteUptime",
    "TickClock",
    "UnknownLabel",
]

STAGES: tuple[str, ...] = ("received", "decoded", "book_applied", "decided")
"""Columns of :attr:`TickClock.stamps`, in the order a tick passes them."""

LATENCY_STAGES: tuple[str, ...] = (
    "decoded",
    "book_applied",
    "decided",
    "order_sent",
    "acked",
    "tick_to_order",
)
"""``stage`` label values: each names the END of its interval (``tick_to_order``:
received -> order sent)."""

RECENT_SAMPLES = 1024
"""Latest samples per stage behind :meth:`EngineMetrics.recent_latency_ms`."""

LATENCY_BUCKETS_NS: tuple[int, ...] = (
    *(mantissa * 10**exponent for exponent in range(3, 9) for mantissa in (1, 2, 5)),
    1_000_000_000,
)
"""Upper bounds, 1 µs to 1 s in a 1-2-5 series; integers, so a stamp on a bound is exact."""

RINGS: tuple[str, ...] = ("tick", "order", "ack")
SIDES: tuple[str, ...] = ("buy", "sell")
LIQUIDITIES: tuple[str, ...] = ("maker", "taker")
ORDER_ORIGINS: tuple[str, ...] = ("own", "venue")
FEED_EVENTS: tuple[str, ...] = (
    "gap",
    "crossed",
    "stale",
    "resync",
    "failover",
    "reconnect",
    "halt",
)
VENUE_FAILURE_KINDS: tuple[str, ...] = (
    "timeout",
    "unavailable",
    "rate_limited",
    "protocol",
    "breaker_open",
)
RISK_STATES: tuple[str, ...] = ("active", "reducing", "paused", "halted", "flattened")
"""Severity order; ``flashmm_risk_state`` reports the index."""
PNL_KINDS: tuple[str, ...] = ("realized", "unrealized", "fees", "net")
PNL_TOTAL_MARKET = "total"
"""The ``market`` label of the PnL summed over markets."""

_BOUNDS_NS = np.array(LATENCY_BUCKETS_NS, dtype=np.int64)
_N_BINS = len(LATENCY_BUCKETS_NS) + 1  # the last bin is +Inf
_LE_LABELS = [floatToGoString(b / 1e9) for b in LATENCY_BUCKETS_NS] + ["+Inf"]
_STAGE_INDEX = {stage: i for i, stage in enumerate(LATENCY_STAGES)}
_ORDER_RING_DIVISOR = 4  # orders are rarer than ticks: a venue rate-limits them


class MetricsError(Exception):
    """Base of this module's errors."""


class InvalidCapacity(MetricsError, ValueError):
    """A ring capacity that is not a positive integer."""


class UnknownLabel(MetricsError, ValueError):
    """A label value outside its fixed set (a typo would otherwise start a new series)."""


class ClockWentBackwards(MetricsError, ValueError):
    """A timestamp earlier than one already recorded for the same series."""


class MetricsServerError(MetricsError, OSError):
    """The metrics HTTP server cannot start."""


def _check_label(kind: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UnknownLabel(f"unknown {kind} {value!r}; expected one of {', '.join(allowed)}")


class _Ring:
    """A preallocated int64 ring of fixed-width rows, drained oldest first."""

    __slots__ = ("capacity", "flat", "folded", "head", "lost", "rows")

    def __init__(self, capacity: int, width: int) -> None:
        self.capacity = capacity
        self.rows = np.zeros((capacity, width), dtype=np.int64)
        # Item writes through a flat memoryview cost a third of numpy's scalar setitem.
        self.flat = memoryview(self.rows.reshape(-1))
        self.head = 0  # rows ever written
        self.folded = 0  # rows ever drained or lost
        self.lost = 0  # rows overwritten before a drain reached them

    @property
    def overwritten(self) -> int:
        # Counted here, not in the writer, so the hot path pays nothing for it.
        return self.lost + max(0, self.head - self.folded - self.capacity)

    def drain(self) -> np.ndarray:
        """The rows written since the last drain, oldest first (a copy)."""
        pending = self.head - self.folded
        if pending > self.capacity:
            self.lost += pending - self.capacity
            pending = self.capacity
        start = (self.head - pending) % self.capacity
        end = start + pending
        if end <= self.capacity:
            rows = self.rows[start:end].copy()
        else:
            rows = np.concatenate((self.rows[start:], self.rows[: end - self.capacity]))
        self.folded = self.head
        return rows


class TickClock:
    """Ring of per-tick stage stamps, written by the hot path without allocation.

    Stamps are ``time.monotonic_ns()``. When the ring is full the oldest unflushed row is
    overwritten and counted in :attr:`overwritten`. Write and flush from one thread (the
    engine's event loop); the rings are not locked.
    """

    __slots__ = ("_acks", "_orders", "_ticks", "capacity", "order_capacity", "stamps")

    def __init__(self, capacity: int = 65536) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise InvalidCapacity(f"TickClock capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self.order_capacity = max(1, capacity // _ORDER_RING_DIVISOR)
        self._ticks = _Ring(capacity, len(STAGES))
        # Every ring keeps its stamps in time order: received, decided, sent / sent, acked.
        self._orders = _Ring(self.order_capacity, 3)
        self._acks = _Ring(self.order_capacity, 2)
        self.stamps: np.ndarray = self._ticks.rows
        """int64 ``[capacity, 4]``, columns :data:`STAGES`; write row :attr:`slot`, then
        :meth:`advance`."""

    @property
    def slot(self) -> int:
        """The row of :attr:`stamps` the next tick writes."""
        return self._ticks.head % self.capacity

    def advance(self) -> None:
        """Publish the row at :attr:`slot` after writing it in place (e.g. from a kernel)."""
        self._ticks.head += 1

    def commit(self, received_ns: int, decoded_ns: int, applied_ns: int, decided_ns: int) -> None:
        """Record one tick's stamps; overwrites the oldest unflushed row when full."""
        ring = self._ticks
        head = ring.head
        i = (head % ring.capacity) * 4
        flat = ring.flat
        flat[i] = received_ns
        flat[i + 1] = decoded_ns
        flat[i + 2] = applied_ns
        flat[i + 3] = decided_ns
        ring.head = head + 1

    def order_sent(self, decided_ns: int, sent_ns: int, received_ns: int) -> None:
        """Record an order request written to the venue, with its tick's stamps."""
        ring = self._orders
        head = ring.head
        i = (head % ring.capacity) * 3
        flat = ring.flat
        flat[i] = received_ns
        flat[i + 1] = decided_ns
        flat[i + 2] = sent_ns
        ring.head = head + 1

    def acked(self, sent_ns: int, acked_ns: int) -> None:
        """Record the venue's ack of an order on the execution stream."""
        ring = self._acks
        head = ring.head
        i = (head % ring.capacity) * 2
        flat = ring.flat
        flat[i] = sent_ns
        flat[i + 1] = acked_ns
        ring.head = head + 1

    @property
    def overwritten(self) -> dict[str, int]:
        """Rows lost before a flush reached them, per ring (:data:`RINGS`)."""
        return {
            "tick": self._ticks.overwritten,
            "order": self._orders.overwritten,
            "ack": self._acks.overwritten,
        }

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pending rows of the tick, order and ack rings, oldest first; each row once.

        Columns are in time order: :data:`STAGES`; received, decided, sent; sent, acked.
        """
        return self._ticks.drain(), self._orders.drain(), self._acks.drain()


class _StageLatencyCollector(Collector):
    """Bucket counts of every stage, folded in bulk and exposed as one histogram family.

    :meth:`fold` runs on the engine's thread, :meth:`collect` on the HTTP server's; the
    lock only guards that hand-over.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = np.zeros((len(LATENCY_STAGES), _N_BINS), dtype=np.int64)
        self._sums_ns = [0] * len(LATENCY_STAGES)  # Python ints: exact, never overflow
        self._overwritten = dict.fromkeys(RINGS, 0)
        self._invalid = dict.fromkeys(RINGS, 0)
        # The latest samples per stage, for the recent percentiles the state publisher
        # reports (the histograms hold everything since start).
        self.recent: dict[str, deque[int]] = {
            s: deque(maxlen=RECENT_SAMPLES) for s in LATENCY_STAGES
        }
        # Their percentiles, kept until the next fold: the publisher asks at every flush,
        # more often than the samples change.
        self._recent_ms: dict[str, float] | None = None

    def fold(
        self,
        stages: tuple[str, ...],
        durations_ns: np.ndarray,
        ring: str,
        invalid: int,
        overwritten: int,
    ) -> None:
        """Add ``durations_ns`` (``[rows, len(stages)]``) to the named stages' histograms."""
        columns = len(stages)
        bins = np.searchsorted(_BOUNDS_NS, durations_ns, side="left")  # first bound >= d
        # One bincount for all columns: shift each column into its own block of bins.
        bins += np.arange(columns, dtype=bins.dtype) * _N_BINS
        counts = np.bincount(bins.ravel(), minlength=columns * _N_BINS).reshape(columns, _N_BINS)
        # float64 cannot overflow and is exact below 2**53 ns (104 days) per flush.
        sums = [round(s) for s in durations_ns.sum(axis=0, dtype=np.float64)]
        rows = [_STAGE_INDEX[stage] for stage in stages]
        for k, stage in enumerate(stages):
            self.recent[stage].extend(durations_ns[:, k].tolist())
        self._recent_ms = None
        with self._lock:
            self._counts[rows] += counts
            for row, total in zip(rows, sums, strict=True):
                self._sums_ns[row] += total
            self._invalid[ring] += invalid
            self._overwritten[ring] = overwritten

    def recent_ms(self) -> dict[str, float]:
        """p50/p95/p99 of each stage over :attr:`recent`, in ms (a new dict each call)."""
        if self._recent_ms is None:
            out: dict[str, float] = {}
            for stage, samples in self.recent.items():
                if samples:
                    p50, p95, p99 = np.percentile(np.fromiter(samples, np.int64), (50, 95, 99))
                    out[f"{stage}_p50"] = round(float(p50) / 1e6, 4)
                    out[f"{stage}_p95"] = round(float(p95) / 1e6, 4)
                    out[f"{stage}_p99"] = round(float(p99) / 1e6, 4)
            self._recent_ms = out
        return dict(self._recent_ms)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(
            "flashmm_stage_latency_seconds", _LATENCY_HELP, labels=["stage"]
        )
        yield CounterMetricFamily(
            "flashmm_latency_ring_overwrites", _OVERWRITES_HELP, labels=["ring"]
        )
        yield CounterMetricFamily("flashmm_latency_rows_invalid", _INVALID_HELP, labels=["ring"])

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = self._counts.cumsum(axis=1)
            sums_ns = list(self._sums_ns)
            overwritten = dict(self._overwritten)
            invalid = dict(self._invalid)
        latency = HistogramMetricFamily(
            "flashmm_stage_latency_seconds", _LATENCY_HELP, labels=["stage"]
        )
        for i, stage in enumerate(LATENCY_STAGES):
            buckets = [(le, float(n)) for le, n in zip(_LE_LABELS, counts[i], strict=True)]
            latency.add_metric([stage], buckets, sums_ns[i] / 1e9)
        yield latency
        lost = CounterMetricFamily(
            "flashmm_latency_ring_overwrites", _OVERWRITES_HELP, labels=["ring"]
        )
        bad = CounterMetricFamily("flashmm_latency_rows_invalid", _INVALID_HELP, labels=["ring"])
        for ring in RINGS:
            lost.add_metric([ring], overwritten[ring])
            bad.add_metric([ring], invalid[ring])
        yield lost
        yield bad


_LATENCY_HELP = (
    "Time from the previous stage of a tick to this one (tick_to_order: received -> sent)."
)
_OVERWRITES_HELP = "Latency stamps overwritten before a flush folded them (ring too small)."
_INVALID_HELP = "Latency rows dropped because a stamp is earlier than the stage before it."


def _in_time_order(stamps: np.ndarray) -> tuple[np.ndarray, int]:
    """The rows whose stamps are set (> 0) and never go backwards, and how many were not."""
    # Either is a bug upstream (a stage left unstamped, stamps swapped), not a latency.
    ok = (stamps[:, 0] > 0) & (np.diff(stamps, axis=1) >= 0).all(axis=1)
    return stamps[ok], int(ok.size - np.count_nonzero(ok))


class QuoteUptime:
    """Fraction of wall time each (market, side) had a live quote; set_live(market, side,
    live, now_ns), ratio(market, side, now_ns).

    Time counts from ``start_ns`` (``time.monotonic_ns()`` when omitted); a pair never set
    live has ratio 0.
    """

    def __init__(self, start_ns: int | None = None) -> None:
        self.start_ns = time.monotonic_ns() if start_ns is None else start_ns
        # (market, side) -> [live ns before the current live stretch, start of it or -1,
        # the latest stamp seen]
        self._state: dict[tuple[str, str], list[int]] = {}

    def _check_time(self, key: tuple[str, str], now_ns: int) -> None:
        last = self._state[key][2] if key in self._state else self.start_ns
        if now_ns < last:
            raise ClockWentBackwards(
                f"quote uptime of {key[0]} {key[1]}: now_ns {now_ns} is before {last}; "
                "pass time.monotonic_ns() stamps"
            )

    def set_live(self, market: str, side: str, live: bool, now_ns: int) -> None:
        """Record that the (market, side) quote is live (or not) from ``now_ns`` on."""
        _check_label("side", side, SIDES)
        key = (market, side)
        self._check_time(key, now_ns)
        state = self._state.setdefault(key, [0, -1, now_ns])
        if live and state[1] < 0:
            state[1] = now_ns
        elif not live and state[1] >= 0:
            state[0] += now_ns - state[1]
            state[1] = -1
        state[2] = now_ns

    def ratio(self, market: str, side: str, now_ns: int) -> float:
        """Live time over elapsed time since start; the current state when none elapsed."""
        _check_label("side", side, SIDES)
        key = (market, side)
        self._check_time(key, now_ns)
        if key not in self._state:
            return 0.0
        live_ns, since, _ = self._state[key]
        if since >= 0:
            live_ns += now_ns - since
        elapsed = now_ns - self.start_ns
        if elapsed == 0:
            return 1.0 if since >= 0 else 0.0
        return live_ns / elapsed

    def pairs(self) -> list[tuple[str, str]]:
        """Every (market, side) seen by :meth:`set_live`."""
        return list(self._state)


class EngineMetrics:
    """Every metric the engine exports, in one registry, and the HTTP server for it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            # The default registry's process metrics (memory, CPU, fds), which an own
            # registry would otherwise lose.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        self.clock = TickClock()
        self.uptime = QuoteUptime()
        """Feeds ``flashmm_quote_uptime_ratio`` at each :meth:`update_quote_uptime`."""
        self._latency = _StageLatencyCollector()
        registry.register(self._latency)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.feed_events = counter(
            "flashmm_feed_events_total",
            "Market-data events that need a reaction (gap, crossed, stale, resync, ...).",
            ("market", "event"),
        )
        self.orders = counter("flashmm_orders_total", "Orders sent.", ("market", "side"))
        self.cancels = counter(
            "flashmm_cancels_total",
            "Orders cancelled (own request or venue).",
            ("market", "origin"),
        )
        self.fills = counter("flashmm_fills_total", "Fills.", ("market", "side", "liquidity"))
        self.rejects = counter(
            "flashmm_rejects_total", "Orders rejected, by venue code.", ("market", "code")
        )
        self.venue_failures = counter(
            "flashmm_venue_failures_total", "Failed venue requests, by kind.", ("kind",)
        )
        self.risk_transitions = counter(
            "flashmm_risk_transitions_total", "Risk-state changes, by new state.", ("to_state",)
        )
        self.book_staleness = gauge(
            "flashmm_book_staleness_seconds", "Time since the book last changed.", ("market",)
        )
        self.quote_uptime = gauge(
            "flashmm_quote_uptime_ratio",
            "Fraction of time since start with a live quote.",
            ("market", "side"),
        )
        self.order_to_fill = gauge(
            "flashmm_order_to_fill_ratio", "Orders sent per fill.", ("market",)
        )
        self.inventory = gauge("flashmm_inventory", "Position in base units.", ("market",))
        self.pnl = gauge(
            "flashmm_pnl",
            "PnL in quote currency by kind; market 'total' sums the markets.",
            ("market", "kind"),
        )
        self.risk_state = gauge(
            "flashmm_risk_state",
            "Risk state: " + ", ".join(f"{i} {s}" for i, s in enumerate(RISK_STATES)),
        )
        self.risk_state_info = gauge(
            "flashmm_risk_state_info", "1 for the current risk state, 0 for the others.", ("state",)
        )
        self.open_orders = gauge("flashmm_open_orders", "Live orders.", ("market", "side"))
        self.breaker_state = gauge(
            "flashmm_venue_breaker_open", "1 while the venue circuit breaker is open."
        )
        self.markout = gauge(
            "flashmm_markout_bps", "Mean markout of fills at a horizon.", ("market", "horizon")
        )
        self.state_dropped = counter(
            "flashmm_state_dropped_total",
            "What the state publisher dropped while Redis was slow or down: queued events by "
            "channel, and failed flushes.",
            ("kind",),
        )

        # Series with a known label set exist from the start, so the first increment is
        # visible to increase() and dashboards have no holes.
        for kind in VENUE_FAILURE_KINDS:
            self.venue_failures.labels(kind)
        for state in RISK_STATES:
            self.risk_transitions.labels(state)
        for kind in PNL_KINDS:
            self.pnl.labels(PNL_TOTAL_MARKET, kind)
        self.set_risk_state("active")

    def add_market(self, market: str) -> None:
        """Create the market's series with a known label set at zero."""
        if market == PNL_TOTAL_MARKET:
            raise UnknownLabel(f"market {market!r} is reserved for the PnL total over markets")
        for event in FEED_EVENTS:
            self.feed_events.labels(market, event)
        for side in SIDES:
            self.orders.labels(market, side)
            self.open_orders.labels(market, side)
            self.quote_uptime.labels(market, side)
            for liquidity in LIQUIDITIES:
                self.fills.labels(market, side, liquidity)
        for origin in ORDER_ORIGINS:
            self.cancels.labels(market, origin)
        for kind in PNL_KINDS:
            self.pnl.labels(market, kind)
        self.book_staleness.labels(market)
        self.order_to_fill.labels(market)
        self.inventory.labels(market)

    def set_risk_state(self, state: str) -> None:
        """Set ``flashmm_risk_state`` and ``flashmm_risk_state_info`` together."""
        _check_label("risk state", state, RISK_STATES)
        for name in RISK_STATES:
            self.risk_state_info.labels(name).set(1 if name == state else 0)
        self.risk_state.set(RISK_STATES.index(state))

    def flush(self) -> int:
        """Fold the clock's pending rows into the latency histograms; returns the rows
        folded (tick + order + ack). A row is folded once; a row whose stamps are unset or
        go backwards is dropped and counted in ``flashmm_latency_rows_invalid_total``.
        """
        (ticks, bad_ticks), (orders, bad_orders), (acks, bad_acks) = (
            _in_time_order(rows) for rows in self.clock.drain()
        )
        overwritten = self.clock.overwritten
        folded = 0
        for ring, stages, intervals, invalid in (
            ("tick", STAGES[1:], np.diff(ticks, axis=1), bad_ticks),
            (
                "order",
                ("order_sent", "tick_to_order"),
                np.column_stack((orders[:, 2] - orders[:, 1], orders[:, 2] - orders[:, 0])),
                bad_orders,
            ),
            ("ack", ("acked",), acks[:, 1:] - acks[:, :1], bad_acks),
        ):
            self._latency.fold(stages, intervals, ring, invalid, overwritten[ring])
            folded += intervals.shape[0]
        return folded

    def recent_latency_ms(self) -> dict[str, float]:
        """p50/p95/p99 of each stage over its latest samples, in ms: ``{"decided_p95": ...}``."""
        return self._latency.recent_ms()

    def update_quote_uptime(self, now_ns: int) -> None:
        """Set ``flashmm_quote_uptime_ratio`` of every pair :attr:`uptime` has seen, at
        ``now_ns`` (the clock of its stamps)."""
        ratios = [(pair, self.uptime.ratio(*pair, now_ns)) for pair in self.uptime.pairs()]
        for (market, side), ratio in ratios:  # all or nothing if now_ns is too early
            self.quote_uptime.labels(market, side).set(ratio)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start prometheus_client's HTTP server in a daemon thread; returns the bound port."""
        if self._server is not None:
            raise MetricsServerError(
                f"metrics already served on port {self._server.server_port}; call close() first"
            )
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise MetricsServerError(
                f"cannot serve metrics on {host}:{port}: {err.strerror or err}; "
                "choose a free port (0 picks one)"
            ) from err
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop the HTTP server, if running; takes up to its 0.5 s poll interval."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None
