"""The rules every input obeys, on SQLite and PostgreSQL (issue 16 #11, #12, #14):
no NUL character in a body (PostgreSQL cannot store one: it was a 500 there; paths and
queries: test_request_guard.py), dates and
date-times within the years 0001–9998 (arithmetic past them overflowed: a 500), JSON
integers as JSON Schema reads them (``60.0`` is 60), money with two decimals; and the
published OpenAPI document states each rule."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from batchops.core.schemas import DATE_PATTERN, DATETIME_PATTERN
from tests.conftest import SERVICE_TOKEN, auth
from tests.helpers import create_devices, create_users, data, error

NUL = "a\u0000b"
USAGE = {
    "deviceId": "device-001",
    "userId": "u1",
    "allocationId": "alloc-1",
    "durationSeconds": 60,
    "cpuCores": 4,
    "memoryMB": 8192,
    "storageMB": 65536,
    "allocatedAt": "2025-01-01T00:00:00Z",
    "releasedAt": "2025-01-01T00:01:00Z",
}
INTERNAL = {"X-Service-Token": SERVICE_TOKEN}


def nul_bodies() -> list[tuple[str, dict[str, Any], bool]]:
    """(path, body, internal): a NUL in one string of a body, in every domain."""
    return [
        ("/admin/users/batch", {"users": [{"userId": NUL}]}, False),
        ("/admin/users/batch", {"users": [{"userId": "u2", "name": NUL}]}, False),
        ("/scheduler/devices/batch", {"devices": [{"name": NUL, "cpuCores": 1, "memoryMB": 1, "storageMB": 1}]}, False),
        ("/scheduler/allocations/batch", {"requests": [{"userId": NUL, "durationMinutes": 60}]}, False),
        ("/scheduler/allocations/batch/release", {"allocationIds": ["x"], "reason": NUL}, False),
        ("/scheduler/allocations/batch/query", {"userIds": [NUL]}, False),
        ("/scheduler/devices/release", {"deviceId": NUL, "userId": "u1"}, False),
        ("/scheduler/reservations", {"userId": NUL, "startAt": "2030-01-01T00:00:00Z", "durationMinutes": 5}, False),
        ("/admin/billing/topup", {"userId": NUL, "amount": 1}, False),
        ("/admin/billing/topup", {"userId": "u1", "amount": 1, "reference": NUL}, False),
        ("/api/internal/metering/device-usage", {**USAGE, "allocationId": NUL}, True),
        ("/api/internal/metering/device-usage/batch", {"events": [{**USAGE, "deviceId": NUL}]}, True),
        ("/api/dining/departments", {"departmentId": "d1", "name": NUL}, False),
        ("/api/dining/menus", {"date": "2030-01-01", "mealType": "lunch", "price": 5, "items": [NUL]}, False),
        ("/api/dining/menus/publish", {"menuIds": [NUL]}, False),
        ("/api/dining/enhanced/batch-orders", {"orders": [{"date": NUL, "mealType": "lunch"}]}, False),
        ("/api/dining/enhanced/batch-orders", {"orders": [{"members": [{"userId": NUL}]}]}, False),
        ("/api/dining/enhanced/quick-batch-orders", {"members": [{"userId": "u1"}], "meals": [{"date": NUL}]}, False),
        ("/api/v1/workflow/batch-generate", {"rows": [{"prompt": NUL}]}, False),
        ("/api/v1/workflow/batch-generate", {"rows": [{"prompt": "p", "imageUrl": NUL}]}, False),
    ]


@pytest.mark.parametrize(("path", "body", "internal"), nul_bodies())
async def test_a_nul_in_a_body_string_is_400(
    client: httpx.AsyncClient, admin: dict[str, str], path: str, body: dict[str, Any], internal: bool
) -> None:
    headers = INTERNAL if internal else admin
    if path.startswith("/api/dining/enhanced/"):  # ordering is for a department's admin
        await create_users(client, admin, [{"userId": "boss", "role": "dept_admin", "departmentId": "d1"}])
        headers = auth("boss")
    result = error(await client.post(path, json=body, headers=headers), 400, "BadRequestException")
    assert "NUL" in result["message"], result


FAR = "9999-12-31T23:59:59Z"


async def test_far_future_and_year_one_dates_are_400(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    for start in (FAR, "9999-01-01T00:00:00+14:00", "0001-01-01T00:00:00+05:00", 253402300799):
        body = {"userId": "u1", "startAt": start, "durationMinutes": 60}
        result = error(
            await client.post("/scheduler/reservations", json=body, headers=admin), 400, "BadRequestException"
        )
        assert result["details"][0]["field"] == "startAt", result
    batch = {"reservations": [{"userId": "u1", "startAt": FAR, "durationMinutes": 60}]}
    error(await client.post("/scheduler/reservations/batch", json=batch, headers=admin), 400, "BadRequestException")
    # the first day and the last year that are taken: a business answer, not an overflow
    for start in ("0001-01-01T00:00:00Z", "9998-12-31T23:59:59-10:00"):
        body = {"userId": "u1", "startAt": start, "durationMinutes": 1440}
        result = error(
            await client.post("/scheduler/reservations", json=body, headers=admin), 400, "BadRequestException"
        )
        assert re.match(r"startAt (must|may) be", result["message"]), result
    usage = {**USAGE, "allocatedAt": "9998-12-31T23:59:00Z", "releasedAt": FAR}
    error(
        await client.post("/api/internal/metering/device-usage", json=usage, headers=INTERNAL),
        400,
        "BadRequestException",
    )
    menu = {"date": "9999-12-31", "mealType": "lunch", "price": 5}
    error(await client.post("/api/dining/menus", json=menu, headers=admin), 400, "BadRequestException")
    for query in ("date=9999-12-31", "date=0000-01-01"):
        error(await client.get(f"/api/dining/orders?{query}", headers=admin), 400, "BadRequestException")
    error(await client.get("/api/dining/summary?date=9999-12-31", headers=admin), 400, "BadRequestException")


async def test_json_integers_are_read_as_json_schema_reads_them(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await create_users(client, admin, [{"userId": "u1", "maxDevices": 3.0}])
    await create_devices(client, admin, 2)
    body = {"requests": [{"userId": "u1", "durationMinutes": 60.0, "priority": 2.0}]}
    assert data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))["successCount"] == 1
    for minutes in ("60", True, 60.5, 1e20):
        body = {"requests": [{"userId": "u1", "durationMinutes": minutes}]}
        error(await client.post("/scheduler/allocations/batch", json=body, headers=admin), 400, "BadRequestException")
    report = {**USAGE, "durationSeconds": 60.0, "memoryMB": 8192.0}
    charged = data(await client.post("/api/internal/metering/device-usage", json=report, headers=INTERNAL))
    assert charged["status"] == "charged"


async def test_money_has_two_decimals_as_a_number_or_a_string(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await create_users(client, admin, [{"userId": "u1"}])
    for amount in (12.5, "12.50", 0.01, 100000000):
        data(await client.post("/admin/billing/topup", json={"userId": "u1", "amount": amount}, headers=admin))
    for amount in (12.345, "12.345", 0, -1, True, 100000000.01, "abc"):
        body = {"userId": "u1", "amount": amount}
        error(await client.post("/admin/billing/topup", json=body, headers=admin), 400, "BadRequestException")
    credits = {"userId": "u1", "amount": 1.5, "currency": "CREDITS"}
    error(await client.post("/admin/billing/topup", json=credits, headers=admin), 400, "BadRequestException")


# --- what the published schema says --------------------------------------------------------------
def _strings(schema: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every string schema under ``schema`` (following anyOf and items), with where it is."""
    if not isinstance(schema, dict) or "enum" in schema:  # a list of values needs no other rule
        return []
    found = [(where, schema)] if schema.get("type") == "string" else []
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            found += _strings(branch, where)
    found += _strings(schema.get("items"), f"{where}[]")
    for name, sub in schema.get("properties", {}).items():
        found += _strings(sub, f"{where}.{name}")
    return found


