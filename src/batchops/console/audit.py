"""Audit log: who ran which batch, when, with what counts."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from batchops.console.web import Admin, PagingParams, render, runtime
from batchops.core.audit import audit_domains, list_audit

router = APIRouter()


@router.get("/audit")
async def audit(
    request: Request,
    _admin: Admin,
    paging: PagingParams,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    domain: Annotated[str | None, Query(max_length=32)] = None,
    since: Annotated[date | None, Query()] = None,
    until: Annotated[date | None, Query()] = None,
) -> Response:
    rt = runtime(request)
    zone = ZoneInfo(rt.settings.timezone)  # days as the operators' zone has them

    def start_of(day: date | None) -> datetime | None:
        return datetime.combine(day, time.min, tzinfo=zone) if day else None

    rows, total = await list_audit(
        rt.db,
        actor_id=(actor or "").strip() or None,
        domain=domain or None,
        since=start_of(since),
        until=start_of(min(until, date(9998, 12, 30)) + timedelta(days=1)) if until else None,
        offset=paging.offset,
        limit=paging.size,
    )
    return render(
        request,
        "audit.html",
        entries=rows,
        total=total,
        paging=paging,
        pages=paging.pages(total),
        domains=await audit_domains(rt.db),
        chosen={"actor": actor or "", "domain": domain or "", "since": since, "until": until},
    )
