"""The interface billing defines for the domain that meters device time (``billing.usage``):
usage facts kept and reported in the caller's transaction, in billing's wire format; and
the boundary it stands for: billing imports no other domain."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

import batchops.billing
from batchops.billing.models import DeviceUsage
from batchops.billing.schemas import DeviceUsageIn
from batchops.billing.service import BillingService
from batchops.billing.usage import USAGE_KIND, UsageFact
from batchops.core.outbox import OutboxMessage
from batchops.core.runtime import Runtime
from tests.helpers import create_devices, create_users, data

DOMAINS = ("scheduler", "dining", "studio")
START = dt.datetime(2026, 11, 23, 8, 0, 0, 250_000, tzinfo=dt.UTC)


async def an_allocation(client: httpx.AsyncClient, admin: dict[str, str]) -> str:
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    body = {"requests": [{"userId": "u1", "durationMinutes": 30}]}
    out = data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
    return str(out["successes"][0]["allocationId"])


def fact(allocation_id: str) -> UsageFact:
    return UsageFact(
        allocation_id=allocation_id,
        user_id="u1",
        device_id="device-001",
        cpu_cores=4,
        memory_mb=8192,
        storage_mb=65536,
        allocated_at=START,
        released_at=START + dt.timedelta(seconds=90),
        duration_seconds=90,
    )


async def test_a_fact_is_kept_and_reported_in_the_seed_body(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    allocation_id = await an_allocation(client, admin)
    billing = runtime.services.get(BillingService)
    async with runtime.db.transaction() as session:
        await billing.record_usage(session, [fact(allocation_id)])
    async with runtime.db.read() as session:
        kept = (await session.scalars(select(DeviceUsage))).one()
        [report] = (await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == USAGE_KIND))).all()
    assert (kept.allocation_id, kept.duration_seconds, kept.released_at) == (allocation_id, 90, fact("").released_at)
    assert report.dedup_key == f"usage:{allocation_id}" and report.name == "device-usage"
    assert report.payload == {
        "deviceId": "device-001",
        "userId": "u1",
        "allocationId": allocation_id,
        "durationSeconds": 90,
        "cpuCores": 4,
        "memoryMB": 8192,
        "storageMB": 65536,
        "allocatedAt": "2026-11-23T08:00:00.250000Z",
        "releasedAt": "2026-11-23T08:01:30.250000Z",
    }
    DeviceUsageIn.model_validate(report.payload)  # what ingestion reads back


async def test_a_fact_goes_with_the_callers_transaction(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    allocation_id = await an_allocation(client, admin)
    billing = runtime.services.get(BillingService)
    with pytest.raises(RuntimeError):
        async with runtime.db.transaction() as session:
            await billing.record_usage(session, [fact(allocation_id)])
            raise RuntimeError("the release failed after recording")
    async with runtime.db.read() as session:
        assert (await session.scalars(select(DeviceUsage))).all() == []
        assert (await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == USAGE_KIND))).all() == []


def test_billing_imports_no_other_domain() -> None:
    package = Path(batchops.billing.__file__).parent
    leaks = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            leaks += [f"{path.name}: {n}" for n in names if n.split(".")[:2] in (["batchops", d] for d in DOMAINS)]
    assert leaks == []
