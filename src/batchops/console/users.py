"""Users: bulk import (CSV), quotas, roles, plans, departments, suspend / reactivate, and
console passwords. Every change goes through IdentityService like the admin API's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from pydantic import ValidationError
from starlette.responses import Response

from batchops.console.imports import csv_text, parse_rows
from batchops.console.web import Admin, PagingParams, gettext_for, render, runtime
from batchops.core.errors import BadRequestError
from batchops.identity.models import PLANS, ROLES, STATUSES
from batchops.identity.schemas import UserIn
from batchops.identity.service import IdentityService

router = APIRouter()
USER_COLUMNS = {
    "userid": "userId",
    "id": "userId",
    "name": "name",
    "role": "role",
    "status": "status",
    "departmentid": "departmentId",
    "department": "departmentId",
    "maxdevices": "maxDevices",
    "plan": "plan",
}
BATCH_LIMIT = 1000  # POST /admin/users/batch takes 1-1000 users


def identity_of(request: Request) -> IdentityService:
    service = runtime(request).services.get(IdentityService)
    return service


@router.get("/users")
async def users(
    request: Request,
    _admin: Admin,
    paging: PagingParams,
    q: Annotated[str | None, Query(max_length=128)] = None,
    role: Annotated[str | None, Query(max_length=16)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    department: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    chosen = {
        "q": (q or "").strip(),
        "role": role if role in ROLES else "",
        "status": status if status in STATUSES else "",
        "department": (department or "").strip(),
    }
    rows, total = await identity_of(request).list_users(
        search=chosen["q"] or None,
        role=chosen["role"] or None,
        status=chosen["status"] or None,
        department_id=chosen["department"] or None,
        offset=paging.offset,
        limit=paging.size,
    )
    return render(
        request,
        "users.html",
        users=rows,
        total=total,
        paging=paging,
        pages=paging.pages(total),
        chosen=chosen,
        roles=ROLES,
        statuses=STATUSES,
        plans=PLANS,
    )


@router.post("/users/import")
async def import_users(
    request: Request,
    _admin: Admin,
    users_csv: Annotated[str, Form(max_length=1_000_000)] = "",
    users_file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    parsed = parse_rows(await csv_text(users_csv, users_file), UserIn, USER_COLUMNS, {"maxDevices"})
    identity = identity_of(request)
    created = updated = 0
    for start in range(0, len(parsed.models), BATCH_LIMIT):
        part = [m for _, m in parsed.models[start : start + BATCH_LIMIT]]
        done, new = await identity.upsert_users(part)
        created, updated = created + new, updated + len(done) - new
    failures = [(line, "BadRequestException", why) for line, why in parsed.problems]
    return render(
        request,
        "_users_import_result.html",
        total=len(parsed.models) + len(parsed.problems),
        created=created,
        updated=updated,
        failures=failures,
    )


def user_change(user_id: str, values: dict[str, Any]) -> UserIn:
    try:
        return UserIn.model_validate({"userId": user_id, **values})
    except ValidationError as exc:
        details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise BadRequestError("Validation failed", details=details) from None


@router.post("/users/{user_id}")
async def update_user(
    request: Request,
    user_id: str,
    _admin: Admin,
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=16)] = "user",
    department: Annotated[str, Form(max_length=128)] = "",
    max_devices: Annotated[int, Form(alias="maxDevices", ge=0, le=10_000)] = 5,
    plan: Annotated[str, Form(max_length=16)] = "free",
) -> Response:
    identity = identity_of(request)
    await identity.get_user(user_id)  # 404 for an unknown user: an edit never creates one
    values = {"name": name.strip() or None, "role": role, "maxDevices": max_devices, "plan": plan}
    values["departmentId"] = department.strip() or None
    [user], _ = await identity.upsert_users([user_change(user_id, values)])
    return render(request, "_user_row.html", u=user, roles=ROLES, plans=PLANS, saved=True)


@router.post("/users/{user_id}/status")
async def set_status(
    request: Request, user_id: str, actor: Admin, status: Annotated[str, Form(max_length=16)]
) -> Response:
    if user_id == actor.id and status != "active":
        raise BadRequestError("You cannot suspend yourself")
    identity = identity_of(request)
    await identity.get_user(user_id)
    [user], _ = await identity.upsert_users([user_change(user_id, {"status": status})])
    return render(request, "_user_row.html", u=user, roles=ROLES, plans=PLANS)


@router.post("/users/{user_id}/password")
async def set_password(
    request: Request, user_id: str, _admin: Admin, password: Annotated[str, Form(max_length=1024)]
) -> Response:
    await identity_of(request).set_password(user_id, password)
    _ = gettext_for(request)
    return render(request, "_flash.html", message=_("Password set for %(user)s") % {"user": user_id})
