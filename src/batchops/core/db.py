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
import json
import sqlite3
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar, TypeVar, cast

import asyncpg  # type: ignore[import-untyped]
import structlog
from pydantic_core import from_json, to_json
from sqlalchemy import (
    ARRAY,
    JSON,
    Boolean,
    ColumnDefault,
    ColumnElement,
    DateTime,
    Executable,
    MetaData,
    Select,
    String,
    Table,
    bindparam,
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
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator, TypeEngine

from batchops.core.transactions import run_retrying

log = structlog.get_logger(__name__)

T = TypeVar("T")
# One write of a batch: SQL, its rows of parameters, and the rows it must affect (else stop).
SqliteWrite = tuple[str, list[tuple[Any, ...]], int | None]
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


class _ValueList(TypeDecorator[list[Any]]):
    """A list bound as ONE parameter: a JSON array on SQLite (read back by ``json_each``),
    an array on PostgreSQL."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(ARRAY(String()) if dialect.name == "postgresql" else String())

    def process_bind_param(self, value: list[Any] | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return list(value) if dialect.name == "postgresql" else json.dumps(list(value))


class InList(ColumnElement[bool]):
    """``column IN (a list bound as one parameter)``: the SQL is the same for any number of
    values (one cached plan, one prepared statement), where an expanding ``IN`` renders a
    placeholder per value. Made by :func:`in_list`."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a comparison: SQLite must not get "… = 1" appended
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's own declaration style
        ("column", InternalTraversal.dp_clauseelement),
        ("values", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.column = column
        self.values = bindparam(name, type_=_ValueList())


def in_list(column: ColumnElement[Any], name: str) -> InList:
    """``column`` is one of the list given as parameter ``name``."""
    return InList(column, name)


@compiles(InList)
def _in_list_postgresql(element: InList, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(element.values, **kw)})"


@compiles(InList, "sqlite")
def _in_list_sqlite(element: InList, compiler: Any, **kw: Any) -> str:
    column, values = compiler.process(element.column, **kw), compiler.process(element.values, **kw)
    return f"{column} IN (SELECT value FROM json_each({values}))"


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

    async def read_rows(self, *reads: tuple[Select[Any], dict[str, Any]]) -> list[list[Any]]:
        """The rows of each Core read, one after the other in one :meth:`read`."""
        async with self.read() as session:
            return [list((await session.execute(stmt, params)).all()) for stmt, params in reads]

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


async def pg_connection(session: AsyncSession) -> Any | None:
    """PostgreSQL: the asyncpg connection under ``session``, inside the session's
    transaction; None on SQLite. SQLAlchemy's adapter begins its transaction at the first
    statement, so one is run first if none has: raw statements must never autocommit."""
    conn = await session.connection()
    if conn.dialect.name != "postgresql":
        return None
    driver: Any = (await conn.get_raw_connection()).driver_connection
    if not driver.is_in_transaction():
        await conn.execute(PING)
    assert driver.is_in_transaction()
    return driver


@dataclass(frozen=True)
class PgColumns:
    """Columns of a table as PostgreSQL array parameters (``unnest($1::T1[], $2::T2[], …)``):
    their type casts and SQLAlchemy's own bind processing (UTC datetimes, JSON) per value."""

    names: tuple[str, ...]
    params: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    @property
    def unnest(self) -> str:
        return f"unnest({', '.join(self.params)})"

    def arrays(self, rows: list[dict[str, Any]], constants: dict[str, Any] | None = None) -> list[list[Any]]:
        """One list per column; a column named in ``constants`` has that value in every row."""
        out = []
        for name, process in zip(self.names, self.processors, strict=True):
            values = [constants[name]] * len(rows) if constants and name in constants else [r[name] for r in rows]
            out.append([None if v is None else process(v) for v in values] if process else values)
        return out


@lru_cache(maxsize=256)
def pg_columns(table: Table, names: tuple[str, ...], dialect: Dialect, start: int = 1) -> PgColumns:
    types = [table.c[n].type for n in names]
    return PgColumns(
        names,
        tuple(f"${i}::{t.compile(dialect=dialect)}[]" for i, t in enumerate(types, start)),
        tuple(t.bind_processor(dialect) for t in types),
    )


def python_defaults(table: Table, given: tuple[str, ...]) -> dict[str, Any]:
    """Values of the Python-side column defaults (``default=utcnow``) of the columns not
    ``given``: computed once for a batch, where SQLAlchemy would compute them per row."""
    return {
        c.name: c.default.arg(None) if c.default.is_callable else c.default.arg
        for c in table.c
        if c.name not in given and isinstance(c.default, ColumnDefault)
    }


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
    (a column name), the values of the rows actually inserted: the winners of a race."""
    if not rows:
        return []
    table = table_of(model)
    pg = await pg_connection(session)
    if pg is not None:
        # Python-side column defaults (``default=utcnow``), which SQLAlchemy would fill in: once per batch.
        given = tuple(rows[0])
        defaults = python_defaults(table, given)
        cols = pg_columns(table, given + tuple(defaults), session.get_bind().dialect)
        sql = (
            f"INSERT INTO {table.name} ({', '.join(cols.names)}) SELECT * FROM {cols.unnest}"
            f" ON CONFLICT ({', '.join(conflict_on)}) DO NOTHING"
        )
        with driver_errors(sql):
            if returning is None:
                await pg.execute(sql, *cols.arrays(rows, defaults))
                return []
            return [r[0] for r in await pg.fetch(f"{sql} RETURNING {returning}", *cols.arrays(rows, defaults))]
    # SQLite: the executemany form, so the compiled statement is cached.
    stmt = sqlite_insert(table).on_conflict_do_nothing(index_elements=conflict_on)
    if returning is None:
        await session.execute(stmt, rows)
        return []
    return list((await session.execute(stmt.returning(table.c[returning]), rows)).scalars().all())


def sqlite_insert_write(table: Table, rows: list[dict[str, Any]], dialect: Dialect) -> SqliteWrite:
    """SQLite: INSERT ``rows`` (dicts with the same keys) as one executemany of ready-made
    tuples, for :func:`sqlite_run_writes` (``core.writes`` uses it; on PostgreSQL rows go
    as arrays instead).

    Through ``session.execute(insert(table), rows)`` SQLAlchemy spends a few µs per
    parameter (its parameter dicts, then each value's processor one by one), more than
    sqlite3 takes to write the row; here each column's processor is looked up once, and a
    value repeated down a column (the batch's ``now``) is processed once. Python-side
    column defaults are evaluated once per batch, as :func:`insert_new` does."""
    plan = _sqlite_insert_plan(table, tuple(rows[0]), dialect)
    return plan.sql, plan.parameters(rows), None


def sqlite_statement(stmt: Executable, rows: list[dict[str, Any]], dialect: Dialect) -> SqliteWrite:
    """SQLite: a Core statement whose parameters are all ``bindparam``s (a module-level
    constant: it is compiled once) as one executemany of ``rows``, for
    :func:`sqlite_run_writes`. A parameter missing from a row takes its bindparam's value;
    Python-side column defaults (``onupdate=utcnow``) are evaluated once for all rows."""
    plan = _compiled(stmt, dialect)
    return plan.sql, plan.parameter_rows(rows), None


def _processed(
    values: list[Any], process: Callable[[Any], Any] | None, memo: bool, *, none_is_null: bool = False
) -> list[Any]:
    """A column's values through its bind processor; ``memo``: each distinct value once (a
    batch's datetimes repeat down a column: its "now", a shared expiry); ``none_is_null``:
    None stays SQL NULL (a JSON column's processor would write the JSON text ``null``)."""
    if process is None:
        return values
    if memo:
        seen: dict[Any, Any] = {}
        return [seen[v] if v in seen else seen.setdefault(v, process(v)) for v in values]
    if none_is_null:
        return [None if v is None else process(v) for v in values]
    return [process(v) for v in values]


@dataclass(frozen=True)
class _Compiled:
    """A statement compiled once for a positional dialect (SQLite's ``?``, asyncpg's ``$n``)."""

    sql: str
    names: tuple[str, ...]  # the positional parameters, in order
    processors: tuple[Callable[[Any], Any] | None, ...]
    fallbacks: tuple[tuple[Any, ColumnDefault | None], ...]  # a bindparam's value, or a column default
    memo: tuple[bool, ...]  # datetimes: process each distinct one once

    def parameter_rows(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """One tuple per row: a parameter missing from a row takes its bindparam's value;
        column defaults (``onupdate=utcnow``) are evaluated once for all rows."""
        fallback = [v if d is None else d.arg(None) if d.is_callable else d.arg for v, d in self.fallbacks]
        columns = [
            _processed([row.get(name, value) for row in rows], process, memo, none_is_null=True)
            for name, value, process, memo in zip(self.names, fallback, self.processors, self.memo, strict=True)
        ]
        return list(zip(*columns, strict=True)) if columns else [() for _ in rows]


@lru_cache(maxsize=256)
def _compiled(stmt: Executable, dialect: Dialect) -> _Compiled:
    compiled: Any = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
    names = tuple(compiled.positiontup or ())
    defaults = {c.key: c.onupdate for c in compiled.update_prefetch} | {
        c.key: c.default for c in compiled.insert_prefetch
    }
    binds = [compiled.binds[n] for n in names]
    if any(b.expanding for b in binds):  # its SQL would depend on the list's length
        raise ValueError("bind a list as one parameter (db.in_list), not as an expanding IN")
    return _Compiled(
        compiled.string,
        names,
        tuple(b.type.bind_processor(dialect) for b in binds),
        tuple((b.value, defaults.get(n)) for n, b in zip(names, binds, strict=True)),
        tuple(_is_datetime(b.type) for b in binds),
    )


def _is_datetime(type_: TypeEngine[Any]) -> bool:
    return isinstance(type_, (UTCDateTime, DateTime))


@contextmanager
def driver_errors(statement: str) -> Iterator[None]:
    """A raw asyncpg statement's errors as SQLAlchemy's, as ``session.execute`` raises them
    (callers catch ``IntegrityError`` to retry or to answer 409, whichever path wrote)."""
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as error:
        raise IntegrityError(statement, None, error) from error
    except asyncpg.PostgresError as error:
        raise DBAPIError(statement, None, error) from error


async def fetch_rows(session: AsyncSession, stmt: Select[Any], params: dict[str, Any]) -> list[Any]:
    """The rows of a Core SELECT in the session's transaction."""
    return list((await session.execute(stmt, params)).all())


async def sqlite_run_writes(session: AsyncSession, writes: list[SqliteWrite]) -> list[int]:
    """SQLite: ``writes`` in order, in the session's transaction; the rows each affected.
    Stops after a write that affected other than its expected count (its caller decides
    what that means)."""
    conn = await session.connection()
    counts: list[int] = []
    for sql, params, expected in writes:
        counts.append((await conn.exec_driver_sql(sql, params)).rowcount)
        if expected is not None and counts[-1] != expected:
            break
    return counts


async def sqlite_write_at_commit(session: AsyncSession, writes: list[SqliteWrite]) -> None:
    """SQLite: ``writes`` in the session's transaction (rows nothing after them reads)."""
    await sqlite_run_writes(session, writes)


@dataclass(frozen=True)
class _SqliteInsert:
    sql: str
    names: tuple[str, ...]  # the given keys, then the defaulted columns
    given: int
    defaults: tuple[Any, ...]  # ColumnDefault of each defaulted column
    processors: tuple[Callable[[Any], Any] | None, ...]
    memo: tuple[bool, ...]  # hashable values (datetimes): process each distinct one once

    def parameters(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        defaults = [d.arg(None) if d.is_callable else d.arg for d in self.defaults]
        columns = [
            _processed(
                [r[name] for r in rows] if i < self.given else [defaults[i - self.given]] * len(rows), process, memo
            )
            for i, (name, process, memo) in enumerate(zip(self.names, self.processors, self.memo, strict=True))
        ]
        return list(zip(*columns, strict=True))


@lru_cache(maxsize=256)
def _sqlite_insert_plan(table: Table, given: tuple[str, ...], dialect: Dialect) -> _SqliteInsert:
    defaulted = tuple(c.name for c in table.c if c.name not in given and isinstance(c.default, ColumnDefault))
    names = given + defaulted
    quote = dialect.identifier_preparer
    types = [table.c[n].type for n in names]
    return _SqliteInsert(
        sql=f"INSERT INTO {quote.format_table(table)} ({', '.join(quote.quote(n) for n in names)}) "
        f"VALUES ({', '.join('?' * len(names))})",
        names=names,
        given=len(given),
        defaults=tuple(table.c[n].default for n in defaulted),
        processors=tuple(t.bind_processor(dialect) for t in types),
        memo=tuple(_is_datetime(t) for t in types),
    )


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
