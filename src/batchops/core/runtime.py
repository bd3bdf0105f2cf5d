"""The objects one process shares: settings, database, outbox, event bus, push
hub, batch runner, rate limiter, worker. Built once by ``create_runtime`` and
handed to each domain service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from fastapi import Request

from batchops.core.batch import BatchRunner
from batchops.core.clock import Clock, system_clock
from batchops.core.db import Database
from batchops.core.events import EVENT_KIND, EventBus
from batchops.core.outbox import Outbox
from batchops.core.push import PushHub
from batchops.core.ratelimit import RateLimiter
from batchops.core.worker import Worker
from batchops.settings import Settings

T = TypeVar("T")


class Services:
    """The domain services of one runtime, found by their class: ``rt.services.get(BillingService)``
    is typed, where a string-keyed dict needed a cast at every use. Filled by the startup
    layer (``batchops.assembly``); core never names a domain's class."""

    def __init__(self) -> None:
        self.by_type: dict[type, object] = {}

    def add(self, *services: object) -> None:
        for service in services:
            if type(service) in self.by_type:
                raise ValueError(f"{type(service).__name__} is registered twice")
            self.by_type[type(service)] = service

    def get(self, kind: type[T]) -> T:
        try:
            return cast(T, self.by_type[kind])
        except KeyError:
            raise LookupError(f"no {kind.__name__} in this runtime (see batchops.assembly)") from None


@dataclass
class Runtime:
    settings: Settings
    db: Database
    outbox: Outbox
    bus: EventBus
    push: PushHub
    batch: BatchRunner
    limiter: RateLimiter
    worker: Worker
    clock: Clock = system_clock  # every rule that reads the time asks this (tests move it)
    services: Services = field(default_factory=Services)
    # Called by stop(): services' own clients (HTTP pools) registered by assembly.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        await self.db.start()
        await self.bus.start(self.settings.amqp_url, self.settings.amqp_exchange)
        await self.push.start(self.settings.redis_url)

    async def stop(self) -> None:
        await self.bus.stop()
        await self.push.stop()
        await self.limiter.close()
        for close in self.closers:
            await close()
        await self.db.dispose()


def create_runtime(settings: Settings, clock: Clock = system_clock) -> Runtime:
    db = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    outbox = Outbox(
        db,
        batch_size=settings.outbox_batch_size,
        lease_seconds=settings.outbox_lease_seconds,
        max_attempts=settings.outbox_max_attempts,
    )
    bus = EventBus()
    outbox.register(EVENT_KIND, bus.deliver)
    push = PushHub()
    worker = Worker(
        outbox,
        poll_seconds=settings.outbox_poll_seconds,
        dead_letter_retry_seconds=settings.dead_letter_retry_seconds,
        clock=clock,
    )
    return Runtime(
        settings=settings,
        db=db,
        outbox=outbox,
        bus=bus,
        push=push,
        batch=BatchRunner(db, push, settings.batch_progress_interval_seconds),
        limiter=RateLimiter(settings.batch_rate_limit_per_minute, settings.redis_url),
        worker=worker,
        clock=clock,
    )


async def get_runtime(request: Request) -> Runtime:
    """``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
    a thread hop per request (and per dependency built on it) for an attribute read."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def service_of(kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A FastAPI dependency answering the runtime's ``kind`` service:
    ``Annotated[BillingService, Depends(service_of(BillingService))]``."""

    async def dependency(request: Request) -> T:
        runtime: Runtime = request.app.state.runtime
        return runtime.services.get(kind)

    return dependency
