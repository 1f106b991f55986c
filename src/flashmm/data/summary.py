"""What ``flashmm data info`` reports about an event file (and ``convert`` after writing one)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np

from flashmm.data.events import EventFile, EventHeader, EventKind, batch_bounds

__all__ = ["FileInfo", "KindCount", "summarize"]


class KindCount(msgspec.Struct):
    rows: int
    batches: int


class FileInfo(msgspec.Struct):
    """What ``flashmm data info --json`` prints."""

    path: str
    header: EventHeader
    rows: int
    batches: int
    kinds: dict[str, KindCount]
    local_first_ns: int | None
    local_last_ns: int | None
    exch_first_ns: int | None
    exch_last_ns: int | None
    duration_s: float
    trade_price_min: str | None
    trade_price_max: str | None
    level_price_min: str | None
    level_price_max: str | None
    first_seq: int | None
    last_seq: int | None


def summarize(path: Path, file: EventFile) -> FileInfo:
    """Rows and batches by kind, time span, price ranges and sequences of ``file``."""
    header, ev = file.header, file.events
    kind = ev["kind"]
    starts, ends = batch_bounds(ev)
    rows_by_kind = np.bincount(kind, minlength=len(EventKind) + 1)
    batches_by_kind = np.bincount(kind[ends - 1], minlength=len(EventKind) + 1)
    kinds = {
        k.name: KindCount(int(rows_by_kind[k]), int(batches_by_kind[k]))
        for k in EventKind
        if rows_by_kind[k]
    }
    depth = (kind == EventKind.DEPTH_SNAPSHOT) | (kind == EventKind.DEPTH_DELTA)
    levels = ev["price"][depth & (ev["side"] != 0)]
    trades = ev["price"][kind == EventKind.TRADE]
    seqs = ev["seq"][depth]
    market_rows = ev[depth | (kind == EventKind.TRADE)]
    local, exch = ev["local_ts"], market_rows["exch_ts"]

    def price(values: np.ndarray, pick: str) -> str | None:
        if values.size == 0:
            return None
        ticks = int(values.min() if pick == "min" else values.max())
        return f"{header.to_price(ticks):.{header.price_decimals}f}"

    return FileInfo(
        path=str(path),
        header=header,
        rows=len(ev),
        batches=len(starts),
        kinds=kinds,
        local_first_ns=int(local[0]) if len(ev) else None,
        local_last_ns=int(local[-1]) if len(ev) else None,
        exch_first_ns=int(exch.min()) if len(exch) else None,
        exch_last_ns=int(exch.max()) if len(exch) else None,
        duration_s=(int(local[-1]) - int(local[0])) / 1e9 if len(ev) else 0.0,
        trade_price_min=price(trades, "min"),
        trade_price_max=price(trades, "max"),
        level_price_min=price(levels, "min"),
        level_price_max=price(levels, "max"),
        first_seq=int(seqs[0]) if len(seqs) else None,
        last_seq=int(seqs[-1]) if len(seqs) else None,
    )
