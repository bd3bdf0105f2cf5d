"""Puts the domains together on one runtime: services, outbox handlers, periodic
jobs. Used by the HTTP app, the standalone worker and the CLI alike, so every
process is wired the same way."""

from __future__ import annotations

from batchops.billing.ledger import Ledger
from batchops.billing.service import BillingService
from batchops.billing.usage import USAGE_KIND
from batchops.core.clock import Clock, system_clock
from batchops.core.runtime import Runtime, create_runtime
from batchops.core.worker import PeriodicJob
from batchops.dining.service import DiningService
from batchops.identity.service import IdentityService
from batchops.notifications.service import NotificationService
from batchops.scheduler.reservations import ReservationService
from batchops.scheduler.service import DEVICES_FREED_KIND, PolicyJobs, SchedulerService
from batchops.scheduler.waitqueue import WaitQueue
from batchops.settings import Settings
from batchops.studio.assembly import build_studio


def build_runtime(settings: Settings, clock: Clock = system_clock) -> Runtime:
    rt = create_runtime(settings, clock)
    notifications = NotificationService(rt.db, rt.push)
    scheduler = SchedulerService(rt, notifications)
    scheduler.queue = WaitQueue(scheduler)
    scheduler.reservations = ReservationService(scheduler)
    ledger = Ledger()
    billing = BillingService(rt.db, rt.outbox, settings, ledger)
    scheduler.billing = billing
    rt.closers.append(billing.close)
    rt.services.update(
        ledger=ledger,
        billing=billing,
        identity=IdentityService(rt.db),
        notifications=notifications,
        scheduler=scheduler,
        dining=DiningService(rt),
    )
    rt.worker.add_job(PeriodicJob("scheduler.expire", settings.sweep_interval_seconds, scheduler.expire_due))
    rt.worker.add_job(PeriodicJob("scheduler.tick", settings.scheduler_tick_seconds, PolicyJobs(scheduler).tick))
    rt.worker.add_job(
        PeriodicJob("billing.check_unbilled", settings.billing_reconcile_interval_seconds, billing.check_unbilled)
    )
    rt.outbox.register(USAGE_KIND, billing.deliver)
    rt.outbox.register(DEVICES_FREED_KIND, scheduler.queue.on_devices_freed)
    build_studio(rt, ledger, notifications)
    return rt


def import_all_models() -> None:
    """Make every table known to ``Base.metadata`` (Alembic, tests)."""
    import batchops.billing.models
    import batchops.core.audit
    import batchops.core.outbox
    import batchops.core.schedule
    import batchops.dining.models
    import batchops.identity.models
    import batchops.notifications.models
    import batchops.scheduler.models
    import batchops.studio.models  # noqa: F401
