"""When a task is next looked at (seed 003 §3 智能轮询, 超时, 重试): the first poll, the poll
ladder, the render timeout and the retry backoff, in the provider's time.

The simulated provider renders at ``scale`` times real time (``BATCHOPS_SIM_TIME_SCALE``),
so every delay here is scaled alike; a real provider runs at scale 1."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from batchops.studio.config import FIRST_POLL_SHARE, get_polling_config, retry_backoff
from batchops.studio.models import StudioTask
from batchops.studio.providers import expected_render_seconds


@dataclass(frozen=True)
class Timing:
    scale: float = 1.0
    lease_seconds: float = 60.0  # a claimed task is offered again after this (its worker died)

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds)

    def seconds(self, unscaled: float) -> timedelta:
        return timedelta(seconds=unscaled * self.scale)

    def first_poll_after(self, task: StudioTask) -> float:
        """Unscaled seconds from submission to the first poll: nothing is ready sooner."""
        expected = expected_render_seconds(task.generation_type, task.model, task.resolution, task.duration)
        return max(get_polling_config(task.resolution).interval(0.0), expected * FIRST_POLL_SHARE)

    def first_poll(self, task: StudioTask, submitted: datetime) -> datetime:
        return submitted + self.seconds(self.first_poll_after(task))

    def next_poll(self, task: StudioTask, now: datetime) -> datetime:
        """The schedule's interval for the time spent polling so far.

        The ladder (720p 3 s → 5 s → 8 s, 1080p 5 s → 8 s → 12 s) runs from the first poll,
        made when the render may be done, not from the submission: a 1080p render is never
        done within 180 s, so timing the ladder from the submission would poll it every 8 s
        just when it finishes, and every task would sit finished for half an interval more.
        """
        submitted = task.submitted_at or now
        elapsed = (now - submitted).total_seconds() / self.scale if self.scale else 0.0
        polling = get_polling_config(task.resolution)
        return now + self.seconds(polling.interval(max(0.0, elapsed - self.first_poll_after(task))))

    def deadline(self, task: StudioTask, submitted: datetime) -> datetime:
        """When a render still unfinished is given up (720p: 5 min, 1080p: 15 min)."""
        return submitted + self.seconds(get_polling_config(task.resolution).timeout_seconds)

    def retry_at(self, task: StudioTask, failed: datetime) -> datetime:
        """When a retryable failure of the task's current attempt is tried again (2 s, 4 s, 8 s)."""
        return failed + self.seconds(retry_backoff(task.attempts))
