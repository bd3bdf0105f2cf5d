"""Small helpers shared by the API tests."""

from __future__ import annotations

from typing import Any

import httpx


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
