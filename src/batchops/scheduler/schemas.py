from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, StringConstraints, model_validator

from batchops.core.schemas import Schema, StrictSchema

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
# JSON numbers and booleans are taken as they are: "60" or true is not a duration (no lax coercion).
Minutes = Annotated[StrictInt, Field(ge=1, le=1440)]
Reason = Annotated[str, StringConstraints(max_length=500)]


class BatchOptions(StrictSchema):
    continue_on_error: StrictBool = True
    atomic: StrictBool = Field(False, description="all-or-nothing: any failure commits nothing")


# --- devices ---------------------------------------------------------------------------
class DeviceIn(StrictSchema):
    id: Identifier | None = None
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    cpu_cores: StrictInt = Field(ge=1, le=1024)
    memory_mb: StrictInt = Field(alias="memoryMB", ge=1, le=10_000_000)
    storage_mb: StrictInt = Field(alias="storageMB", ge=1, le=1_000_000_000)
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
    created_at: datetime


class DeviceFailure(Schema):
    name: str
    id: str | None
    reason: str
    error: str


class DevicesBatchOut(Schema):
    success_count: int
    failed_count: int
    total_count: int
    devices: list[DeviceOut]
    failures: list[DeviceFailure]
    execution_time_ms: int


# --- allocate --------------------------------------------------------------------------
class DevicePreferences(StrictSchema):
    cpu: StrictInt | None = Field(None, ge=1, le=1024, description="minimum cpuCores")
    memory: StrictInt | None = Field(None, ge=1, le=10_000_000, description="minimum memoryMB")


class AllocationRequest(StrictSchema):
    user_id: Identifier
    duration_minutes: Minutes
    device_preferences: DevicePreferences | None = None


class BatchAllocateIn(BatchOptions):
    requests: list[AllocationRequest] = Field(min_length=1, max_length=50)


class AllocateIn(StrictSchema):
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


class BatchAllocateOut(Schema):
    success_count: int
    failed_count: int
    total_count: int
    successes: list[AllocationSuccess]
    failures: list[UserFailure]
    execution_time_ms: int


# --- release -----------------------------------------------------------------------------
class BatchReleaseIn(BatchOptions):
    allocation_ids: list[Identifier] = Field(min_length=1, max_length=100)
    reason: Reason | None = None


class ReleaseIn(StrictSchema):
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


class BatchReleaseOut(Schema):
    success_count: int
    failed_count: int
    total_count: int
    success_ids: list[str]
    failures: list[AllocationFailure]
    execution_time_ms: int


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


class BatchExtendOut(Schema):
    success_count: int
    failed_count: int
    total_count: int
    successes: list[ExtendSuccess]
    failures: list[AllocationFailure]
    execution_time_ms: int


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
