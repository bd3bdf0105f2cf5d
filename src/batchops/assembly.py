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
from batchops.scheduler.context import DEVICES_FREED_KIND
from batchops.scheduler.service import SchedulerService
from batchops.settings import Settings
from batchops.studio import metrics as studio_metrics
from batchops.studio.config import use_plans_file
from batchops.studio.engine import Engine
from batchops.studio.kie import KieProvider
from batchops.studio.providers import Provider
from batchops.studio.service import StudioService
from batchops.studio.simulated import SimulatedProvider


def build_runtime(settings: Settings, clock: Clock = system_clock) -> Runtime:
    rt = create_runtime(settings, clock)
    notifications = NotificationService(rt.db, rt.push)
    ledger = Ledger(rt.clock)
    billing = BillingService(rt.db, rt.outbox, settings, ledger, rt.clock)
    scheduler = SchedulerService(
        db=rt.db, batch=rt.batch, clock=rt.clock, settings=settings, notifications=notifications, billing=billing
    )
    rt.closers.append(billing.close)
    rt.services.add(ledger, billing, IdentityService(rt.db), notifications, scheduler, DiningService(rt))
    rt.worker.add_job(PeriodicJob("scheduler.expire", settings.sweep_interval_seconds, scheduler.expire_due))
    rt.worker.add_job(PeriodicJob("scheduler.tick", settings.scheduler_tick_seconds, scheduler.policies.tick))
    rt.worker.add_job(
        PeriodicJob("billing.check_unbilled", settings.billing_reconcile_interval_seconds, billing.check_unbilled)
    )
    rt.outbox.register(USAGE_KIND, billing.deliver)
    rt.outbox.register(DEVICES_FREED_KIND, scheduler.queue.on_devices_freed)
    build_studio(rt, notifications)
    return rt


def build_studio(rt: Runtime, notifications: NotificationService) -> None:
    """The studio's provider, service and engine, and the engine's tick on every worker."""
    s = rt.settings
    use_plans_file(s.studio_plans_file)
    provider: Provider
    if s.video_provider == "kie":
        provider = KieProvider(
            s.kie_base_url,
            s.kie_api_key,
            timeout_seconds=min(30.0, s.studio_lease_seconds / 2),
            callback_url=s.kie_callback_url,
            callback_key=s.kie_callback_secret or "",
        )
        scale = 1.0
    else:
        provider = SimulatedProvider(
            rt.db, clock=rt.clock, time_scale=s.sim_time_scale, failure_rate=s.sim_failure_rate
        )
        scale = s.sim_time_scale
    studio_metrics.declare(provider.name)
    engine = Engine(
        rt.db,
        provider,
        notifications,
        rt.push,
        clock=rt.clock,
        time_scale=scale,
        lease_seconds=s.studio_lease_seconds,
    )
    rt.services.add(
        StudioService(rt.db, provider, clock=rt.clock, callback_key=s.kie_callback_secret or "", time_scale=scale),
        engine,
    )
    # every worker ticks: the engine claims its tasks with SKIP LOCKED and leases, so the
    # workers share the renders instead of waiting for one another
    rt.worker.add_job(PeriodicJob("studio.tick", s.studio_tick_seconds, engine.tick, every_worker=True))
    rt.closers.append(provider.close)


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
