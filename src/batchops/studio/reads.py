"""The studio's figures for the console's overview."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from batchops.core.clock import Clock, system_clock
from batchops.core.db import Database
from batchops.studio.models import FAILED, SUCCEEDED, StudioTask


async def failure_rate(db: Database, *, hours: int = 1, clock: Clock = system_clock) -> tuple[int, int]:
    """(failed, finished) among the tasks that finished in the last ``hours`` by ``clock``
    (the runtime's): the seed's 监控要点 (the StudioFailureRateHigh alert watches the same share)."""
    since = clock() - timedelta(hours=hours)
    async with db.read() as session:
        rows = await session.execute(
            select(StudioTask.state, func.count())
            .where(StudioTask.finished_at >= since, StudioTask.state.in_((SUCCEEDED, FAILED)))
            .group_by(StudioTask.state)
        )
        counts = {state: int(n) for state, n in rows}
    return counts.get(FAILED, 0), counts.get(FAILED, 0) + counts.get(SUCCEEDED, 0)
