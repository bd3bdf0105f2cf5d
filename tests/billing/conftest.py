"""Billing test helpers: the service-token header, a seed usage report, top-up and balance."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from batchops.core.runtime import Runtime
from tests.conftest import SERVICE_TOKEN
from tests.helpers import data

INTERNAL = {"X-Service-Token": SERVICE_TOKEN}
# The default device of tests.helpers (4 cores, 8 GB, 64 GB) costs 0.928 CNY per hour.
FEN_PER_30_MIN = 47  # 46.4 rounded up to the fen
FEN_PER_HOUR = 93  # 92.8 rounded up


@pytest.fixture
def billing_on(runtime: Runtime) -> Iterator[None]:
    """Pre-authorisation on (the scheduler's own tests run without it)."""
    runtime.settings.billing_enforce_balance = True
    yield
    runtime.settings.billing_enforce_balance = False


USAGE_START = dt.datetime(2026, 11, 23, 8, tzinfo=dt.UTC)


def usage(allocation_id: str, user_id: str = "u1", seconds: int = 3600, **extra: Any) -> dict[str, Any]:
    return {
        "deviceId": "device-001",
        "userId": user_id,
        "allocationId": allocation_id,
        "durationSeconds": seconds,
        "cpuCores": 4,
        "memoryMB": 8192,
        "storageMB": 65536,
        "allocatedAt": "2026-11-23T08:00:00Z",
        "releasedAt": (USAGE_START + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z"),
        **extra,
    }


async def topup(client: httpx.AsyncClient, admin: dict[str, str], user_id: str, amount: float | str) -> Any:
    return data(await client.post("/admin/billing/topup", json={"userId": user_id, "amount": amount}, headers=admin))


async def balance(client: httpx.AsyncClient, user_id: str) -> Any:
    return data(await client.get(f"/api/internal/balance/user/{user_id}", headers=INTERNAL))
