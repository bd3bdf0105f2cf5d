"""The studio task engine: the database is the queue.

One ``tick`` (a PeriodicJob of every worker process):

1. **admit** queued tasks whose time has come, per user, up to the plan's
   concurrency counted in the database (``submitting`` + ``running`` rows of that
   user, whichever worker holds them). PostgreSQL: a transaction-scoped advisory
   lock per user makes count-and-claim atomic across workers and the rows are
   taken ``FOR UPDATE SKIP LOCKED``; SQLite: ``BEGIN IMMEDIATE`` serialises it.
   Admitting records the intent (state ``submitting``, our request id, a lease)
   and commits *before* the provider is called.
2. **claim** running tasks whose next poll is due, and ``submitting`` tasks whose
   lease ran out (their worker died), ``FOR UPDATE SKIP LOCKED``, with a lease.
3. **step** every claim concurrently, without any transaction open: submit (a
   resumed task first asks the provider for its request id, so a crash never
   causes a second submission), or poll.
4. **record** the outcomes in one transaction, guarded by state and lease owner
   (a cancel or a lease lost meanwhile wins): success captures the task's hold,
   a final failure releases it, a retryable error requeues with backoff, the
   batch's adaptive concurrency moves, finished batches complete.

Nothing waits in process memory between ticks: a task between steps is a row
with a due time.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import CREDITS, Book
from batchops.core.db import Database, is_postgres, new_id, on_commit, utcnow
from batchops.core.push import PushHub
from batchops.identity.models import User
from batchops.notifications.service import NewNotification, NotificationService
from batchops.studio import metrics
from batchops.studio.config import (
    DEGRADE_FAILURE_RATE,
    DEGRADE_MIN_OUTCOMES,
    DEGRADE_WINDOW,
    FIRST_POLL_SHARE,
    MAX_RETRIES,
    PARTIAL_ROUND_LEAD,
    SLOW_QUEUE_KEY,
    calculate_actual_concurrency,
    degraded_concurrency,
    get_batch_config,
    get_polling_config,
    retry_backoff,
)
from batchops.studio.models import (
    ACTIVE_STATES,
    B_CANCELLED,
    B_COMPLETED,
    B_PAUSED,
    B_QUEUED,
    B_RUNNING,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUBMITTING,
    SUCCEEDED,
    StudioBatch,
    StudioTask,
)
from batchops.studio.providers import (
    RETRYABLE_KINDS,
    SERVER_ERROR,
    TIMEOUT,
    UNKNOWN_SUBMISSION,
    Provider,
    ProviderError,
    SubmitRequest,
    expected_render_seconds,
    submission_id,
)

log = structlog.get_logger(__name__)

RUNNABLE_BATCH = (B_QUEUED, B_RUNNING)


@dataclass
class Claim:
    task: StudioTask
    resumed: bool = False  # a ``submitting`` task whose worker died


@dataclass
class Outcome:
    claim: Claim
    kind: str  # submitted | poll | unknown | succeeded | error
    provider_task_id: str | None = None
    result_url: str | None = None
    error_kind: str | None = None
    error: str | None = None
    at: datetime = field(default_factory=utcnow)


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


class Engine:
    def __init__(
        self,
        db: Database,
        ledger: Any,
        provider: Provider,
        notifications: NotificationService,
        push: PushHub,
        *,
        time_scale: float = 1.0,
        lease_seconds: float = 60.0,
        max_claim: int = 200,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.provider = provider
        self.notifications = notifications
        self.push = push
        self.scale = time_scale
        self.lease = timedelta(seconds=lease_seconds)
        self.max_claim = max_claim
        self.owner = new_id("w")[:40]

    def seconds(self, unscaled: float) -> timedelta:
        return timedelta(seconds=unscaled * self.scale)

    # --- the periodic job -----------------------------------------------------------------
    async def tick(self) -> int:
        """Admit, claim, call the provider, record; once more at once if slots were freed
        (admitting only: the freed slots are filled without waiting for the next tick)."""
        handled = 0
        for again in (False, True):
            claims = await self.admit()
            if not again:
                claims += await self.claim_due()
            if not claims:
                break
            outcomes = await asyncio.gather(*(self.step(c) for c in claims))
            await self.record(list(outcomes))
            handled += len(claims)
            if not any(o.kind in ("succeeded", "error") for o in outcomes):
                break
        return handled

    async def run_until_idle(self, *, limit_seconds: float = 60.0, max_sleep: float = 0.05) -> None:
        """Tick until no task of any batch is left unfinished (tests, CLI, bench).

        Between ticks it sleeps until the next task is due (at most ``max_sleep``, so work
        submitted meanwhile is seen): no busy-waiting, and no latency added to a due poll.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_seconds
        while loop.time() < end:
            if not await self.tick():
                left, wait = await self.idle_hint()
                if not left:
                    return
                await asyncio.sleep(min(max(wait, 0.001), max_sleep))
        raise TimeoutError("studio tasks still unfinished")

    async def idle_hint(self) -> tuple[int, float]:
        """Unfinished tasks (queued ones of paused batches aside), and seconds until one is due.

        A ``submitting`` task counts as due when its lease runs out (its worker died). A queued
        task already past its due time is not counted: asked after a tick that admitted nothing,
        it waits for room, which only a task ending makes (and the tick that records the end
        admits at once); counting it would have the caller tick without pause until then."""
        now = utcnow()
        async with self.db.transaction() as session:
            left, next_due, next_lease = (
                await session.execute(
                    select(
                        func.count(),
                        func.min(StudioTask.due_at).filter(
                            or_(StudioTask.state == RUNNING, and_(StudioTask.state == QUEUED, StudioTask.due_at > now))
                        ),
                        func.min(StudioTask.lease_until).filter(StudioTask.state == SUBMITTING),
                    )
                    .select_from(StudioTask)
                    .join(StudioBatch, StudioBatch.id == StudioTask.batch_id)
                    .where(
                        StudioTask.state.not_in(FINAL_STATES),
                        or_(StudioTask.state != QUEUED, StudioBatch.status != B_PAUSED),
                    )
                )
            ).one()
        moments = [m for m in (next_due, next_lease) if m is not None]
        wait = (min(moments) - now).total_seconds() if moments else 0.0
        return int(left or 0), wait

    # --- 1. admission ---------------------------------------------------------------------
    async def admit(self) -> list[Claim]:
        """Admit the next tasks of up to 100 users with due work: a constant number of statements."""
        now = utcnow()
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
                        .limit(100)
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
                for task in await self._admit_users(session, users, plans, due):
                    updates.append(
                        {
                            "id": task.id,
                            "state": SUBMITTING,
                            "attempts": task.attempts + 1,
                            "request_id": submission_id(task.id, task.attempts + 1),
                            "lease_owner": self.owner,
                            "lease_until": now + self.lease,
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
        self, session: AsyncSession, users: list[str], plans: dict[str, str | None], due: Any
    ) -> list[StudioTask]:
        """Each user's next tasks while they fit: the fast queue first, the slow queue when due.

        Each running task takes ``plan concurrency / actual concurrency of its kind`` slots
        (a 720p task 1, an Enterprise 1080p 15 s task 10/7), the plan has ``concurrency``
        slots: so a user never has more than the plan's tasks at the provider, nor more of
        one kind than ``calculate_actual_concurrency`` allows. Counted in the database, so
        it holds across every worker.

        Order: the fast queue goes first (the seed), except that a slow task goes ahead of
        waiting fast ones once the slow queue is *critical* (:meth:`_slow_is_critical`):
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
        now = utcnow()
        used: dict[str, float] = dict.fromkeys(users, 0.0)
        area: dict[str, float] = dict.fromkeys(users, 0.0)  # slot-seconds of work left, scaled
        slow_left: dict[str, int] = dict.fromkeys(users, 0)
        active: dict[str, int] = {}
        for user_id, batch_id, gen, model, resolution, duration, submitted_at in running:
            w = weight(user_id, model, resolution, duration)
            active[batch_id] = active.get(batch_id, 0) + 1
            used[user_id] += w
            expected = self.seconds(expected_render_seconds(gen, model, resolution, duration))
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
            render = self.seconds(expected_render_seconds(gen, model, resolution, duration)).total_seconds()
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
                critical = bool(slow_q) and self._slow_is_critical(plan, slow_q[0], slow_left[user_id], area[user_id])
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

    def _slow_is_critical(self, plan: str | None, head: StudioTask, slow_left: int, area: float) -> bool:
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
        return area / slots <= rounds * render * self.scale * (1 + lead) + 1e-9

    # --- 2. due polls and orphaned submissions ---------------------------------------------
    async def claim_due(self) -> list[Claim]:
        now = utcnow()
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
                [{"id": t.id, "lease_owner": self.owner, "lease_until": now + self.lease} for t in tasks],
            )
        if resumed:
            log.info("studio_resuming_submissions", count=len(resumed))
        return [Claim(t, resumed=t.id in resumed) for t in tasks]

    # --- 3. provider calls (no transaction open) ----------------------------------------------
    async def step(self, claim: Claim) -> Outcome:
        task = claim.task
        try:
            if task.state == SUBMITTING:
                return await self._submit(claim)
            return await self._poll(claim)
        except ProviderError as exc:
            return Outcome(claim, "error", error_kind=exc.kind, error=exc.message)
        except Exception as exc:  # an unexpected failure is treated as a provider outage
            log.exception("studio_step_failed", task_id=task.id)
            return Outcome(claim, "error", error_kind=SERVER_ERROR, error=f"{type(exc).__name__}: {exc}")

    async def _submit(self, claim: Claim) -> Outcome:
        task = claim.task
        assert task.request_id is not None
        if claim.resumed:
            unconfirmed = await self._unconfirmed(claim)
            if unconfirmed is not None:
                return unconfirmed
        try:
            return await self._send(claim)
        except ProviderError as exc:
            if not exc.maybe_sent:
                raise
            # the answer was lost on the way, as in a crash: the provider may be rendering it
            log.warning("studio_submission_unconfirmed", task_id=task.id, request_id=task.request_id, error=exc.message)
            return await self._unconfirmed(claim) or Outcome(claim, "error", error_kind=exc.kind, error=exc.message)

    async def _unconfirmed(self, claim: Claim) -> Outcome | None:
        """A request the provider may hold without our knowing its id: its task id if the
        provider can be asked; else wait for its callback, up to the render timeout, and
        past that (or with no callback to wait for) give up, since sending it again could
        render (and bill) it twice. None: the provider says it never got it."""
        task = claim.task
        assert task.request_id is not None
        found = await self.provider.find(task.request_id)
        if found:
            log.info("studio_submission_found", task_id=task.id, request_id=task.request_id)
            return Outcome(claim, "submitted", provider_task_id=found)
        if self.provider.finds_by_request_id:
            return None
        if self.provider.calls_back and (task.deadline_at is None or utcnow() < task.deadline_at):
            return Outcome(claim, "unknown")
        return Outcome(
            claim,
            "error",
            error_kind=UNKNOWN_SUBMISSION,
            error=f"{self.provider.name} never confirmed request {task.request_id}; not sent again",
        )

    async def _send(self, claim: Claim) -> Outcome:
        task = claim.task
        assert task.request_id is not None
        provider_task_id = await self.provider.submit(
            SubmitRequest(
                request_id=task.request_id,
                task_id=task.id,
                user_id=task.user_id,
                generation_type=task.generation_type,
                model=task.model,
                resolution=task.resolution,
                duration=task.duration,
                prompt=task.prompt,
                image_url=task.image_url,
                attempt=task.attempts,
            )
        )
        return Outcome(claim, "submitted", provider_task_id=provider_task_id)

    async def _poll(self, claim: Claim) -> Outcome:
        task = claim.task
        assert task.provider_task_id is not None
        try:
            status = await self.provider.status(task.provider_task_id)
        except ProviderError as exc:
            if not exc.retryable:
                raise
            status = None  # a flaky status call: just poll again later
        now = utcnow()
        if status is not None and status.state == "succeeded":
            return Outcome(claim, "succeeded", result_url=status.result_url, at=now)
        if status is not None and status.state == "failed":
            return Outcome(claim, "error", error_kind=status.error_kind, error=status.error, at=now)
        if task.deadline_at is not None and now >= task.deadline_at:
            await self.provider.cancel(task.provider_task_id)
            limit = get_polling_config(task.resolution).timeout_seconds
            return Outcome(claim, "error", error_kind=TIMEOUT, error=f"Timed out after {limit:.0f} s", at=now)
        return Outcome(claim, "poll", at=now)

    # --- 4. outcomes, in one transaction ------------------------------------------------------
    def _next_poll(self, task: StudioTask, now: datetime) -> datetime:
        """The schedule's interval for the time spent polling so far.

        The ladder (720p 3 s → 5 s → 8 s, 1080p 5 s → 8 s → 12 s) runs from the first poll,
        made when the render may be done, not from the submission: a 1080p render is never
        done within 180 s, so timing the ladder from the submission would poll it every 8 s
        just when it finishes, and every task would sit finished for half an interval more.
        """
        submitted = task.submitted_at or now
        elapsed = (now - submitted).total_seconds() / self.scale if self.scale else 0.0
        polling = get_polling_config(task.resolution)
        return now + self.seconds(polling.interval(max(0.0, elapsed - self._first_poll_after(task))))

    def _first_poll_after(self, task: StudioTask) -> float:
        """Unscaled seconds from submission to the first poll."""
        expected = expected_render_seconds(task.generation_type, task.model, task.resolution, task.duration)
        return max(get_polling_config(task.resolution).interval(0.0), expected * FIRST_POLL_SHARE)

    def _first_poll(self, task: StudioTask, now: datetime) -> datetime:
        return now + self.seconds(self._first_poll_after(task))

    async def record(self, outcomes: list[Outcome]) -> None:
        """Write every outcome of a tick in one transaction, a constant number of statements."""
        if not outcomes:
            return
        orphans: list[str] = []
        async with self.db.transaction() as session:
            batch_ids = sorted({o.claim.task.batch_id for o in outcomes if o.kind in ("succeeded", "error")})
            batches: dict[str, StudioBatch] = {}
            if batch_ids:  # lock order everywhere: batch rows, then task rows, then ledger accounts
                found = await session.scalars(
                    select(StudioBatch).where(StudioBatch.id.in_(batch_ids)).order_by(StudioBatch.id).with_for_update()
                )
                batches = {b.id: b for b in found}
            # still ours, in the state we saw? (a cancel, or a lease lost meanwhile, wins)
            current = dict(
                (
                    await session.execute(
                        select(StudioTask.id, StudioTask.state)
                        .where(
                            StudioTask.id.in_([o.claim.task.id for o in outcomes]),
                            StudioTask.lease_owner == self.owner,
                        )
                        .order_by(StudioTask.id)
                        .with_for_update()
                    )
                ).all()
            )
            writes: list[dict[str, Any]] = []
            captures: list[tuple[str, int]] = []
            releases: list[str] = []
            touched: set[str] = set()
            for outcome in outcomes:
                task = outcome.claim.task
                if current.get(task.id) != task.state:
                    if outcome.kind == "submitted" and outcome.provider_task_id:
                        orphans.append(outcome.provider_task_id)  # cancelled meanwhile: stop the render
                    continue
                writes.append({"id": task.id, **self._apply(outcome, batches, captures, releases)})
                if outcome.kind != "poll":
                    touched.add(task.batch_id)
            by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in writes:
                by_keys.setdefault(tuple(sorted(row)), []).append(row)
            for rows in by_keys.values():
                await session.execute(update(StudioTask), rows)
            if captures or releases:
                settled = {r for r, _ in captures} | set(releases)
                users = {o.claim.task.user_id for o in outcomes if o.claim.task.hold_ref in settled}
                book = await Book(session, CREDITS).load(users, hold_references=[r for r, _ in captures] + releases)
                for reference, amount in captures:
                    book.capture(reference, amount, {"source": "studio"})
                for reference in releases:
                    book.release(reference, {"source": "studio"})
                await book.flush()
            for batch in batches.values():
                batch.updated_at = utcnow()
            if touched:
                await self._progress(session, sorted(touched), batches)
        for provider_task_id in orphans:
            try:
                await self.provider.cancel(provider_task_id)
            except Exception:
                log.warning("studio_orphan_cancel_failed", provider_task_id=provider_task_id)

    def _apply(
        self, outcome: Outcome, batches: dict[str, StudioBatch], captures: list[tuple[str, int]], releases: list[str]
    ) -> dict[str, Any]:
        """The new column values of one task (and the ledger work it implies)."""
        task, now = outcome.claim.task, outcome.at
        free = {"lease_owner": None, "lease_until": None}
        if outcome.kind == "submitted":
            return {
                **free,
                "state": RUNNING,
                "provider_task_id": outcome.provider_task_id,
                "submitted_at": now,
                "deadline_at": now + self.seconds(get_polling_config(task.resolution).timeout_seconds),
                "due_at": self._first_poll(task, now),
            }
        if outcome.kind == "poll":
            return {**free, "polls": task.polls + 1, "due_at": self._next_poll(task, now)}
        if outcome.kind == "unknown":  # left to the provider's callback until the deadline
            until = now + self.seconds(get_polling_config(task.resolution).timeout_seconds) + self.lease
            entry = {"attempt": task.attempts, "errorKind": UNKNOWN_SUBMISSION, "at": _stamp(now)}
            entry["error"] = "answer lost (a crash or the network); waiting for the provider's callback"
            return {
                "lease_owner": None,
                "lease_until": until,  # nobody resumes it before then
                "deadline_at": until,
                "history": [*(task.history or []), entry],
            }
        batch = batches[task.batch_id]
        polled = task.polls + (1 if task.state == RUNNING else 0)
        if outcome.kind == "succeeded":
            captures.append((task.hold_ref, task.credits))
            self._observe(batch, failed=False)
            self._finished(task, SUCCEEDED, now)
            return {
                **free,
                "state": SUCCEEDED,
                "polls": polled,
                "result_url": outcome.result_url,
                "finished_at": now,
                "error": None,
                "error_kind": None,
            }
        # an error: retry with backoff, or give up
        kind = outcome.error_kind or SERVER_ERROR
        entry = {"attempt": task.attempts, "errorKind": kind, "error": outcome.error, "at": _stamp(now)}
        self._observe(batch, failed=True)
        metrics.ATTEMPTS.labels(outcome=kind).inc()
        if kind in RETRYABLE_KINDS and task.attempts <= MAX_RETRIES:
            retry_at = now + self.seconds(retry_backoff(task.attempts))
            entry["retryAt"] = _stamp(retry_at)
            return {
                **free,
                "state": QUEUED,
                "polls": polled,
                "due_at": retry_at,
                "provider_task_id": None,
                "deadline_at": None,
                "error": outcome.error,
                "error_kind": kind,
                "history": [*(task.history or []), entry],
            }
        releases.append(task.hold_ref)
        self._finished(task, FAILED, now)
        return {
            **free,
            "state": FAILED,
            "polls": polled,
            "finished_at": now,
            "error": outcome.error,
            "error_kind": kind,
            "history": [*(task.history or []), entry],
        }

    def _finished(self, task: StudioTask, state: str, now: datetime) -> None:
        metrics.TASKS_FINISHED.labels(state=state, model=task.model).inc()
        if state == SUCCEEDED:
            metrics.CREDITS_CONSUMED.labels(model=task.model).inc(task.credits)
            metrics.ATTEMPTS.labels(outcome="succeeded").inc()
        else:
            metrics.CREDITS_RETURNED.labels(model=task.model).inc(task.credits)
        if task.started_at is not None:
            metrics.PROCESSING_SECONDS.labels(model=task.model, resolution=task.resolution or "-").observe(
                (now - task.started_at).total_seconds()
            )

    def _observe(self, batch: StudioBatch, *, failed: bool) -> None:
        """Adaptive concurrency: cut by 40 % past a 30 % failure rate, back up step by step."""
        window = [*(batch.recent_outcomes or []), 1 if failed else 0][-DEGRADE_WINDOW:]
        rate = sum(window) / len(window)
        metrics.FAILURE_RATE.labels(plan=batch.plan).set(rate)
        if len(window) >= DEGRADE_MIN_OUTCOMES and rate > DEGRADE_FAILURE_RATE and batch.concurrency_limit > 1:
            before = batch.concurrency_limit
            batch.concurrency_limit = degraded_concurrency(before)
            batch.degradations += 1
            metrics.DEGRADATIONS.inc()
            log.warning("studio_concurrency_degraded", batch_id=batch.id, rate=rate, before=before)
            window = []
        elif (
            len(window) >= DEGRADE_MIN_OUTCOMES
            and not any(window[-DEGRADE_MIN_OUTCOMES:])
            and batch.concurrency_limit < batch.max_concurrency
        ):
            batch.concurrency_limit += 1
            log.info("studio_concurrency_recovered", batch_id=batch.id, limit=batch.concurrency_limit)
            window = []
        batch.recent_outcomes = window

    async def _progress(self, session: AsyncSession, batch_ids: list[str], batches: dict[str, StudioBatch]) -> None:
        """Complete finished batches; push progress to their owners after commit."""
        rows = (
            await session.execute(
                select(StudioTask.batch_id, StudioTask.user_id, StudioTask.state, func.count())
                .where(StudioTask.batch_id.in_(batch_ids))
                .group_by(StudioTask.batch_id, StudioTask.user_id, StudioTask.state)
            )
        ).all()
        counts: dict[str, dict[str, int]] = {}
        owners: dict[str, str] = {}
        for batch_id, user_id, state, n in rows:
            counts.setdefault(batch_id, {})[state] = n
            owners[batch_id] = user_id
        done: list[NewNotification] = []
        messages: list[tuple[str, dict[str, Any]]] = []
        for batch_id in batch_ids:
            c = counts.get(batch_id, {})
            total = sum(c.values())
            finished = sum(c.get(s, 0) for s in FINAL_STATES)
            message = {
                "type": "studio.batch.progress",
                "batchId": batch_id,
                "totalCount": total,
                "finishedCount": finished,
                "counts": {s: c.get(s, 0) for s in (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)},
            }
            messages.append((owners[batch_id], message))
            batch = batches.get(batch_id)
            if finished == total and batch is not None and batch.status not in (B_COMPLETED, B_CANCELLED):
                batch.status, batch.finished_at = B_COMPLETED, utcnow()
                ok_count, failed_count = c.get(SUCCEEDED, 0), c.get(FAILED, 0)
                done.append(
                    NewNotification(
                        user_id=batch.user_id,
                        type="studio.batch.completed",
                        title="🎬 批量生成完成",
                        content=f"批次 {batch_id} 已完成：成功 {ok_count} 个，失败 {failed_count} 个。",
                        data={"batchId": batch_id, "succeeded": ok_count, "failed": failed_count},
                    )
                )
        await self.notifications.send(session, done)

        async def push() -> None:
            await self.push.publish(messages)

        on_commit(session, push)
