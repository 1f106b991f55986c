"""What the ``flashmm`` commands share: the consoles, failing, file options, progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

err = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console(soft_wrap=True, highlight=False)  # a command's report on stdout

FormatOption = Annotated[
    str, typer.Option("--format", help="auto, binance (capture) or frames (venue frames).")
]
TickSizeOption = Annotated[
    float | None, typer.Option(help="Price increment; inferred from the data if omitted.")
]
LotSizeOption = Annotated[
    float | None, typer.Option(help="Size increment; inferred from the data if omitted.")
]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar on stderr.")]


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the result to exit with code 2."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code=2)


@contextmanager
def file_progress(label: str, paths: list[Path], show: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar over the bytes of ``paths`` read in order (shown on a terminal only).

    Yields the callback a reader calls with the bytes read so far of its current file.
    """
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not (show and err.is_terminal),
    )
    done_before = 0
    last_file_bytes = 0
    with bar:
        task = bar.add_task(label, total=sum(p.stat().st_size for p in paths))

        def on_progress(file_bytes: int) -> None:
            nonlocal done_before, last_file_bytes
            if file_bytes < last_file_bytes:  # the next file started
                done_before += last_file_bytes
            last_file_bytes = file_bytes
            bar.update(task, completed=done_before + file_bytes)

        yield on_progress
