from __future__ import annotations

from datetime import datetime
from typing import Any

from batchops.core.schemas import Schema


class NotificationOut(Schema):
    id: int
    user_id: str
    type: str
    title: str
    content: str
    channel: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None
