from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictBool, model_validator

from batchops.core.schemas import (
    BatchOptions,
    BatchSummary,
    Identifier,
    Integer,
    IsoDatetime,
    Schema,
    StrictSchema,
    Text,
)

# JSON numbers and booleans are taken as they are: "60" or true is not a duration (no lax coercion).
Minutes = Annotated[int, Integer(ge=1, le=1440)]
Reason = Annotated[Text, Field(max_length=500)]
Cpu = Annotated[int, Integer(ge=1, le=1024)]
MemoryMB = Annotated[int, Integer(ge=1, le=10_000_000)]


# --- devices ---------------------------------------------------------------------------
class DeviceIn(StrictSchema):
    id: Identifier | None = None
    name: Annotated[Text, Field(min_length=1, max_length=200)]
    cpu_cores: Cpu
    memory_mb: MemoryMB = Field(alias="memoryMB")
    storage_mb: Annotated[int, Integer(ge=1, le=1_000_000_000)] = Field(alias="storageMB")
    node_id: Identifier | None = None


class DevicesBatchIn(BatchOptions):
    devices: list[DeviceIn] = Field(min_length=1, max_length=1000)


class DeviceOut(Schema):
    id: str
    name: str
    cpu_cores: int
    memory_mb: int = Field(serialization_alias="memoryMB")
    storage_mb: int = Field(serialization_alias="storageMB")
    status: str
    node_id: str | None
    maintenance: bool
    created_at: datetime


class MaintenanceIn(StrictSchema):
    maintenance: StrictBool


class NodeOut(Schema):
    node_id: str | None
    devices: int
    available: int
    allocated: int
    maintenance: int


class DeviceFailure(Schema):
    name: str
    id: str | None
    reason: str
    error: str


class DevicesBatchOut(BatchSummary):
    devices: list[DeviceOut]
    failures: list[DeviceFailure]


# --- allocate --------------------------------------------------------------------------
class DevicePreferences(StrictSchema):
    cpu: Cpu | None = Field(None, description="minimum cpuCores")
    memory: MemoryMB | None = Field(None, description="minimum memoryMB")


class QueueFields(StrictSchema):
    """Phase 3: wait in the priority queue instead of failing when nothing fits."""

    queue_if_unavailable: StrictBool = False
    priority: Annotated[int, Integer(ge=0, le=9)] = Field(0, description="9 is served first")
    max_wait_minutes: Minutes = Field(60, description="a waiting request expires after this")


class AllocationRequest(QueueFields):
    user_id: Identifier
    duration_minutes: Minutes
    device_preferences: DevicePreferences | None = None


class BatchAllocateIn(BatchOptions):
    requests: list[AllocationRequest] = Field(min_length=1, max_length=50)


class AllocateIn(QueueFields):
    user_id: Identifier | None = Field(None, description="defaults to the caller")
    duration_minutes: Minutes
    device_preferences: DevicePreferences | None = None


class AllocationSuccess(Schema):
    user_id: str
    allocation_id: str
    device_id: str
    device_name: str
    allocated_at: datetime
    expires_at: datetime


class UserFailure(Schema):
    user_id: str
    reason: str
    error: str


class QueuedOut(Schema):
    user_id: str
    queue_entry_id: str
    position: int


class BatchAllocateOut(BatchSummary):
    successes: list[AllocationSuccess]
    queued: list[QueuedOut]
    failures: list[UserFailure]


# --- release -----------------------------------------------------------------------------
class BatchReleaseIn(BatchOptions):
    allocation_ids: list[Identifier] = Field(min_length=1, max_length=100)
    reason: Reason | None = None


class ReleaseIn(StrictSchema):
    # the rule of _one_way_to_name_it, for the published schema
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["allocationId"], "properties": {"allocationId": {"not": {"type": "null"}}}},
                {
                    "required": ["deviceId", "userId"],
                    "properties": {"deviceId": {"not": {"type": "null"}}, "userId": {"not": {"type": "null"}}},
                },
            ]
        }
    )

    allocation_id: Identifier | None = None
    device_id: Identifier | None = None
    user_id: Identifier | None = None
    reason: Reason | None = None

    @model_validator(mode="after")
    def _one_way_to_name_it(self) -> ReleaseIn:
        if self.allocation_id is None and (self.device_id is None or self.user_id is None):
            raise ValueError("give allocationId, or deviceId and userId")
        return self


class AllocationFailure(Schema):
    allocation_id: str
    reason: str
    error: str


class BatchReleaseOut(BatchSummary):
    success_ids: list[str]
    failures: list[AllocationFailure]


class ReleaseOut(Schema):
    allocation_id: str
    device_id: str
    user_id: str
    released_at: datetime
    duration_seconds: int


# --- extend ------------------------------------------------------------------------------
class BatchExtendIn(BatchOptions):
    allocation_ids: list[Identifier] = Field(min_length=1, max_length=50)
    additional_minutes: Minutes


class ExtendIn(StrictSchema):
    additional_minutes: Minutes


class ExtendSuccess(Schema):
    allocation_id: str
    old_expires_at: datetime
    new_expires_at: datetime
    additional_minutes: int


class BatchExtendOut(BatchSummary):
    successes: list[ExtendSuccess]
    failures: list[AllocationFailure]


# --- query -------------------------------------------------------------------------------
class BatchQueryIn(StrictSchema):
    user_ids: list[Identifier] = Field(min_length=1, max_length=100)
    active_only: StrictBool = True


class AllocationView(Schema):
    allocation_id: str
    device_id: str
    device_name: str
    status: str
    allocated_at: datetime
    expires_at: datetime


class AllocationDetail(AllocationView):
    user_id: str
    duration_minutes: int
    released_at: datetime | None
    release_reason: str | None


class BatchQueryOut(Schema):
    allocations: dict[str, list[AllocationView]]
    user_count: int
    total_allocations: int


AllocationStatus = Literal["allocated", "released"]


# --- phase 3: reservations & the wait queue ----------------------------------------------------
class ReservationIn(StrictSchema):
    user_id: Identifier
    start_at: IsoDatetime = Field(
        description="ISO-8601 with a zone (e.g. ...Z). In the future and at most"
        " BATCHOPS_RESERVATION_MAX_DAYS_AHEAD days ahead (rules of the moment, which no schema states)"
    )
    duration_minutes: Minutes
    device_preferences: DevicePreferences | None = None


class ReservationsBatchIn(BatchOptions):
    reservations: list[ReservationIn] = Field(min_length=1, max_length=50)


class ReservationOut(Schema):
    reservation_id: str
    user_id: str
    device_id: str
    start_at: datetime
    end_at: datetime
    status: str
    allocation_id: str | None = None
    failure_reason: str | None = None


class ReservationFailure(Schema):
    user_id: str
    start_at: datetime
    reason: str
    error: str


class ReservationsBatchOut(BatchSummary):
    successes: list[ReservationOut]
    failures: list[ReservationFailure]


class QueueEntryOut(Schema):
    queue_entry_id: str
    user_id: str
    status: str
    priority: int
    position: int | None = Field(description="1 = next to be served; null once it left the queue")
    duration_minutes: int
    enqueued_at: datetime
    expires_at: datetime
    granted_at: datetime | None
    allocation_id: str | None
    reason: str | None


ReservationStatus = Literal["reserved", "fulfilled", "cancelled", "failed"]
QueueStatus = Literal["waiting", "granted", "expired", "cancelled"]
