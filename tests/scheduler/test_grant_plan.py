"""The grant pass's read of the queue, as SQLite plans it: for each candidate it counts the
same user's waiting entries served before it, and that count must read the user's entries
through ``ix_allocation_queue_user_status``, not every waiting entry (with 1,000 waiting
the pass took ~90 ms instead of a few). PostgreSQL's planner is judged by its statistics;
the bench (``scheduler_phase3``) times both."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import event

from batchops.core.runtime import Runtime
from batchops.scheduler.service import SchedulerService
from tests.helpers import create_devices, create_users, data


@pytest.mark.sqlite_only
async def test_the_per_user_count_of_the_grant_read_uses_the_user_index(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    await create_users(client, admin, [{"userId": "holder"}, {"userId": "waits"}])
    await create_devices(client, admin, 1)
    body = {"userId": "holder", "durationMinutes": 60}
    held = data(await client.post("/scheduler/devices/allocate", json=body, headers=admin))["allocationId"]
    ask = {"userId": "waits", "durationMinutes": 30, "queueIfUnavailable": True}
    data(await client.post("/scheduler/allocations/batch", json={"requests": [ask]}, headers=admin))
    reads: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.startswith("SELECT allocation_queue.id") and "earlier" in statement:
            reads.append((statement, parameters))

    event.listen(runtime.db.engine.sync_engine, "before_cursor_execute", record)
    try:
        data(await client.post("/scheduler/devices/release", json={"allocationId": held}, headers=admin))
        await runtime.services.get(SchedulerService).queue.grant_waiting()
    finally:
        event.remove(runtime.db.engine.sync_engine, "before_cursor_execute", record)
    assert reads, "the grant pass read the queue"
    statement, parameters = reads[0]
    async with runtime.db.engine.connect() as conn:
        plan = [row[3] for row in (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()]
    earlier = [step for step in plan if step.startswith("SEARCH earlier")]
    assert earlier and all("ix_allocation_queue_user_status" in step for step in earlier), plan
