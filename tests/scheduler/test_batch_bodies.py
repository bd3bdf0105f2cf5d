"""The batch allocate, release and query bodies are written by hand (no per-item models):
each must be exactly what its documented response model writes for the same data."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from batchops.core.schemas import Envelope
from batchops.scheduler.schemas import BatchAllocateOut, BatchQueryOut, BatchReleaseOut
from tests.helpers import create_devices, create_users


def same_as_model(response: httpx.Response, model: type[BaseModel]) -> dict[str, Any]:
    """The body, checked against ``Envelope[model]``: valid, and re-serialised byte for byte."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    parsed = Envelope[model].model_validate(body)  # type: ignore[valid-type]
    assert parsed.model_dump(mode="json", by_alias=True) == body
    assert (
        response.content
        == Envelope[model].model_validate_json(response.content).model_dump_json(by_alias=True).encode()
    )  # type: ignore[valid-type]
    return body


async def test_batch_bodies_match_their_models(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": u} for u in ("u1", "u2", "u3")])
    await create_devices(client, admin, 2)
    requests = [
        {"userId": "u1", "durationMinutes": 30},
        {"userId": "ghost", "durationMinutes": 30},
        {"userId": "u2", "durationMinutes": 45},
        {"userId": "u3", "durationMinutes": 30, "queueIfUnavailable": True},
    ]
    r = await client.post("/scheduler/allocations/batch", json={"requests": requests}, headers=admin)
    out = same_as_model(r, BatchAllocateOut)["data"]
    assert [s["userId"] for s in out["successes"]] == ["u1", "u2"]
    assert [q["userId"] for q in out["queued"]] == ["u3"]
    assert [f["userId"] for f in out["failures"]] == ["ghost"]
    assert out["successes"][0]["expiresAt"].endswith("Z")

    r = await client.post(
        "/scheduler/allocations/batch/query", json={"userIds": ["u1", "u2", "u3", "ghost"]}, headers=admin
    )
    out = same_as_model(r, BatchQueryOut)["data"]
    assert (out["userCount"], out["totalAllocations"]) == (4, 2)
    assert out["allocations"]["u3"] == [] and out["allocations"]["u1"][0]["status"] == "allocated"

    ids = [a["allocationId"] for u in ("u1", "u2") for a in out["allocations"][u]]
    r = await client.post(
        "/scheduler/allocations/batch/release", json={"allocationIds": [*ids, "alloc-missing"]}, headers=admin
    )
    out = same_as_model(r, BatchReleaseOut)["data"]
    assert out["successIds"] == ids
    assert out["failures"] == [
        {"allocationId": "alloc-missing", "reason": "Allocation not found", "error": "NotFoundException"}
    ]
