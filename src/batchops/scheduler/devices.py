"""The fleet: register devices in bulk and put one in or out of maintenance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.batch import BatchMode, BatchResult
from batchops.core.db import new_id
from batchops.core.errors import ConflictError, NotFoundError
from batchops.core.outbox import enqueue
from batchops.identity.models import User
from batchops.scheduler.context import DEVICES_FREED, DOMAIN, Context
from batchops.scheduler.models import AVAILABLE, Device
from batchops.scheduler.schemas import DeviceIn


class RegisterDevicesWork:
    def __init__(self, session: AsyncSession, ctx: Context) -> None:
        self.session = session
        self.taken: set[str] = set()
        self.now = ctx.clock()

    async def load(self, devices: Sequence[DeviceIn]) -> RegisterDevicesWork:
        ids = [d.id for d in devices if d.id]
        if ids:
            self.taken = set((await self.session.scalars(select(Device.id).where(Device.id.in_(ids)))).all())
        return self

    async def handle(self, item: DeviceIn) -> dict[str, Any]:
        device_id = item.id or new_id("device")
        if device_id in self.taken:
            raise ConflictError(f"Device {device_id} already exists")
        self.taken.add(device_id)
        return {
            "id": device_id,
            "name": item.name,
            "cpu_cores": item.cpu_cores,
            "memory_mb": item.memory_mb,
            "storage_mb": item.storage_mb,
            "node_id": item.node_id,
            "status": AVAILABLE,
            "maintenance": False,
            "created_at": self.now,
            "updated_at": self.now,
        }

    async def flush(self, results: list[dict[str, Any]]) -> None:
        if results:
            await self.session.execute(insert(Device), results)
            await enqueue(self.session, [DEVICES_FREED])


class Fleet:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def register_devices(
        self, actor: User, devices: list[DeviceIn], mode: BatchMode
    ) -> BatchResult[DeviceIn, dict[str, Any]]:
        async def prepare(session: AsyncSession) -> RegisterDevicesWork:
            return await RegisterDevicesWork(session, self.ctx).load(devices)

        return await self.ctx.batch.run(
            domain=DOMAIN,
            operation="register_devices",
            actor_id=actor.id,
            items=devices,
            prepare=prepare,
            mode=mode,
        )

    async def set_maintenance(self, device_id: str, maintenance: bool) -> Device:
        """A device in maintenance takes nothing new; a running allocation runs to its end."""
        async with self.ctx.db.transaction() as session:
            device = await session.get(Device, device_id, with_for_update=True)
            if device is None:
                raise NotFoundError("Device not found")
            device.maintenance = maintenance
            if not maintenance and device.status == AVAILABLE:
                await enqueue(session, [DEVICES_FREED])
        return device
