"""The simulated provider: offline, its jobs in the database so every worker process
shares them, rendering on the runtime's clock."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import func, select, update

from batchops.core.clock import Clock, system_clock
from batchops.core.db import Database
from batchops.studio.config import MAX_RETRIES
from batchops.studio.metrics import PROVIDER_CALLS
from batchops.studio.models import SimJob
from batchops.studio.providers import (
    CANCELLED,
    CONTENT_REJECTED,
    RATE_LIMITED,
    SERVER_ERROR,
    ProviderError,
    Status,
    SubmitRequest,
    expected_render_seconds,
)


def _fraction(key: str) -> float:
    """A stable number in [0, 1) for a key (deterministic failures and jitter)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000


class SimulatedProvider:
    """Offline provider. Render time = typical time × (0.9–1.1) × ``time_scale``, on
    ``clock`` (the runtime's: ``make run`` renders at a tenth of real time, a test may move
    a ManualClock instead of waiting).

    ``failure_rate`` of submissions fail with a retryable server error at the end
    of the render. Prompts may force an outcome: ``[reject]`` (content rejected),
    ``[429]`` (rate limited at submit), ``[5xx]`` (server error at the end),
    ``[slow]`` (renders a thousand times longer than usual: far past the timeout, so a
    late poll on a loaded machine still finds it running, never finished), ``[flaky]``
    (every submission of the task's first run is refused with a server error, so it fails
    after its retries; once retried with retry-failed it renders as usual).
    """

    name = "simulated"
    finds_by_request_id = True
    calls_back = False

    def __init__(
        self, db: Database, *, clock: Clock = system_clock, time_scale: float = 1.0, failure_rate: float = 0.0
    ) -> None:
        self.db = db
        self.clock = clock
        self.time_scale = time_scale
        self.failure_rate = failure_rate

    async def submit(self, req: SubmitRequest) -> str:
        if "[429]" in req.prompt:
            PROVIDER_CALLS.labels(provider=self.name, call="submit", outcome="error").inc()
            raise ProviderError(RATE_LIMITED, "429 Too Many Requests")
        if "[flaky]" in req.prompt and await self._refuse_first_run(req):
            PROVIDER_CALLS.labels(provider=self.name, call="submit", outcome="error").inc()
            raise ProviderError(SERVER_ERROR, "503 Service Unavailable")
        base = expected_render_seconds(req.generation_type, req.model, req.resolution, req.duration)
        # Draws keyed on the prompt and the attempt number (not on generated ids), so a given
        # batch renders and fails the same way on every run: reproducible tests and benches.
        draw = f"{req.prompt}:{req.attempt}"
        render = base * (0.9 + 0.2 * _fraction("render:" + draw)) * self.time_scale
        if "[slow]" in req.prompt:
            render *= 1000
        if "[reject]" in req.prompt:
            outcome = CONTENT_REJECTED
        elif "[5xx]" in req.prompt or _fraction("fail:" + draw) < self.failure_rate:
            outcome = SERVER_ERROR
        else:
            outcome = "succeeded"
        now = self.clock()
        job_id = "sim-" + hashlib.sha256(f"{req.request_id}:{now.isoformat()}".encode()).hexdigest()[:24]
        async with self.db.transaction() as session:
            session.add(
                SimJob(
                    id=job_id,
                    request_id=req.request_id,
                    task_ref=req.task_id,
                    user_ref=req.user_id,
                    submitted_at=now,
                    ready_at=now + timedelta(seconds=render),
                    ended_at=None,
                    outcome=outcome,
                    polls=0,
                )
            )
        PROVIDER_CALLS.labels(provider=self.name, call="submit", outcome="ok").inc()
        return job_id

    async def _refuse_first_run(self, req: SubmitRequest) -> bool:
        """Refuse (and remember) the submissions of a ``[flaky]`` task's first run: the first
        one and its retries. Recorded as jobs that ended at once, so every process knows."""
        now = self.clock()
        async with self.db.transaction() as session:
            earlier = await session.scalar(select(func.count()).where(SimJob.task_ref == req.task_id))
            if int(earlier or 0) >= 1 + MAX_RETRIES:
                return False
            session.add(
                SimJob(
                    id="sim-refused-" + secrets.token_hex(8),
                    request_id=req.request_id,
                    task_ref=req.task_id,
                    user_ref=req.user_id,
                    submitted_at=now,
                    ready_at=now,
                    ended_at=now,
                    outcome=SERVER_ERROR,
                    polls=0,
                )
            )
        return True

    async def find(self, request_id: str) -> str | None:
        PROVIDER_CALLS.labels(provider=self.name, call="find", outcome="ok").inc()
        async with self.db.transaction() as session:
            found = await session.scalar(select(SimJob.id).where(SimJob.request_id == request_id).limit(1))
        return found

    async def status(self, provider_task_id: str) -> Status:
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    update(SimJob)
                    .where(SimJob.id == provider_task_id)
                    .values(polls=SimJob.polls + 1)
                    .returning(SimJob.ready_at, SimJob.ended_at, SimJob.outcome)
                )
            ).first()
        # Judged when the answer is given, as a real provider would: a "now" taken before
        # waiting for SQLite's write lock could call a finished render "running" just as the
        # engine, reading its clock after the answer, finds the task past its deadline.
        now = self.clock()
        PROVIDER_CALLS.labels(provider=self.name, call="status", outcome="ok").inc()
        if row is None:
            return Status("failed", error_kind=SERVER_ERROR, error="Unknown task")
        ready_at, ended_at, outcome = row
        if ended_at is not None:
            return Status("failed", error_kind=CANCELLED, error="Cancelled")
        if now < ready_at:
            return Status("running")
        if outcome == "succeeded":
            return Status("succeeded", result_url=f"https://sim.batchops.local/videos/{provider_task_id}.mp4")
        message = "Content rejected by the safety filter" if outcome == CONTENT_REJECTED else "500 Render failed"
        return Status("failed", error_kind=outcome, error=message)

    async def cancel(self, provider_task_id: str) -> None:
        now = self.clock()
        async with self.db.transaction() as session:
            await session.execute(
                update(SimJob)
                .where(SimJob.id == provider_task_id, SimJob.ended_at.is_(None), SimJob.ready_at > now)
                .values(ended_at=now)
            )
        PROVIDER_CALLS.labels(provider=self.name, call="cancel", outcome="ok").inc()

    async def close(self) -> None:
        return None
