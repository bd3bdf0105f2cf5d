"""Every event and notification the scheduler sends: their names, payloads and words.

Each function takes a batch's outcomes and returns the outbox items or notifications
for all of them; ``at`` is the batch's ``occurredAt`` (one instant for one batch).
Instants are written as the JSON contract writes them (``iso_utc``: ``…Z``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from batchops.core.clock import iso_utc
from batchops.core.events import event
from batchops.core.outbox import OutboxItem
from batchops.notifications.service import NewNotification
from batchops.scheduler.outcomes import Allocated, Extended, Queued, Released

DAILY_RELEASE_REASON = "每日自动释放"


# --- allocations ----------------------------------------------------------------------------
def allocated_events(results: Sequence[Allocated], at: str) -> list[OutboxItem]:
    """``device.allocated``: the allocation as the batch response shows it, and its duration."""
    return [
        event(
            "device.allocated",
            {
                "userId": r.allocation["user_id"],
                "allocationId": r.id,
                "deviceId": r.device.id,
                "deviceName": r.device.name,
                "allocatedAt": iso_utc(r.allocation["allocated_at"]),
                "expiresAt": iso_utc(r.allocation["expires_at"]),
                "durationMinutes": r.allocation["duration_minutes"],
            },
            at,
        )
        for r in results
    ]


def allocated_notes(results: Sequence[Allocated]) -> list[NewNotification]:
    return [
        NewNotification(
            user_id=r.allocation["user_id"],
            type="device.allocated",
            title="📱 设备已分配",
            content=f"设备 {r.device.name} 已分配给您，使用时长 {r.allocation['duration_minutes']} 分钟。",
            data={"allocationId": r.id, "deviceId": r.device.id, "expiresAt": iso_utc(r.allocation["expires_at"])},
        )
        for r in results
    ]


def released_events(results: Sequence[Released], at: str) -> list[OutboxItem]:
    """Each release under both names: the seed's ``device.released`` and the domain's own."""
    items = []
    for r in results:
        a = r.loaded.allocation
        payload = {
            "allocationId": a.id,
            "userId": a.user_id,
            "deviceId": r.loaded.device.id,
            "deviceName": r.loaded.device.name,
            "allocatedAt": iso_utc(a.allocated_at),
            "releasedAt": iso_utc(r.released_at),
            "durationSeconds": r.duration_seconds,
            "reason": r.reason,
        }
        items.append(event("device.released", payload, at))
        items.append(event("scheduler.allocation.released", payload, at))
    return items


def released_notes(results: Sequence[Released]) -> list[NewNotification]:
    return [
        NewNotification(
            user_id=r.loaded.allocation.user_id,
            type="device.released",
            title="🔓 设备已释放",
            content=f"设备 {r.loaded.device.name} 已释放，使用时长 {r.duration_seconds} 秒。"
            + (f"原因：{r.reason}" if r.reason else ""),
            data={"allocationId": r.id, "deviceId": r.loaded.device.id, "reason": r.reason},
        )
        for r in results
    ]


def extended_events(results: Sequence[Extended], at: str) -> list[OutboxItem]:
    return [
        event(
            "scheduler.allocation.extended",
            {
                "allocationId": r.id,
                "userId": r.loaded.allocation.user_id,
                "deviceId": r.loaded.device.id,
                "oldExpiresAt": iso_utc(r.old_expires_at),
                "newExpiresAt": iso_utc(r.new_expires_at),
                "additionalMinutes": r.additional_minutes,
            },
            at,
        )
        for r in results
    ]


def extended_notes(results: Sequence[Extended]) -> list[NewNotification]:
    return [
        NewNotification(
            user_id=r.loaded.allocation.user_id,
            type="scheduler.allocation.extended",
            title="⏰ 设备使用时间已延长",
            content=f"设备 {r.loaded.device.name} 使用时间已延长 {r.additional_minutes} 分钟。",
            data={"allocationId": r.id, "newExpiresAt": iso_utc(r.new_expires_at)},
        )
        for r in results
    ]


def expiring_note(
    *, user_id: str, allocation_id: str, device_name: str, expires_at: datetime, now: datetime
) -> NewNotification:
    """The reminder sent once, some minutes before an allocation expires."""
    minutes = max(1, round((expires_at - now).total_seconds() / 60))
    return NewNotification(
        user_id=user_id,
        type="scheduler.allocation.expiring",
        title="⏳ 设备即将到期",
        content=f"设备 {device_name} 将于 {minutes} 分钟后到期，如需继续使用请续期。",
        data={"allocationId": allocation_id, "expiresAt": iso_utc(expires_at)},
    )


# --- the wait queue ----------------------------------------------------------------------
def queued_events(queued: Sequence[Queued], at: str) -> list[OutboxItem]:
    return [
        event(
            "scheduler.queue.entered",
            {
                "queueEntryId": q.id,
                "userId": q.entry["user_id"],
                "priority": q.entry["priority"],
                "position": q.position,
            },
            at,
        )
        for q in queued
    ]


def queued_notes(queued: Sequence[Queued]) -> list[NewNotification]:
    return [
        NewNotification(
            user_id=q.entry["user_id"],
            type="scheduler.queue.entered",
            title="⏳ 已进入排队",
            content=f"暂无可用设备，您的请求已排队，当前位置 {q.position}。",
            data={"queueEntryId": q.id, "position": q.position},
        )
        for q in queued
    ]


def granted_note(*, user_id: str, entry_id: str, duration_minutes: int, allocated: Allocated) -> NewNotification:
    return NewNotification(
        user_id=user_id,
        type="scheduler.queue.granted",
        title="🎉 排队请求已分配设备",
        content=f"您排队的请求已分配到设备 {allocated.device.name}，使用时长 {duration_minutes} 分钟。",
        data={"queueEntryId": entry_id, "allocationId": allocated.id, "deviceId": allocated.device.id},
    )


def queue_expired_note(*, user_id: str, entry_id: str) -> NewNotification:
    return NewNotification(
        user_id=user_id,
        type="scheduler.queue.expired",
        title="⌛ 排队已超时",
        content="您的排队请求在最长等待时间内未能分配到设备，已取消。",
        data={"queueEntryId": entry_id},
    )


# --- reservations ------------------------------------------------------------------------
def reservation_payload(row: dict[str, Any]) -> dict[str, Any]:
    """A reservation (its row's columns) in events and notifications."""
    return {
        "reservationId": row["id"],
        "userId": row["user_id"],
        "deviceId": row["device_id"],
        "startAt": iso_utc(row["start_at"]),
        "endAt": iso_utc(row["end_at"]),
        "status": row["status"],
    }


def reservation_created_events(rows: Sequence[dict[str, Any]], at: str) -> list[OutboxItem]:
    return [event("scheduler.reservation.created", reservation_payload(r), at) for r in rows]


def reservation_created_notes(rows: Sequence[dict[str, Any]]) -> list[NewNotification]:
    return [
        NewNotification(
            user_id=r["user_id"],
            type="scheduler.reservation.created",
            title="📅 设备预约成功",
            content=f"已为您预约设备，开始时间 {iso_utc(r['start_at'])}，时长 {r['duration_minutes']} 分钟。",
            data=reservation_payload(r),
        )
        for r in rows
    ]


def reservation_cancelled_event(row: dict[str, Any], at: str) -> OutboxItem:
    return event("scheduler.reservation.cancelled", reservation_payload(row), at)


def reservation_failed_note(*, user_id: str, reservation_id: str, start_at: datetime, reason: str) -> NewNotification:
    return NewNotification(
        user_id=user_id,
        type="scheduler.reservation.failed",
        title="⚠️ 预约未能开始",
        content=f"您在 {iso_utc(start_at)} 的设备预约未能开始：{reason}",
        data={"reservationId": reservation_id, "reason": reason},
    )
