"""Ordering, per-user concurrency, retries, backoff, degradation, timeouts, crash resume."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, update

from batchops.core.clock import ManualClock
from batchops.core.runtime import Runtime
from batchops.studio.config import MAX_RETRIES, sort_key
from batchops.studio.engine import Engine
from batchops.studio.models import SimJob, StudioBatch, StudioTask
from batchops.studio.providers import expected_render_seconds
from tests.helpers import data
from tests.studio.conftest import next_tick, rows, run_until_idle, studio_user
from tests.studio.test_flow import PRO_1080_10, PRO_1080_15, SORA2, SORA2_15, balance, batch, sim_jobs, submit


def max_overlap(jobs: list[SimJob]) -> int:
    """Most renders the provider had in flight at once (a cancelled one ends when cancelled)."""
    events: list[tuple[datetime, int]] = []
    for j in jobs:
        end = min(j.ready_at, j.ended_at) if j.ended_at else j.ready_at
        events += [(j.submitted_at, 1), (end, -1)]
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


async def submission_order(
    client: httpx.AsyncClient, user: dict[str, str], runtime: Runtime, batch_id: str
) -> list[tuple[str, int]]:
    """(resolution, duration) of each render, in the order the provider received them. Renders
    sent at one instant (admitted by one tick: the clock stands still meanwhile) have no order
    of their own: they are listed in queue order."""
    view = await batch(client, user, batch_id)
    tasks = {t["taskId"]: t for t in view["tasks"]}

    def received(job: SimJob) -> tuple[datetime, int, int]:
        t = tasks[job.task_ref]
        render = expected_render_seconds("video", t["model"], t["resolution"], t["duration"])
        return job.submitted_at, sort_key(t["resolution"], t["duration"], render), t["index"]

    return [
        (tasks[j.task_ref]["resolution"], tasks[j.task_ref]["duration"])
        for j in sorted(await sim_jobs(runtime), key=received)
    ]


async def test_fast_queue_first_and_plan_concurrency(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro")
    # Pro runs 2 slow tasks (1080p 15 s) at once: 4 fill whole rounds, nothing to pull forward
    specs = [PRO_1080_15] * 4 + [SORA2_15] * 2 + [SORA2] * 4 + [PRO_1080_10] * 2
    accepted = await submit(client, user, {"rows": rows(*specs)})
    await run_until_idle(engine_factory())
    view = await batch(client, user, accepted["batchId"])
    assert view["counts"]["succeeded"] == len(specs)
    order = await submission_order(client, user, runtime, accepted["batchId"])
    # every fast task (720p, 1080p 10 s) starts before any slow one; shorter durations first,
    # and within 10 s 720p first (the seed: "720P 优先完成")
    assert order == [("720p", 10)] * 4 + [("1080p", 10)] * 2 + [("720p", 15)] * 2 + [("1080p", 15)] * 4
    peak = max_overlap(await sim_jobs(runtime))
    assert peak == 3  # the pro plan's concurrency: reached, never passed


async def test_slow_queue_pulls_forward_only_its_partial_round(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro")
    # 3 slow tasks, 2 at a time: run last, the third would render alone at the end while two
    # of the three slots idle. It starts early instead, ahead of the last fast tasks, and only it.
    specs = [PRO_1080_15] * 3 + [SORA2_15] * 2 + [SORA2] * 4 + [PRO_1080_10] * 2
    accepted = await submit(client, user, {"rows": rows(*specs)})
    await run_until_idle(engine_factory())
    order = await submission_order(client, user, runtime, accepted["batchId"])
    assert len(order) == len(specs)
    slow = [i for i, o in enumerate(order) if o == ("1080p", 15)]
    last_fast = max(i for i, o in enumerate(order) if o != ("1080p", 15))
    assert order[:3] == [("720p", 10)] * 3  # the fast queue opens the batch
    assert len([i for i in slow if i < last_fast]) == 1  # 3 mod 2: exactly the partial round
    assert max_overlap(await sim_jobs(runtime)) == 3


async def test_concurrency_is_per_user_across_batches(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    engine_factory: Callable[..., Engine],
    clock: ManualClock,
) -> None:
    a = await studio_user(client, admin, "a", plan="pro")
    b = await studio_user(client, admin, "b", plan="free")
    for _ in range(2):
        await submit(client, a, {"rows": rows(*[SORA2] * 5)})
    await submit(client, b, {"rows": rows(*[SORA2] * 3)})
    # two engines (as two workers would) tick concurrently on the same database; the clock
    # moves on to the next due task only once neither holds a claim
    e1, e2 = engine_factory(), engine_factory()
    for _ in range(1000):
        if not any(await asyncio.gather(e1.tick(), e2.tick())):
            left, wait = await e1.idle_hint()
            if not left:
                break
            next_tick(clock, wait)
    else:
        raise AssertionError("studio tasks still unfinished")
    jobs = await sim_jobs(runtime)
    assert len(jobs) == 13
    assert max_overlap([j for j in jobs if j.user_ref == "a"]) == 3
    assert max_overlap([j for j in jobs if j.user_ref == "b"]) == 1


async def test_degraded_batch_limit_is_enforced(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro_plus")
    # 6 renders, 2 at a time: the 5th success raises the limit back to 3 with nothing left to admit
    accepted = await submit(client, user, {"rows": rows(*[SORA2] * 6)})
    async with runtime.db.transaction() as session:  # as if a failure burst had cut it
        await session.execute(
            update(StudioBatch).where(StudioBatch.id == accepted["batchId"]).values(concurrency_limit=2)
        )
    await run_until_idle(engine_factory())
    assert max_overlap(await sim_jobs(runtime)) == 2
    view = await batch(client, user, accepted["batchId"])
    assert view["concurrencyLimit"] == 3  # 5 successes in a row: raised back one step (then window restarts)


async def test_failure_burst_cuts_concurrency_and_backoff_is_respected(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="enterprise", credits=100_000)
    accepted = await submit(client, user, {"rows": rows(*[SORA2] * 20)})
    await run_until_idle(engine_factory(failure_rate=0.4))
    view = await batch(client, user, accepted["batchId"])
    assert view["degradations"] >= 1
    assert view["counts"]["succeeded"] + view["counts"]["failed"] == 20
    assert view["failureAnalysis"]["retriedAttempts"] >= 4
    jobs = await sim_jobs(runtime)
    async with runtime.db.transaction() as session:
        tasks = list(await session.scalars(select(StudioTask)))
    for task in tasks:
        submissions = sorted(j.submitted_at for j in jobs if j.task_ref == task.id)
        assert len(submissions) == task.attempts <= 4
        for entry in task.history:
            if "retryAt" not in entry:  # the final failure
                continue
            failed_at = datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))
            retry_at = datetime.fromisoformat(entry["retryAt"].replace("Z", "+00:00"))
            assert (retry_at - failed_at).total_seconds() == 2 * 2 ** (entry["attempt"] - 1)  # 2 s, 4 s, 8 s
            later = [s for s in submissions if s > failed_at]
            assert later and later[0] >= retry_at  # the next attempt waited for its backoff
    spent = sum(t["credits"] for t in view["tasks"] if t["status"] == "succeeded")
    assert view["credits"] == {"held": 0, "spent": spent, "returned": 20 * 15 - spent}
    assert await balance(runtime, "u1") == (100_000 - spent, 0)


async def test_retryable_and_final_errors(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    prompts = ["[reject] nsfw", "[429] busy", "[5xx] broken", "[slow] long", "fine"]
    body = {"rows": [{"prompt": p, "model": "sora-2", "resolution": "720p", "duration": 10} for p in prompts]}
    accepted = await submit(client, user, body)
    await run_until_idle(engine_factory())
    view = await batch(client, user, accepted["batchId"])
    tasks = {t["prompt"]: t for t in view["tasks"]}
    assert tasks["[reject] nsfw"]["attempts"] == 1 and tasks["[reject] nsfw"]["errorKind"] == "content_rejected"
    for prompt, kind in (("[429] busy", "rate_limited"), ("[5xx] broken", "server_error"), ("[slow] long", "timeout")):
        assert tasks[prompt]["status"] == "failed" and tasks[prompt]["attempts"] == 4, tasks[prompt]
        assert tasks[prompt]["errorKind"] == kind
    assert tasks["fine"]["status"] == "succeeded"
    analysis = view["failureAnalysis"]
    assert analysis["byKind"] == {"content_rejected": 1, "rate_limited": 1, "server_error": 1, "timeout": 1}
    assert analysis["failedCount"] == 4 and analysis["retryableCount"] == 3
    assert view["credits"] == {"held": 0, "spent": 15, "returned": 60}
    assert await balance(runtime, "u1") == (985, 0)
    # a timed-out render was stopped at the provider (it stops counting against the plan)
    slow = [j for j in await sim_jobs(runtime) if j.task_ref == tasks["[slow] long"]["taskId"]]
    assert len(slow) == 4 and all(j.ended_at is not None for j in slow)


async def test_crash_between_intent_and_record_never_resubmits(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    engine_factory: Callable[..., Engine],
    clock: ManualClock,
) -> None:
    user = await studio_user(client, admin, "u1", plan="enterprise")
    accepted = await submit(client, user, {"rows": rows(*[SORA2] * 6)})
    dead = engine_factory()
    claims = await dead.admit()
    assert len(claims) == 6
    for claim in claims[:3]:  # submitted at the provider, then the worker died before recording it
        await dead.step(claim)
    clock.advance(31)  # the dead worker's 30 s leases run out
    await run_until_idle(engine_factory())
    view = await batch(client, user, accepted["batchId"])
    assert view["counts"]["succeeded"] == 6
    jobs = await sim_jobs(runtime)
    assert len(jobs) == 6 and len({j.task_ref for j in jobs}) == 6  # each task submitted exactly once


async def test_pause_keeps_running_tasks_and_stops_new_ones(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro")
    accepted = await submit(client, user, {"rows": rows(*[SORA2] * 7)})
    batch_id = accepted["batchId"]
    engine = engine_factory()
    assert await engine.tick() == 3
    paused = data(await client.post(f"/api/v1/workflow/batches/{batch_id}/pause", headers=user))
    assert paused["status"] == "paused" and paused["affectedCount"] == 4
    await run_until_idle(engine)  # paused batches do not count as work left
    view = await batch(client, user, batch_id)
    assert view["status"] == "paused"
    assert view["counts"]["succeeded"] == 3 and view["counts"]["queued"] == 4 and view["counts"]["running"] == 0
    assert len(await sim_jobs(runtime)) == 3
    r = await client.post(f"/api/v1/workflow/batches/{batch_id}/pause", headers=user)
    assert r.status_code == 409
    data(await client.post(f"/api/v1/workflow/batches/{batch_id}/resume", headers=user))
    await run_until_idle(engine)
    view = await batch(client, user, batch_id)
    assert view["status"] == "completed" and view["counts"]["succeeded"] == 7


async def test_cancel_returns_credits_of_everything_not_succeeded(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    engine_factory: Callable[..., Engine],
    clock: ManualClock,
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    specs = [SORA2] * 3 + [PRO_1080_15] * 3
    accepted = await submit(client, user, {"rows": rows(*specs)})
    batch_id = accepted["batchId"]
    engine = engine_factory()
    for _ in range(100):  # on to the first success, with renders still going
        await engine.tick()
        view = await batch(client, user, batch_id)
        if view["counts"]["succeeded"] >= 1 and view["counts"]["running"] >= 1:
            break
        _, wait = await engine.idle_hint()
        next_tick(clock, wait)
    spent = view["credits"]["spent"]
    assert spent and await client.get("/health")
    out = data(await client.post(f"/api/v1/workflow/batches/{batch_id}/cancel", headers=user))
    cancelled_at = clock()  # renders still going by then were stopped
    assert out["status"] == "cancelled" and out["creditsReturned"] == 45 + 390 - spent
    await run_until_idle(engine)
    view = await batch(client, user, batch_id)
    assert view["status"] == "cancelled" and view["counts"]["queued"] == view["counts"]["running"] == 0
    assert view["credits"] == {"held": 0, "spent": spent, "returned": 435 - spent}
    assert await balance(runtime, "u1") == (1000 - spent, 0)
    cancelled = {t["taskId"] for t in view["tasks"] if t["status"] == "cancelled"}
    for job in await sim_jobs(runtime):  # renders in flight were stopped at the provider
        if job.task_ref in cancelled:
            assert job.ended_at is not None or job.ready_at <= cancelled_at
    r = await client.post(f"/api/v1/workflow/batches/{batch_id}/cancel", headers=user)
    assert r.status_code == 409


async def test_retry_failed_holds_credits_again(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, engine_factory: Callable[..., Engine]
) -> None:
    user = await studio_user(client, admin, "u1", plan="pro", credits=100)
    body = {"rows": [{"prompt": "[reject] x"}, {"prompt": "ok"}], "defaultModel": "sora-2"}
    accepted = await submit(client, user, body)
    batch_id = accepted["batchId"]
    engine = engine_factory()
    await run_until_idle(engine)
    assert await balance(runtime, "u1") == (85, 0)
    out = data(await client.post(f"/api/v1/workflow/batches/{batch_id}/retry-failed", headers=user))
    assert out["affectedCount"] == 1 and out["creditsHeld"] == 15
    assert await balance(runtime, "u1") == (85, 15)
    view = await batch(client, user, batch_id)
    assert view["status"] == "running" and view["counts"]["queued"] == 1
    await run_until_idle(engine)
    view = await batch(client, user, batch_id)
    assert view["status"] == "completed" and view["counts"]["failed"] == 1
    assert await balance(runtime, "u1") == (85, 0)
    other = await studio_user(client, admin, "u2")
    r = await client.post(f"/api/v1/workflow/batches/{batch_id}/retry-failed", headers=other)
    assert r.status_code == 403


async def test_poll_steps_run_from_the_first_poll(engine_factory: Callable[..., Engine]) -> None:
    """A render is polled at the schedule's first step when it may be done: 1080p 10 s (360 s
    typical) first at 270 s, then every 5 s (not the 8 s due 180 s after submission); the
    next steps come 180 s and 480 s after that first poll."""
    engine = engine_factory(scale=1.0)
    start = datetime(2025, 1, 1)
    task = StudioTask(generation_type="video", model="sora-2-pro", resolution="1080p", duration=10, submitted_at=start)
    assert engine.timing.first_poll(task, start) == start + timedelta(seconds=270)
    for after_first, step in ((0, 5), (179, 5), (180, 8), (479, 8), (480, 12)):
        now = start + timedelta(seconds=270 + after_first)
        assert engine.timing.next_poll(task, now) == now + timedelta(seconds=step)
    sd = StudioTask(generation_type="video", model="sora-2", resolution="720p", duration=10, submitted_at=start)
    assert engine.timing.first_poll(sd, start) == start + timedelta(seconds=45)
    assert [
        engine.timing.next_poll(sd, start + timedelta(seconds=45 + e)) - start - timedelta(seconds=45 + e)
        for e in (0, 59, 60, 180)
    ] == [timedelta(seconds=s) for s in (3, 3, 5, 8)]


async def test_a_crash_during_retry_failed_renders_each_retried_task_once_more(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    engine_factory: Callable[..., Engine],
    clock: ManualClock,
) -> None:
    """retry-failed starts the attempts at 1 again; its submissions still carry new request
    ids, so a resumed task never adopts the first run's failed render (issue 16.7)."""
    user = await studio_user(client, admin, "u1", plan="enterprise")
    accepted = await submit(client, user, {"rows": rows(*[SORA2] * 8)})
    batch_id = accepted["batchId"]
    await run_until_idle(engine_factory(failure_rate=1.0))  # every render fails, retries too
    assert (await batch(client, user, batch_id))["counts"]["failed"] == 8
    first_run = Counter(j.task_ref for j in await sim_jobs(runtime))
    assert len(first_run) == 8 and set(first_run.values()) == {1 + MAX_RETRIES}
    assert (
        data(await client.post(f"/api/v1/workflow/batches/{batch_id}/retry-failed", headers=user))["affectedCount"] == 8
    )
    async with runtime.db.transaction() as session:  # the failures cut its concurrency: not this test's subject
        await session.execute(
            update(StudioBatch).where(StudioBatch.id == batch_id).values(concurrency_limit=10, recent_outcomes=[])
        )
    dead = engine_factory()
    claims = await dead.admit()  # the intents are recorded ...
    assert len(claims) == 8
    for claim in claims[:4]:  # ... half reach the provider, then the worker dies before recording anything
        await dead.step(claim)
    clock.advance(31)  # the dead worker's 30 s leases run out
    await run_until_idle(engine_factory())
    view = await batch(client, user, batch_id)
    assert view["counts"]["succeeded"] == 8 and view["status"] == "completed"
    assert {t["attempts"] for t in view["tasks"]} == {1}  # no old failure adopted, so nothing retried
    jobs = await sim_jobs(runtime)
    assert Counter(j.task_ref for j in jobs) == {task: n + 1 for task, n in first_run.items()}  # once more each
    assert len({j.request_id for j in jobs}) == len(jobs)  # no request id was ever sent twice
