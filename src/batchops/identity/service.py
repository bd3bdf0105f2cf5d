"""Users: upsert in bulk, look up, list, passwords, and the bootstrap admin."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog
from sqlalchemy import ColumnElement, FromClause, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.db import Database, is_postgres, utcnow
from batchops.core.errors import BadRequestError, ForbiddenError, NotFoundError
from batchops.identity.models import User
from batchops.identity.passwords import hash_password, password_problem, verify_password
from batchops.identity.schemas import UserIn

log = structlog.get_logger(__name__)

DEFAULTS: dict[str, Any] = {"role": "user", "status": "active", "max_devices": 5, "plan": "free"}
FIELDS = ("name", "role", "status", "department_id", "max_devices", "plan")


def ensure_active(user: User | None) -> User:
    """The user exists and may act: the one place the status rule lives."""
    if user is None:
        raise NotFoundError("User not found")
    if user.status == "suspended":
        raise ForbiddenError("User account is suspended")
    if user.status != "active":
        raise ForbiddenError(f"User account is {user.status}")
    return user


def may_act(users: FromClause) -> ColumnElement[bool]:
    """``ensure_active``'s rule in SQL: the user's status lets them act."""
    return users.c.status == "active"


async def load_users(session: AsyncSession, user_ids: Iterable[str], *, lock: bool = False) -> dict[str, User]:
    """Every named user in one SELECT (optionally ``FOR UPDATE``), keyed by id."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    stmt = select(User).where(User.id.in_(ids)).order_by(User.id)
    if lock:
        stmt = stmt.with_for_update()
    return {u.id: u for u in (await session.scalars(stmt)).all()}


class IdentityService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def find(self, user_id: str) -> User | None:
        """A user, detached (read on every request for its caller)."""
        async with self.db.read() as session:
            return await session.get(User, user_id)

    async def upsert_users(self, items: list[UserIn]) -> tuple[list[User], int]:
        """Create or update users in two statements; fields left out keep their value."""
        ids = [i.user_id for i in items]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise BadRequestError(
                "Duplicate userId in one request", details=[{"field": "users", "userIds": duplicates[:20]}]
            )
        now = utcnow()
        async with self.db.transaction() as session:
            existing = await load_users(session, ids)
            rows = []
            for item in items:
                given = item.model_dump(exclude_unset=True, exclude={"user_id"})
                current = existing.get(item.user_id)
                base = (
                    {f: getattr(current, f) for f in FIELDS}
                    if current
                    else {"name": None, **DEFAULTS, "department_id": None}
                )
                base.update({k: v for k, v in given.items() if v is not None or k in ("name", "department_id")})
                rows.append(
                    {
                        "id": item.user_id,
                        **base,
                        "updated_at": now,
                        "created_at": current.created_at if current else now,
                    }
                )
            await self._upsert(session, rows)
            users = await load_users(session, ids)
        created = sum(1 for i in ids if i not in existing)
        log.info("users_upserted", created=created, updated=len(ids) - created)
        return [users[i] for i in ids], created

    async def _upsert(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        insert = pg_insert if is_postgres(session) else sqlite_insert
        stmt = insert(User).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[User.id], set_={f: stmt.excluded[f] for f in (*FIELDS, "updated_at")}
        )
        await session.execute(stmt)

    async def get_user(self, user_id: str) -> User:
        user = await self.find(user_id)
        if user is None:
            raise NotFoundError("User not found")
        return user

    async def ensure_admin(self, user_id: str) -> None:
        """The bootstrap admin exists and is an active admin: one upsert, so processes
        that start together (serve, worker, billing) cannot collide on creating it."""
        now = utcnow()
        async with self.db.transaction() as session:
            insert = pg_insert if is_postgres(session) else sqlite_insert
            stmt = insert(User).values(
                id=user_id, name=user_id, role="admin", status="active", created_at=now, updated_at=now
            )
            await session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[User.id], set_={"role": "admin", "status": "active", "updated_at": now}
                )
            )
        log.info("bootstrap_admin_ready", user_id=user_id)

    # --- reads for lists -----------------------------------------------------------------
    async def list_users(
        self,
        *,
        search: str | None = None,
        role: str | None = None,
        status: str | None = None,
        department_id: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[list[User], int]:
        """A page of users in id order and how many match; ``search`` matches id or name."""
        where: list[Any] = []
        if search:
            pattern = f"%{search.lower()}%"
            where.append(or_(func.lower(User.id).like(pattern), func.lower(User.name).like(pattern)))
        if role:
            where.append(User.role == role)
        if status:
            where.append(User.status == status)
        if department_id:
            where.append(User.department_id == department_id)
        async with self.db.read() as session:
            total = await session.scalar(select(func.count()).select_from(User).where(*where))
            rows = await session.scalars(select(User).where(*where).order_by(User.id).offset(offset).limit(limit))
            return list(rows.all()), int(total or 0)

    # --- passwords (console sign-in) ------------------------------------------------------
    async def set_password(self, user_id: str, password: str) -> None:
        """Give a user a console password (argon2). The API's bearer tokens are unaffected."""
        problem = password_problem(password)
        if problem:
            raise BadRequestError(problem, details=[{"field": "password", "message": problem}])
        hashed = await asyncio.to_thread(hash_password, password)  # ~0.1-0.4 s of CPU: off the event loop
        async with self.db.transaction() as session:
            result = await session.execute(
                update(User).where(User.id == user_id).values(password_hash=hashed, updated_at=utcnow())
            )
            if not getattr(result, "rowcount", 0):
                raise NotFoundError("User not found")
        log.info("user_password_set", user_id=user_id)

    async def authenticate(self, user_id: str, password: str) -> User | None:
        """The user whose password this is, or None (unknown user, no password, wrong
        password take the same time). Status is the caller's to check: a suspended user
        with the right password is told so, not told the password is wrong."""
        user = await self.find(user_id) if user_id else None
        stored = user.password_hash if user is not None else None
        matches = await asyncio.to_thread(verify_password, stored, password)
        return user if matches else None
