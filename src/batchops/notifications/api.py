from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, Query, WebSocket, WebSocketDisconnect
from pydantic import Field

from batchops.core.auth import decode_token
from batchops.core.errors import AppError
from batchops.core.runtime import Runtime, service_of
from batchops.core.schemas import Envelope, Integer, Page, PageParams, StrictSchema, ok
from batchops.identity.api import CurrentUser
from batchops.identity.service import IdentityService
from batchops.notifications.schemas import NotificationOut
from batchops.notifications.service import NotificationService

router = APIRouter(tags=["notifications"])


Service = Annotated[NotificationService, Depends(service_of(NotificationService))]


NotificationId = Annotated[int, Integer(ge=1, le=2**31 - 1)]  # an INTEGER key on both engines


class MarkReadIn(StrictSchema):
    ids: list[NotificationId] | None = Field(None, max_length=1000, description="omit to mark every notification read")


@router.get("/notifications", response_model=Envelope[Page[NotificationOut]])
async def list_notifications(
    user: CurrentUser,
    service: Service,
    paging: Annotated[PageParams, Query()],
    unread_only: Annotated[bool, Query(alias="unreadOnly")] = False,
) -> Envelope[Page[NotificationOut]]:
    rows, total = await service.list_for_user(
        user.id, unread_only=unread_only, offset=paging.offset, limit=paging.page_size
    )
    items = [NotificationOut.model_validate(r) for r in rows]
    return ok(Page.build(items, page=paging.page, page_size=paging.page_size, total=total))


@router.post("/notifications/read", response_model=Envelope[dict[str, int]])
async def mark_read(body: MarkReadIn, user: CurrentUser, service: Service) -> Envelope[dict[str, int]]:
    return ok({"marked": await service.mark_read(user.id, body.ids)})


@router.websocket("/ws/notifications")
async def notifications_ws(websocket: WebSocket, token: str | None = None) -> None:
    """Live notifications. Authenticate with ``?token=`` or a first message ``{"token": "…"}``."""
    rt: Runtime = websocket.app.state.runtime
    await websocket.accept()
    try:
        if token is None:
            first = await asyncio.wait_for(websocket.receive_json(), timeout=10)
            token = first.get("token") if isinstance(first, dict) else None
        user_id = decode_token(token or "", rt.settings.jwt_secret)
        user = await rt.services.get(IdentityService).find(user_id)
        if user is None or user.status != "active":
            raise AppError("Unknown or inactive user")
    except (AppError, TimeoutError, ValueError, WebSocketDisconnect):
        with contextlib.suppress(Exception):
            await websocket.send_json({"type": "error", "error": "UnauthorizedException"})
            await websocket.close(code=4401)
        return
    queue = rt.push.subscribe(user_id)
    try:
        await websocket.send_json({"type": "connected", "userId": user_id})
        receiver = asyncio.create_task(_drain_client(websocket))
        while not receiver.done():
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                await websocket.send_json(getter.result())
            else:
                getter.cancel()
    except WebSocketDisconnect:  # the client left: the normal end of a subscription
        return
    finally:
        rt.push.unsubscribe(user_id, queue)


async def _drain_client(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until the client goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()
