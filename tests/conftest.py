"""Test fixtures: every DB test runs on SQLite and, where reachable, PostgreSQL.

With ``CI=true`` PostgreSQL is required: an unreachable server fails the run.
Each test session gets its own fresh PostgreSQL database (so parallel runs on one
server never meet) and every test starts from empty tables.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from sqlalchemy import event, text

from batchops.app import create_app
from batchops.assembly import build_runtime, import_all_models
from batchops.core.auth import create_token
from batchops.core.db import Base
from batchops.core.runtime import Runtime
from batchops.identity.service import IdentityService
from batchops.migrate import upgrade
from batchops.settings import Settings

CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL = os.environ.get("BATCHOPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
JWT_SECRET = "test-secret-of-at-least-32-bytes-length"
SERVICE_TOKEN = "test-service-token"

import_all_models()


def require_service(name: str, reason: str) -> None:
    """Skip locally, fail under CI: a missing service must never pass silently in CI."""
    message = f"{name} unavailable: {reason}"
    if CI:
        pytest.fail(message + " (required when CI=true)")
    pytest.skip(message)


# RabbitMQ, for the tests that follow events out of the service (skipped locally, required in CI)
AMQP_URL = os.environ.get("BATCHOPS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
EXCHANGE = "batchops.events"
DEADLINE = 10.0  # seconds an event may take to reach a consumer


@pytest.fixture
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    try:
        connection = await asyncio.wait_for(aio_pika.connect_robust(AMQP_URL), timeout=5)
    except Exception as exc:
        require_service("RabbitMQ", str(exc) or type(exc).__name__)
    yield connection
    await connection.close()


async def _pg_reachable(url: str) -> str | None:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), timeout=5)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    await conn.close()
    return None


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``postgres_only`` (concurrent writers, row locks, several processes on
    one database: PostgreSQL's job in DESIGN.md) has no SQLite variant, and one marked
    ``sqlite_only`` (SQLite's query plans) no PostgreSQL variant: they are deselected there,
    not skipped, so a skip in the report always means a missing service."""
    engine_of = {"postgres_only": "postgresql", "sqlite_only": "sqlite"}
    elsewhere = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        engine = callspec.params.get("database_url") if callspec is not None else None
        wanted = {engine_of[m.name] for m in item.iter_markers() if m.name in engine_of}
        if engine is not None and wanted and engine not in wanted:
            elsewhere.append(item)
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("db") / "batchops.db"
        url = f"sqlite:///{path}"
        await asyncio.to_thread(upgrade, url)
        yield url
        return
    async with fresh_postgres_database("batchops_test") as url:
        yield url


@asynccontextmanager
async def fresh_postgres_database(prefix: str) -> AsyncIterator[str]:
    """A new, migrated PostgreSQL database, dropped afterwards (fails under CI if unreachable)."""
    problem = await _pg_reachable(POSTGRES_URL)
    if problem:
        require_service("PostgreSQL", problem)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = _with_database(POSTGRES_URL, name)
    try:
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        admin = await asyncpg.connect(POSTGRES_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "jwt_secret": JWT_SECRET,
        "service_token": SERVICE_TOKEN,
        "embedded_worker": False,
        "batch_rate_limit_per_minute": 0,
        "log_level": "WARNING",
        # Scheduler tests are about scheduling; billing tests turn pre-authorisation on.
        "billing_enforce_balance": False,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    rt = build_runtime(make_settings(database_url))
    yield rt
    await rt.stop()


@pytest.fixture(autouse=True)
async def _clean_tables(request: pytest.FixtureRequest) -> None:
    """Empty every table before each DB test (much faster than re-migrating)."""
    if "runtime" not in request.fixturenames:
        return
    await empty_tables(request.getfixturevalue("runtime"))


async def empty_tables(rt: Runtime) -> None:
    """Delete every row of every table (also used between hypothesis examples)."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    async with rt.db.engine.begin() as conn:
        if rt.db.is_sqlite:
            for name in tables:
                await conn.execute(text(f'DELETE FROM "{name}"'))
        else:
            await conn.execute(text("TRUNCATE " + ", ".join(f'"{n}"' for n in tables) + " RESTART IDENTITY CASCADE"))


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime.settings, runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://batchops.test") as c:
        yield c


def auth(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(user_id, JWT_SECRET)}"}


@pytest.fixture
async def admin(client: httpx.AsyncClient, runtime: Runtime) -> dict[str, str]:
    """Headers of an admin caller (created directly: someone has to be first)."""
    await runtime.services.get(IdentityService).ensure_admin("admin")
    return auth("admin")


@pytest.fixture
def statement_counter(runtime: Runtime) -> Callable[[], list[str]]:
    """Record every SQL statement of the work sent; call the returned function to read them.
    Transaction control is not counted: SQLite's ``BEGIN IMMEDIATE`` goes through the
    cursor, PostgreSQL's BEGIN does not."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement != "BEGIN IMMEDIATE":
            statements.append(statement)

    event.listen(runtime.db.engine.sync_engine, "before_cursor_execute", record)
    yield lambda: statements  # type: ignore[misc]
    event.remove(runtime.db.engine.sync_engine, "before_cursor_execute", record)
