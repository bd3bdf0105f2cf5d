"""Step 3 of the engine's tick: calling the provider for a claimed task, with no
transaction open. A submission records nothing itself: what the provider answered comes
back as an :class:`Outcome` for :mod:`batchops.studio.outcomes` to write.

A resumed submission (its worker died after recording the intent) first asks the
provider for its request id, so a crash never causes a second submission; an answer
lost on the way is handled the same way."""

from __future__ import annotations

import structlog

from batchops.core.clock import Clock
from batchops.studio.claims import Claim, Outcome
from batchops.studio.config import get_polling_config
from batchops.studio.models import SUBMITTING
from batchops.studio.providers import SERVER_ERROR, TIMEOUT, UNKNOWN_SUBMISSION, Provider, ProviderError, SubmitRequest

log = structlog.get_logger(__name__)


class ProviderCalls:
    def __init__(self, provider: Provider, clock: Clock) -> None:
        self.provider = provider
        self.clock = clock

    async def step(self, claim: Claim) -> Outcome:
        task = claim.task
        try:
            if task.state == SUBMITTING:
                return await self._submit(claim)
            return await self._poll(claim)
        except ProviderError as exc:
            return Outcome(claim, "error", self.clock(), error_kind=exc.kind, error=exc.message)
        except Exception as exc:  # an unexpected failure is treated as a provider outage
            log.exception("studio_step_failed", task_id=task.id)
            return Outcome(claim, "error", self.clock(), error_kind=SERVER_ERROR, error=f"{type(exc).__name__}: {exc}")

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
            return await self._unconfirmed(claim) or Outcome(
                claim, "error", self.clock(), error_kind=exc.kind, error=exc.message
            )

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
            return Outcome(claim, "submitted", self.clock(), provider_task_id=found)
        if self.provider.finds_by_request_id:
            return None
        if self.provider.calls_back and (task.deadline_at is None or self.clock() < task.deadline_at):
            return Outcome(claim, "unknown", self.clock())
        return Outcome(
            claim,
            "error",
            self.clock(),
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
        return Outcome(claim, "submitted", self.clock(), provider_task_id=provider_task_id)

    async def _poll(self, claim: Claim) -> Outcome:
        task = claim.task
        assert task.provider_task_id is not None
        try:
            status = await self.provider.status(task.provider_task_id)
        except ProviderError as exc:
            if not exc.retryable:
                raise
            status = None  # a flaky status call: just poll again later
        now = self.clock()
        if status is not None and status.state == "succeeded":
            return Outcome(claim, "succeeded", now, result_url=status.result_url)
        if status is not None and status.state == "failed":
            return Outcome(claim, "error", now, error_kind=status.error_kind, error=status.error)
        if task.deadline_at is not None and now >= task.deadline_at:
            await self.provider.cancel(task.provider_task_id)
            limit = get_polling_config(task.resolution).timeout_seconds
            return Outcome(claim, "error", now, error_kind=TIMEOUT, error=f"Timed out after {limit:.0f} s")
        return Outcome(claim, "poll", now)
