"""The audit stream: one :class:`~flashmm.state.schema.AuditEntry` per admin action."""

from __future__ import annotations

import logging

import msgspec
import redis.asyncio as aioredis

from flashmm.api._clock import now_ns
from flashmm.state.keys import Keys
from flashmm.state.schema import AuditEntry, encode

__all__ = ["AuditLog"]

log = logging.getLogger("flashmm.api")

_AUDIT_MAXLEN = 100_000
_entry_decoder = msgspec.msgpack.Decoder(AuditEntry)


class AuditLog:
    """Appends to and reads ``{prefix}:audit``."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.audit

    async def record(
        self,
        *,
        action: str,
        subject: str | None,
        scope: str | None,
        client: str,
        request_id: str,
        result: str,
        status_code: int,
        details: dict[str, str] | None = None,
    ) -> AuditEntry:
        entry = AuditEntry(
            ts_ns=now_ns(),
            action=action,
            subject=subject,
            scope=scope,
            client=client,
            request_id=request_id,
            result=result,
            status_code=status_code,
            details=details or {},
        )
        # the log line is the fallback record when Redis itself is what failed
        log.info(
            "audit %s by %s from %s: %s (%d)", action, subject or "-", client, result, status_code
        )
        try:
            await self._redis.xadd(
                self._key, {"data": encode(entry)}, maxlen=_AUDIT_MAXLEN, approximate=True
            )
        except Exception as exc:
            log.error("could not write the audit entry of %s: %r", request_id, exc)
        return entry

    async def recent(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""
        rows = await self._redis.xrevrange(self._key, count=limit)
        out = []
        for _id, fields in rows:
            try:
                out.append(_entry_decoder.decode(fields[b"data"]))
            except (KeyError, msgspec.DecodeError) as exc:
                log.warning("unreadable audit entry: %r", exc)
        return out
