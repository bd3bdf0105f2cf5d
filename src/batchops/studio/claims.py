"""What passes between the engine's steps: a task a worker holds (its lease), and what
calling the provider for it came to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from batchops.studio.models import StudioTask


@dataclass
class Claim:
    task: StudioTask
    resumed: bool = False  # a ``submitting`` task whose worker died


@dataclass
class Outcome:
    """``kind``: ``submitted`` (the provider took it), ``poll`` (still rendering), ``unknown``
    (the answer was lost and the provider cannot be asked: wait for its callback),
    ``succeeded`` or ``error`` (retried or given up, as ``error_kind`` decides)."""

    claim: Claim
    kind: str
    at: datetime  # when the provider answered, by the engine's clock
    provider_task_id: str | None = None
    result_url: str | None = None
    error_kind: str | None = None
    error: str | None = None
