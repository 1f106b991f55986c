"""Event files of real market data shipped with FlashMM (see ``README.md`` here).

A sample is an event file (:mod:`flashmm.data.events`); open it with
``load_events(sample_path())``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["DEFAULT_SAMPLE", "list_samples", "sample_path"]

DEFAULT_SAMPLE = "btcusdt_spot_20240808"
"""Binance spot BTCUSDT, 2024-08-08 23:54 to 2024-08-09 00:05 UTC, as market ``BTC/USDT``."""


def list_samples() -> list[str]:
    """Names of the packaged samples, sorted."""
    return sorted(
        entry.name.removesuffix(".npz")
        for entry in files(__name__).iterdir()
        if entry.name.endswith(".npz")
    )


def sample_path(name: str = DEFAULT_SAMPLE) -> Path:
    """The file of the sample ``name``; ``LookupError`` lists the samples if there is none."""
    resource = files(__name__).joinpath(f"{name}.npz")
    if not resource.is_file():
        raise LookupError(f"no sample {name!r}; the samples are: {', '.join(list_samples())}")
    if not isinstance(resource, Path):
        # Only a zipped install lacks real files; the event loader needs a path.
        raise LookupError(f"sample {name!r} is inside an archive; install flashmm unzipped")
    return resource