def _resolve(document: dict[str, Any], schema: Any) -> Any:
    """The schema with every $ref replaced (the request models are small and acyclic)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            return _resolve(document, document["components"]["schemas"][name])
        return {k: _resolve(document, v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolve(document, v) for v in schema]
    return schema


async def test_every_input_string_of_the_schema_states_the_rules(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    strings: list[tuple[str, dict[str, Any]]] = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                if parameter["in"] in ("path", "query"):
                    strings += _strings(parameter["schema"], f"{where} {parameter['name']}")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            strings += _strings(_resolve(document, body), f"{where} body")
    assert len(strings) > 80
    for where, schema in strings:
        assert "pattern" in schema, f"{where}: no pattern, so a NUL passes the schema"
        if schema.get("format") == "date":
            assert schema["pattern"] == DATE_PATTERN, where
        elif schema.get("format") == "date-time":
            assert schema["pattern"] == DATETIME_PATTERN, where
        else:
            assert not re.search(schema["pattern"], "o\x00k"), f"{where}: the pattern lets a NUL through"
    assert not re.search(DATE_PATTERN, "9999-12-31") and re.search(DATE_PATTERN, "9998-12-31")
    assert not re.search(DATETIME_PATTERN, FAR) and re.search(DATETIME_PATTERN, "0001-01-01T00:00:00Z")
