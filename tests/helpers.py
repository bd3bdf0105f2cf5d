"""Small helpers shared by the API tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Executable, text


async def create_users(client: httpx.AsyncClient, admin: dict[str, str], users: list[dict[str, Any]]) -> None:
    r = await client.post("/admin/users/batch", json={"users": users}, headers=admin)
    assert r.status_code == 200, r.text


async def create_devices(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    count: int,
    *,
    cpu: int = 4,
    memory: int = 8192,
    storage: int = 65536,
    prefix: str = "device",
    start: int = 1,
) -> list[str]:
    devices = [
        {
            "id": f"{prefix}-{i:03d}",
            "name": f"Device-{i:03d}",
            "cpuCores": cpu,
            "memoryMB": memory,
            "storageMB": storage,
        }
        for i in range(start, start + count)
    ]
    ids: list[str] = []
    for chunk in range(0, len(devices), 1000):
        r = await client.post(
            "/scheduler/devices/batch", json={"devices": devices[chunk : chunk + 1000]}, headers=admin
        )
        assert r.status_code == 200, r.text
        ids += [d["id"] for d in r.json()["data"]["devices"]]
    return ids


def data(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is True
    return body["data"]


def error(response: httpx.Response, status: int, name: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False and body["error"] == name, body
    assert set(body) == {"success", "error", "message", "details"}
    return body


async def sql(runtime: Any, query: str | Executable, **params: Any) -> list[Any]:
    """Rows of a query straight from the database (not through the API): raw SQL text, or a
    SQLAlchemy select when typed values (tz-aware datetimes, JSON) matter on both engines."""
    async with runtime.db.engine.connect() as conn:
        result = await conn.execute(text(query) if isinstance(query, str) else query, params)
        return list(result.all())


async def sql_value(runtime: Any, query: str | Executable, **params: Any) -> Any:
    rows = await sql(runtime, query, **params)
    return rows[0][0]


async def execute(runtime: Any, statement: str, **params: Any) -> None:
    async with runtime.db.engine.begin() as conn:
        await conn.execute(text(statement), params)


async def batch_allocate(
    client: httpx.AsyncClient, admin: dict[str, str], user_ids: list[str], minutes: int = 60, **options: Any
) -> dict[str, Any]:
    requests = [{"userId": u, "durationMinutes": minutes} for u in user_ids]
    r = await client.post("/scheduler/allocations/batch", json={"requests": requests, **options}, headers=admin)
    result: dict[str, Any] = data(r)
    return result


async def allocation_ids(client: httpx.AsyncClient, admin: dict[str, str], user_ids: list[str]) -> list[str]:
    """Allocate one device per user (all must succeed) and return the allocation ids in order."""
    body = await batch_allocate(client, admin, user_ids)
    assert body["failedCount"] == 0, body
    return [s["allocationId"] for s in body["successes"]]


class LogRecorder:
    """Stands in for a module's structlog logger (the app's is cached, filtered at WARNING in tests)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.events.append({"event": event, "level": level, **fields})


def wait_until_healthy(process: subprocess.Popen[bytes], port: int, log: Path, *, within: float) -> None:
    """Poll a ``batchops serve`` started as a subprocess until ``/health`` answers 200; fail
    with its log if it exits or is not up ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not healthy within {within} s:\n{log.read_text()}"
        time.sleep(0.1)  # the poll's interval, not a guess at readiness
