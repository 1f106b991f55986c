"""Regenerate the packaged sample event file from the hftbacktest Binance spot captures.

    python scripts/make_sample.py SOURCE [SOURCE ...] [-o OUT.npz] [--max-bytes N]

SOURCE is ``spot/btcusdt_20240808.gz`` of github.com/nkaz001/hftbacktest (commit
``c4183c646c744222812405fb3618a39ab75a4a8d``), optionally followed by its continuation
``spot/btcusdt_20240809.gz``. The packaged sample is made from both. The recording is
converted as market ``BTC/USDT`` (tick 0.01, lot 0.000001) and, if the file would be
larger than ``--max-bytes``, cut at the latest batch boundary that fits.

Deterministic: the same inputs give the same file, byte for byte.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from flashmm.data.convert import InputFormat, convert
from flashmm.data.events import batch_bounds, save_events

DEFAULT_OUT = (
    Path(__file__).resolve().parent.parent
    / "src"
    / "flashmm"
    / "data"
    / "samples"
    / "btcusdt_spot_20240808.npz"
)
MARKET = "BTC/USDT"
TICK_SIZE = 0.01
LOT_SIZE = 0.000001


def cut(events: np.ndarray, end_ns: int) -> np.ndarray:
    """The whole batches that arrived before ``end_ns``."""
    _, ends = batch_bounds(events)
    keep = np.searchsorted(events["local_ts"][ends - 1], end_ns, side="left")
    return events[: int(ends[keep - 1])] if keep else events[:0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="capture(s), in order")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-bytes", type=int, default=2_000_000)
    args = parser.parse_args()

    result = convert(
        args.sources,
        fmt=InputFormat.BINANCE,
        market=MARKET,
        tick_size=TICK_SIZE,
        lot_size=LOT_SIZE,
    )
    header, events = result.file.header, result.file.events

    def fits(rows: np.ndarray) -> bool:
        save_events(args.output, header, rows)
        return args.output.stat().st_size <= args.max_bytes

    first, last = int(events["local_ts"][0]), int(events["local_ts"][-1]) + 1
    if not fits(events):
        # Bisect the end time to a 1/4096 of the span: as many minutes as fit.
        lo, hi = first, last
        for _ in range(12):
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(cut(events, mid)) else (lo, mid)
        events = cut(events, lo)
        if not len(events) or not fits(events):
            raise SystemExit(f"not even the first batches fit in {args.max_bytes:,} bytes")
    size = args.output.stat().st_size
    minutes = (int(events["local_ts"][-1]) - first) / 60e9 if len(events) else 0.0
    print(f"{args.output}: {len(events):,} rows, {minutes:.1f} min, {size:,} bytes")


if __name__ == "__main__":
    main()
