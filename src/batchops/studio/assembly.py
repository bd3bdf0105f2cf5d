"""Wire the studio into a runtime: provider, engine (a PeriodicJob), service."""

from __future__ import annotations

from typing import Any

from batchops.core.runtime import Runtime
from batchops.core.worker import PeriodicJob
from batchops.notifications.service import NotificationService
from batchops.studio import metrics
from batchops.studio.config import use_plans_file
from batchops.studio.engine import Engine
from batchops.studio.providers import KieProvider, Provider, SimulatedProvider
from batchops.studio.service import StudioService


def build_studio(rt: Runtime, ledger: Any, notifications: NotificationService) -> Engine:
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
        provider = SimulatedProvider(rt.db, time_scale=s.sim_time_scale, failure_rate=s.sim_failure_rate)
        scale = s.sim_time_scale
    metrics.declare(provider.name)
    engine = Engine(
        rt.db, ledger, provider, notifications, rt.push, time_scale=scale, lease_seconds=s.studio_lease_seconds
    )
    rt.services.update(
        studio=StudioService(rt.db, provider, rt.push, callback_key=s.kie_callback_secret or "", time_scale=scale),
        studio_engine=engine,
    )
    # every worker ticks: the engine claims its tasks with SKIP LOCKED and leases, so the
    # workers share the renders instead of waiting for one another
    rt.worker.add_job(PeriodicJob("studio.tick", s.studio_tick_seconds, engine.tick, every_worker=True))
    rt.closers.append(provider.close)
    return engine
