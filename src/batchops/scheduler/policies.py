"""Release policies (seed 000 scenario 2 and reminders) and the scheduler's tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select, update

from batchops.core.batch import BatchMode
from batchops.scheduler import texts
from batchops.scheduler.context import Context
from batchops.scheduler.models import ACTIVE, Allocation, Device
from batchops.scheduler.release import Releaser
from batchops.scheduler.reservations import ReservationService
from batchops.scheduler.waitqueue import WaitQueue

log = structlog.get_logger(__name__)


class PolicyJobs:
    def __init__(self, ctx: Context, releaser: Releaser, reservations: ReservationService, queue: WaitQueue) -> None:
        self.ctx = ctx
        self.releaser = releaser
        self.reservations = reservations
        self.queue = queue

    async def tick(self) -> None:
        """Every few seconds: start due reservations, grant/expire waiting requests,
        remind users of expiries, and run the daily release when its time has come."""
        await self.reservations.start_due()
        await self.queue.expire_overdue()
        await self.queue.grant_waiting()
        await self.send_expiry_reminders()
        await self.daily_release()

    def daily_cutoff(self, now: datetime) -> datetime | None:
        """Today's release time (BATCHOPS_DAILY_RELEASE_TIME in BATCHOPS_TIMEZONE), if passed."""
        at = self.ctx.settings.daily_release_time
        if not at:
            return None
        zone = ZoneInfo(self.ctx.settings.timezone)
        local = now.astimezone(zone)
        hour, minute = (int(p) for p in at.split(":"))
        cutoff = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return cutoff.astimezone(UTC) if local >= cutoff else None

    async def daily_release(self, now: datetime | None = None) -> int:
        """Release every allocation made before today's cutoff (reason 每日自动释放).

        Idempotent by construction, so any number of workers may run it: an allocation
        made before the cutoff is released once (row locks), one made after it waits
        for tomorrow's cutoff.
        """
        cutoff = self.daily_cutoff(now or self.ctx.clock())
        if cutoff is None:
            return 0
        released = 0
        while True:
            async with self.ctx.db.read() as session:
                ids = list(
                    (
                        await session.scalars(
                            select(Allocation.id)
                            .where(Allocation.status == ACTIVE, Allocation.allocated_at < cutoff)
                            .order_by(Allocation.id)
                            .limit(100)
                        )
                    ).all()
                )
            if not ids:
                break
            result = await self.releaser.batch_release(
                None, ids, texts.DAILY_RELEASE_REASON, BatchMode(), operation="daily_release"
            )
            released += result.success_count
            if result.success_count == 0:
                break
        if released:
            log.info("daily_release_done", released=released)
        return released

    async def send_expiry_reminders(self) -> int:
        """Notify once per expiry, N minutes before it (an extension re-arms it)."""
        minutes = self.ctx.settings.expiry_reminder_minutes
        if not minutes:
            return 0
        now = self.ctx.clock()
        # Rows another transaction holds (an extend, a release) are skipped, never waited
        # for: this pass would lock them out of core.transactions' order. The next tick sees them.
        due = (
            select(Allocation.id)
            .where(
                Allocation.status == ACTIVE,
                Allocation.reminder_sent_at.is_(None),
                Allocation.expires_at <= now + timedelta(minutes=minutes),
                Allocation.expires_at > now,
            )
            .with_for_update(skip_locked=True)
        )
        async with self.ctx.db.transaction() as session:
            claimed = (
                await session.execute(
                    update(Allocation)
                    .where(Allocation.id.in_(due.scalar_subquery()))
                    .values(reminder_sent_at=now)
                    .returning(Allocation.id, Allocation.user_id, Allocation.device_id, Allocation.expires_at)
                )
            ).all()
            if not claimed:
                return 0
            names = dict(
                (
                    await session.execute(
                        select(Device.id, Device.name).where(Device.id.in_([c.device_id for c in claimed]))
                    )
                ).all()
            )
            await self.ctx.notifications.send(
                session,
                [
                    texts.expiring_note(
                        user_id=c.user_id,
                        allocation_id=c.id,
                        device_name=names.get(c.device_id, c.device_id),
                        expires_at=c.expires_at,
                        now=now,
                    )
                    for c in claimed
                ],
            )
        return len(claimed)
