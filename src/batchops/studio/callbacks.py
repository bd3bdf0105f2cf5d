"""A provider's callback (KIE's callBackUrl) for one of our submissions: what it tells us
about a task the engine holds no answer for."""

from __future__ import annotations

import hmac

import structlog
from sqlalchemy import select

from batchops.core.clock import Clock
from batchops.core.db import Database
from batchops.core.errors import ForbiddenError
from batchops.studio.models import RUNNING, SUBMITTING, StudioTask
from batchops.studio.providers import callback_signature
from batchops.studio.timing import Timing

log = structlog.get_logger(__name__)


class ProviderCallbacks:
    def __init__(self, db: Database, clock: Clock, timing: Timing, *, key: str) -> None:
        self.db = db
        self.clock = clock
        self.timing = timing
        self.key = key  # signs the callback URLs we hand out (empty: no callback is accepted)

    async def provider_callback(self, request_id: str, signature: str, provider_task_id: str) -> str:
        """KIE posted a task to the callBackUrl we gave it for ``request_id``.

        A task whose createTask answer was lost in a crash learns its provider id here and
        runs on (polled at once); a running task is polled at once (its render ended).
        Anything else (unknown id, a live submission that will record itself, a finished
        or cancelled task) is left alone. Returns what was done.
        """
        if not self.key or not hmac.compare_digest(signature, callback_signature(self.key, request_id)):
            raise ForbiddenError("Bad callback signature")
        now = self.clock()
        async with self.db.transaction() as session:
            task = await session.scalar(select(StudioTask).where(StudioTask.request_id == request_id).with_for_update())
            if task is None:
                return "ignored"
            if task.state == SUBMITTING and task.provider_task_id is None and task.lease_owner is None:
                task.state, task.provider_task_id = RUNNING, provider_task_id
                task.submitted_at, task.deadline_at, task.due_at = now, self.timing.deadline(task, now), now
                task.lease_until = None
                log.info("studio_submission_reconciled", task_id=task.id, request_id=request_id)
                return "reconciled"
            if task.state == RUNNING and task.provider_task_id == provider_task_id and task.lease_owner is None:
                task.due_at = now
                return "poll"
        return "ignored"
