"""``flashmm data``: convert recordings into event files and inspect them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flashmm._console import (
    FormatOption,
    LotSizeOption,
    ProgressOption,
    TickSizeOption,
    err,
    fail,
    file_progress,
    out,
)

if TYPE_CHECKING:
    from flashmm.data.events import EventKind
    from flashmm.data.summary import KindCount

# numpy, the event format and the book behind it are imported inside the commands: this
# module is loaded by every ``flashmm`` invocation (``version``, ``--help``), which should
# not pay for them.

app = typer.Typer(
    name="data",
    help="Recorded market data: convert it into event files (.npz) and inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def convert(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Recorded file(s): one continuous recording, in order.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Event file to write (.npz).")],
    fmt: FormatOption = "auto",
    market: Annotated[
        str | None,
        typer.Option(
            help="Market id to record (frames: which market, default the first seen; "
            "binance: the name to store, default the stream symbol)."
        ),
    ] = None,
    tick_size: TickSizeOption = None,
    lot_size: LotSizeOption = None,
    progress: ProgressOption = True,
) -> None:
    """Convert recorded market data into an event file; nothing is written on error."""
    from flashmm.data.convert import ConvertError, InputFormat
    from flashmm.data.convert import convert as run_convert
    from flashmm.data.events import EventFileError, EventKind, save_events
    from flashmm.data.summary import summarize

    try:
        input_format = InputFormat(fmt)
    except ValueError:
        raise fail(f"--format must be one of: {', '.join(f.value for f in InputFormat)}") from None
    if output.is_dir():
        raise fail(f"{output} is a directory; name the .npz file to write")
    if not output.parent.is_dir():
        raise fail(f"{output.parent}: no such directory")
    if any(output.resolve() == path.resolve() for path in inputs):
        raise fail(f"{output} is also an input; write the events to another file")

    started = time.perf_counter()
    try:
        with file_progress("convert", list(inputs), progress) as on_progress:
            result = run_convert(
                list(inputs),
                fmt=input_format,
                market=market,
                tick_size=tick_size,
                lot_size=lot_size,
                on_progress=on_progress,
            )
    except ConvertError as exc:
        raise fail(str(exc)) from None
    try:
        save_events(output, result.file.header, result.file.events)
    except EventFileError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror or exc}") from None
    elapsed = time.perf_counter() - started

    info = summarize(output, result.file)
    header = result.file.header
    kinds = info.kinds
    err.print(
        f"wrote {output}: {header.market}, tick {header.tick_size:g}, lot {header.lot_size:g}; "
        f"{info.rows:,} rows: {_batches(kinds, EventKind.DEPTH_SNAPSHOT)} snapshots, "
        f"{_batches(kinds, EventKind.DEPTH_DELTA)} depth updates, "
        f"{_batches(kinds, EventKind.TRADE)} trades over {_duration(info.duration_s)}; "
        f"{elapsed:.2f} s",
        markup=False,
    )
    if result.dropped_stale:
        err.print(
            f"left out {_plural(result.dropped_stale, 'depth update')} the book already "
            "contained (older than its snapshot)",
            markup=False,
        )
    if result.dropped_unsynced:
        err.print(
            f"left out {_plural(result.dropped_unsynced, 'depth update')} that came before "
            "the first snapshot",
            markup=False,
        )
    if result.other_markets:
        others = ", ".join(f"{k} ({v})" for k, v in sorted(result.other_markets.items()))
        err.print(f"events of other markets left out: {others}", markup=False)


def _plural(count: int, noun: str) -> str:
    suffix = "" if count == 1 else ("es" if noun.endswith("ch") else "s")
    return f"{count:,} {noun}{suffix}"


def _batches(kinds: dict[str, KindCount], kind: EventKind) -> str:
    count = kinds.get(kind.name)
    return f"{count.batches if count else 0:,}"


def _utc(ns: int | None) -> str:
    if ns is None:
        return "-"
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{frac // 1_000_000:03d} UTC"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:04.1f}s"
    if minutes:
        return f"{minutes}m {secs:04.1f}s"
    return f"{secs:.3f}s"


def _span(low: str | int | None, high: str | int | None) -> str:
    return "-" if low is None else f"{low} to {high}"


@app.command()
def info(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Event file (.npz).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Describe an event file: market, rows by kind, batches, time span, prices, sequences."""
    import msgspec

    from flashmm.data.events import EventFileError, load_events
    from flashmm.data.summary import summarize

    try:
        loaded = load_events(file)
    except EventFileError as exc:
        raise fail(str(exc)) from None
    summary = summarize(file, loaded)
    if as_json:
        typer.echo(msgspec.json.encode(summary).decode())
        return
    h = summary.header
    lines = [
        ("file", summary.path),
        ("market", f"{h.market} (tick {h.tick_size:g}, lot {h.lot_size:g})"),
        ("source", f"{h.source}: {', '.join(h.inputs) or '-'}"),
        ("format", f"version {h.version}, written by {h.created_by}"),
        ("rows", f"{summary.rows:,} in {_plural(summary.batches, 'batch')}"),
        *(
            (f"  {name}", f"{_plural(c.rows, 'row')} in {_plural(c.batches, 'batch')}")
            for name, c in summary.kinds.items()
        ),
        ("local time", f"{_utc(summary.local_first_ns)} to {_utc(summary.local_last_ns)}"),
        ("duration", _duration(summary.duration_s)),
        ("exchange time", f"{_utc(summary.exch_first_ns)} to {_utc(summary.exch_last_ns)}"),
        ("trade prices", _span(summary.trade_price_min, summary.trade_price_max)),
        ("book prices", _span(summary.level_price_min, summary.level_price_max)),
        ("sequence", _span(summary.first_seq, summary.last_seq)),
    ]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        out.print(f"{key:<{width}}  {value}", markup=False)
