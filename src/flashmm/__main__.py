from __future__ import annotations

from flashmm.cli import main

main()
