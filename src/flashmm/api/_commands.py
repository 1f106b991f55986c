"""Admin commands: put one on the engine's command stream and wait for its answer.

The result stream is read from the id it had *before* the command was added, so an answer
that comes back faster than the first read is not missed. No answer within the timeout is
504 ``ENGINE_TIMEOUT``; the engine refuses a command older than that timeout, so a late
engine never acts on a request its caller was told had failed.
"""

from __future__ import annotations

import time

import msgspec
import redis.asyncio as aioredis

from flashmm.api._errors import ApiError
from flashmm.state.keys import Keys
from flashmm.state.schema import Command, CommandResult, decode_command_result, encode

__all__ = ["CommandSender"]

_COMMANDS_MAXLEN = 10_000
_BLOCK_MS = 500


class CommandSender:
    """Sends :data:`~flashmm.state.schema.Command`\\ s and waits for their results."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, timeout_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self.timeout_s = timeout_s

    async def send(self, command: Command) -> CommandResult:
        """The engine's result for ``command``; 504 ``ENGINE_TIMEOUT`` if none comes in time."""
        results = self._keys.command_results
        newest = await self._redis.xrevrange(results, count=1)
        last_id: bytes | str = newest[0][0] if newest else b"0-0"
        await self._redis.xadd(
            self._keys.commands,
            {"data": encode(command)},
            maxlen=_COMMANDS_MAXLEN,
            approximate=True,
        )
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            block_ms = max(1, int(min(left, _BLOCK_MS / 1000) * 1000))
            reply = await self._redis.xread({results: last_id}, block=block_ms, count=100)
            for _stream, rows in reply:
                for entry_id, fields in rows:
                    last_id = entry_id
                    try:
                        result = decode_command_result(fields[b"data"])
                    except (KeyError, msgspec.DecodeError):
                        continue  # not ours to judge; the engine logs its own writes
                    if result.id == command.id:
                        return result
        raise ApiError(
            504,
            "ENGINE_TIMEOUT",
            f"the engine did not answer within {self.timeout_s:g} s, and it will not run the "
            "command later (it refuses commands older than that): check /trading/status, "
            "then send it again with a new Idempotency-Key",
            {"command_id": command.id, "timeout_s": self.timeout_s},
        )
