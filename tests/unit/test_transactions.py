"""The retry of aborted transactions (issue 16 item 3), without a database: a deadlock or
a serialization failure runs the unit of work again, a bounded number of times, then is
a 503 with Retry-After; anything else is raised at once. Plus the HTTP mapping of what
no retry covers (a deadlock raised outside ``Database.run``, an exhausted pool)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
from asyncpg.exceptions import DeadlockDetectedError, SerializationError, UniqueViolationError
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from batchops.core.errors import NotFoundError, ServiceUnavailableError, install_error_handlers
from batchops.core.transactions import ATTEMPTS, run_retrying


def as_sqlalchemy_raises(driver_error: Exception) -> DBAPIError:
    return DBAPIError("UPDATE billing_accounts …", None, driver_error)


def failing(errors: list[Exception], result: str = "done") -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """A unit of work that raises ``errors`` one run after the other, then returns."""
    runs = [0]

    async def unit() -> str:
        runs[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return unit, runs


@pytest.mark.parametrize(
    "abort",
    [
        lambda: DeadlockDetectedError("deadlock detected"),  # a raw driver call
        lambda: as_sqlalchemy_raises(DeadlockDetectedError("deadlock detected")),
        lambda: as_sqlalchemy_raises(SerializationError("could not serialize access")),
    ],
    ids=["asyncpg-deadlock", "sqlalchemy-deadlock", "serialization-failure"],
)
async def test_an_aborted_transaction_runs_again(abort: Callable[[], Exception]) -> None:
    unit, runs = failing([abort(), abort()])
    assert await run_retrying(unit) == "done"
    assert runs == [3]


async def test_a_transaction_aborted_every_time_is_a_503_after_the_bound() -> None:
    unit, runs = failing([DeadlockDetectedError("deadlock detected") for _ in range(ATTEMPTS + 3)])
    with pytest.raises(ServiceUnavailableError) as raised:
        await run_retrying(unit)
    assert runs == [ATTEMPTS]
    assert raised.value.status_code == 503 and raised.value.headers == {"Retry-After": "1"}


@pytest.mark.parametrize(
    "error",
    [as_sqlalchemy_raises(UniqueViolationError("duplicate key")), NotFoundError("User not found"), ValueError("x")],
    ids=["integrity", "app-error", "bug"],
)
async def test_other_errors_are_not_retried(error: Exception) -> None:
    unit, runs = failing([error])
    with pytest.raises(type(error)):
        await run_retrying(unit)
    assert runs == [1]


async def test_what_no_retry_covers_is_a_503_with_retry_after_not_a_500() -> None:
    app = FastAPI()
    install_error_handlers(app)
    raised: dict[str, Exception] = {
        "/deadlock": as_sqlalchemy_raises(DeadlockDetectedError("deadlock detected")),
        "/pool": PoolTimeoutError("QueuePool limit of size 1 overflow 0 reached, connection timed out"),
        "/given-up": ServiceUnavailableError("busy", headers={"Retry-After": "1"}),
    }

    def raising(error: Exception) -> Callable[[], Awaitable[None]]:
        async def endpoint() -> None:
            raise error

        return endpoint

    for path, error in raised.items():
        app.add_api_route(path, raising(error))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in raised:
            r = await client.get(path)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"] == "ServiceUnavailableException"
