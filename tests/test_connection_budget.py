"""Issue 16 item 9: a process opens at most BATCHOPS_DB_POOL_SIZE + BATCHOPS_DB_MAX_OVERFLOW
PostgreSQL connections, and a request that finds none free within
BATCHOPS_DB_POOL_TIMEOUT_SECONDS is answered 503 with Retry-After, not 500."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml

from batchops.app import create_app
from batchops.assembly import build_runtime
from batchops.identity.service import IdentityService
from batchops.settings import Settings
from tests.conftest import auth, make_settings


def test_the_default_budget_is_ten_connections_a_process() -> None:
    defaults = Settings()
    assert defaults.db_pool_size + defaults.db_max_overflow == 10  # README "Scale-out": (N + M) x 10


def test_the_compose_example_fits_its_postgresql() -> None:
    compose = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "compose.example.yml").read_text())
    env, services = compose["x-batchops"]["environment"], compose["services"]
    processes = sum(services[name]["deploy"]["replicas"] for name in ("api", "worker"))
    budget = processes * (int(env["BATCHOPS_DB_POOL_SIZE"]) + int(env["BATCHOPS_DB_MAX_OVERFLOW"]))
    max_connections = int(services["postgres"]["command"].split("max_connections=")[1])
    assert budget + processes <= max_connections - 3  # + a migration each at start; 3 for superusers


@pytest.mark.postgres_only  # the connection budget is PostgreSQL's
async def test_a_request_that_gets_no_connection_in_time_is_a_503_with_retry_after(database_url: str) -> None:
    rt = build_runtime(make_settings(database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.2))
    try:
        await rt.services.get(IdentityService).ensure_admin("admin")
        app = create_app(rt.settings, rt)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://batchops.test") as c:
            body = {"requests": [{"userId": "nobody", "durationMinutes": 30}]}
            async with rt.db.engine.connect() as busy:  # the pool's only connection, taken
                await busy.exec_driver_sql("SELECT 1")
                started = time.monotonic()
                listing = await c.get("/scheduler/devices", headers=auth("admin"))
                batch = await c.post("/scheduler/allocations/batch", json=body, headers=auth("admin"))
                waited = time.monotonic() - started
            for r in (listing, batch):
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"] == "1"
                assert r.json()["error"] == "ServiceUnavailableException"
            assert waited < 5  # each waited the pool timeout (0.2 s), not forever
            assert (await c.get("/scheduler/devices", headers=auth("admin"))).status_code == 200  # once it is free
    finally:
        await rt.stop()
