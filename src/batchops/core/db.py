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

import asyncio
import sqlite3
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar, cast

import structlog
from pydantic_core import from_json, to_json
from sqlalchemy import (
    JSON,
    DateTime,
    MetaData,
    Select,
    Table,
    event,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from batchops.core.transactions import run_retrying

log = structlog.get_logger(__name__)

T = TypeVar("T")
# How long a statement waits for another connection's write lock (in aiosqlite's thread).
BUSY_TIMEOUT_MS = 30_000

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
        if value is None or value.tzinfo is UTC:
            return value
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


def dumps_json(value: Any) -> str:
    """JSON columns' serializer (outbox payloads, notification data): pydantic-core's,
    three times ``json.dumps`` on an event payload here, hundreds of which a big batch
    writes. Compact and UTF-8 where ``json.dumps`` spaced and escaped: the same JSON."""
    return to_json(value).decode()


PostCommit = Callable[[], Awaitable[None]]
PING: Select[Any] = select(literal_column("1").label("ok"))


class Database:
    """Engine + session factory + the transaction helper every service uses."""

    def __init__(
        self, url: str, *, pool_size: int = 10, max_overflow: int = 0, pool_timeout: float = 10.0, echo: bool = False
    ) -> None:
        """PostgreSQL: at most ``pool_size + max_overflow`` connections; a request that finds
        none free for ``pool_timeout`` seconds raises SQLAlchemy's pool ``TimeoutError``,
        answered 503 with ``Retry-After`` (core.errors)."""
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(
                self.url,
                echo=echo,
                json_serializer=dumps_json,
                json_deserializer=from_json,
                connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
                pool_size=5,
                max_overflow=10,
                pool_timeout=pool_timeout,
                # Every session ends its transaction itself (commit, or rollback on error), so the
                # pool's extra ROLLBACK on check-in is a no-op that costs a round trip.
                pool_reset_on_return=None,
            )
            _install_sqlite_hooks(self.engine)
        else:
            self.engine = create_async_engine(
                self.url,
                echo=echo,
                json_serializer=dumps_json,
                json_deserializer=from_json,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
                pool_pre_ping=False,
                pool_reset_on_return=None,  # as above: no ROLLBACK round trip per checkout
            )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self.checkpointer: Checkpointer | None = None

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

    async def run(self, unit: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """``unit(session)`` in one :meth:`transaction`, run again from its start if the
        database aborts it for a deadlock or a serialization failure (then 503): see
        ``core.transactions``. For every unit of work that takes locks."""

        async def once() -> T:
            async with self.transaction() as session:
                return await unit(session)

        return await run_retrying(once)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for a single read, in no transaction of its own: no write lock on
        SQLite (a ``transaction()`` takes ``BEGIN IMMEDIATE``, which would queue every
        authenticated request behind the writers), no BEGIN/COMMIT round trips on
        PostgreSQL. Each statement sees what was committed when it ran, so reads that
        must agree with each other, or with a write, belong in ``transaction()``."""
        options: dict[str, Any] = {READ_ONLY: True} if self.is_sqlite else {"isolation_level": "AUTOCOMMIT"}
        async with self.engine.connect() as conn:
            await conn.execution_options(**options)
            async with AsyncSession(bind=conn, expire_on_commit=False, autoflush=False) as session:
                yield session

    async def ping(self) -> bool:
        """The database answers (``/health``, which load balancers poll)."""
        async with self.read() as session:
            await session.execute(PING)
        return True

    async def start(self) -> None:
        """SQLite: checkpoint the WAL in the background from now on (see :class:`Checkpointer`)."""
        if self.is_sqlite and self.checkpointer is None and self.engine.url.database not in (None, "", ":memory:"):
            self.checkpointer = Checkpointer(str(self.engine.url.database))
            self.checkpointer.start()

    async def dispose(self) -> None:
        if self.checkpointer is not None:
            await self.checkpointer.stop()
            self.checkpointer = None
        await self.engine.dispose()


# A request's connections still checkpoint past this many WAL pages (~40 MB): a bound
# for processes that run no Checkpointer (the CLI's), far above what one keeps.
WAL_AUTOCHECKPOINT_PAGES = 10_000


class Checkpointer:
    """Copies SQLite's WAL into the database file from a thread of its own, every
    ``every`` seconds, so no request does it.

    SQLite's default is to checkpoint inside the COMMIT that takes the WAL past 1,000
    pages: copying them (and the fsync) stalled that request, every few large batches.
    A PASSIVE checkpoint never waits for, or blocks, readers and writers; pages a reader
    still needs are left for the next round. Several processes may each
    run one: SQLite lets one checkpoint at a time and the others find nothing to do."""

    def __init__(self, path: str, every: float = 0.25) -> None:
        self.path, self.every = path, every
        self.checkpointed_pages = 0  # in all (for tests and the curious)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._rounds = asyncio.Condition()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Let the round under way finish (its thread cannot be cancelled), then end."""
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.every)
                return
            try:
                self.checkpointed_pages += await asyncio.to_thread(self._checkpoint, self.path)
            except sqlite3.Error as error:  # busy, or the file went away: try again later
                log.debug("sqlite_checkpoint_failed", error=str(error))
            async with self._rounds:
                self._rounds.notify_all()

    async def next_round(self) -> None:
        """Return once the next round has run (for tests: no guessing how long to wait)."""
        async with self._rounds:
            await self._rounds.wait()

    @staticmethod
    def _checkpoint(path: str) -> int:
        # A connection of its own per round, opened and closed in the round's thread: nothing
        # is shared with a thread that a cancelled task would leave running.
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            _, _, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()
        return max(0, int(done))


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
            f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
            f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",  # the Checkpointer's job
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        # SQLAlchemy's documented recipe for SQLite transactions (pysqlite and aiosqlite),
        # with IMMEDIATE: a writer takes the write lock when it begins, so two transactions
        # never both read and then fail to upgrade (SQLITE_BUSY mid-transaction). Reads of
        # Database.read() run in sqlite3's autocommit and take no lock.
        if not conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


READ_ONLY = "batchops_read_only"


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def advisory_lock(session: AsyncSession, name: str, *, only_if: Select[Any] | None = None) -> bool:
    """Serialise one kind of decision across processes until the transaction ends.

    ``only_if``: take the lock only if that query finds a row, in the same round trip
    (for work that is often not there, such as a wait queue that is usually empty);
    whether it was taken. On SQLite ``BEGIN IMMEDIATE`` already serialises every writer,
    so this is a no-op (apart from ``only_if``'s query).
    """
    key = zlib.crc32(name.encode())
    if only_if is not None:
        stmt = (
            select(func.pg_advisory_xact_lock(key)).select_from(only_if.subquery()) if is_postgres(session) else only_if
        )
        return (await session.execute(stmt)).first() is not None
    if is_postgres(session):
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    return True


# --- the shared write and list helpers every domain uses -------------------------------------
def dialect_insert(session: AsyncSession, model: type[Base]) -> Any:
    """``INSERT`` for ``model`` in the session's dialect (both have ``ON CONFLICT``)."""
    return (pg_insert if is_postgres(session) else sqlite_insert)(table_of(model))


async def upsert(
    session: AsyncSession,
    model: type[Base],
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str],
    also: dict[str, Any] | None = None,
) -> None:
    """Insert ``rows``; a row whose ``key`` exists updates its ``update`` columns from the
    row sent (and sets ``also``'s constants). One executemany on both engines."""
    if not rows:
        return
    stmt = dialect_insert(session, model)
    changes = {**{c: stmt.excluded[c] for c in update}, **(also or {})}
    if changes:
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=changes)
    else:  # nothing to change: an existing row stays as it is
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
    await session.execute(stmt, list(rows))


async def insert_ignore(
    session: AsyncSession,
    model: type[Base],
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    returning: str | None = None,
) -> list[Any]:
    """Insert ``rows``, silently skipping those whose ``key`` already exists (``ON CONFLICT DO
    NOTHING``). With ``returning`` (a column name), that column of the rows actually
    inserted: the winners of a race."""
    if not rows:
        return []
    stmt = dialect_insert(session, model).on_conflict_do_nothing(index_elements=list(key))
    if returning is None:
        await session.execute(stmt, list(rows))
        return []
    return list((await session.execute(stmt.returning(table_of(model).c[returning]), list(rows))).scalars())


async def paginate(session: AsyncSession, query: Select[Any], *, offset: int, limit: int) -> tuple[list[Any], int]:
    """One page of ``query`` (already ordered) and how many rows the whole query has: ORM
    objects when it selects one entity, rows otherwise."""
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    page = await session.execute(query.offset(offset).limit(limit))
    single = len(query.column_descriptions) == 1
    return (list(page.scalars()) if single else list(page.all())), int(total or 0)
