"""Every bench module still runs end to end (``--smoke``: its smallest size), so a change
that breaks ``make bench`` fails the tests. Nothing is measured: a smoke run only has to
complete and print its table. Every module runs on SQLite; the ones whose default engine
is PostgreSQL (billing, scheduler_phase3, studio, whose throughput part is PostgreSQL
only) run there too."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchops.billing.schemas import DeviceUsageBatchIn
from bench import billing
from bench.__main__ import KNOWN
from tests.conftest import POSTGRES_URL, _pg_reachable, require_service

ROOT = Path(__file__).parents[1]
# What each module's table says (its title), per engine.
TABLES = {
    ("scheduler", "sqlite"): "Scheduler batch operations over HTTP on SQLite",
    ("scheduler_phase3", "sqlite"): "Scheduler phase 3 on SQLite",
    ("scheduler_phase3", "postgresql"): "Scheduler phase 3 on PostgreSQL",
    ("billing", "sqlite"): "Usage ingestion, 200 events",
    ("billing", "postgresql"): "Usage ingestion, 200 events",
    ("dining", "sqlite"): "dining: one batch-orders request",
    ("studio", "sqlite"): "studio: 8-video mixed batch",
    ("studio", "postgresql"): "100 no-op tasks on PostgreSQL",
}


def test_every_bench_module_has_a_smoke_run() -> None:
    assert {name for name, _ in TABLES} == set(KNOWN)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "engine"), list(TABLES), ids=[f"{n}-{e}" for n, e in TABLES])
def test_bench_runs_end_to_end(name: str, engine: str) -> None:
    if engine == "postgresql" and (problem := asyncio.run(_pg_reachable(POSTGRES_URL))):
        require_service("PostgreSQL", problem)
    env = {**os.environ, "COLUMNS": "250", "BATCHOPS_BENCH_POSTGRES_URL": POSTGRES_URL}
    done = subprocess.run(
        [sys.executable, "-m", "bench", name, "--db", engine, "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert TABLES[name, engine] in done.stdout, done.stdout[-4000:]


def test_the_billing_bench_sends_reports_the_service_accepts() -> None:
    """At its full size too: a duration past ``releasedAt - allocatedAt`` is refused (400)."""
    events = billing.events(20_000, "run")
    for start in range(0, len(events), billing.BATCH):
        DeviceUsageBatchIn.model_validate({"events": events[start : start + billing.BATCH]})
