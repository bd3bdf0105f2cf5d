"""Allocations: filter by user, device, state and "expiring within N minutes"; release or
extend the selected rows, or everything that matches the filter, through the same batch
runner as the API (audited, counted, pushed). A selection larger than the API's batch
limit runs as consecutive batches of that size, each admitted like an API call."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import Response

from batchops.console.live import CONSOLE_BATCH
from batchops.console.web import Admin, PagingParams, render, runtime
from batchops.core.batch import BatchMode
from batchops.core.errors import BadRequestError, TooManyRequestsError
from batchops.core.runtime import Runtime
from batchops.identity.api import admit_batch_caller
from batchops.identity.models import User
from batchops.scheduler.reads import AllocationFilter, allocation_ids, allocation_page
from batchops.scheduler.service import SchedulerService

router = APIRouter()
STATUSES = ("allocated", "released")
# The API's limits per batch call (seed 000): release 1-100 ids, extend 1-50.
PART_SIZE = {"release": 100, "extend": 50}
MAX_SELECTION = 1000


def allocation_filter(
    user: str | None, device: str | None, status: str | None, expiring: int | None
) -> AllocationFilter:
    return AllocationFilter(
        user_id=(user or "").strip() or None,
        device_id=(device or "").strip() or None,
        status=status if status in STATUSES else None,
        expiring_within_minutes=expiring,
    )


@router.get("/allocations")
async def allocations(
    request: Request,
    _admin: Admin,
    paging: PagingParams,
    user: Annotated[str | None, Query(max_length=128)] = None,
    device: Annotated[str | None, Query(max_length=128)] = None,
    status: Annotated[str | None, Query(max_length=16)] = "allocated",
    expiring: Annotated[int | None, Query(ge=0, le=100_000)] = None,
) -> Response:
    rt = runtime(request)
    chosen = allocation_filter(user, device, status, expiring)
    rows, total = await allocation_page(rt.db, chosen, clock=rt.clock, offset=paging.offset, limit=paging.size)
    return render(
        request,
        "allocations.html",
        allocations=rows,
        total=total,
        paging=paging,
        pages=paging.pages(total),
        chosen=chosen,
        statuses=STATUSES,
        max_selection=MAX_SELECTION,
    )


@router.post("/allocations/batch")
async def run_batch(
    request: Request,
    actor: Admin,
    action: Annotated[Literal["release", "extend"], Form()],
    scope: Annotated[Literal["selected", "filter"], Form()] = "selected",
    ids: Annotated[list[str], Form(max_length=MAX_SELECTION)] = [],  # noqa: B006 - FastAPI copies defaults
    minutes: Annotated[int, Form(ge=1, le=1440)] = 30,
    reason: Annotated[str, Form(max_length=500)] = "",
    f_user: Annotated[str | None, Form(max_length=128)] = None,
    f_device: Annotated[str | None, Form(max_length=128)] = None,
    f_status: Annotated[str | None, Form(max_length=16)] = None,
    f_expiring: Annotated[int | None, Form(ge=0, le=100_000)] = None,
) -> Response:
    rt = runtime(request)
    if scope == "filter":
        chosen = allocation_filter(f_user, f_device, f_status, f_expiring)
        selected, matching = await allocation_ids(rt.db, chosen, clock=rt.clock, limit=MAX_SELECTION)
        if matching > MAX_SELECTION:
            raise BadRequestError(f"{matching} allocations match: at most {MAX_SELECTION} at once; narrow the filter")
    else:
        selected = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    if not selected:
        raise BadRequestError("Nothing selected")
    outcome = await run_in_parts(rt, request, actor, action, selected, minutes, reason.strip() or None)
    what = "release" if action == "release" else "extend"
    succeeded = len(outcome["succeeded"])
    message = f"Batch {what} completed: {succeeded}/{len(selected)} succeeded"
    response = render(request, "_batch_result.html", action=action, message=message, total=len(selected), **outcome)
    response.headers["HX-Trigger"] = "batch-done"  # the table below reloads itself
    return response


async def run_in_parts(
    rt: Runtime, request: Request, actor: User, action: str, ids: list[str], minutes: int, reason: str | None
) -> dict[str, Any]:
    scheduler = rt.services.get(SchedulerService)
    size = PART_SIZE[action]
    parts = [ids[i : i + size] for i in range(0, len(ids), size)]
    succeeded: list[str] = []
    failures: list[tuple[str, str, str]] = []  # (allocation id, error name, the seed's reason)
    audited = 0
    for number, part in enumerate(parts, start=1):
        offset = (number - 1) * size
        try:
            await admit_batch_caller(rt, request, actor, f"scheduler.{action}")
        except TooManyRequestsError as exc:  # what is left is not attempted: say so per item
            failures += [(i, exc.name, exc.message) for rest in parts[number - 1 :] for i in rest]
            break
        message = {"type": CONSOLE_BATCH, "part": number, "parts": len(parts), "offset": offset, "total": len(ids)}
        await rt.push.publish([(actor.id, message)])
        if action == "release":
            released = await scheduler.batch_release(actor, part, reason, BatchMode())
            succeeded += [r.id for r in released.results]
            failures += [(f.item, f.error, f.reason) for f in released.failures]
        else:
            extended = await scheduler.batch_extend(actor, part, minutes, BatchMode())
            succeeded += [r.id for r in extended.results]
            failures += [(f.item, f.error, f.reason) for f in extended.failures]
        audited += 1
    return {"succeeded": succeeded, "failures": failures, "parts": len(parts), "audited": audited}
