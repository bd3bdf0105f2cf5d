"""The worker loop: outbox delivery plus the periodic jobs domains register.

``batchops serve`` embeds one; ``batchops worker`` runs more in their own
processes. Several workers on one PostgreSQL are safe: the outbox is claimed
with SKIP LOCKED and leases, so every worker dispatches it; a periodic job runs
once per interval across all of them (``core.schedule``: whoever moves the job's
``next_run_at`` forward runs it), unless it is marked ``every_worker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from batchops.core.clock import Clock, system_clock
from batchops.core.outbox import Outbox
from batchops.core.schedule import claim_run

log = structlog.get_logger(__name__)

SLOW_JOB_SECONDS = 600  # a job this slow first runs one interval after the schedule starts
CLAIM_RETRY_SECONDS = 10.0  # the shared schedule could not be read: ask again after this


@dataclass
class PeriodicJob:
    name: str
    interval_seconds: float
    run: Callable[[], Awaitable[Any]]
    # False (the rule): once per interval across the cluster, through the shared schedule.
    # True: each worker runs it every interval, for a job that splits its work between
    # workers itself (claiming rows with SKIP LOCKED and leases, as the studio tick does),
    # where one worker at a time would cap the cluster's throughput at one worker's.
    every_worker: bool = False
    # when this worker looks at the job next (in process: an idle worker asks the
    # database only when the shared schedule says the job may be due)
    next_due: datetime | None = field(default=None, init=False)

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.interval_seconds)

    def due(self, now: datetime) -> bool:
        return self.next_due is None or now >= self.next_due


def worker_identity() -> str:
    """Who ran a job last (``job_schedule.last_owner``): host, process, and a suffix
    telling apart the workers of one process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Worker:
    outbox: Outbox
    jobs: list[PeriodicJob] = field(default_factory=list)
    poll_seconds: float = 0.5
    dead_letter_retry_seconds: float = 900.0
    clock: Clock = system_clock
    owner: str = field(default_factory=worker_identity)

    def __post_init__(self) -> None:
        self.jobs.append(PeriodicJob("outbox.requeue_dead", self.dead_letter_retry_seconds, self._requeue_dead))
        self.jobs.append(PeriodicJob("outbox.purge", 3600.0, self._purge))
        self._wake = asyncio.Event()

    def add_job(self, job: PeriodicJob) -> None:
        self.jobs.append(job)

    def wake(self) -> None:
        """Ask the loop to poll now (called after a commit that enqueued work)."""
        self._wake.set()

    async def _requeue_dead(self) -> int:
        return await self.outbox.requeue_dead()

    async def _purge(self) -> int:
        return await self.outbox.purge_delivered(timedelta(days=7))

    async def run_jobs(self, *, force: bool = False) -> None:
        """Run the jobs due now. ``force``: every job, here, whatever the schedule says."""
        for job in self.jobs:
            now = self.clock()  # per job: the one before may have run for a while
            if not force and not job.due(now):
                continue
            if force or job.every_worker:
                job.next_due = now + job.interval
            elif not await self._claim(job, now):
                continue
            try:
                await job.run()
            except Exception:
                log.exception("job_failed", job=job.name)

    async def _claim(self, job: PeriodicJob, now: datetime) -> bool:
        """Whether this worker runs ``job`` now, per the shared schedule."""
        delay = job.interval if job.interval_seconds >= SLOW_JOB_SECONDS else timedelta(0)
        try:
            claim = await claim_run(
                self.outbox.db, job.name, interval=job.interval, now=now, owner=self.owner, first_run_at=now + delay
            )
        except Exception:
            log.exception("job_claim_failed", job=job.name)
            job.next_due = now + min(job.interval, timedelta(seconds=CLAIM_RETRY_SECONDS))
            return False
        job.next_due = min(claim.next_run_at, now + job.interval)
        return claim.mine

    async def run_once(self) -> int:
        """One full pass: every job, then the outbox until it is empty."""
        await self.run_jobs(force=True)
        return await self.outbox.drain()

    def start_schedule(self) -> None:
        """Every job is looked at in the first pass; a slow one first runs after one
        interval (for a shared job, when the cluster's schedule has no row for it yet)."""
        now = self.clock()
        for job in self.jobs:
            slow = job.every_worker and job.interval_seconds >= SLOW_JOB_SECONDS
            job.next_due = now + job.interval if slow else None

    async def run_forever(self, stop: asyncio.Event) -> None:
        log.info("worker_started", jobs=[j.name for j in self.jobs], owner=self.owner)
        self.start_schedule()
        while not stop.is_set():
            try:
                await self.run_jobs()
                handled = await self.outbox.dispatch_once()
            except Exception:
                log.exception("worker_pass_failed")
                handled = 0
            if handled:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
        log.info("worker_stopped")
