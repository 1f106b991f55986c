"""``/admin/*``: pause, resume and emergency stop through the engine's command stream.

Each answers only once the engine has acked (or 504 after ``api.command_timeout_s``), and
each request, refused ones included, leaves an entry in the audit stream: successes here,
every error answer through :func:`audit_error` (the app's error hook).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import APIRouter, Depends, Header, Query, Request

from flashmm.api._auth import Principal
from flashmm.api._clock import now_ns, rfc3339
from flashmm.api._context import Ctx, client_address, get_context, guard, request_id
from flashmm.api._errors import ApiError
from flashmm.api._models import (
    AuditLogResponse,
    AuditRecord,
    EmergencyStopRequest,
    EmergencyStopResponse,
    PauseRequest,
    PauseResponse,
    ResumeResponse,
    error_responses,
)
from flashmm.state.schema import (
    Command,
    CommandResult,
    EmergencyStopCommand,
    PauseCommand,
    ResumeCommand,
)

__all__ = ["audit_error", "router"]

C = TypeVar("C", PauseCommand, ResumeCommand, EmergencyStopCommand)

_COMMAND_ERRORS = error_responses(400, 409, 413, 504)

router = APIRouter(prefix="/admin", tags=["admin"], responses=error_responses(401, 403, 429, 503))
AdminAccess = Annotated[Principal, Depends(guard("admin", "admin"))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[A-Za-z0-9_.:\-]{1,64}$",
        description="Sending the same key again returns the first result instead of acting "
        "twice (1-64 of A-Z a-z 0-9 _ . : -).",
    ),
]


async def audit_error(request: Request, status_code: int, code: str, message: str) -> None:
    """The app's error hook: audit every error answer to an ``/admin`` request."""
    if not request.url.path.startswith("/admin"):
        return
    if status_code == 504:
        result = "timeout"
    elif status_code >= 500 or code == "COMMAND_REJECTED":
        result = f"error: {message}"
    else:
        result = f"refused: {code}: {message}"
    principal: Principal | None = getattr(request.state, "principal", None)
    await get_context(request).audit.record(
        action=getattr(request.state, "audit_action", request.url.path),
        subject=principal.subject if principal else None,
        scope=principal.scope if principal else None,
        client=client_address(request),
        request_id=request_id(request),
        result=result,
        status_code=status_code,
        details={"code": code},
    )


async def _execute(
    request: Request, ctx: Ctx, principal: Principal, command: Command
) -> CommandResult:
    """Send ``command`` once the engine is known to listen; audit its success."""
    action = str(command.__struct_config__.tag)
    request.state.audit_action = action
    await ctx.reader.require_engine()  # a stopped engine would only time out
    result = await ctx.commands.send(command)
    if not result.ok:
        # what it did do (orders cancelled, still open...) is in the details
        done = {k: v for k, v in msgspec.structs.asdict(result).items() if v is not None}
        raise ApiError(
            409,
            "COMMAND_REJECTED",
            f"the engine did not carry out {action}: {result.error}",
            {k: v for k, v in done.items() if k not in ("error", "ts_ns", "kind")},
        )
    await ctx.audit.record(
        action=action,
        subject=principal.subject,
        scope=principal.scope,
        client=client_address(request),
        request_id=request_id(request),
        result="ok",
        status_code=200,
        details={"command_id": command.id, "risk_state": result.risk_state}
        | ({"duplicate": "true"} if result.duplicate else {}),
    )
    return result


def _command(
    kind: type[C], request: Request, principal: Principal, key: str | None, **fields: Any
) -> C:
    return kind(
        id=key or uuid.uuid4().hex,
        issued_ns=now_ns(),
        subject=principal.subject,
        request_id=request_id(request),
        **fields,
    )


@router.post(
    "/pause",
    response_model=PauseResponse,
    responses=_COMMAND_ERRORS,
    summary="Pause trading (pulls quotes)",
)
async def pause(
    request: Request,
    body: PauseRequest,
    ctx: Ctx,
    principal: AdminAccess,
    key: IdempotencyKey = None,
) -> PauseResponse:
    command = _command(
        PauseCommand,
        request,
        principal,
        key,
        reason=body.reason,
        duration_s=body.duration_seconds,
    )
    result = await _execute(request, ctx, principal, command)
    return PauseResponse(
        status="paused",
        reason=body.reason,
        paused_at=rfc3339(result.paused_at_ns),
        resume_at=rfc3339(result.resume_at_ns),
        command_id=result.id,
        duplicate=result.duplicate,
        risk_state=result.risk_state,
    )


@router.post(
    "/resume",
    response_model=ResumeResponse,
    responses=error_responses(400, 409, 504),
    summary="Resume trading",
)
async def resume(
    request: Request, ctx: Ctx, principal: AdminAccess, key: IdempotencyKey = None
) -> ResumeResponse:
    command = _command(ResumeCommand, request, principal, key)
    result = await _execute(request, ctx, principal, command)
    return ResumeResponse(
        status=result.risk_state,
        resumed_at=rfc3339(result.resumed_at_ns),
        command_id=result.id,
        duplicate=result.duplicate,
        risk_state=result.risk_state,
    )


@router.post(
    "/emergency-stop",
    response_model=EmergencyStopResponse,
    responses=_COMMAND_ERRORS,
    summary="Emergency stop: cancel every order, flatten, halt",
)
async def emergency_stop(
    request: Request,
    body: EmergencyStopRequest,
    ctx: Ctx,
    principal: AdminAccess,
    key: IdempotencyKey = None,
) -> EmergencyStopResponse:
    command = _command(EmergencyStopCommand, request, principal, key, reason=body.reason)
    result = await _execute(request, ctx, principal, command)
    return EmergencyStopResponse(
        status="emergency_stopped",
        stopped_at=rfc3339(result.stopped_at_ns),
        orders_cancelled=result.orders_cancelled,
        open_orders=result.open_orders,
        positions_flattened=result.positions_flattened,
        command_id=result.id,
        duplicate=result.duplicate,
        risk_state=result.risk_state,
    )


@router.get(
    "/audit",
    response_model=AuditLogResponse,
    responses=error_responses(400),
    summary="Recent admin actions",
)
async def audit(
    ctx: Ctx,
    _: AdminAccess,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditLogResponse:
    entries = await ctx.audit.recent(limit)
    return AuditLogResponse(
        entries=[
            AuditRecord(
                timestamp=rfc3339(e.ts_ns) or "",
                action=e.action,
                subject=e.subject,
                scope=e.scope,
                client=e.client,
                request_id=e.request_id,
                result=e.result,
                status_code=e.status_code,
                details=e.details,
            )
            for e in entries
        ]
    )
