"""``core.responses.JSONResponse``: the bytes Starlette's json.dumps wrote, faster, and
datetimes as pydantic writes them in the documented models."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.responses import JSONResponse as StarletteJSONResponse

from batchops.core.clock import iso_utc as iso
from batchops.core.responses import JSONResponse
from batchops.scheduler.schemas import AllocationView


def test_the_bytes_are_json_dumps_bytes() -> None:
    body = {
        "success": True,
        "data": {"名字": "设备 🔓", "quote": 'a "b" \\ c\n', "n": [0, -1, 2**53, 1.5, 0.1], "none": None},
        "message": "Found 3 allocations for 2 users",
    }
    assert JSONResponse(body).body == StarletteJSONResponse(body).body


def test_datetimes_are_written_as_the_models_write_them() -> None:
    for ts in (datetime(2026, 12, 3, 6, 0, 0, 123456, tzinfo=UTC), datetime(2026, 12, 3, 6, 0, tzinfo=UTC)):
        view = AllocationView(
            allocation_id="a", device_id="d", device_name="n", status="allocated", allocated_at=ts, expires_at=ts
        )
        by_model = view.model_dump_json(by_alias=True).encode()
        raw = {"allocationId": "a", "deviceId": "d", "deviceName": "n", "status": "allocated"}
        assert JSONResponse(raw | {"allocatedAt": ts, "expiresAt": ts}).body == by_model
        assert JSONResponse(raw | {"allocatedAt": iso(ts), "expiresAt": iso(ts)}).body == by_model
