"""One database layer for SQLite (embedded default) and PostgreSQL.

Correctness under concurrency comes from the database:

* SQLite: every transaction starts with ``BEGIN IMMEDIATE``, so writers are
  serialised by the file lock (WAL keeps readers of other processes going) and a
  read-check-write inside a transaction cannot race.
* PostgreSQL: row locks (``FOR UPDATE SKIP LOCKED``), transaction-scoped advisory
  locks for decisions that span many rows (choosing devices) and unique / partial
  unique indexes as the last line of defence.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

import structlog
from sqlalchemy import JSON, DateTime, MetaData, Table, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

log = structlog.get_logger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both engines (SQLite stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
    }


def table_of(model: type[Base]) -> Table:
    """A model's Core table: ``insert(table_of(M))`` with a list of dicts is one plain
    executemany, without the ORM bulk path's per-row bookkeeping (hot in big batches)."""
    return cast(Table, model.__table__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Readable, unique ids such as ``alloc-3f2a…`` (the seed's style)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def async_url(url: str) -> str:
    """Accept the plain URLs of the docs and pick the async driver ourselves."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    for plain in ("postgresql:", "postgres:", "postgresql+psycopg:", "postgresql+psycopg2:"):
        if url.startswith(plain):
            return "postgresql+asyncpg:" + url[len(plain) :]
    return url


PostCommit = Callable[[], Awaitable[None]]


class Database:
    """Engine + session factory + the transaction helper every service uses."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(
                self.url,
                echo=echo,
                connect_args={"timeout": 30},
                pool_size=5,
                max_overflow=10,
                # Every session ends its transaction itself (commit, or rollback on error), so the
                # pool's extra ROLLBACK on check-in is a no-op that costs a round trip.
                pool_reset_on_return=None,
            )
            _install_sqlite_hooks(self.engine)
        else:
            self.engine = create_async_engine(
                self.url,
                echo=echo,
                pool_size=pool_size,
                max_overflow=pool_size * 2,
                pool_pre_ping=False,
                pool_reset_on_return=None,  # as above: no ROLLBACK round trip per checkout
            )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on success, rolled back on error.

        Callbacks registered with :func:`on_commit` run after a successful commit
        (live pushes that must not happen for rolled-back work).
        """
        async with self.sessions() as session:
            async with session.begin():
                yield session
            for callback in session.info.pop("post_commit", []):
                try:
                    await callback()
                except Exception:  # a live push must never fail a committed request
                    log.exception("post_commit_failed")

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()


def on_commit(session: AsyncSession, callback: PostCommit) -> None:
    session.info.setdefault("post_commit", []).append(callback)


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide where transactions begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=30000",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def advisory_lock(session: AsyncSession, name: str) -> None:
    """Serialise one kind of decision across processes until the transaction ends.

    On SQLite ``BEGIN IMMEDIATE`` already serialises every writer, so this is a no-op.
    """
    if is_postgres(session):
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(name.encode())})


async def insert_new(
    session: AsyncSession,
    model: type[Base],
    rows: list[dict[str, Any]],
    *,
    conflict_on: list[str],
    returning: str | None = None,
) -> list[Any]:
    """Insert rows, silently skipping those whose ``conflict_on`` key already exists
    (``ON CONFLICT DO NOTHING``, one statement on both engines). With ``returning``
    (a column name), the values of the rows actually inserted: the winners of a race.
    Core statements, not the ORM's bulk path: a third of the Python time per batch."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    table = table_of(model)
    ins: Any = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    # executemany form ("insertmanyvalues": still one round trip per ~1000 rows), so the
    # compiled statement is cached; a multi-row .values() would be compiled on every call.
    stmt = ins.on_conflict_do_nothing(index_elements=conflict_on)
    if returning is None:
        await session.execute(stmt, rows)
        return []
    return list((await session.execute(stmt.returning(table.c[returning]), rows)).scalars().all())
