"""The ``flashmm api`` sidecar: REST, WebSockets and metrics over the engine's Redis state.

It never touches the engine's memory: it reads what the engine publishes and sends
commands through the Redis command stream, waiting for the engine's ack.
"""

from __future__ import annotations

from flashmm.api._app import create_app
from flashmm.api._auth import InsecureSecret, Scope, mint_token
from flashmm.api._ratelimit import InvalidRateLimit
from flashmm.api._server import ApiStartError, serve

__all__ = [
    "ApiStartError",
    "InsecureSecret",
    "InvalidRateLimit",
    "Scope",
    "create_app",
    "mint_token",
    "serve",
]
