"""Periodic jobs run once per interval across the cluster (issue 16.6): two workers, each
with its own runtime and engine on one database (SQLite and PostgreSQL), moved by one
injected clock; only the jobs that share their work themselves run on every worker."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from batchops.assembly import build_runtime
from batchops.billing import service as billing_service
from batchops.core.runtime import Runtime
from batchops.core.schedule import claim_run
from tests.billing.test_billing_api import release_all
from tests.conftest import make_settings
from tests.helpers import LogRecorder, create_devices, create_users, execute, sql

START = datetime(2026, 12, 7, 8, tzinfo=UTC)
STEP = 30  # seconds between passes; every interval below is a multiple of it


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def cluster(runtime: Runtime, database_url: str) -> AsyncIterator[tuple[list[Runtime], Clock]]:
    """Two worker runtimes (``runtime`` only empties the tables first)."""
    settings = make_settings(
        database_url,
        sweep_interval_seconds=60,
        scheduler_tick_seconds=30,
        billing_reconcile_interval_seconds=600,
        dead_letter_retry_seconds=900,
        studio_tick_seconds=30,
    )
    clock = Clock()
    workers = [build_runtime(settings) for _ in range(2)]
    for rt in workers:
        rt.worker.clock = clock
        rt.worker.start_schedule()
    yield workers, clock
    for rt in workers:
        await rt.stop()


def count_runs(workers: list[Runtime]) -> Counter[tuple[str, int]]:
    """Replace every job by a counter of (job, worker)."""
    runs: Counter[tuple[str, int]] = Counter()

    def counter(name: str, index: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            runs[name, index] += 1

        return run

    for index, rt in enumerate(workers):
        for job in rt.worker.jobs:
            job.run = counter(job.name, index)
    return runs


@contextmanager
def statements(rt: Runtime) -> Iterator[list[str]]:
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(rt.db.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(rt.db.engine.sync_engine, "before_cursor_execute", record)


async def test_each_job_runs_once_per_interval_across_two_workers(
    cluster: tuple[list[Runtime], Clock], runtime: Runtime
) -> None:
    workers, clock = cluster
    runs = count_runs(workers)
    span = 3600
    passes = span // STEP + 1
    for n in range(passes):
        # both race for every due job; in the second half worker 0 is gone and 1 takes over
        alive = workers if n < passes // 2 else workers[1:]
        await asyncio.gather(*(rt.worker.run_jobs() for rt in alive))
        clock.advance(STEP)

    jobs = workers[0].worker.jobs
    assert {j.name for j in jobs if j.every_worker} == {"studio.tick"}
    for job in jobs:
        interval = int(job.interval_seconds)
        assert interval % STEP == 0
        if job.every_worker:  # on each worker, every pass it was alive for
            assert (runs[job.name, 0], runs[job.name, 1]) == (passes // 2, passes), job.name
            continue
        slow = interval >= 600  # first run one interval after the schedule starts
        assert runs[job.name, 0] + runs[job.name, 1] == span // interval + (0 if slow else 1), job.name
    assert runs["scheduler.expire", 1] >= 30  # the survivor ran the expiry sweeps of the second half
    rows = await sql(runtime, "SELECT name, last_owner FROM job_schedule ORDER BY name")
    assert [name for name, _ in rows] == sorted(j.name for j in jobs if not j.every_worker)
    assert {owner for _, owner in rows} <= {rt.worker.owner for rt in workers}


async def test_an_idle_worker_does_not_ask_the_database(cluster: tuple[list[Runtime], Clock]) -> None:
    workers, clock = cluster
    count_runs(workers)
    await asyncio.gather(*(rt.worker.run_jobs() for rt in workers))
    for rt in workers:
        with statements(rt) as sent:
            for _ in range(5):
                await rt.worker.run_jobs()
            clock.advance(STEP - 1)  # before the shortest shared interval comes round again
            await rt.worker.run_jobs()
            clock.advance(1 - STEP)
        assert sent == []


async def test_reconciliation_warns_once_with_two_workers(
    cluster: tuple[list[Runtime], Clock],
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real job: one lost usage report is one warning, not one per worker."""
    workers, clock = cluster
    await create_users(client, admin, [{"userId": "u1"}])
    await create_devices(client, admin, 1)
    [lost] = await release_all(client, admin, "u1", 1)
    await execute(runtime, "DELETE FROM outbox WHERE dedup_key = :k", k=f"usage:{lost}")
    recorder = LogRecorder()
    monkeypatch.setattr(billing_service, "log", recorder)
    for rt in workers:  # only the job under test: the others would deliver and sweep meanwhile
        rt.worker.jobs = [j for j in rt.worker.jobs if j.name == "billing.check_unbilled"]
    await asyncio.gather(*(rt.worker.run_jobs() for rt in workers))
    assert recorder.events == []  # a slow job: first run after one interval
    clock.advance(600)
    await asyncio.gather(*(rt.worker.run_jobs() for rt in workers))
    assert [e["event"] for e in recorder.events] == [f"⚠️ Billing data may be lost for allocation: {lost}"]


async def test_a_shortened_interval_takes_effect_at_once(runtime: Runtime) -> None:
    hour, minute = timedelta(hours=1), timedelta(minutes=1)
    first = await claim_run(runtime.db, "job", interval=hour, now=START, owner="a", first_run_at=START)
    assert first.mine and first.next_run_at == START + hour
    again = await claim_run(runtime.db, "job", interval=hour, now=START + minute, owner="b", first_run_at=START)
    assert not again.mine and again.next_run_at == START + hour
    # restarted with a one-minute interval: the row an hour ahead is not waited for
    shorter = await claim_run(runtime.db, "job", interval=minute, now=START + 2 * minute, owner="b", first_run_at=START)
    assert shorter.mine and shorter.next_run_at == START + 3 * minute
