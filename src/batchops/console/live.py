"""Server-sent events of a signed-in user: everything the push hub sends them (the same
messages as the API's WebSocket), rendered as HTML fragments for htmx's SSE extension.

- ``batch.progress`` (core.batch, pushed to whoever runs a batch) → ``progress``;
- ``notification`` (stored first, pushed after commit) → ``notification``.

The console runs a selection larger than the API's batch limit as several batches one
after the other; before each it pushes ``console.batch`` (which part, how many items
came before), so the bar shows the whole selection, not each part from zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from batchops.console.web import SignedIn, render, runtime

router = APIRouter()
PING_SECONDS = 15
CONSOLE_BATCH = "console.batch"


def _fragment(request: Request, template: str, **context: Any) -> str:
    return bytes(render(request, template, **context).body).decode()


class ProgressView:
    """Folds one connection's ``console.batch`` and ``batch.progress`` messages into the
    figures the bar shows."""

    def __init__(self) -> None:
        self.offset = 0
        self.grand_total: int | None = None
        self.part = 1
        self.parts = 1

    def apply(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if message.get("type") == CONSOLE_BATCH:
            self.offset = int(message["offset"])
            self.grand_total = int(message["total"])
            self.part, self.parts = int(message["part"]), int(message["parts"])
            return None
        completed, total = int(message.get("completed", 0)), int(message.get("total", 0))
        if self.grand_total is not None and self.offset + total <= self.grand_total:
            completed, total = self.offset + completed, self.grand_total
        else:  # a batch the console did not announce (the API's, say): on its own
            self.part = self.parts = 1
        percent = completed * 100 // total if total else 100
        final = "committed" in message and completed >= total
        if final:
            self.grand_total = None
        return {
            "operation": message.get("operation", ""),
            "completed": completed,
            "total": total,
            "percent": percent,
            "part": self.part,
            "parts": self.parts,
            "finished": final,
        }


@router.get("/events")
async def events(request: Request, user: SignedIn) -> EventSourceResponse:
    rt = runtime(request)
    queue = rt.push.subscribe(user.id)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        view = ProgressView()
        try:
            yield ServerSentEvent(_fragment(request, "_live.html"), event="ready")
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=PING_SECONDS)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                kind = message.get("type")
                if kind in ("batch.progress", CONSOLE_BATCH):
                    figures = view.apply(message)
                    if figures is not None:
                        yield ServerSentEvent(_fragment(request, "_progress.html", **figures), event="progress")
                elif kind == "notification":
                    yield ServerSentEvent(_fragment(request, "_notification.html", note=message), event="notification")
        finally:
            rt.push.unsubscribe(user.id, queue)

    return EventSourceResponse(stream(), ping=PING_SECONDS, headers={"Cache-Control": "no-store"})
