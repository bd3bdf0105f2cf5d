"""The worker loop: outbox delivery plus the periodic jobs domains register.

``batchops serve`` embeds one; ``batchops worker`` runs more in their own
processes. Several workers on one PostgreSQL are safe: the outbox is claimed
with SKIP LOCKED and leases, and every periodic job takes its own locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog

from batchops.core.outbox import Outbox

log = structlog.get_logger(__name__)


@dataclass
class PeriodicJob:
    name: str
    interval_seconds: float
    run: Callable[[], Awaitable[Any]]
    last_run: float = field(default=0.0, init=False)

    def due(self, now: float) -> bool:
        return now - self.last_run >= self.interval_seconds


@dataclass
class Worker:
    outbox: Outbox
    jobs: list[PeriodicJob] = field(default_factory=list)
    poll_seconds: float = 0.5
    dead_letter_retry_seconds: float = 900.0

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
        now = time.monotonic()
        for job in self.jobs:
            if force or job.due(now):
                job.last_run = now
                try:
                    await job.run()
                except Exception:
                    log.exception("job_failed", job=job.name)

    async def run_once(self) -> int:
        """One full pass: every job, then the outbox until it is empty."""
        await self.run_jobs(force=True)
        return await self.outbox.drain()

    async def run_forever(self, stop: asyncio.Event) -> None:
        log.info("worker_started", jobs=[j.name for j in self.jobs])
        for job in self.jobs:  # start every schedule now, but first run after one interval for slow ones
            job.last_run = time.monotonic() if job.interval_seconds >= 600 else 0.0
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
