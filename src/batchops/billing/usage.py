"""What billing asks of a domain that meters device time: usage facts.

The scheduler hands billing one :class:`UsageFact` per released allocation, in the
release's own transaction. :func:`record_usage` keeps the fact (``device_usage``, what
reconciliation compares the charges with) and writes the seed 001 usage report into
the outbox beside it, so a report exists if and only if the release committed; the
worker then delivers it to ingestion (``BillingService.deliver``), once per allocation
(the report's dedup key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.models import DeviceUsage
from batchops.core.clock import iso_utc
from batchops.core.outbox import OutboxItem, enqueue

USAGE_KIND = "billing.device_usage"


@dataclass(frozen=True, slots=True)
class UsageFact:
    """What one released allocation used: the device as it was configured, for how long."""

    allocation_id: str
    user_id: str
    device_id: str
    cpu_cores: int
    memory_mb: int
    storage_mb: int
    allocated_at: datetime
    released_at: datetime
    duration_seconds: int


def usage_report(fact: UsageFact) -> dict[str, Any]:
    """The seed 001 body of ``POST /api/internal/metering/device-usage``."""
    return {
        "deviceId": fact.device_id,
        "userId": fact.user_id,
        "allocationId": fact.allocation_id,
        "durationSeconds": fact.duration_seconds,
        "cpuCores": fact.cpu_cores,
        "memoryMB": fact.memory_mb,
        "storageMB": fact.storage_mb,
        "allocatedAt": iso_utc(fact.allocated_at),
        "releasedAt": iso_utc(fact.released_at),
    }


def usage_dedup_key(allocation_id: str) -> str:
    """The outbox key of an allocation's report: one report per allocation, ever."""
    return f"usage:{allocation_id}"


async def record_usage(session: AsyncSession, facts: Sequence[UsageFact]) -> None:
    """Keep the facts and queue their usage reports, in the caller's transaction: one
    INSERT of usage rows and one of outbox rows, whatever the number of facts."""
    if not facts:
        return
    await session.execute(
        insert(DeviceUsage),
        [
            {
                "allocation_id": f.allocation_id,
                "device_id": f.device_id,
                "user_id": f.user_id,
                "duration_seconds": f.duration_seconds,
                "cpu_cores": f.cpu_cores,
                "memory_mb": f.memory_mb,
                "storage_mb": f.storage_mb,
                "allocated_at": f.allocated_at,
                "released_at": f.released_at,
                "created_at": f.released_at,
            }
            for f in facts
        ],
    )
    await enqueue(
        session,
        [
            OutboxItem(
                kind=USAGE_KIND,
                name="device-usage",
                payload=usage_report(f),
                dedup_key=usage_dedup_key(f.allocation_id),
            )
            for f in facts
        ],
    )
