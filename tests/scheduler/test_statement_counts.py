"""A batch costs a constant number of SQL statements and one commit, whatever its size
(the seed's batch query is "单次 SQL 查询"; the others must not be one transaction per item)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from batchops.core.runtime import Runtime
from tests.helpers import allocation_ids, create_devices, create_users, data


@contextmanager
def commits_counted(runtime: Runtime) -> Iterator[list[int]]:
    counter = [0]

    def on_commit(_conn: Any) -> None:
        counter[0] += 1

    event.listen(runtime.db.engine.sync_engine, "commit", on_commit)
    try:
        yield counter
    finally:
        event.remove(runtime.db.engine.sync_engine, "commit", on_commit)


async def measure(
    runtime: Runtime, statement_counter: Callable[[], list[str]], call: Callable[[], Awaitable[httpx.Response]]
) -> tuple[list[str], int, dict[str, Any]]:
    """The statements and commits of one HTTP call."""
    before = len(statement_counter())
    with commits_counted(runtime) as commits:
        response = await call()
    result: dict[str, Any] = data(response)
    return statement_counter()[before:], commits[0], result


def shape(statements: list[str]) -> list[str]:
    """Statement kinds in order (``INSERT INTO notifications``, ``SELECT … FROM allocations``)."""
    kinds = []
    for s in statements:
        words = s.split()
        kinds.append(" ".join(words[:3]) if words else "")
    return kinds


async def test_batch_query_is_one_select_whatever_the_number_of_users(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, statement_counter: Callable[[], list[str]]
) -> None:
    users = [f"user-{i:03d}" for i in range(100)]
    await create_users(client, admin, [{"userId": u} for u in users])
    await create_devices(client, admin, 60)
    await allocation_ids(client, admin, users[:50])
    await allocation_ids(client, admin, users[40:50])

    counts = []
    for n in (10, 100):
        statements, commits, result = await measure(
            runtime,
            statement_counter,
            lambda n=n: client.post("/scheduler/allocations/batch/query", json={"userIds": users[:n]}, headers=admin),
        )
        assert result["userCount"] == n
        on_allocations = [s for s in statements if "allocations" in s]
        assert len(on_allocations) == 1, on_allocations
        assert on_allocations[0].lstrip().upper().startswith("SELECT")
        counts.append((len(statements), commits))
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("billing", [False, True], ids=["no-billing", "with-holds"])
async def test_batch_writes_use_constant_statements_and_one_commit(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    statement_counter: Callable[[], list[str]],
    billing: bool,
) -> None:
    """Also with pre-authorisation on: the holds of a batch are read and written in bulk."""
    users = [f"user-{i:03d}" for i in range(55)]
    await create_users(client, admin, [{"userId": u} for u in users])
    await create_devices(client, admin, 55)
    runtime.settings.billing_enforce_balance = billing
    if billing:
        for u in users:
            data(await client.post("/admin/billing/topup", json={"userId": u, "amount": 100}, headers=admin))
    try:
        await _measure_writes(client, admin, runtime, statement_counter, users)
    finally:
        runtime.settings.billing_enforce_balance = False


async def _measure_writes(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    statement_counter: Callable[[], list[str]],
    users: list[str],
) -> None:
    measured: dict[str, list[tuple[list[str], int]]] = {"allocate": [], "extend": [], "release": []}
    for group in (users[:5], users[5:55]):
        requests = [{"userId": u, "durationMinutes": 30} for u in group]
        statements, commits, result = await measure(
            runtime,
            statement_counter,
            lambda r=requests: client.post("/scheduler/allocations/batch", json={"requests": r}, headers=admin),
        )
        assert result["successCount"] == len(group)
        measured["allocate"].append((statements, commits))
        ids = [s["allocationId"] for s in result["successes"]]

        statements, commits, result = await measure(
            runtime,
            statement_counter,
            lambda ids=ids: client.post(
                "/scheduler/allocations/batch/extend",
                json={"allocationIds": ids, "additionalMinutes": 10},
                headers=admin,
            ),
        )
        assert result["successCount"] == len(group)
        measured["extend"].append((statements, commits))

        statements, commits, result = await measure(
            runtime,
            statement_counter,
            lambda ids=ids: client.post(
                "/scheduler/allocations/batch/release", json={"allocationIds": ids}, headers=admin
            ),
        )
        assert result["successCount"] == len(group)
        measured["release"].append((statements, commits))

    for operation, ((small, small_commits), (large, large_commits)) in measured.items():
        assert shape(small) == shape(large), (operation, shape(small), shape(large))
        # one commit, the batch's (the caller is read outside any transaction: Database.read)
        assert small_commits == large_commits == 1, (operation, small_commits, large_commits)
        assert sum("SAVEPOINT" in s.upper() for s in large) == 0, operation
