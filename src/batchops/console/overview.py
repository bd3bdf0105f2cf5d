"""Overview: the pool at a glance, refreshed while it is open."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from batchops.billing.reads import charges_per_hour
from batchops.console.web import BASE, Admin, SignedIn, render, runtime
from batchops.core.runtime import Runtime
from batchops.scheduler.reads import device_states, scheduler_overview
from batchops.studio.reads import failure_rate

router = APIRouter()
REFRESH_SECONDS = 10


async def figures(rt: Runtime) -> dict[str, Any]:
    scheduler = await scheduler_overview(rt.db, clock=rt.clock)
    pending, lag_seconds, dead = await rt.outbox.lag()
    failed, finished = await failure_rate(rt.db, clock=rt.clock)
    charges = await charges_per_hour(rt.db, clock=rt.clock)
    nodes = await device_states(rt.db)
    states = ("available", "allocated", "maintenance", "offline")
    return {
        **scheduler,
        "nodes": nodes,
        "totals": {s: sum(n[s] for n in nodes) for s in states},
        "device_count": sum(n["devices"] for n in nodes),
        "outbox_pending": pending,
        "outbox_lag_seconds": round(lag_seconds),
        "dead_letters": dead,
        "studio_failed": failed,
        "studio_finished": finished,
        "chart": {
            "hours": [int(h.timestamp()) for h in scheduler["hours"]],
            "allocations": scheduler["allocations_per_hour"],
            "charges": [c / 100 for c in charges],
        },
        "refresh_seconds": REFRESH_SECONDS,
    }


@router.get("/")
async def home(request: Request, user: SignedIn) -> Response:
    if not user.is_admin:  # each starts where their work is: meals, video batches, or devices
        start = "/dining" if user.role == "dept_admin" else "/studio" if user.plan != "free" else "/mine"
        return RedirectResponse(BASE + start, status_code=303)
    return render(request, "overview.html", **await figures(runtime(request)))


@router.get("/overview/figures")
async def overview_figures(request: Request, _admin: Admin) -> Response:
    return render(request, "_overview_figures.html", **await figures(runtime(request)))
