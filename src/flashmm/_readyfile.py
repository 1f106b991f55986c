"""The ready file every long-running FlashMM process writes once it serves."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_ready_file(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (a reader never sees half of it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def serving_ready_file(
    path: str | os.PathLike[str] | None, payload: dict[str, Any]
) -> Iterator[None]:
    """Write the ready file on entry and remove it on exit (``path`` None: neither).

    Exit after the server has stopped: nobody should wait on a stopped server.
    """
    if path is None:
        yield
        return
    write_ready_file(path, payload)
    try:
        yield
    finally:
        Path(path).unlink(missing_ok=True)
