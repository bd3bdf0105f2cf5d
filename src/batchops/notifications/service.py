"""Store notifications with the change that caused them; push them after commit.

All the notifications of one batch go out in one push (seed 000 §3: "收集所有通知，
一次性批量发送").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.db import Database, on_commit, table_of, utcnow
from batchops.core.push import PushHub
from batchops.notifications.models import Notification

NOTIFICATIONS = table_of(Notification)


@dataclass(frozen=True)
class NewNotification:
    user_id: str
    type: str
    title: str
    content: str
    data: dict[str, Any] = field(default_factory=dict)


class NotificationService:
    def __init__(self, db: Database, push: PushHub) -> None:
        self.db = db
        self.push = push

    async def send(self, session: AsyncSession, notes: list[NewNotification]) -> None:
        """Insert every notification in one executemany statement; push them together
        after commit."""
        if not notes:
            return
        now = utcnow()
        rows = [
            {
                "user_id": n.user_id,
                "type": n.type,
                "title": n.title,
                "content": n.content,
                "channel": "websocket",
                "data": n.data,
                "created_at": now,
            }
            for n in notes
        ]
        await session.execute(insert(NOTIFICATIONS), rows)
        stamp = now.isoformat().replace("+00:00", "Z")
        messages = [
            (
                n.user_id,
                {
                    "type": "notification",
                    "notificationType": n.type,
                    "title": n.title,
                    "content": n.content,
                    "data": n.data,
                    "createdAt": stamp,
                },
            )
            for n in notes
        ]

        async def push() -> None:
            await self.push.publish(messages)

        on_commit(session, push)

    async def list_for_user(
        self, user_id: str, *, unread_only: bool, offset: int, limit: int
    ) -> tuple[list[Notification], int]:
        where = [Notification.user_id == user_id]
        if unread_only:
            where.append(Notification.read_at.is_(None))
        async with self.db.read() as session:
            total = await session.scalar(select(func.count()).select_from(Notification).where(*where))
            rows = await session.scalars(
                select(Notification).where(*where).order_by(Notification.id.desc()).offset(offset).limit(limit)
            )
            return list(rows.all()), int(total or 0)

    async def mark_read(self, user_id: str, ids: list[int] | None) -> int:
        stmt = update(Notification).where(Notification.user_id == user_id, Notification.read_at.is_(None))
        if ids is not None:
            stmt = stmt.where(Notification.id.in_(ids))
        async with self.db.transaction() as session:
            result = await session.execute(stmt.values(read_at=utcnow()))
        return int(getattr(result, "rowcount", 0) or 0)
