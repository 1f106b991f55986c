"""FlashMM: a predictive market maker for central-limit order books."""

from __future__ import annotations

__version__ = "0.1.0"
