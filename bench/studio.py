"""Studio engine speed (issue 5), on a fresh PostgreSQL database:

1. **makespan**: a 100-video mixed batch (25 each of sora-2 720p 10 s, sora-2-pro
   720p 15 s, 1080p 10 s, 1080p 15 s) for one Enterprise user, simulated provider
   at ``--scale``; makespan against the lower bound Σ render / concurrency (with
   the plan's concurrency, and with each task's actual concurrency from
   ``calculate_actual_concurrency``). Target ≤ 1.05× the latter.
2. **polling**: provider status calls made by the adaptive schedule against what
   fixed 3 s polling needs for the same renders (Σ ⌈render / 3 s⌉). Target ≤ 0.55×.
3. **throughput**: 10,000 no-op tasks (instant provider) claimed, submitted, polled
   and completed by ``--engines`` engines, credits held and captured through the
   ledger; beside procrastinate (same DB, same number of workers, 10,000 no-op
   jobs) and a plain-SQL floor (claim 200 with SKIP LOCKED, then complete).

    python -m bench.studio [--db postgresql|sqlite] [--scale 0.02] [--engines 4] [--tasks 10000]
                           [--part all|makespan|throughput] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, insert, select

from batchops.assembly import build_runtime
from batchops.billing.ledger import Ledger
from batchops.core.logging import configure_logging
from batchops.core.runtime import Runtime
from batchops.identity.models import User
from batchops.notifications.service import NotificationService
from batchops.settings import Settings
from batchops.studio.config import (
    PARTIAL_ROUND_LEAD,
    SLOW_QUEUE_KEY,
    calculate_actual_concurrency,
    get_batch_config,
)
from batchops.studio.engine import Engine
from batchops.studio.models import SimJob, StudioTask
from batchops.studio.providers import Status, SubmitRequest, expected_render_seconds
from batchops.studio.schemas import BatchGenerateIn, RowIn
from batchops.studio.service import StudioService
from bench.harness import fresh_database

MIX = [("sora-2", "720p", 10), ("sora-2-pro", "720p", 15), ("sora-2-pro", "1080p", 10), ("sora-2-pro", "1080p", 15)]
console = Console()


async def add_users(rt: Runtime, ids: list[str], credits: int) -> None:
    async with rt.db.transaction() as session:
        await session.execute(insert(User), [{"id": u, "name": u, "plan": "enterprise"} for u in ids])
    async with rt.db.transaction() as session:
        for u in ids:
            await rt.services.get(Ledger).topup(session, u, "CREDITS", credits, f"bench:{u}")


async def drive(engines: list[Engine], rt: Runtime) -> float:
    """Tick every engine until no task is unfinished, each sleeping until the next task is due
    (as ``Engine.run_until_idle`` does); seconds taken."""
    started = time.perf_counter()
    done = asyncio.Event()

    async def loop(engine: Engine) -> None:
        while not done.is_set():
            if not await engine.tick():
                left, wait = await engine.idle_hint()
                if not left:
                    done.set()
                    return
                await asyncio.sleep(min(max(wait, 0.001), 0.05))

    await asyncio.gather(*(loop(e) for e in engines))
    return time.perf_counter() - started


# --- 1 + 2: makespan and polling ------------------------------------------------------------


async def makespan(url: str, scale: float, copies: int = 25) -> list[tuple[str, str, str, str]]:
    """A batch of ``copies`` × MIX videos, submitted in two halves."""
    rt = build_runtime(Settings(database_url=url, log_level="WARNING", sim_time_scale=scale))
    await add_users(rt, ["maker"], 1_000_000)
    async with rt.db.transaction() as session:
        user = await session.get(User, "maker")
    assert user is not None
    rows = [RowIn(prompt=f"shot {i}", model=m, resolution=r, duration=d) for i, (m, r, d) in enumerate(MIX * copies)]  # type: ignore[arg-type]
    for half in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
        await rt.services.get(StudioService).submit(user, BatchGenerateIn(rows=half, generation_type="video"))
    engine = rt.services.get(Engine)
    elapsed = await drive([engine], rt)
    async with rt.db.transaction() as session:
        tasks = {t.id: t for t in await session.scalars(select(StudioTask))}
        jobs = list(await session.scalars(select(SimJob)))
    await rt.stop()
    plan = get_batch_config("enterprise")
    render = {j.task_ref: (j.ready_at - j.submitted_at).total_seconds() for j in jobs}
    lb_plan = sum(render.values()) / plan.concurrency
    # Each task holds plan / actual-concurrency of the plan's slots for its render time, so
    # no schedule ends before Σ render ÷ actual concurrency, nor before its longest render.
    lb_actual = max(
        sum(
            r / calculate_actual_concurrency("enterprise", tasks[t].model, tasks[t].resolution, tasks[t].duration)
            for t, r in render.items()
        ),
        max(render.values()),
    )
    ideal = policy_makespan(tasks, render, plan.concurrency, scale)
    polls = sum(j.polls for j in jobs)
    fixed = sum(math.ceil(r / scale / 3.0) for r in render.values())
    ok = sum(1 for t in tasks.values() if t.state == "succeeded")
    first = min(j.submitted_at for j in jobs)
    last = max(t.finished_at for t in tasks.values() if t.finished_at)
    fast_done = max(t.finished_at for t in tasks.values() if t.finished_at and t.sort_key < SLOW_QUEUE_KEY)
    fast_share = (fast_done - first) / (last - first)
    return [
        ("makespan (s, scaled)", f"{elapsed:.2f}", f"{lb_actual:.2f} (Σ render / actual concurrency)", ""),
        ("makespan / lower bound", f"{elapsed / lb_actual:.3f}x", "target ≤ 1.05x", f"{ok}/{len(rows)} succeeded"),
        ("makespan / same policy, zero overhead", f"{elapsed / ideal:.3f}x", f"{ideal:.2f} s", "engine cost alone"),
        ("makespan / Σ render ÷ plan 10", f"{elapsed / lb_plan:.3f}x", f"{lb_plan:.2f} s", "1080p capped at 9 / 7"),
        ("fast queue all done at", f"{fast_share:.0%} of the makespan", "", "the seed's quick feedback"),
        ("status polls", str(polls), f"{fixed} with fixed 3 s polling", f"{polls / fixed:.3f}x (target ≤ 0.55x)"),
    ]


def policy_makespan(tasks: dict[str, StudioTask], render: dict[str, float], slots: int, scale: float) -> float:
    """The makespan the admission policy itself allows (queue order, weighted slots, the slow
    queue pulled forward once critical, no latency at all), by event simulation over the same
    render times: what remains of the gap to the lower bound once the engine's own cost is out.
    Mirrors ``Admission`` (studio/admission.py) for one user (expected render times for its estimates)."""

    def kind(t: str) -> tuple[str, str, str | None, int | None]:
        task = tasks[t]
        return task.generation_type, task.model, task.resolution, task.duration

    order = sorted(render, key=lambda t: (tasks[t].sort_key, tasks[t].created_at, tasks[t].index))
    k = {t: calculate_actual_concurrency("enterprise", *kind(t)[1:]) for t in order}
    weight = {t: slots / k[t] for t in order}
    expected = {t: expected_render_seconds(*kind(t)) * scale for t in order}
    fast = [t for t in order if tasks[t].sort_key < SLOW_QUEUE_KEY]
    slow = [t for t in order if tasks[t].sort_key >= SLOW_QUEUE_KEY]
    now, used, end = 0.0, 0.0, 0.0
    running: list[tuple[float, float, str]] = []  # (actual end, expected end, task)
    while fast or slow or running:
        while fast or slow:
            area = sum(weight[t] * max(0.0, e - now) for _, e, t in running)
            area += sum(weight[t] * expected[t] for t in fast + slow)
            critical = False
            if slow:
                lead = PARTIAL_ROUND_LEAD if len(slow) % k[slow[0]] else 0.0
                rounds = math.ceil(len(slow) / k[slow[0]])
                critical = area / slots <= rounds * expected[slow[0]] * (1 + lead) + 1e-9
            queue = slow if critical or not fast else fast
            if used + weight[queue[0]] > slots + 1e-9:
                break
            t = queue.pop(0)
            used += weight[t]
            running.append((now + render[t], now + expected[t], t))
        running.sort()
        finish, _, t = running.pop(0)
        now, used, end = finish, used - weight[t], max(end, finish)
    return end


# --- 3: throughput ------------------------------------------------------------------------------


class NoopProvider:
    """Answers at once: measures the engine and the database, not a provider."""

    name = "noop"
    finds_by_request_id = True
    calls_back = False

    async def submit(self, req: SubmitRequest) -> str:
        return req.request_id

    async def find(self, request_id: str) -> str | None:
        return None

    async def status(self, provider_task_id: str) -> Status:
        return Status("succeeded", result_url="noop://" + provider_task_id)

    async def cancel(self, provider_task_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def engine_throughput(url: str, n_tasks: int, n_engines: int) -> float:
    rt = build_runtime(Settings(database_url=url, log_level="WARNING"))
    users = [f"bulk{i:04d}" for i in range(n_tasks // 50)]
    await add_users(rt, users, 10_000)
    async with rt.db.transaction() as session:
        loaded = {u.id: u for u in await session.scalars(select(User).where(User.id.in_(users)))}
    rows = [RowIn(prompt="noop", model="sora-2")] * 50
    for u in users:
        await rt.services.get(StudioService).submit(loaded[u], BatchGenerateIn(rows=rows))
    engines = [
        Engine(
            rt.db,
            NoopProvider(),
            rt.services.get(NotificationService),
            rt.push,
            clock=rt.clock,
            time_scale=1e-6,
            max_claim=500,
        )
        for _ in range(n_engines)
    ]
    seconds = await drive(engines, rt)
    async with rt.db.transaction() as session:
        ok = await session.scalar(select(func.count()).select_from(StudioTask).where(StudioTask.state == "succeeded"))
    await rt.stop()
    assert ok == len(users) * 50, ok
    return float(ok) / seconds


async def procrastinate_throughput(url: str, n_jobs: int, n_workers: int) -> float:
    import procrastinate

    dsn = url.replace("postgresql://", "postgresql://", 1)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop", queue="bench")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, n_jobs, 1000):
            await noop.batch_defer_async(*[{} for _ in range(min(1000, n_jobs - start))])
        started = time.perf_counter()
        await app.run_worker_async(queues=["bench"], concurrency=n_workers, wait=False, install_signal_handlers=False)
        seconds = time.perf_counter() - started
    return n_jobs / seconds


async def floor_throughput(url: str, n: int, n_workers: int) -> float:
    pool = await asyncpg.create_pool(url, min_size=n_workers, max_size=n_workers)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE bench_floor (id serial PRIMARY KEY, state text NOT NULL)")
        await conn.execute("CREATE INDEX ON bench_floor (state, id)")
        await conn.execute("INSERT INTO bench_floor (state) SELECT 'queued' FROM generate_series(1, $1)", n)

    async def worker() -> None:
        while True:
            async with pool.acquire() as conn:
                ids = await conn.fetch(
                    "UPDATE bench_floor SET state = 'running' WHERE id IN (SELECT id FROM bench_floor "
                    "WHERE state = 'queued' ORDER BY id LIMIT 200 FOR UPDATE SKIP LOCKED) RETURNING id"
                )
                if not ids:
                    return
                await conn.execute(
                    "UPDATE bench_floor SET state = 'done' WHERE id = ANY($1::int[])", [r["id"] for r in ids]
                )

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(n_workers)))
    seconds = time.perf_counter() - started
    await pool.close()
    return n / seconds


async def run(
    scale: float, n_engines: int, n_tasks: int, part: str = "all", db: str = "postgresql", copies: int = 25
) -> None:
    configure_logging("WARNING", False)
    if part in ("all", "makespan"):
        await run_makespan(scale, db == "sqlite", copies)
    if part in ("all", "throughput"):
        if db == "sqlite":
            console.print("throughput: PostgreSQL only (beside procrastinate); run with --db postgresql")
        else:
            await run_throughput(n_engines, n_tasks)


async def run_makespan(scale: float, sqlite: bool = False, copies: int = 25) -> None:
    url, drop = await fresh_database(sqlite)
    try:
        first = await makespan(url, scale, copies)
    finally:
        await drop()
    engine = "SQLite" if sqlite else "PostgreSQL"
    table = Table(
        title=f"studio: {copies * len(MIX)}-video mixed batch, Enterprise (10 at once), time scale {scale}, {engine}"
    )
    for column in ("measure", "value", "reference", "note"):
        table.add_column(column)
    for row in first:
        table.add_row(*row)
    console.print(table)


async def run_throughput(n_engines: int, n_tasks: int) -> None:
    url, drop = await fresh_database(False)
    results: dict[str, Any] = {}
    try:
        results["studio engine"] = await engine_throughput(url, n_tasks, n_engines)
        results["procrastinate"] = await procrastinate_throughput(url, n_tasks, n_engines)
        results["plain SQL floor"] = await floor_throughput(url, n_tasks, n_engines)
    finally:
        await drop()
    table = Table(title=f"{n_tasks:,} no-op tasks on PostgreSQL, {n_engines} workers, same database")
    for column in ("queue", "tasks / s", "what one task costs"):
        table.add_column(column)
    notes = {
        "studio engine": "admit + submit + poll + complete, hold captured in the ledger, 2 state changes",
        "procrastinate": "defer excluded; fetch + run + finish",
        "plain SQL floor": "claim 200 (SKIP LOCKED) + complete, nothing else",
    }
    for name, rate in results.items():
        table.add_row(name, f"{rate:,.0f}", notes[name])
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.02, help="simulated time scale (0.02: 60 s → 1.2 s)")
    parser.add_argument("--engines", type=int, default=4, help="concurrent engines / workers")
    parser.add_argument("--tasks", type=int, default=10_000, help="no-op tasks for the throughput run")
    parser.add_argument("--part", choices=("all", "makespan", "throughput"), default="all")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument(
        "--smoke", action="store_true", help="8 videos at scale 0.005, 100 no-op tasks: runs, measures nothing"
    )
    args = parser.parse_args(argv)
    copies = 25
    if args.smoke:
        args.scale, args.engines, args.tasks, copies = 0.005, 2, 100, 2
    asyncio.run(run(args.scale, args.engines, args.tasks, args.part, args.db, copies))


if __name__ == "__main__":
    main()
