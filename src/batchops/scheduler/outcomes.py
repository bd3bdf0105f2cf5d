"""What the scheduler's operations decide, item by item: the asks they take and the
outcomes they hand to ``texts`` (events, notifications), to the flush and to the routes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batchops.scheduler.placement import Candidate
from batchops.scheduler.schemas import AllocationRequest


@dataclass(frozen=True)
class QueueOptions:
    priority: int
    max_wait_minutes: int


@dataclass(frozen=True)
class Ask:
    """One allocation to make: from an API request, a queue entry or a reservation."""

    user_id: str
    duration_minutes: int
    min_cpu: int | None = None
    min_memory: int | None = None
    queue: QueueOptions | None = None
    device_id: str | None = None  # pinned (a reservation's device)
    reservation_id: str | None = None
    expires_at: datetime | None = None  # fixed end (a reservation's end)

    @classmethod
    def of(cls, request: AllocationRequest) -> Ask:
        prefs = request.device_preferences
        queue = QueueOptions(request.priority, request.max_wait_minutes) if request.queue_if_unavailable else None
        return cls(
            user_id=request.user_id,
            duration_minutes=request.duration_minutes,
            min_cpu=prefs.cpu if prefs else None,
            min_memory=prefs.memory if prefs else None,
            queue=queue,
        )


@dataclass
class Allocated:
    """A new allocation: its row (the ``allocations`` table's columns) and its device."""

    allocation: dict[str, Any]
    device: Candidate

    @property
    def id(self) -> str:
        return str(self.allocation["id"])


@dataclass
class Queued:
    """A new wait-queue entry (the ``queue_entries`` table's columns) and its position."""

    entry: dict[str, Any]
    position: int = 0

    @property
    def id(self) -> str:
        return str(self.entry["id"])


# What release and extend read of an allocation: plain objects from a Core row, not ORM
# instances (a batch reads up to 100 and needs none of the identity map's bookkeeping).
@dataclass(slots=True)
class LoadedRow:
    id: str
    device_id: str
    user_id: str
    status: str
    allocated_at: datetime
    expires_at: datetime


@dataclass(slots=True)
class LoadedDevice:
    id: str
    name: str
    cpu_cores: int
    memory_mb: int
    storage_mb: int


@dataclass(slots=True)
class LoadedAllocation:
    allocation: LoadedRow
    device: LoadedDevice


@dataclass
class Released:
    loaded: LoadedAllocation
    released_at: datetime
    duration_seconds: int
    reason: str | None

    @property
    def id(self) -> str:
        return self.loaded.allocation.id


@dataclass
class Extended:
    loaded: LoadedAllocation
    old_expires_at: datetime
    new_expires_at: datetime
    additional_minutes: int

    @property
    def id(self) -> str:
        return self.loaded.allocation.id
