"""Which tasks a worker takes next (steps 1 and 2 of the engine's tick).

1. **admit** queued tasks whose time has come, per user, up to the plan's
   concurrency counted in the database (``submitting`` + ``running`` rows of that
   user, whichever worker holds them). PostgreSQL: a transaction-scoped advisory
   lock per user makes count-and-claim atomic across workers and the rows are
   taken ``FOR UPDATE SKIP LOCKED``; SQLite: ``BEGIN IMMEDIATE`` serialises it.
   Admitting records the intent (state ``submitting``, our request id, a lease)
   and commits *before* the provider is called.
2. **claim** running tasks whose next poll is due, and ``submitting`` tasks whose
   lease ran out (their worker died), ``FOR UPDATE SKIP LOCKED``, with a lease.
"""

from __future__ import annotations

import math
import zlib
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.clock import Clock
from batchops.core.db import Database, is_postgres
from batchops.identity.models import User
from batchops.studio.claims import Claim
from batchops.studio.config import (
    PARTIAL_ROUND_LEAD,
    SLOW_QUEUE_KEY,
    calculate_actual_concurrency,
    get_batch_config,
)
from batchops.studio.models import (
    ACTIVE_STATES,
    B_QUEUED,
    B_RUNNING,
    QUEUED,
    RUNNING,
    SUBMITTING,
    StudioBatch,
    StudioTask,
)
from batchops.studio.providers import expected_render_seconds, submission_id
from batchops.studio.timing import Timing

log = structlog.get_logger(__name__)

RUNNABLE_BATCH = (B_QUEUED, B_RUNNING)
USERS_PER_TICK = 100


