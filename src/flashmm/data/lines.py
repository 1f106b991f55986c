"""Line-oriented recorded files: plain or gzip, with progress in bytes of the file on disk."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

_PROGRESS_EVERY = 4096  # lines between progress callbacks


def read_lines(
    path: str | Path, on_progress: Callable[[int], None] | None = None
) -> Iterator[tuple[int, bytes]]:
    """``(line_no, line)`` pairs, line numbers from 1; blank lines are skipped.

    A ``.gz`` file (detected by its magic bytes, not its name) is decompressed on the
    fly. ``on_progress`` receives the bytes of the file on disk consumed so far.
    """
    with Path(path).open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
        for line_no, line in enumerate(stream, 1):
            if on_progress is not None and line_no % _PROGRESS_EVERY == 0:
                on_progress(raw.tell())
            if line.strip():
                yield line_no, line
        if on_progress is not None:
            on_progress(raw.tell())
