"""Admin API for users, and the dependencies every router uses to know the caller."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from batchops.core.auth import bearer_scheme, check_client_ip, decode_token
from batchops.core.errors import ForbiddenError, UnauthorizedError
from batchops.core.runtime import Runtime, get_runtime, service_of
from batchops.core.schemas import Envelope, ok
from batchops.identity.models import User
from batchops.identity.schemas import UserOut, UsersBatchIn, UsersBatchOut
from batchops.identity.service import IdentityService, ensure_active


async def current_user(
    request: Request,
    rt: Annotated[Runtime, Depends(get_runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> User:
    """The caller, read from the users table on every request (a suspension acts at once)."""
    if credentials is None:
        raise UnauthorizedError("Missing bearer token")
    user_id = decode_token(credentials.credentials, rt.settings.jwt_secret)
    identity = rt.services.get(IdentityService)
    user = await identity.find(user_id)
    if user is None:
        raise UnauthorizedError("Unknown user")
    ensure_active(user)
    request.state.user_id = user.id
    return user


async def require_admin(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise ForbiddenError("Admin role required")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(require_admin)]


def ensure_self_or_admin(caller: User, user_id: str) -> None:
    if not caller.is_admin and caller.id != user_id:
        raise ForbiddenError("You may only act on your own resources")


router = APIRouter(prefix="/admin/users", tags=["identity"])


@router.post("/batch", response_model=Envelope[UsersBatchOut])
async def upsert_users(
    body: UsersBatchIn, _: AdminUser, service: Annotated[IdentityService, Depends(service_of(IdentityService))]
) -> Envelope[UsersBatchOut]:
    users, created = await service.upsert_users(body.users)
    out = UsersBatchOut(
        total_count=len(users),
        created_count=created,
        updated_count=len(users) - created,
        users=[UserOut.model_validate(u) for u in users],
    )
    return ok(out, f"Upserted {len(users)} users: {created} created, {len(users) - created} updated")


@router.get("/{user_id}", response_model=Envelope[UserOut])
async def get_user(
    user_id: str, _: AdminUser, service: Annotated[IdentityService, Depends(service_of(IdentityService))]
) -> Envelope[UserOut]:
    return ok(UserOut.model_validate(await service.get_user(user_id)))


def rate_limited_admin(operation: str) -> Any:
    """Dependency for batch endpoints: an admin caller, from an allowed address (seed 000
    安全性: IP 白名单), limited per minute (seed 000 §4)."""

    async def dependency(request: Request, user: AdminUser, rt: Annotated[Runtime, Depends(get_runtime)]) -> User:
        await admit_batch_caller(rt, request, user, operation)
        return user

    return Depends(dependency)


async def admit_batch_caller(rt: Runtime, request: Request, user: User, operation: str) -> None:
    """The checks every admin batch call passes, from the API or the console: the address
    allowlist, then one hit of the caller's per-minute limit for ``operation``."""
    check_client_ip(request.client.host if request.client else None, rt.settings.batch_allowed_networks)
    await rt.limiter.hit(f"{operation}:{user.id}")
