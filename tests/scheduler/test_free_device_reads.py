"""The first free devices of each (size, node) bucket: PostgreSQL reads them per bucket
from an index (LATERAL … LIMIT k), SQLite ranks the whole free fleet; both must return
exactly the devices a plain Python ranking of the fleet gives, nodeless devices included."""

from __future__ import annotations

from datetime import timedelta
from itertools import groupby

import pytest
from sqlalchemy import insert

from batchops.core.db import utcnow
from batchops.core.runtime import Runtime
from batchops.scheduler.loading import FIRST_FREE_DEVICES, FIRST_FREE_DEVICES_PG
from batchops.scheduler.models import Device


def fleet() -> list[dict[str, object]]:
    now, rows = utcnow(), []
    for i in range(60):
        rows.append(
            {
                "id": f"dev-{(i * 37) % 60:02d}",  # ids not in insertion order
                "name": f"Device {i}",
                "cpu_cores": (2, 4, 8)[i % 3],
                "memory_mb": 4096 if i % 3 == 0 else 8192,
                "storage_mb": 65536,
                "node_id": None if i % 4 == 0 else f"node-{i % 4}",
                "status": "allocated" if i % 7 == 0 else "available",
                "maintenance": i % 11 == 0,
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


def expected(rows: list[dict[str, object]], k: int) -> set[tuple[str, int]]:
    free = [r for r in rows if r["status"] == "available" and not r["maintenance"]]

    def bucket(r: dict[str, object]) -> tuple[object, ...]:
        return (r["cpu_cores"], r["memory_mb"], r["storage_mb"], r["node_id"] or "")

    out = set()
    for _, members in groupby(sorted(free, key=lambda r: (bucket(r), r["id"])), key=bucket):
        for rank, r in enumerate(members, 1):
            if rank <= k:
                out.add((str(r["id"]), rank))
    return out


@pytest.mark.parametrize("k", [1, 2, 5])
async def test_first_free_devices_per_bucket_match_a_plain_ranking(runtime: Runtime, k: int) -> None:
    rows = fleet()
    now = utcnow()
    params = {"now": now, "horizon": now + timedelta(days=1), "rank": k}
    statements = [FIRST_FREE_DEVICES] if runtime.db.is_sqlite else [FIRST_FREE_DEVICES, FIRST_FREE_DEVICES_PG]
    async with runtime.db.transaction() as session:
        await session.execute(insert(Device), rows)
        for stmt in statements:
            got = {(r.id, r.rank) for r in await session.execute(stmt, params)}
            assert got == expected(rows, k)