class Admission:
    """Admits and claims tasks for one worker (``owner`` names its leases)."""

    def __init__(self, db: Database, clock: Clock, timing: Timing, owner: str, *, max_claim: int = 200) -> None:
        self.db = db
        self.clock = clock
        self.timing = timing
        self.owner = owner
        self.max_claim = max_claim

    async def admit(self) -> list[Claim]:
        """Admit the next tasks of up to 100 users with due work: a constant number of statements."""
        now = self.clock()
        due = and_(
            StudioTask.state == QUEUED,
            StudioTask.due_at <= now,
            StudioBatch.status.in_(RUNNABLE_BATCH),
        )
        claims: list[Claim] = []
        updates: list[dict[str, Any]] = []
        async with self.db.transaction() as session:
            plans: dict[str, str | None] = dict(
                (
                    await session.execute(
                        select(StudioTask.user_id, User.plan)
                        .join(StudioBatch, StudioBatch.id == StudioTask.batch_id)
                        .join(User, User.id == StudioTask.user_id)
                        .where(due)
                        .distinct()
                        .limit(USERS_PER_TICK)
                    )
                ).all()
            )
            users = sorted(plans)
            if users and is_postgres(session):
                # one admitter per user at a time: count-and-claim must not interleave across workers
                keys = {zlib.crc32(f"studio:user:{u}".encode()): u for u in users}
                got = await session.scalars(
                    text("SELECT k FROM unnest(CAST(:keys AS bigint[])) AS k WHERE pg_try_advisory_xact_lock(k)"),
                    {"keys": sorted(keys)},
                )
                users = sorted(keys[k] for k in got)
            if users:
                for task in await self._admit_users(session, users, plans, due, now):
                    updates.append(
                        {
                            "id": task.id,
                            "state": SUBMITTING,
                            "attempts": task.attempts + 1,
                            "request_id": submission_id(task.id, task.attempts + 1),
                            "lease_owner": self.owner,
                            "lease_until": now + self.timing.lease,
                            "started_at": task.started_at or now,
                        }
                    )
                    claims.append(Claim(task))
            if updates:
                await session.execute(update(StudioTask), updates)
        for claim, values in zip(claims, updates, strict=True):  # the rows as written (detached now)
            for column, value in values.items():
                setattr(claim.task, column, value)
        return claims

    async def _admit_users(
        self, session: AsyncSession, users: list[str], plans: dict[str, str | None], due: Any, now: datetime
    ) -> list[StudioTask]:
        """Each user's next tasks while they fit: the fast queue first, the slow queue when due.

        Each running task takes ``plan concurrency / actual concurrency of its kind`` slots
        (a 720p task 1, an Enterprise 1080p 15 s task 10/7), the plan has ``concurrency``
        slots: so a user never has more than the plan's tasks at the provider, nor more of
        one kind than ``calculate_actual_concurrency`` allows. Counted in the database, so
        it holds across every worker.

        Order: the fast queue goes first (the seed), except that a slow task goes ahead of
        waiting fast ones once the slow queue is *critical* (:meth:`slow_is_critical`):
        waiting any longer to start it would push the end of the user's work past the
        earliest end its remaining work allows. Admission is strict within the chosen queue:
        nothing jumps ahead of a heavier task that waits for room.

        Whether a user has a slot free is known from the running tasks alone: most ticks (one
        runs whenever a poll is due) find every slot taken and stop there.
        """

        def weight(user_id: str, model: str, resolution: str | None, duration: int | None) -> float:
            plan = plans.get(user_id)
            return get_batch_config(plan).concurrency / calculate_actual_concurrency(plan, model, resolution, duration)

        kind = (StudioTask.generation_type, StudioTask.model, StudioTask.resolution, StudioTask.duration)
        running = (
            await session.execute(
                select(StudioTask.user_id, StudioTask.batch_id, *kind, StudioTask.submitted_at).where(
                    StudioTask.user_id.in_(users), StudioTask.state.in_(ACTIVE_STATES)
                )
            )
        ).all()
        used: dict[str, float] = dict.fromkeys(users, 0.0)
        area: dict[str, float] = dict.fromkeys(users, 0.0)  # slot-seconds of work left, scaled
        slow_left: dict[str, int] = dict.fromkeys(users, 0)
        active: dict[str, int] = {}
        for user_id, batch_id, gen, model, resolution, duration, submitted_at in running:
            w = weight(user_id, model, resolution, duration)
            active[batch_id] = active.get(batch_id, 0) + 1
            used[user_id] += w
            expected = self.timing.seconds(expected_render_seconds(gen, model, resolution, duration))
            left = ((submitted_at or now) + expected - now).total_seconds()
            area[user_id] += w * max(0.0, left)
        open_users = [u for u in users if used[u] + 1 <= get_batch_config(plans.get(u)).concurrency + 1e-9]
        if not open_users:
            return []
        slow = StudioTask.sort_key >= SLOW_QUEUE_KEY
        waiting = (
            await session.execute(
                select(StudioTask.user_id, *kind, slow.label("slow"), func.count())
                .join(StudioBatch, StudioBatch.id == StudioTask.batch_id)
                .where(
                    StudioTask.user_id.in_(open_users),
                    StudioTask.state == QUEUED,
                    StudioBatch.status.in_(RUNNABLE_BATCH),
                )
                .group_by(StudioTask.user_id, *kind, slow)
            )
        ).all()
        for user_id, gen, model, resolution, duration, is_slow, n in waiting:
            render = self.timing.seconds(expected_render_seconds(gen, model, resolution, duration)).total_seconds()
            area[user_id] += n * weight(user_id, model, resolution, duration) * render
            if is_slow:
                slow_left[user_id] += n
        order = (StudioTask.sort_key, StudioBatch.created_at, StudioTask.batch_id, StudioTask.index)
        rank = func.row_number().over(partition_by=(StudioTask.user_id, slow), order_by=order).label("rank")
        ranked = (
            select(StudioTask.id, rank)
            .join(StudioBatch, StudioBatch.id == StudioTask.batch_id)
            .where(due, StudioTask.user_id.in_(open_users))
            .subquery()
        )
        head = max(get_batch_config(plans.get(u)).concurrency for u in open_users) * 2
        rows = (
            await session.execute(
                select(StudioTask, StudioBatch.concurrency_limit)
                .join(StudioBatch, StudioBatch.id == StudioTask.batch_id)
                .where(StudioTask.id.in_(select(ranked.c.id).where(ranked.c.rank <= head)), due)
                .order_by(StudioTask.user_id, *order)
                .with_for_update(skip_locked=True, of=StudioTask)
            )
        ).all()
        candidates = [task for task, _ in rows]
        limits = {task.batch_id: limit for task, limit in rows}
        queues: dict[str, tuple[list[StudioTask], list[StudioTask]]] = {}
        for task in candidates:
            fast_q, slow_q = queues.setdefault(task.user_id, ([], []))
            (slow_q if task.sort_key >= SLOW_QUEUE_KEY else fast_q).append(task)
        admitted: list[StudioTask] = []
        for user_id, (fast_q, slow_q) in queues.items():
            plan = plans.get(user_id)
            slots = get_batch_config(plan).concurrency
            while fast_q or slow_q:
                critical = bool(slow_q) and self.slow_is_critical(plan, slow_q[0], slow_left[user_id], area[user_id])
                queue = slow_q if critical or not fast_q else fast_q
                task = queue[0]
                if active.get(task.batch_id, 0) >= limits.get(task.batch_id, 1):
                    queue.pop(0)  # this batch is degraded; another batch of the user may go
                    continue
                w = weight(user_id, task.model, task.resolution, task.duration)
                if used[user_id] + w > slots + 1e-9:
                    break  # strict order: nothing jumps ahead of a heavier task that waits
                queue.pop(0)
                active[task.batch_id] = active.get(task.batch_id, 0) + 1
                used[user_id] += w
                slow_left[user_id] -= queue is slow_q
                admitted.append(task)
        return admitted

    def slow_is_critical(self, plan: str | None, head: StudioTask, slow_left: int, area: float) -> bool:
        """Must the slow queue start now for the user's work to end as early as it can?

        The work left (running and queued, in slot-seconds) cannot end before
        ``area / slots`` from now. The queued slow tasks, ``calculate_actual_concurrency``
        of them at a time, need ``ceil(n / k)`` back-to-back rounds of their render time.
        Once the first is no longer than the second, every further fast task started
        ahead of them would lengthen the batch: the slow queue's last, partial round is
        then pulled forward into slots that would otherwise idle at the end. When the slow
        tasks fill whole rounds, this happens only when no fast work is left at all, so
        the fast queue still goes entirely first. The partial round goes a little early
        (``PARTIAL_ROUND_LEAD``): the estimate of the work left is optimistic.
        """
        slots = get_batch_config(plan).concurrency
        k = calculate_actual_concurrency(plan, head.model, head.resolution, head.duration)
        render = expected_render_seconds(head.generation_type, head.model, head.resolution, head.duration)
        rounds = math.ceil(max(slow_left, 1) / k)
        lead = PARTIAL_ROUND_LEAD if slow_left % k else 0.0
        return area / slots <= rounds * render * self.timing.scale * (1 + lead) + 1e-9

    async def claim_due(self) -> list[Claim]:
        """Running tasks whose poll is due, and submissions whose worker died (lease run out)."""
        now = self.clock()
        lease_free = or_(StudioTask.lease_until.is_(None), StudioTask.lease_until < now)
        async with self.db.transaction() as session:
            tasks = list(
                await session.scalars(
                    select(StudioTask)
                    .where(
                        or_(
                            and_(StudioTask.state == RUNNING, StudioTask.due_at <= now),
                            StudioTask.state == SUBMITTING,
                        ),
                        lease_free,
                    )
                    .order_by(StudioTask.due_at)
                    .limit(self.max_claim)
                    .with_for_update(skip_locked=True)
                )
            )
            if not tasks:
                return []
            resumed = {t.id for t in tasks if t.state == SUBMITTING}
            await session.execute(
                update(StudioTask),
                [{"id": t.id, "lease_owner": self.owner, "lease_until": now + self.timing.lease} for t in tasks],
            )
        if resumed:
            log.info("studio_resuming_submissions", count=len(resumed))
        return [Claim(t, resumed=t.id in resumed) for t in tasks]
