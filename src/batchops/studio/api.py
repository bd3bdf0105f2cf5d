"""HTTP routes of the studio (seed 003 §4). No rules here: they live in ``service.py``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from batchops.core.errors import BadRequestError
from batchops.core.runtime import Runtime, get_runtime, service_of
from batchops.core.schemas import Envelope, Page, PageParams, ok
from batchops.core.text import NO_NUL, has_nul
from batchops.identity.api import CurrentUser
from batchops.studio.models import B_CANCELLED, B_COMPLETED
from batchops.studio.schemas import (
    BatchAccepted,
    BatchActionOut,
    BatchDetailOut,
    BatchGenerateIn,
    BatchStatus,
    BatchSummaryOut,
    CallbackAck,
)
from batchops.studio.service import StudioService

router = APIRouter(prefix="/api/v1/workflow", tags=["studio"])


Service = Annotated[StudioService, Depends(service_of(StudioService))]


@router.post("/batch-generate", status_code=202, response_model=Envelope[BatchAccepted])
async def batch_generate(
    body: BatchGenerateIn, user: CurrentUser, service: Service, rt: Annotated[Runtime, Depends(get_runtime)]
) -> Envelope[BatchAccepted]:
    await rt.limiter.hit(f"studio.batch-generate:{user.id}")
    accepted = await service.submit(user, body)
    rt.worker.wake()
    return ok(accepted, f"Batch accepted: {accepted.total_count} tasks, {accepted.credits_held} credits held")


@router.get("/batches", response_model=Envelope[Page[BatchSummaryOut]])
async def list_batches(
    user: CurrentUser,
    service: Service,
    paging: Annotated[PageParams, Depends()],
    status: Annotated[BatchStatus | None, Query()] = None,
    user_id: Annotated[str | None, Query(alias="userId", max_length=128)] = None,
) -> Envelope[Page[BatchSummaryOut]]:
    items, total = await service.list(
        user, user_id=user_id, status=status, offset=paging.offset, limit=paging.page_size
    )
    return ok(Page.build(items, page=paging.page, page_size=paging.page_size, total=total))


@router.get("/batches/{batch_id}", response_model=Envelope[BatchDetailOut])
async def get_batch(batch_id: str, user: CurrentUser, service: Service) -> Envelope[BatchDetailOut]:
    return ok(await service.get(user, batch_id))


@router.get("/batches/{batch_id}/events", response_class=StreamingResponse)
async def batch_events(
    batch_id: str,
    request: Request,
    user: CurrentUser,
    service: Service,
    interval: Annotated[float, Query(ge=0.05, le=30)] = 1.0,
) -> StreamingResponse:
    """Server-sent events: a ``progress`` event whenever the counts change, ``done`` at the end."""
    first = await service.snapshot(user, batch_id)  # 404 / 403 before the stream starts

    async def stream() -> AsyncIterator[str]:
        last: str | None = None
        snapshot = first
        while True:
            payload = json.dumps(snapshot.model_dump(mode="json", by_alias=True), ensure_ascii=False)
            if payload != last:
                yield f"event: progress\ndata: {payload}\n\n"
                last = payload
            if snapshot.status in (B_COMPLETED, B_CANCELLED):
                yield f"event: done\ndata: {payload}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(interval)
            snapshot = await service.snapshot(user, batch_id)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/batches/{batch_id}/pause", response_model=Envelope[BatchActionOut])
async def pause(batch_id: str, user: CurrentUser, service: Service) -> Envelope[BatchActionOut]:
    out = await service.pause(user, batch_id)
    return ok(out, f"Batch paused: {out.affected_count} queued tasks wait; running tasks continue")


@router.post("/batches/{batch_id}/resume", response_model=Envelope[BatchActionOut])
async def resume(
    batch_id: str, user: CurrentUser, service: Service, rt: Annotated[Runtime, Depends(get_runtime)]
) -> Envelope[BatchActionOut]:
    out = await service.resume(user, batch_id)
    rt.worker.wake()
    return ok(out, f"Batch resumed: {out.affected_count} queued tasks")


@router.post("/batches/{batch_id}/cancel", response_model=Envelope[BatchActionOut])
async def cancel(batch_id: str, user: CurrentUser, service: Service) -> Envelope[BatchActionOut]:
    out = await service.cancel(user, batch_id)
    return ok(out, f"Batch cancelled: {out.affected_count} tasks, {out.credits_returned} credits returned")


@router.post("/batches/{batch_id}/retry-failed", response_model=Envelope[BatchActionOut])
async def retry_failed(
    batch_id: str, user: CurrentUser, service: Service, rt: Annotated[Runtime, Depends(get_runtime)]
) -> Envelope[BatchActionOut]:
    out = await service.retry_failed(user, batch_id)
    rt.worker.wake()
    return ok(out, f"Retrying {out.affected_count} failed tasks")


@router.get("/batches/{batch_id}/download", response_class=Response)
async def download(batch_id: str, user: CurrentUser, service: Service) -> Response:
    content = await service.download(user, batch_id)
    return Response(
        content,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}.zip"'},
    )


# KIE's task record is read by hand (it carries more than we need): its schema, for the docs.
KIE_CALLBACK_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "object",
                        "required": ["taskId"],
                        "properties": {
                            "taskId": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NO_NUL}
                        },
                    }
                },
            }
        }
    },
}


@router.post("/providers/kie/callback", response_model=CallbackAck, openapi_extra={"requestBody": KIE_CALLBACK_BODY})
async def kie_callback(
    request: Request,
    service: Service,
    request_id: Annotated[str, Query(alias="requestId", max_length=100)],
    sig: Annotated[str, Query(max_length=64)],
) -> CallbackAck:
    """KIE's callBackUrl: the body is its task record (``data.taskId``); our request id and its
    signature ride in the URL we gave it. KIE only needs a 200 back."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    data = body.get("data") if isinstance(body, dict) else None
    task_id = data.get("taskId") if isinstance(data, dict) else None
    if not isinstance(task_id, str) or not task_id or len(task_id) > 200 or has_nul(task_id):
        raise BadRequestError("Callback body needs data.taskId", details=[{"field": "data.taskId"}])
    return CallbackAck(msg=await service.provider_callback(request_id, sig, task_id))
