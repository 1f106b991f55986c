"""``WS /ws/live-metrics``: per-channel subscriptions with sequence numbers and resume.

Client -> server::

    {"action": "subscribe", "channels": ["orders", "fills"], "since": {"orders": 41}}
    {"action": "unsubscribe", "channels": ["fills"]}
    {"action": "ping"}

Server -> client: ``{"channel", "seq", "timestamp", "data"}`` per event. Subscribing to a
channel without ``since`` first sends a snapshot, ``{"channel", "seq", "timestamp",
"snapshot": true, "data": [...]}``, whose ``seq`` is the channel's newest event at that
time; with ``since`` the events after it are replayed from history, or, when some are
gone, a snapshot with a ``reason`` comes instead. Control answers carry ``type``
(``subscribed``, ``unsubscribed``, ``pong``, ``error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
import redis.exceptions
from fastapi import WebSocket, WebSocketDisconnect

from flashmm.api._clock import rfc3339, rfc3339_now
from flashmm.api._context import ApiContext
from flashmm.api._errors import close_websocket
from flashmm.api._hub import Subscriber
from flashmm.api._state import HistoryEntry
from flashmm.api._views import (
    event_data,
    fill_data,
    json_bytes,
    order_data,
    position_data,
    trading_data,
)
from flashmm.api._wsgate import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    admit,
    failure_reason,
)
from flashmm.state.keys import LIVE_CHANNELS, LiveChannel
from flashmm.state.schema import EngineState

__all__ = ["hub_session", "live_metrics", "run_session", "snapshot_data"]

log = logging.getLogger("flashmm.api")

_SNAPSHOT_EVENTS = 50
"""Recent fills and alerts in a snapshot (those channels have no 'latest state')."""
_CLOSE_TIMEOUT_S = 5.0


class _ClientMessage(msgspec.Struct, forbid_unknown_fields=True):
    action: Literal["subscribe", "unsubscribe", "ping"]
    channels: list[LiveChannel] = []
    since: dict[LiveChannel, int] = {}


_decode_client = msgspec.json.Decoder(_ClientMessage)


class _CatchUp(msgspec.Struct, frozen=True):
    """Queued where a subscription starts, so its history goes out before its live events."""

    channel: LiveChannel
    since: int | None


def render_event(channel: str, item: HistoryEntry | EngineState) -> bytes | None:
    if not isinstance(item, HistoryEntry):
        return None
    data = event_data(item.event)
    if data is None:
        return None
    return json_bytes(
        {
            "channel": channel,
            "seq": item.seq,
            "timestamp": rfc3339(item.event.ts_ns),
            "data": data,
        }
    )


async def snapshot_data(ctx: ApiContext, channel: LiveChannel) -> list[dict[str, Any]]:
    """The channel's latest state, each item in the shape of the channel's events."""
    reader = ctx.reader
    if channel == "fills":
        return [fill_data(f) for f in reversed(await reader.fills(_SNAPSHOT_EVENTS))]
    if channel == "alerts":
        recent = await reader.recent(ctx.keys.history("alerts"), _SNAPSHOT_EVENTS)
        return [d for d in (event_data(e.event) for e in recent) if d is not None]
    read = await ctx.state.current()
    state, snaps = read.state, read.snapshots
    if state is None:
        return []
    if channel == "trading":
        return [trading_data(s) for s in snaps.values()]
    if channel == "positions":
        return [position_data(s.position) for s in snaps.values()]
    if channel == "predictions":
        return [
            {
                "symbol": s.symbol,
                "prediction": s.inputs.direction,
                "confidence": s.inputs.confidence,
                "horizon_ms": state.model.horizon_ms,
                "price_change_bps": s.inputs.price_change_bps,
                "model_version": state.model.version,
            }
            for s in snaps.values()
            if s.inputs is not None
        ]
    expected = sum(s.open_orders for s in snaps.values())
    return [order_data(o) for o in await reader.orders(None, 1000, expected)]


class _Session:
    """One live-metrics client: a receiver, a sender, and the subscriber between them."""

    def __init__(self, websocket: WebSocket, ctx: ApiContext) -> None:
        self.ws = websocket
        self.ctx = ctx
        self.sub = Subscriber(render_event, ctx.config.api.ws_send_queue)
        self.last_sent: dict[str, int] = {}

    def control(self, message: dict[str, Any]) -> None:
        self.sub.offer_control(json_bytes(message))

    async def send(self, message: bytes) -> None:
        await self.ws.send_text(message.decode())

    async def receive(self) -> None:
        async for text in self.ws.iter_text():
            try:
                message = _decode_client.decode(text)
            except msgspec.DecodeError as exc:
                self.control(
                    {
                        "type": "error",
                        "code": "INVALID_MESSAGE",
                        "message": f"{exc}; expected e.g. "
                        '{"action": "subscribe", "channels": ["trading"]}',
                        "channels": list(LIVE_CHANNELS),
                    }
                )
                continue
            if message.action == "ping":
                self.control({"type": "pong", "timestamp": rfc3339_now()})
            elif message.action == "unsubscribe":
                self.sub.channels.difference_update(message.channels)
                self.control({"type": "unsubscribed", "channels": message.channels})
            else:
                self.control({"type": "subscribed", "channels": message.channels})
                for channel in dict.fromkeys(message.channels):
                    self.sub.channels.add(channel)
                    self.sub.offer(_CatchUp(channel, message.since.get(channel)))

    async def deliver(self) -> None:
        while True:
            item = await self.sub.queue.get()
            if isinstance(item, _CatchUp):
                await self.catch_up(item)
                continue
            channel, seq, message = item  # type: ignore[misc]
            if channel:
                if channel not in self.sub.channels or seq <= self.last_sent.get(channel, -1):
                    continue  # unsubscribed since, or already sent by a catch-up
                self.last_sent[channel] = seq
            await self.send(message)

    async def catch_up(self, item: _CatchUp) -> None:
        channel, since = item.channel, item.since
        _, newest = await self.ctx.reader.last_entry(channel)
        reason = ""
        if since is not None and since <= newest:
            entries = await self.ctx.reader.history_after(channel, since)
            if entries is not None:
                for entry in entries:
                    if (message := render_event(channel, entry)) is not None:
                        await self.send(message)
                self.last_sent[channel] = max([since, *(e.seq for e in entries)])
                return
            reason = f"events after seq {since} are no longer in history"
        elif since is not None:
            reason = f"seq {since} is newer than the channel's newest ({newest})"
        snapshot: dict[str, Any] = {
            "channel": channel,
            "seq": newest,
            "timestamp": rfc3339_now(),
            "snapshot": True,
            "data": await snapshot_data(self.ctx, channel),
        }
        if reason:
            snapshot["reason"] = reason
        await self.send(json_bytes(snapshot))
        self.last_sent[channel] = newest


async def run_session(
    websocket: WebSocket, sub: Subscriber, tasks: list[asyncio.Task[None]]
) -> None:
    """Run ``tasks`` until one ends or ``sub`` is dropped; close the socket saying why."""
    dropped = asyncio.create_task(sub.dropped.wait())
    try:
        await asyncio.wait([*tasks, dropped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (*tasks, dropped):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failure = next(
        (
            t.exception()
            for t in tasks
            if not t.cancelled()
            and t.exception() is not None
            and not isinstance(t.exception(), WebSocketDisconnect)
        ),
        None,
    )
    if sub.dropped.is_set():
        code, reason = CLOSE_POLICY, sub.drop_reason
    elif failure is not None:
        log.warning("WebSocket session failed: %r", failure)
        code, reason = CLOSE_INTERNAL_ERROR, failure_reason(failure)
    else:
        return  # the client left
    with contextlib.suppress(Exception):
        # a client that stopped reading may never take the close frame: do not wait forever
        await asyncio.wait_for(close_websocket(websocket, code, reason), _CLOSE_TIMEOUT_S)


async def live_metrics(websocket: WebSocket, ctx: ApiContext) -> None:
    admitted = await admit(websocket, ctx)
    if admitted is None:
        return
    _, slot = admitted
    session = _Session(websocket, ctx)
    async with hub_session(websocket, ctx, session.sub, slot):
        tasks = [
            asyncio.create_task(session.receive(), name="live-receive"),
            asyncio.create_task(session.deliver(), name="live-deliver"),
        ]
        await run_session(websocket, session.sub, tasks)


@contextlib.asynccontextmanager
async def hub_session(
    websocket: WebSocket, ctx: ApiContext, sub: Subscriber, slot: str
) -> AsyncIterator[None]:
    """``sub`` on the hub for the block; a Redis error closes the socket with 1011 and why.

    The connection holds no Redis connection of its own: the hub reads for everyone, and
    the few reads of a session (history, slot) borrow one from the shared pool in turn.
    """
    try:
        await ctx.hub.add(sub)
        yield
    except redis.exceptions.RedisError as exc:
        log.warning("WebSocket closed, Redis does not answer: %r", exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                close_websocket(websocket, CLOSE_INTERNAL_ERROR, failure_reason(exc)),
                _CLOSE_TIMEOUT_S,
            )
    finally:
        ctx.hub.remove(sub)
        try:
            await ctx.ws_slots.release(slot)
        except redis.exceptions.RedisError as exc:  # the slot's lease runs out on its own
            log.warning("could not release a WebSocket slot: %r", exc)
