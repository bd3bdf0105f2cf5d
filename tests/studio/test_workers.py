"""100 tasks, two real `batchops worker` processes on PostgreSQL, one killed with SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from batchops.core.runtime import Runtime
from batchops.studio.models import FINAL_STATES, SimJob, StudioTask
from tests.studio.conftest import rows, studio_user
from tests.studio.test_flow import balance, submit
from tests.studio.test_scheduling import max_overlap

SPECS = (
    [("sora-2", "720p", 10)] * 30
    + [("sora-2-pro", "720p", 15)] * 10
    + [("sora-2-pro", "1080p", 10)] * 5
    + [("sora-2-pro", "1080p", 15)] * 5
)


def start_worker(database_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BATCHOPS_DATABASE_URL": database_url,
        "BATCHOPS_SIM_TIME_SCALE": "0.001",
        "BATCHOPS_STUDIO_TICK_SECONDS": "0.02",
        "BATCHOPS_OUTBOX_POLL_SECONDS": "0.02",
        "BATCHOPS_STUDIO_LEASE_SECONDS": "1",
        "BATCHOPS_LOG_LEVEL": "WARNING",
    }
    exe = Path(sys.executable).parent / "batchops"
    with log.open("wb") as out:
        return subprocess.Popen([str(exe), "worker"], env=env, stdout=out, stderr=subprocess.STDOUT)


async def final_count(runtime: Runtime) -> int:
    async with runtime.db.transaction() as session:
        n = await session.scalar(select(func.count()).select_from(StudioTask).where(StudioTask.state.in_(FINAL_STATES)))
    return int(n or 0)


@pytest.mark.postgres_only  # scale-out is PostgreSQL's (DESIGN.md): not several workers on one SQLite file
async def test_two_workers_one_killed_every_task_final_once(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, tmp_path: Path
) -> None:
    user = await studio_user(client, admin, "u1", plan="enterprise", credits=100_000)
    for _ in range(2):
        await submit(client, user, {"rows": rows(*SPECS)})
    total_price = 2 * sum({"720p10": 15, "720p15": 60, "1080p10": 100, "1080p15": 130}[f"{r}{d}"] for _, r, d in SPECS)
    workers = [start_worker(runtime.settings.database_url, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while await final_count(runtime) < 25:
            assert loop.time() < deadline, (tmp_path / "worker0.log").read_text()
            await asyncio.sleep(0.05)
        workers[0].send_signal(signal.SIGKILL)  # mid-run: it holds leases and in-flight submissions
        workers[0].wait()
        while await final_count(runtime) < 100:
            assert loop.time() < deadline, (tmp_path / "worker1.log").read_text()
            await asyncio.sleep(0.1)
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(timeout=10)
    async with runtime.db.transaction() as session:
        tasks = list(await session.scalars(select(StudioTask)))
        jobs = list(await session.scalars(select(SimJob)))
    assert {t.state for t in tasks} == {"succeeded"}
    submissions: dict[str, int] = {}
    for j in jobs:
        submissions[j.task_ref] = submissions.get(j.task_ref, 0) + 1
    assert len(submissions) == 100 and set(submissions.values()) == {1}  # the provider saw each task once
    assert 5 <= max_overlap(jobs) <= 10  # enterprise: 10 at once, across both workers
    assert await balance(runtime, "u1") == (100_000 - total_price, 0)
