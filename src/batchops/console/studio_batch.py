"""A video batch's page: a progress bar and every task's state, kept up to date without
reloads (server-sent events), each result's link, pause / resume / cancel / retry the
failed, the ZIP of the results, and the failure analysis as a small chart. The service
checks that the batch is the caller's (an operator may look at any)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from batchops.console.web import SignedIn, gettext_for, render, runtime
from batchops.core.push import PushHub
from batchops.studio.models import B_CANCELLED, B_COMPLETED
from batchops.studio.schemas import BatchActionOut, BatchDetailOut
from batchops.studio.service import StudioService

router = APIRouter()
# The engine pushes each change of a batch's counts to its owner; the page also re-reads
# this often, for what is not pushed (a pause) and for workers in other processes (without
# Redis); a finished batch changes only when someone acts on it.
REFRESH_SECONDS = 1.0
FINISHED_REFRESH_SECONDS = 10.0
PING_SECONDS = 15
Action = Literal["pause", "resume", "cancel", "retry-failed"]
BatchId = Annotated[str, Path(max_length=64)]


def studio_of(request: Request) -> StudioService:
    service = runtime(request).services.get(StudioService)
    return service


def _fragment(request: Request, template: str, **context: Any) -> str:
    return bytes(render(request, template, **context).body).decode()


def figures(detail: BatchDetailOut) -> dict[str, Any]:
    c = detail.counts
    finished = c.succeeded + c.failed + c.cancelled
    total = detail.total_count
    kinds = sorted(detail.failure_analysis.by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "b": detail,
        "finished": finished,
        "percent": finished * 100 // total if total else 100,
        "kinds": kinds,
        "widest": max((n for _, n in kinds), default=1),
    }


@router.get("/studio/batches/{batch_id}")
async def batch_page(request: Request, batch_id: BatchId, user: SignedIn) -> Response:
    detail = await studio_of(request).get(user, batch_id)
    return render(request, "studio_batch.html", **figures(detail))


async def wait_for_change(push_queue: asyncio.Queue[dict[str, Any]], batch_id: str, seconds: float) -> None:
    """Until the engine pushes a change of this batch, or ``seconds`` pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(push_queue.get(), timeout=left)
        except TimeoutError:
            return
        if message.get("type") == "studio.batch.progress" and message.get("batchId") == batch_id:
            return


@router.get("/studio/batches/{batch_id}/live")
async def live(request: Request, batch_id: BatchId, user: SignedIn) -> EventSourceResponse:
    service = studio_of(request)
    first = await service.get(user, batch_id)  # 404 / 403 before the stream starts
    push: PushHub = runtime(request).push
    queue = push.subscribe(user.id)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        detail, sent = first, {"summary": "", "tasks": ""}
        try:
            while True:
                context = figures(detail)
                for event, template in (("summary", "_studio_summary.html"), ("tasks", "_studio_tasks.html")):
                    html = _fragment(request, template, **context)
                    if html != sent[event]:
                        sent[event] = html
                        yield ServerSentEvent(html, event=event)
                finished = detail.status in (B_COMPLETED, B_CANCELLED)
                await wait_for_change(queue, batch_id, FINISHED_REFRESH_SECONDS if finished else REFRESH_SECONDS)
                if await request.is_disconnected():
                    return
                detail = await service.get(user, batch_id)
        finally:
            push.unsubscribe(user.id, queue)

    return EventSourceResponse(stream(), ping=PING_SECONDS, headers={"Cache-Control": "no-store"})


@router.post("/studio/batches/{batch_id}/{action}")
async def act(request: Request, batch_id: BatchId, action: Action, user: SignedIn) -> Response:
    rt = runtime(request)
    service = studio_of(request)
    out: BatchActionOut
    if action == "pause":
        out = await service.pause(user, batch_id)
    elif action == "resume":
        out = await service.resume(user, batch_id)
    elif action == "cancel":
        out = await service.cancel(user, batch_id)
    else:
        out = await service.retry_failed(user, batch_id)
    if action in ("resume", "retry-failed"):
        rt.worker.wake()
    _ = gettext_for(request)
    messages = {
        "pause": _("Paused: %(n)s queued tasks wait; running tasks finish."),
        "resume": _("Resumed: %(n)s queued tasks go on."),
        "cancel": _("Cancelled %(n)s tasks; %(returned)s credits returned."),
        "retry-failed": _("Retrying %(n)s failed tasks; %(held)s credits held again."),
    }
    message = messages[action] % {"n": out.affected_count, "returned": out.credits_returned, "held": out.credits_held}
    detail = await service.get(user, batch_id)
    return render(request, "_studio_summary.html", flash=message, **figures(detail))


@router.get("/studio/batches/{batch_id}/download")
async def download(request: Request, batch_id: BatchId, user: SignedIn) -> Response:
    content = await studio_of(request).download(user, batch_id)
    return Response(
        content,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}.zip"'},
    )
