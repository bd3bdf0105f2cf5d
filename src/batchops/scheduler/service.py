"""The scheduler's facade: builds its parts on one ``Context`` and passes each the
parts it needs through its constructor. The rules live in the parts, one module per
operation: ``allocate``, ``release``, ``extend``, ``queries``, ``devices``,
``waitqueue``, ``reservations``, ``policies``; their texts in ``texts``."""

from __future__ import annotations

from batchops.billing.service import BillingService
from batchops.core.batch import BatchRunner
from batchops.core.clock import Clock
from batchops.core.db import Database
from batchops.notifications.service import NotificationService
from batchops.scheduler.allocate import Allocator
from batchops.scheduler.context import Context
from batchops.scheduler.devices import Fleet
from batchops.scheduler.extend import Extender
from batchops.scheduler.policies import PolicyJobs
from batchops.scheduler.queries import Queries
from batchops.scheduler.release import Releaser
from batchops.scheduler.reservations import ReservationService
from batchops.scheduler.waitqueue import WaitQueue
from batchops.settings import Settings


class SchedulerService:
    def __init__(
        self,
        *,
        db: Database,
        batch: BatchRunner,
        clock: Clock,
        settings: Settings,
        notifications: NotificationService,
        billing: BillingService,
    ) -> None:
        self.ctx = Context(db, batch, clock, settings, notifications, billing)
        self.allocator = Allocator(self.ctx)
        self.releaser = Releaser(self.ctx)
        self.extender = Extender(self.ctx)
        self.queries = Queries(self.ctx)
        self.fleet = Fleet(self.ctx)
        self.queue = WaitQueue(self.ctx)
        self.reservations = ReservationService(self.ctx, self.releaser)
        self.policies = PolicyJobs(self.ctx, self.releaser, self.reservations, self.queue)
        # the operations, as the API, the console and the CLI call them
        self.batch_allocate = self.allocator.batch_allocate
        self.allocate = self.allocator.allocate
        self.batch_release = self.releaser.batch_release
        self.release = self.releaser.release
        self.find_active_allocation_id = self.releaser.find_active_allocation_id
        self.expire_due = self.releaser.expire_due
        self.batch_extend = self.extender.batch_extend
        self.extend = self.extender.extend
        self.batch_query = self.queries.batch_query
        self.list_allocations = self.queries.list_allocations
        self.list_devices = self.queries.list_devices
        self.list_nodes = self.queries.list_nodes
        self.register_devices = self.fleet.register_devices
        self.set_maintenance = self.fleet.set_maintenance

    @property
    def billing(self) -> BillingService:
        return self.ctx.billing

    @billing.setter
    def billing(self, billing: BillingService) -> None:
        """Every part reads billing from the context, so a swap reaches all of them."""
        self.ctx.billing = billing
