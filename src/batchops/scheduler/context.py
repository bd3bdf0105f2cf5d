"""What every part of the scheduler works with, built once by ``SchedulerService`` and
handed to each part through its constructor; and the names the parts share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import CNY, Book
from batchops.billing.service import BillingService
from batchops.core.batch import BatchRunner
from batchops.core.clock import Clock
from batchops.core.db import Database
from batchops.core.errors import ForbiddenError
from batchops.core.metrics import batch_metrics
from batchops.core.outbox import OutboxItem
from batchops.identity.models import User
from batchops.notifications.service import NotificationService
from batchops.settings import Settings

DOMAIN = "scheduler"
# every batch operation of the domain, for its metrics
BATCH_OPERATIONS = ("allocate", "release", "extend", "query", "register_devices", "expire", "daily_release", "reserve")
batch_metrics(DOMAIN).declare(BATCH_OPERATIONS)
# Allocation decisions (allocate, grant from the queue, start a reservation, reserve) are
# serialised by this lock: each reads the free fleet and must not hand out a device twice.
ALLOCATE_LOCK = "scheduler.allocate"
MAX_MINUTES = 1440  # the longest allocation a request may ask for
DEVICES_FREED_KIND = "scheduler.devices_freed"
# One message per transaction that frees devices: the worker then grants waiting requests.
DEVICES_FREED = OutboxItem(kind=DEVICES_FREED_KIND, name="devices-freed", payload={})


@dataclass
class Context:
    """The scheduler's collaborators. ``billing`` may be swapped (tests point it at a
    remote billing service); every part reads it from here, so they all see the swap."""

    db: Database
    batch: BatchRunner
    clock: Clock
    settings: Settings
    notifications: NotificationService
    billing: BillingService

    async def holds_book(self, session: AsyncSession, user_ids: Sequence[str], refs: Sequence[str] = ()) -> Book | None:
        """The locked ledger accounts allocations and extensions hold against (None: billing not enforced)."""
        if not self.settings.billing_enforce_balance:
            return None
        return await Book(session, CNY).load(user_ids, hold_references=refs)

    def estimate(self, device: SizedDevice, minutes: int) -> int:
        """The pre-authorised cost of ``minutes`` on ``device`` (seed 001 P2)."""
        return self.billing.pricing.cost(minutes * 60, device.cpu_cores, device.memory_mb, device.storage_mb)


class SizedDevice(Protocol):
    """What pricing needs of a device."""

    cpu_cores: int
    memory_mb: int
    storage_mb: int


def ensure_actor_may_act_for(actor: User | None, user_id: str) -> None:
    """A user acts on their own allocations; an admin (or the system: None) on any."""
    if actor is not None and not actor.is_admin and actor.id != user_id:
        raise ForbiddenError("You may only act on your own allocations")
