"""Run the simulator: exchange, market-data server and order-entry server on one loop.

:class:`SimServer` is what ``flashmm sim`` runs and what tests start in-process. Once
every socket listens, the replay files are loaded and the market flows run, it writes
the ready file: ``{"pid", "service", "urls": {...}, "markets": [...]}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import uvicorn

from flashmm.venue.sim.config import SimConfig
from flashmm.venue.sim.exchange import Exchange
from flashmm.venue.sim.market_data import MarketDataServer
from flashmm.venue.sim.rest import create_app

__all__ = ["SimServer"]

log = logging.getLogger("flashmm.sim")


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn as one part of a process: signals belong to the process that embeds it."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


class SimServer:
    """The whole simulator; ``async with SimServer(config) as sim:`` in tests."""

    def __init__(self, config: SimConfig, *, run_flows: bool = True) -> None:
        self.config = config
        self.exchange = Exchange(config)
        self.market_data = MarketDataServer(
            self.exchange.market_formats(),
            self.exchange.book_state,
            self.exchange.market_status,
            max_message_bytes=config.server.max_request_bytes,
        )
        self.exchange.market_data = self.market_data
        self.run_flows = run_flows
        self.urls: dict[str, str] = {}
        self._uvicorn: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> dict[str, str]:
        """Listen on every socket and start the market flows; returns the URLs served."""
        server = self.config.server
        host = server.host
        if self.run_flows:
            self.exchange.load_replays()  # a bad file stops us before any socket opens
        self.urls["market_data"] = await self.market_data.start(host, server.market_data_port)
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
        # TCP, and without it Nagle + delayed ACK hold every answer back ~40 ms.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, server.order_entry_port))
        sock.listen(128)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        app = create_app(self.exchange, max_request_bytes=server.max_request_bytes)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            http="httptools",
            ws="websockets-sansio",
            ws_max_size=server.max_request_bytes,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._uvicorn = _EmbeddedUvicorn(config)
        self._tasks.append(asyncio.create_task(self._uvicorn.serve(sockets=[sock])))
        while not self._uvicorn.started:
            if self._tasks[0].done():
                self._tasks[0].result()  # raises what stopped it
            await asyncio.sleep(0.005)
        base = f"http://{host}:{port}"
        self.urls.update(
            order_entry=base,
            stream=f"ws://{host}:{port}/v1/stream",
            admin=f"{base}/admin",
        )
        if self.run_flows:
            self._tasks.append(asyncio.create_task(self.exchange.run()))
        return dict(self.urls)

    def ready_payload(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "service": "sim",
            "urls": dict(self.urls),
            "markets": [m.market_id for m in self.config.markets],
        }

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Until ``stop`` is set, or a task ends (it raises what stopped that task)."""
        waiters: set[asyncio.Future[Any]] = set(self._tasks)
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopper is not None:
            waiters.add(stopper)
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
        for task in done:
            if task is not stopper:
                task.result()

    async def stop(self) -> None:
        """Close every connection and socket; returns once all is closed."""
        tasks = self._tasks
        if self._uvicorn is not None and tasks and not tasks[0].done():
            # uvicorn notices should_exit only on its next 0.1 s tick: cancel its main
            # loop and run its shutdown (close listeners and connections) right away.
            self._uvicorn.should_exit = self._uvicorn.force_exit = True
            tasks[0].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[0]
            await self._uvicorn.shutdown()
        for task in tasks[1:]:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # already reported by wait(); stopping must not fail
                log.exception("simulator task failed")
        await self.market_data.close()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
