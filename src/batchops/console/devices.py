"""Devices: filter by state, node and size; register in bulk (paste or CSV); maintenance."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from starlette.responses import Response

from batchops.console.imports import csv_text, parse_rows
from batchops.console.web import Admin, PagingParams, render, runtime
from batchops.core.batch import BatchMode
from batchops.identity.api import admit_batch_caller
from batchops.scheduler.reads import DEVICE_STATES, DeviceFilter, device_choices, device_page
from batchops.scheduler.schemas import DeviceIn
from batchops.scheduler.service import SchedulerService

router = APIRouter()
DEVICE_COLUMNS = {
    "id": "id",
    "name": "name",
    "cpucores": "cpuCores",
    "cpu": "cpuCores",
    "memorymb": "memoryMB",
    "memory": "memoryMB",
    "storagemb": "storageMB",
    "storage": "storageMB",
    "nodeid": "nodeId",
    "node": "nodeId",
}
BATCH_LIMIT = 1000  # POST /scheduler/devices/batch takes 1-1000 devices


@router.get("/devices")
async def devices(
    request: Request,
    _admin: Admin,
    paging: PagingParams,
    state: Annotated[str | None, Query(max_length=16)] = None,
    node: Annotated[str | None, Query(max_length=128)] = None,
    size: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    rt = runtime(request)
    chosen = DeviceFilter(state=state if state in DEVICE_STATES else None, node_id=node or None, size=size or None)
    rows, total = await device_page(rt.db, chosen, offset=paging.offset, limit=paging.size)
    nodes, sizes = await device_choices(rt.db)
    return render(
        request,
        "devices.html",
        devices=rows,
        total=total,
        paging=paging,
        pages=paging.pages(total),
        states=DEVICE_STATES,
        nodes=nodes,
        sizes=sizes,
        chosen=chosen,
    )


@router.post("/devices/import")
async def import_devices(
    request: Request,
    user: Admin,
    devices_csv: Annotated[str, Form(max_length=1_000_000)] = "",
    devices_file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    rt = runtime(request)
    parsed = parse_rows(
        await csv_text(devices_csv, devices_file), DeviceIn, DEVICE_COLUMNS, {"cpuCores", "memoryMB", "storageMB"}
    )
    scheduler = rt.services.get(SchedulerService)
    created, failures = [], [(line, "BadRequestException", why) for line, why in parsed.problems]
    for start in range(0, len(parsed.models), BATCH_LIMIT):
        part = parsed.models[start : start + BATCH_LIMIT]
        await admit_batch_caller(rt, request, user, "scheduler.devices")
        result = await scheduler.register_devices(user, [m for _, m in part], BatchMode())
        created += result.results
        failures += [(part[f.index][0], f.error, f.reason) for f in result.failures]
    return render(
        request,
        "_import_result.html",
        total=len(parsed.models) + len(parsed.problems),
        created=[d["id"] for d in created],
        failures=sorted(failures),
    )


@router.post("/devices/{device_id}/maintenance")
async def maintenance(request: Request, device_id: str, _admin: Admin, on: Annotated[bool, Form()] = False) -> Response:
    scheduler = runtime(request).services.get(SchedulerService)
    device = await scheduler.set_maintenance(device_id, on)
    return render(request, "_device_row.html", device=device)
