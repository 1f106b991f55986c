"""The engine's command reader: ``{prefix}:commands`` in, ``{prefix}:command_results`` out.

Each command is executed at most once, also across a restart: before running it, the
reader claims its id with ``SET NX`` on ``{prefix}:commands:done:{id}``, which then keeps
the result (for ``result_ttl_s``); a repeated id is answered with that first result and
``duplicate=True``. The stream id of the last command handled is kept in
``{prefix}:commands:cursor``, and a restarted engine reads on from there (from the
stream's beginning when there is none).

A command older than ``max_age_s`` when the engine reads it (by the Redis server's clock
against the stream entry's id) is answered ``expired`` and not executed: the sidecar has
told its caller that the request timed out, and acting later would surprise them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, get_args

import msgspec
from redis.exceptions import RedisError

from flashmm.engine.risk import RiskLadder, RiskState, RiskTransitionError, Transition
from flashmm.state.keys import Keys
from flashmm.state.publisher import connect, redact_url
from flashmm.state.schema import (
    Command,
    CommandKind,
    CommandResult,
    EmergencyStopCommand,
    PauseCommand,
    ResumeCommand,
    _schema_probe,
    decode_command,
    decode_command_result,
    encode,
)

if TYPE_CHECKING:
    from flashmm.engine.engine import EmergencyStopReport

__all__ = ["CommandReader", "CommandSettings", "CommandTarget"]

log = logging.getLogger("flashmm.commands")

_KINDS: frozenset[str] = frozenset(get_args(CommandKind))
_CLAIMED = b"executing"  # the done key's value between the claim and the result
_SOURCE = "command"


class CommandSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the reader treats the command stream."""

    max_age_s: float = 30.0
    """Older commands are answered ``expired``; the engine passes ``[api] command_timeout_s``."""
    result_ttl_s: int = 86_400
    """How long an id's result is kept (and a repeat of it recognised)."""
    results_maxlen: int = 10_000
    """Entries kept in ``{prefix}:command_results`` (approximate trim)."""
    block_ms: int = 1_000
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_age_s", "retry_initial_s", "retry_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("result_ttl_s", "results_maxlen", "block_ms"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


class CommandTarget(Protocol):
    """What the commands act on (the :class:`~flashmm.engine.engine.Engine`)."""

    ladder: RiskLadder

    def pause(
        self, reason: str, *, duration_s: float | None = None, source: str = ...
    ) -> Transition | None: ...

    def resume(self, reason: str, *, source: str = ...) -> Transition | None: ...

    async def emergency_stop(self, reason: str, *, source: str = ...) -> EmergencyStopReport: ...


class CommandReader:
    """Reads and executes commands in a task; ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        target: CommandTarget,
        keys: Keys,
        redis_url: str,
        *,
        settings: CommandSettings | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.target = target
        self.keys = keys
        self.settings = settings if settings is not None else CommandSettings()
        self.clock = clock
        self.url = redact_url(redis_url)
        self.cursor_key = f"{keys.commands}:cursor"
        self.executed = 0
        """Commands executed (not duplicates, expired or malformed ones)."""
        self._redis = connect(
            redis_url, connect_timeout_s=1.0, timeout_s=self.settings.block_ms / 1000 + 2.0
        )
        # Results not yet stored and answered (Redis failed in between): a re-read of the
        # command answers these instead of treating the id as lost.
        self._unanswered: dict[str, CommandResult] = {}
        self._task: asyncio.Task[None] | None = None

    def done_key(self, command_id: str) -> str:
        """Where the result of ``command_id`` is kept."""
        return f"{self.keys.commands}:done:{command_id}"

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the command reader is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="flashmm.commands")

    async def stop(self) -> None:
        """Stop reading (a command being executed is cancelled with the task)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._redis.aclose()

    # ------------------------------------------------------------------ reading
    async def _run(self) -> None:
        delay = self.settings.retry_initial_s
        down = False
        while True:
            try:
                await self._serve(recovered=down)
            except (RedisError, OSError, TimeoutError) as exc:
                if not down:
                    log.warning(
                        "Redis at %s is not answering (%s): commands wait until it is back",
                        self.url,
                        exc,
                    )
                    down, delay = True, self.settings.retry_initial_s
                else:
                    delay = min(delay * 2, self.settings.retry_max_s)
                await asyncio.sleep(delay)

    async def _serve(self, *, recovered: bool) -> None:
        r = self._redis
        cursor = await r.get(self.cursor_key) or b"0-0"
        if recovered:
            log.info("Redis at %s answers again: reading commands after %s", self.url, cursor)
        while True:
            answer = await r.xread(
                {self.keys.commands: cursor}, count=16, block=self.settings.block_ms
            )
            if not answer:
                continue
            seconds, micros = await r.time()
            now_ms = seconds * 1000 + micros // 1000
            for _stream, entries in answer:
                for entry_id, fields in entries:
                    age_s = (now_ms - int(entry_id.split(b"-")[0])) / 1000
                    await self._handle(fields.get(b"data"), age_s)
                    cursor = entry_id
                    await r.set(self.cursor_key, cursor)

    # ------------------------------------------------------------------ one command
    async def _handle(self, data: bytes | None, age_s: float) -> None:
        try:
            if data is None:
                raise msgspec.DecodeError("the entry has no 'data' field")
            command = decode_command(data)
        except msgspec.DecodeError as exc:
            await self._malformed(data, exc)
            return
        r = self._redis
        result = self._unanswered.get(command.id)
        if result is None:
            claimed = await r.set(
                self.done_key(command.id), _CLAIMED, nx=True, ex=self.settings.result_ttl_s
            )
            if not claimed:
                await self._answer(await self._duplicate(command))
                return
            if age_s > self.settings.max_age_s:
                result = self._result(
                    command,
                    ok=False,
                    error=(
                        f"expired: the engine read it {age_s:.0f} s after it was issued "
                        f"(limit {self.settings.max_age_s:g} s); it was not executed"
                    ),
                )
            else:
                result = await self._execute(command)
            self._unanswered[command.id] = result
        await r.set(self.done_key(command.id), encode(result), ex=self.settings.result_ttl_s)
        await self._answer(result)
        del self._unanswered[command.id]

    async def _duplicate(self, command: Command) -> CommandResult:
        stored = await self._redis.get(self.done_key(command.id))
        if stored is None or stored == _CLAIMED:
            return self._result(
                command,
                ok=False,
                duplicate=True,
                error=(
                    f"command id {command.id!r} was taken by an engine that stopped before "
                    "answering; it is not executed twice (check the risk state, then send a "
                    "new command)"
                ),
            )
        first = decode_command_result(stored)
        return msgspec.structs.replace(first, duplicate=True)

    async def _malformed(self, data: bytes | None, exc: Exception) -> None:
        fields: dict[str, object] = {}
        if data is not None:
            with contextlib.suppress(msgspec.DecodeError):
                fields = _schema_probe.decode(data)
        ident, kind = fields.get("id"), fields.get("type")
        if not isinstance(ident, str) or not ident or kind not in _KINDS:
            log.warning("skipped a command entry that is not a command (no id or kind): %s", exc)
            return
        log.warning("refused malformed command %s: %s", ident, exc)
        await self._answer(
            CommandResult(
                id=ident,
                kind=kind,  # type: ignore[arg-type]
                ok=False,
                ts_ns=self.clock(),
                risk_state=self.target.ladder.state.value,
                error=f"malformed {kind} command, not executed: {exc}",
            )
        )

    async def _execute(self, command: Command) -> CommandResult:
        reason = f"{command.reason} (by {command.subject})" if command.subject else command.reason
        try:
            match command:
                case PauseCommand():
                    return self._paused(command, reason)
                case ResumeCommand():
                    t = self.target.resume(reason, source=_SOURCE)
                    self.executed += 1
                    return self._result(
                        command, ok=True, resumed_at_ns=t.ts_ns if t is not None else self.clock()
                    )
                case EmergencyStopCommand():
                    report = await self.target.emergency_stop(reason, source=_SOURCE)
                    self.executed += 1
                    done = report.flat and report.open_orders == 0
                    return self._result(
                        command,
                        ok=done,
                        error=None
                        if done
                        else (
                            f"halted, but {report.open_orders} orders are still open at the "
                            f"venue and positions are {report.positions}: check the venue"
                        ),
                        stopped_at_ns=self.clock(),
                        orders_cancelled=report.orders_cancelled,
                        open_orders=report.open_orders,
                        positions_flattened=report.flat,
                    )
        except RiskTransitionError as exc:
            return self._result(command, ok=False, error=str(exc))
        except Exception as exc:  # a bug must not stop the reader: answer and log it
            log.exception("command %s (%s) failed", command.id, _kind(command))
            return self._result(command, ok=False, error=f"internal error: {exc!r}")
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    def _paused(self, command: PauseCommand, reason: str) -> CommandResult:
        t = self.target.pause(reason, duration_s=command.duration_s, source=_SOURCE)
        self.executed += 1
        ladder = self.target.ladder
        if ladder.state is not RiskState.PAUSED:
            return self._result(
                command,
                ok=False,
                error=(
                    f"the risk state is {ladder.state.value}, above paused: a pause does not "
                    "lower it (resume first)"
                ),
            )
        return self._result(
            command,
            ok=True,
            paused_at_ns=t.ts_ns if t is not None else ladder.since_ns,
            resume_at_ns=ladder.until_ns,
        )

    def _result(self, command: Command, *, ok: bool, **fields: object) -> CommandResult:
        return CommandResult(
            id=command.id,
            kind=_kind(command),
            ok=ok,
            ts_ns=self.clock(),
            risk_state=self.target.ladder.state.value,
            **fields,  # type: ignore[arg-type]
        )

    async def _answer(self, result: CommandResult) -> None:
        await self._redis.xadd(
            self.keys.command_results,
            {"data": encode(result)},
            maxlen=self.settings.results_maxlen,
            approximate=True,
        )


def _kind(command: Command) -> CommandKind:
    return type(command).__struct_config__.tag  # type: ignore[return-value]
